"""The pipelined transport on CUDA tensors: the caller's stream is never blocked.

* one device: slices coded into and decoded from device arenas (compress(out=),
  decompress(out=)) give the CPU path's bytes and bits, and a pipelined round trip of
  a 64 MiB tensor through 1 MiB slot-sized slices is bit-exact;
* two devices or more (NCCL needs one device per rank): 2 spawned NCCL ranks run the
  steady-state all_reduce (coded, sized framing) with async_op=True under
  `torch.cuda.set_sync_debug_mode("error")`: submitting the call and waiting on it
  must not synchronise the caller with the device (every device-to-host read of
  sizes happens on qlccomm's group thread); the result is bit-identical to
  `reference_all_reduce`.

Skipped without CUDA (CI has none); launch/gpu_bench.sh runs it.
"""
from __future__ import annotations

import threading

import pytest
import torch

import qlccomm
from qlccomm.api import max_compressed_bytes

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)

DEV = torch.device("cuda")
MIB = 1 << 20


def _grad(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = (torch.randn(n, generator=g) * 0.01).to(torch.bfloat16)
    x[n // 3: n // 2] = 0
    return x


def test_slices_code_into_device_buffers():
    x = _grad(MIB, 1)
    arena = torch.empty(max_compressed_bytes(x) + 64, dtype=torch.uint8, device=DEV)
    blob = qlccomm.compress(x.to(DEV), out=arena)
    assert blob.data_ptr() == arena.data_ptr()
    assert torch.equal(blob.cpu(), qlccomm.compress(x))          # the CPU kernels' bytes
    out = torch.empty(x.numel(), dtype=x.dtype, device=DEV)
    assert qlccomm.decompress(blob, out=out) is out
    assert torch.equal(out.cpu().view(torch.int16), x.view(torch.int16))


def test_pipelined_slices_round_trip_64_mib():
    x = _grad(32 * MIB, 2).to(DEV)
    s = MIB // 2                                                  # 1 MiB of bf16 per slice
    cap = max_compressed_bytes(x[:s]) + 64
    arena = torch.empty(x.numel() // s * cap, dtype=torch.uint8, device=DEV)
    blobs = [qlccomm.compress(x[k * s:(k + 1) * s], out=arena[k * cap:(k + 1) * cap])
             for k in range(x.numel() // s)]
    out = torch.empty_like(x)
    for k, b in enumerate(blobs):
        qlccomm.decompress(b, out=out[k * s:(k + 1) * s])
    assert torch.equal(out.view(torch.int16), x.view(torch.int16))


def check_no_sync(rank, world):
    """Runs on each NCCL rank: steady state, then one call under sync-debug "error"."""
    import torch.distributed as dist
    from qlccomm import collectives as C
    torch.cuda.set_device(rank)
    dev = torch.device("cuda", rank)
    xs = [_grad(8 * MIB, 10 + k) for k in range(world)]
    ref = C.reference_all_reduce(xs)
    kw = dict(compress=True, min_compress_bytes=0)
    for _ in range(2):                                            # steady state: buffers, tables, kernels
        t = xs[rank].to(dev)
        qlccomm.all_reduce(t, **kw)
    torch.cuda.synchronize()
    t = xs[rank].to(dev)
    torch.cuda.synchronize()
    # hold the group thread so that only the caller's part of the call runs under the check
    worker = C._group_state(None)[0].worker
    gate = threading.Event()
    worker.submit(gate.wait)
    torch.cuda.set_sync_debug_mode("error")
    try:
        work = qlccomm.all_reduce(t, async_op=True, **kw)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    gate.set()
    work.get_future().wait()                                      # host-side completion of the group thread
    torch.cuda.set_sync_debug_mode("error")
    try:
        work.wait()                                               # orders the current stream: no sync
    finally:
        torch.cuda.set_sync_debug_mode("default")
    torch.cuda.synchronize()
    assert torch.equal(t.cpu().view(torch.int16), ref.view(torch.int16))
    dist.barrier()
    return True


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL needs one device per rank")
def test_caller_stream_never_blocked_nccl():
    from dist_util import check_ok, run_ranks
    check_ok(run_ranks("test_transport_cuda:check_no_sync", 2, timeout=180, env={"QLCCOMM_TEST_BACKEND": "nccl"}))
