"""What one adaptive `compress` / `decompress` call costs, and where: the kernels or the host.

For real tensors (launch/minilm.py, as in ratio_table.py and gradient_targets.py: bf16, fp16
and e4m3 pretrained weights, the half-zero bf16 gradient) cut to `--elems` elements (a whole
tensor, or a collective's slice: 524,288 bf16 elements are qlccomm's 1 MiB default), one
thread: the median time of `qlccomm.compress(x)` and `qlccomm.decompress(stream)`, the part of
it spent in the native kernels (qlccomm.kernels' prange kernels, timed around each call), and
zstd level 1 on the same bytes, in interleaved rounds.  Every round's stream is checked to
decode bit-exactly once.

    python launch/call_cost.py [--elems 4000000] [--repeat 9] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import gradient_targets  # noqa: E402
import ratio_table  # noqa: E402

import qlccomm  # noqa: E402
from qlccomm import bench  # noqa: E402
from qlccomm.kernels import native_qlc  # noqa: E402


def tensors(elems: int) -> dict[str, torch.Tensor]:
    w = ratio_table.tensors(elems)["weights"]
    out = {f"{n} weights": ratio_table.cast(w, ratio_table.DTYPES[n]) for n in ("bf16", "fp16", "e4m3")}
    out["bf16 half-zero gradient"] = gradient_targets.half_zero_bf16()[:elems].clone()
    return out


@contextmanager
def kernel_clock():
    """Seconds spent inside the native prange kernels while the block runs: [total]."""
    spent = [0.0]
    call = native_qlc.ParallelKernel.__call__

    def timed(self, *args):
        t0 = time.perf_counter()
        try:
            return call(self, *args)
        finally:
            spent[0] += time.perf_counter() - t0
    native_qlc.ParallelKernel.__call__ = timed
    try:
        yield spent
    finally:
        native_qlc.ParallelKernel.__call__ = call


def measure(t: torch.Tensor, repeat: int) -> dict:
    host = bench.host_bytes(t)
    zstd = bench.zstd_case(host)
    stream = qlccomm.compress(t)
    bench.assert_bit_exact(qlccomm.decompress(stream), t, "compress")
    for _ in range(2):                              # warm: tables, caches, numba dispatch
        qlccomm.decompress(qlccomm.compress(t))
    times = {k: [] for k in ("enc", "dec", "enc_kernels", "dec_kernels", "zstd_enc", "zstd_dec")}
    for _ in range(repeat):
        for name, zstd_call, call in (("enc", zstd.encode, lambda: qlccomm.compress(t)),
                                      ("dec", zstd.decode, lambda: qlccomm.decompress(stream))):
            times[f"zstd_{name}"].append(bench.timed(zstd_call)[0])
            with kernel_clock() as k:
                times[name].append(bench.timed(call)[0])
            times[f"{name}_kernels"].append(k[0])
    row = {k: statistics.median(v) * 1e3 for k, v in times.items()}        # ms
    row["ratio"] = len(host) / stream.numel()
    row["enc_x_zstd"] = row["zstd_enc"] / row["enc"]
    row["dec_x_zstd"] = row["zstd_dec"] / row["dec"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--elems", type=int, default=4_000_000, help="elements per tensor")
    ap.add_argument("--repeat", type=int, default=9, help="timed rounds (median)")
    ap.add_argument("--json", help="write the rows here too")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = {}
    print(f"# {args.elems} elements, 1 thread, median of {args.repeat} interleaved rounds; ms per call")
    print(f"{'tensor':26s} {'ratio':>6s} {'enc':>7s} {'kernels':>7s} {'zstd-1':>7s} {'x':>5s}"
          f" {'dec':>7s} {'kernels':>7s} {'zstd-1':>7s} {'x':>5s}")
    for name, t in tensors(args.elems).items():
        r = rows[name] = measure(t, args.repeat)
        print(f"{name:26s} {r['ratio']:6.3f} {r['enc']:7.2f} {r['enc_kernels']:7.2f} {r['zstd_enc']:7.2f}"
              f" {r['enc_x_zstd']:5.2f} {r['dec']:7.2f} {r['dec_kernels']:7.2f} {r['zstd_dec']:7.2f}"
              f" {r['dec_x_zstd']:5.2f}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
