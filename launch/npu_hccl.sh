#!/usr/bin/env bash
# Huawei Ascend NPUs with HCCL (needs CANN and torch_npu matching torch), one rank per NPU:
#   source /usr/local/Ascend/ascend-toolkit/set_env.sh
#   launch/npu_hccl.sh [NPROC] [train_ddp.py options]
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$root/.venv/bin/python}"
nnpu="$("$PY" -c 'import torch, torch_npu; print(torch.npu.device_count())')"
nproc="${1:-$nnpu}"; shift || true
if [ "$nproc" -lt 1 ]; then echo "no NPU visible (is torch_npu installed and CANN sourced?)" >&2; exit 1; fi
exec "$PY" -m torch.distributed.run --standalone --nproc-per-node "$nproc" \
    "${SCRIPT:-$root/launch/train_ddp.py}" --backend hccl "$@"
