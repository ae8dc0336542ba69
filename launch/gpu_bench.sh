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
# Figures go to docs/benchmarks.md with the date, the device line (nvidia-smi) and these commands.
set -uo pipefail
out="${OUT:-gpu-bench-out}"
mkdir -p "$out"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
{ date -u; nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
  "$PY" -c 'import torch, triton, numpy, pytest; print("torch", torch.__version__, "triton", triton.__version__)'
} 2>&1 | tee "$out/device.txt"
"$PY" -c 'import torch, triton, numpy, pytest, hypothesis; assert torch.cuda.is_available()' || exit 1
# editable install (maps kernels/ to qlccomm.kernels); no network, no build isolation
"$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$out/install.txt" 2>&1 \
    || "$PY" -m pip install -q --no-deps --no-build-isolation --no-index --break-system-packages -e . \
        >>"$out/install.txt" 2>&1 || { cat "$out/install.txt"; exit 1; }
rc=0
timeout 300 "$PY" -m pytest -q -p no:cacheprovider tests/test_kernels_cuda.py tests/test_kernels_dispatch.py \
    tests/test_transport_cuda.py 2>&1 \
    | tee "$out/tests.txt" || rc=1
for data in weights grads; do
    timeout 120 "$PY" -m qlccomm.kernels.bench --device cuda --mib 256 --rounds 10 --backends triton,torch \
        --data "$data" --best 2>&1 | tee "$out/kernels_bench_$data.txt" || rc=1
done
for kind in weight grad activation; do
    timeout 120 "$PY" -m qlccomm.cli bench --device cuda --codec qlc,qlcw,enec --dtype bf16 --size-mib 256 --kind "$kind" --repeat 10 \
        2>&1 | tee "$out/qlccomm_bench_$kind.txt" || rc=1
done
timeout 120 "$PY" launch/gpu_slices.py 2>&1 | tee "$out/slices.txt" || rc=1
exit $rc
