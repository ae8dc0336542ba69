#!/usr/bin/env bash
# CPU ranks with gloo: launch/cpu_gloo.sh [NPROC] [train_ddp.py options]
# SCRIPT=launch/train_fsdp.py launch/cpu_gloo.sh 2   runs the FSDP2 example instead.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
nproc="${1:-2}"; shift || true
PY="${PYTHON:-$root/.venv/bin/python}"
exec "$PY" -m torch.distributed.run --standalone --nproc-per-node "$nproc" \
    "${SCRIPT:-$root/launch/train_ddp.py}" --backend gloo "$@"
