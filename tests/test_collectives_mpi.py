"""The collective checks of test_collectives.py on 2 and 4 ranks, under mpiexec (pytest-mpi).

Run by tests/run_all.py as `mpiexec -n 2|4 python tests/mpi_rank.py`; skipped in
the serial suite.  Every rank runs the same tests in the same order, so the
collectives inside line up.
"""
import pytest
import torch.distributed as dist

import test_collectives as tc

pytestmark = pytest.mark.mpi(min_size=2)


def test_all_reduce_every_dtype(mpi_group):
    assert tc.check_all_reduce(*mpi_group) > 0


def test_all_reduce_variants(mpi_group):
    tc.check_all_reduce_variants(*mpi_group)


def test_reduce_scatter_every_dtype(mpi_group):
    assert tc.check_reduce_scatter(*mpi_group) > 0


def test_all_gather_every_dtype(mpi_group):
    assert tc.check_all_gather(*mpi_group) > 0


def test_broadcast_every_dtype(mpi_group):
    assert tc.check_broadcast(*mpi_group) > 0


def test_broadcast_default_codec_enec(mpi_group):
    if tc.check_broadcast_enec(*mpi_group) == "no-enec":
        pytest.skip("ENEC not installed: checked that codec='enec' raises ImportError on every rank")


def test_all_to_all_every_dtype(mpi_group):
    assert tc.check_all_to_all(*mpi_group) > 0


def test_broadcast_parameters(mpi_group):
    tc.check_broadcast_parameters(*mpi_group)


def test_group_usable_after_all(mpi_group):
    dist.barrier()
