"""Shared fixtures.  `mpi_group`: torch.distributed (gloo) initialised once per MPI rank."""
import pytest


@pytest.fixture(scope="session")
def mpi_group():
    """(rank, world) of a gloo group built from the MPI rank and size (tests marked `mpi` only)."""
    from dist_util import mpi_gloo_group

    return mpi_gloo_group()
