#!/usr/bin/env bash
# NVIDIA GPUs with NCCL, one rank per GPU: launch/gpu_nccl.sh [NPROC] [train_ddp.py options]
# Multi-node: run torchrun yourself with --nnodes/--rdzv-endpoint and the same script.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$root/.venv/bin/python}"
ngpu="$("$PY" -c 'import torch; print(torch.cuda.device_count())')"
nproc="${1:-$ngpu}"; shift || true
if [ "$nproc" -lt 1 ]; then echo "no CUDA device visible" >&2; exit 1; fi
exec "$PY" -m torch.distributed.run --standalone --nproc-per-node "$nproc" \
    "${SCRIPT:-$root/launch/train_ddp.py}" --backend nccl "$@"
