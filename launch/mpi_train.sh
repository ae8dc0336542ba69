#!/usr/bin/env bash
# mpiexec launcher of the DDP example: launch/mpi_train.sh [NPROC] [train_ddp.py options]
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(dirname "$here")"
nproc="${1:-2}"
shift || true
PY="${PYTHON:-$root/.venv/bin/python}"
MPIEXEC="${MPIEXEC:-$(dirname "$PY")/mpiexec}"
command -v "$MPIEXEC" >/dev/null 2>&1 || MPIEXEC=mpiexec
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$MPIEXEC" -n "$nproc" "$PY" "$here/mpi_train.py" "$@"
