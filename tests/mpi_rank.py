"""One MPI rank of the MPI suite: runs the tests marked `mpi` with pytest-mpi.

Rank 0 prints its pytest output; other ranks write theirs to a log that is
printed only if that rank fails.  Only the test modules that mention `mark.mpi` are
collected.  Exit code 5 (every test skipped, e.g. a
min_size above the world size) counts as success, as pytest-mpi intends.
"""
from __future__ import annotations

import os
import sys
import tempfile

import pytest
from mpi4py import MPI

here = os.path.dirname(os.path.abspath(__file__))
rank = MPI.COMM_WORLD.Get_rank()
log_path = None
if rank != 0:
    fd, log_path = tempfile.mkstemp(prefix=f"qlccomm-mpi-rank{rank}-", suffix=".log")
    saved_stdout = os.dup(1)
    sys.stdout.flush()
    sys.stderr.flush()
    os.dup2(fd, 1)
    os.dup2(fd, 2)
# collect only the modules that hold MPI tests: importing the whole suite on every rank is slow
files = sorted(os.path.join(here, f) for f in os.listdir(here)
               if f.startswith("test_") and f.endswith(".py") and "mark.mpi" in open(os.path.join(here, f)).read())
rc = int(pytest.main(["--with-mpi", "-q", "-m", "mpi", "-p", "no:cacheprovider", *files, *sys.argv[1:]]))
if rc == int(pytest.ExitCode.NO_TESTS_COLLECTED):
    rc = 0
if log_path is not None:
    sys.stdout.flush()
    sys.stderr.flush()
    if rc != 0:
        with open(log_path, "rb") as f:
            os.write(saved_stdout, f"--- rank {rank} failed (exit {rc}) ---\n".encode() + f.read())
    os.unlink(log_path)
sys.exit(rc)
