#!/usr/bin/env bash
# Issue 5's GPU checks and figures in one run, on a machine with a CUDA device, PyTorch and
# Triton already installed (no network needed; no venv: the system python3):
#
#   bash launch/gpu_bench.sh            # from the repository root; logs under $OUT or ./gpu-bench-out
#
# 1. tests/test_kernels_cuda.py: the Triton kernels (QLC, ENEC, QLCW with one and 8 codes, raw shifts) against the torch path on the device at
#    64 MiB per dtype (bytes, bit-exact decodes, corrupt streams), the grid loop, the API;
#    plus the dispatch tests; tests/test_transport_cuda.py: slices coded into device buffers,
#    and (two devices or more) NCCL ranks whose caller stream never blocks.
# 2. kernel-level GB/s: QLC sections and the API, Triton and the torch path, 256 MiB bf16
#    weights and gradients, against a device-to-device copy in the same rounds.
# 3. `qlccomm bench --device cuda`: QLC and ENEC on 256 MiB bf16 weight- and gradient-like
#    tensors and transformer-like bf16 activations, with a device copy of the same size as the reference.
# 4. the transport's device side: 1 MiB slices coded into and decoded from device arenas, as
#    the pipelined collectives do (per-slice launch and host-planning cost), GB/s against a copy.
# 5. `qlccomm bench --refresh-autoselect --device cuda`: the figures codec="auto" chooses by.
# Figures go to docs/benchmarks.md with the date, the device line (nvidia-smi) and these commands.
set -uo pipefail
# Bounded to fit one device call (about 8 minutes in all, Triton's compiles included); at most
# 8 log files, since the device tool brings back no more.
out="${OUT:-gpu-bench-out}"
mkdir -p "$out"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" -c 'import torch, triton, numpy, pytest; print("torch", torch.__version__, "triton", triton.__version__)'
} 2>&1 | tee "$out/device.txt"
"$PY" -c 'import torch, triton, numpy, pytest, hypothesis; assert torch.cuda.is_available()' || exit 1
# editable install (maps kernels/ to qlccomm.kernels); no network, no build isolation.  Where
# the machine's setuptools is too old for pyproject.toml, the checkout itself goes on the path
# with qlccomm/kernels linked to kernels/ (what the editable install maps).
if ! "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . >>"$out/device.txt" 2>&1 \
   && ! "$PY" -m pip install -q --no-deps --no-build-isolation --no-index --break-system-packages -e . \
        >>"$out/device.txt" 2>&1; then
    [ -e qlccomm/kernels ] || ln -s ../kernels qlccomm/kernels
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    echo "pip install -e . failed: using PYTHONPATH=$PWD" | tee -a "$out/device.txt"
fi
rc=0
timeout 240 "$PY" -m pytest -q -rfE -p no:cacheprovider tests/test_kernels_cuda.py tests/test_kernels_dispatch.py \
    tests/test_transport_cuda.py 2>&1 | tee "$out/tests.txt" || rc=1
for data in weights grads; do
    timeout 60 "$PY" -m qlccomm.kernels.bench --device cuda --mib 256 --rounds 10 --backends triton,torch \
        --data "$data" --best 2>&1 | tee -a "$out/kernels_bench.txt" || rc=1
done
for kind in weight grad activation; do
    timeout 45 "$PY" -m qlccomm.cli bench --device cuda --codec qlc,qlcw,enec --dtype bf16 --size-mib 256 --kind "$kind" \
        --repeat 10 2>&1 | tee -a "$out/qlccomm_bench.txt" || rc=1
done
timeout 45 "$PY" launch/gpu_slices.py 2>&1 | tee "$out/slices.txt" || rc=1
# codec="auto"'s figures for cuda tensors (bf16, fp16, fp32; every kind it weighs), written as
# a user table under $out: copy its entries into qlccomm/autoselect.json
QLCCOMM_CACHE="$out" timeout 120 "$PY" -m qlccomm.cli bench --refresh-autoselect --device cuda --size-mib 64 \
    --repeat 3 2>&1 | tee "$out/autoselect.txt" || rc=1
exit $rc
