"""FSDP2 (fully_shard on CPU with gloo) with hccl_hooks' compressed collectives.

The compressed parameter all-gather (ENEC when installed, else QLC) is lossless,
so training ends bit-identical to plain FSDP2.  The compressed gradient
reduce-scatter sums in rank order in float32: bit-identical to the same
reduce-scatter uncoded.  Runs on 3 spawned ranks (uneven shards) and under
mpiexec -n 2 (skipped at -n 4 to keep the suite short on 2 cores).
"""
import sys
from pathlib import Path

import pytest
import torch

from dist_util import check_ok, run_ranks
from hccl_hooks import compress_fsdp_all_gather, compress_fsdp_reduce_scatter

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "launch"))
import train_fsdp  # noqa: E402


def run_fsdp(rank, world, *argv):
    from hccl_hooks import DistInfo

    info = DistInfo(rank, world, rank, "gloo", torch.device("cpu"), "test")
    return train_fsdp.train_and_compare(train_fsdp.parse_args(list(argv)), info)


def check_result(res):
    assert res["identical"], f"FSDP2 with the compressed all-gather ({res['codec']}) differs from plain FSDP2"
    ag = res["all_gather"]
    assert ag["compressed_calls"] > 0 and ag["coded_bytes"] < ag["raw_bytes"], ag
    assert ag["sent_bytes"] < ag["plain_bytes"], ag
    assert res["losses"][-1] < res["losses"][0]


def only_two_ranks(world):
    if world > 2:
        pytest.skip("FSDP2 runs at 2 (mpiexec) and 3 (spawned) ranks; 4 ranks on this CI's 2 cores is too slow")


@pytest.mark.mpi(min_size=2)
def test_fsdp2_compressed_all_gather_and_reduce_scatter(mpi_group):
    only_two_ranks(mpi_group[1])
    res = run_fsdp(*mpi_group, "--steps", "5", "--reduce-scatter")
    check_result(res)
    assert res["rs_identical"], "compressed reduce-scatter differs from the uncoded rank-order one"
    assert res["reduce_scatter"]["coded_bytes"] < res["reduce_scatter"]["raw_bytes"]


@pytest.mark.mpi(min_size=2)
def test_fsdp2_qlc_all_gather_bfloat16(mpi_group):
    only_two_ranks(mpi_group[1])
    check_result(run_fsdp(*mpi_group, "--steps", "6", "--codec", "qlc", "--dtype", "bfloat16"))


def test_fsdp2_three_ranks_uneven_shards():
    res = check_ok(run_ranks("test_fsdp:run_fsdp", 3, "--steps", "4", timeout=120))
    for r in res:
        check_result(r)


def test_needs_fully_shard_modules():
    with pytest.raises(ValueError, match="fully_shard"):
        compress_fsdp_all_gather(torch.nn.Linear(2, 2), codec="qlc")
    with pytest.raises(ValueError, match="fully_shard"):
        compress_fsdp_reduce_scatter(torch.nn.Linear(2, 2), codec="qlc")


def test_clear_error_without_custom_all_gather(monkeypatch):
    from torch.distributed.fsdp import FSDPModule

    monkeypatch.delattr(FSDPModule, "set_custom_all_gather")  # what torch < 2.9 looks like
    with pytest.raises(RuntimeError, match=r"torch >= 2\.9"):
        compress_fsdp_all_gather(torch.nn.Linear(2, 2))
