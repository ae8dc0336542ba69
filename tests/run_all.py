"""The whole suite, as `make test` and CI run it.

1. the serial suite (`pytest tests`; MPI-marked tests skip without --with-mpi),
2. the MPI-marked tests under `mpiexec -n 2` and `mpiexec -n 4` (MPICH from PyPI).

Exits non-zero if any part fails.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(cmd: list[str], env: dict | None = None) -> int:
    print("$", " ".join(cmd), flush=True)
    return subprocess.call(cmd, cwd=ROOT, env=env)


def main() -> int:
    failures = []
    extra = sys.argv[1:]
    if run([sys.executable, "-m", "pytest", "-q", "tests", *extra]) != 0:
        failures.append("serial suite")
    mpiexec = Path(sys.executable).with_name("mpiexec")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    for n in (2, 4):
        if run([str(mpiexec), "-n", str(n), sys.executable, str(ROOT / "tests" / "mpi_rank.py"), *extra], env) != 0:
            failures.append(f"MPI suite with {n} ranks")
    if failures:
        print("FAILED:", ", ".join(failures), flush=True)
        return 1
    print("all parts passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
