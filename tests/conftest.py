"""Shared fixtures.  `mpi_group`: torch.distributed (gloo) initialised once per MPI rank.

pytest-mpi ends every run under --with-mpi with an "MPI Information" section (the MPI
library's build banner, mpi4py's rc and config, some 25 lines per run); here it is one
line instead.  The MPI tests themselves (markers, skips, --with-mpi) are untouched.
"""
import pytest


@pytest.fixture(scope="session")
def mpi_group():
    """(rank, world) of a gloo group built from the MPI rank and size (tests marked `mpi` only)."""
    from dist_util import mpi_gloo_group

    return mpi_gloo_group()


def _mpi_plugins(config):
    """pytest-mpi's MPIPlugin instance(s), registered by its own pytest_configure."""
    return [p for p in config.pluginmanager.get_plugins()
            if type(p).__name__ == "MPIPlugin" and type(p).__module__.startswith("pytest_mpi")]


@pytest.hookimpl(tryfirst=True)
def pytest_terminal_summary(terminalreporter, exitstatus, config):
    plugins = [p for p in _mpi_plugins(config) if getattr(p, "_is_testing_mpi", False)]
    if not plugins:
        return
    for p in plugins:
        p._is_testing_mpi = False          # its pytest_terminal_summary prints the banner only if set
    try:
        from mpi4py import MPI
        vendor, version = MPI.get_vendor()
        terminalreporter.write_line(f"MPI: rank {MPI.COMM_WORLD.rank} of {MPI.COMM_WORLD.size}, "
                                    f"{vendor} {'.'.join(map(str, version))}, MPI {'.'.join(map(str, MPI.Get_version()))}")
    except Exception as e:                 # pragma: no cover - mpi4py missing or broken
        terminalreporter.write_line(f"MPI: mpi4py unavailable ({e!r})")
