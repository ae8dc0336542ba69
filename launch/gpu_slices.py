"""The transport's device side, alone: 1 MiB slices of a 256 MiB bf16 tensor coded into and
decoded from one device arena, as the pipelined collectives do, against a device copy.
Part of launch/gpu_bench.sh; needs a CUDA device."""
import time

import torch

import qlccomm
from qlccomm.api import max_compressed_bytes


def main(n: int = 128 << 20, s: int = 512 << 10, rounds: int = 5) -> None:
    dev = torch.device("cuda")
    x = (torch.randn(n, device=dev) * 0.01).to(torch.bfloat16)     # 256 MiB, 1 MiB slices
    cap = max_compressed_bytes(x[:s]) + 64
    arena = torch.empty(n // s * cap, dtype=torch.uint8, device=dev)
    out = torch.empty_like(x)

    def one_round():
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        blobs = [qlccomm.compress(x[k * s:(k + 1) * s], out=arena[k * cap:(k + 1) * cap]) for k in range(n // s)]
        torch.cuda.synchronize()
        t1 = time.perf_counter()
        for k, b in enumerate(blobs):
            qlccomm.decompress(b, out=out[k * s:(k + 1) * s])
        torch.cuda.synchronize()
        return t1 - t0, time.perf_counter() - t1, sum(b.numel() for b in blobs)

    one_round()
    enc, dec, coded = min(one_round() for _ in range(rounds))
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    out.copy_(x)
    torch.cuda.synchronize()
    copy = time.perf_counter() - t0
    assert torch.equal(out.view(torch.int16), x.view(torch.int16))
    gb = x.numel() * 2 / 1e9
    print(f"1 MiB slices of 256 MiB bf16 on {torch.cuda.get_device_name()}: encode {gb / enc:.1f} GB/s, "
          f"decode {gb / dec:.1f} GB/s, ratio {2 * n / coded:.3f}; device copy {gb / copy:.1f} GB/s")


if __name__ == "__main__":
    main()
