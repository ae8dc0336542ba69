"""The `qlccomm` command: fit, inspect, bench, warmup."""
from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict

import numpy as np
import torch

from . import api, bench
from .codebook import (ALPHABET, codebook_from_histogram, entropy_bits, huffman_bits,
                       symbol_histogram, total_bits)
from .datagen import KINDS, parse_dtype, synthetic
from .format import dtype_name
from .split import candidate_plans
from .tensorfile import iter_tensors


class Progress:
    """A one-line progress bar on stderr, shown only for many items and on a terminal-ish stream."""

    def __init__(self, total: int, label: str, min_items: int = 20):
        self.total, self.label, self.n = total, label, 0
        self.on = total >= min_items

    def step(self) -> None:
        self.n += 1
        if self.on:
            done = int(30 * self.n / self.total)
            sys.stderr.write(f"\r{self.label} [{'#' * done}{'.' * (30 - done)}] {self.n}/{self.total}")
            if self.n == self.total:
                sys.stderr.write("\n")
            sys.stderr.flush()


def cmd_fit(args) -> int:
    want = parse_dtype(args.dtype) if args.dtype else None
    tensors = [(n, t) for f in args.files for n, t in iter_tensors(f)]
    hists: dict = defaultdict(lambda: defaultdict(lambda: np.zeros(ALPHABET, np.int64)))
    counts: dict = defaultdict(int)
    progress = Progress(len(tensors), "reading")
    for _, t in tensors:
        progress.step()
        if (want is not None and t.dtype != want) or not candidate_plans(t.dtype) or t.numel() == 0:
            continue
        counts[t.dtype] += 1
        for plan in candidate_plans(t.dtype):
            hists[t.dtype][plan.name] += symbol_histogram(t, plan)
    if not hists:
        print("no tensors of a coded dtype found", file=sys.stderr)
        return 1
    books = []
    for dtype, by_plan in hists.items():
        best = None
        for plan in candidate_plans(dtype):
            h = by_plan[plan.name]
            cb = codebook_from_histogram(h, dtype, plan)
            bits = total_bits(h, cb)
            if best is None or bits < best[0]:
                best = (bits, cb, h)
        _, cb, h = best
        n = int(h.sum())
        plan = cb.plan_obj
        exp = float((h * cb.code_lengths()).sum() / n)
        print(f"{dtype_name(dtype)}: {counts[dtype]} tensors, {n} elements, plan {plan.name}, widths {list(cb.widths)}")
        print(f"  expected {exp:.3f} bits/symbol; entropy {entropy_bits(h):.3f}; Huffman {huffman_bits(h):.3f}; "
              f"raw {plan.raw_bits} bits/element")
        print(f"  ratio {plan.item_bits / (exp + plan.raw_bits):.4f} "
              f"(entropy bound {plan.item_bits / (entropy_bits(h) + plan.raw_bits):.4f}, "
              f"Huffman {plan.item_bits / (huffman_bits(h) + plan.raw_bits):.4f}); digest {cb.digest}")
        books.append(cb)
    with open(args.output, "w") as f:
        obj = books[0].to_json() if len(books) == 1 else {"codebooks": [b.to_json() for b in books]}
        json.dump(obj, f, indent=1)
    print(f"wrote {args.output}")
    return 0


def cmd_inspect(args) -> int:
    with open(args.blob, "rb") as f:
        info = api.inspect(f.read())
    print(json.dumps(info, indent=1))
    return 0


def _bench_tensor(args) -> tuple[torch.Tensor, str]:
    dtype = parse_dtype(args.dtype)
    if args.file:
        parts = [t.reshape(-1) for f in args.file for _, t in iter_tensors(f) if t.dtype == dtype]
        if not parts:
            raise SystemExit(f"no {dtype_name(dtype)} tensors in {', '.join(args.file)}")
        t = torch.cat(parts)
        desc = f"{len(parts)} {dtype_name(dtype)} tensors from {', '.join(args.file)}"
    else:
        numel = int(args.size_mib * (1 << 20)) // torch.empty(0, dtype=dtype).element_size()
        t = synthetic(args.kind, dtype, numel, seed=args.seed)
        desc = f"synthetic {args.kind}-like {dtype_name(dtype)} (qlccomm.datagen, seed {args.seed})"
    return t.to(args.device), desc


def cmd_bench(args) -> int:
    if args.threads:
        torch.set_num_threads(args.threads)
    t, desc = _bench_tensor(args)
    codecs = args.codec.split(",") if args.codec else ["qlc", "enec"]
    from .api import pick_codec
    usable = []
    for c in codecs:
        try:
            pick_codec(t.dtype, c)
            usable.append(c)
        except ValueError as e:
            if args.codec:
                raise SystemExit(str(e))
    rows, bound = bench.run(t, usable, repeat=args.repeat)
    mib = t.numel() * t.element_size() / (1 << 20)
    from . import kernels
    title = (f"{desc}: {t.numel()} elements, {mib:.1f} MiB on {t.device} "
             f"(kernels: {kernels.backend_for(t.device)}, torch threads {torch.get_num_threads()}, "
             f"median of {args.repeat})")
    print(bench.format_report(rows, bound, title))
    return 0


def cmd_warmup(args) -> int:
    """Run every coded dtype through the CPU kernels once, so that numba compiles (and
    caches on disk) now rather than inside the first job or test."""
    import time

    from . import kernels
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    cases = [(t, dtype) for t in sorted({1, max(2, threads)})      # serial and thread-pool kernels
             for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2,
                           torch.int8, torch.uint8)]
    for t, dtype in cases:
        torch.set_num_threads(t)
        body = synthetic("grad", dtype, 20_000, seed=1)
        size = body.element_size()
        noise = torch.randint(0, 256, (4096 * size,), generator=g, dtype=torch.int32).to(torch.uint8).view(dtype)
        x = torch.cat([body, torch.zeros(4096, dtype=dtype), noise, body[:1000]])  # every chunk mode, short tail
        for codec, codebook in (("qlc", None), ("qlc", "default"), ("enec", None)):
            try:
                api.pick_codec(dtype, codec)
            except ValueError:
                continue
            out = api.decompress(api.compress(x, codec=codec, codebook=codebook))
            if not torch.equal(out.view(torch.uint8), x.view(torch.uint8)):
                raise SystemExit(f"{codec} round trip of {dtype} is not bit-exact")
    torch.set_num_threads(threads)
    print(f"cpu kernels: qlc {kernels.backend_for('cpu')}; ready in {time.perf_counter() - t0:.1f} s")
    return 0


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="qlccomm", description="Lossless compression for torch.distributed.")
    sub = ap.add_subparsers(dest="cmd", required=True)

    f = sub.add_parser("fit", help="fit per-dtype codebooks to tensors in .safetensors / .pt files")
    f.add_argument("files", nargs="+")
    f.add_argument("--dtype", help="fit only this dtype (bf16, fp16, fp32, e4m3, e5m2, int8, uint8)")
    f.add_argument("-o", "--output", required=True, help="codebook file to write (JSON)")
    f.set_defaults(fn=cmd_fit)

    i = sub.add_parser("inspect", help="describe a stream file without decoding it")
    i.add_argument("blob")
    i.set_defaults(fn=cmd_inspect)

    b = sub.add_parser("bench", help="ratio and GB/s against zstd, lz4 and a memory copy")
    b.add_argument("--codec", help="comma-separated: qlc, enec, auto, raw (default: qlc and enec where it applies)")
    b.add_argument("--dtype", default="bf16")
    b.add_argument("--kind", choices=list(KINDS), default="weight")
    b.add_argument("--file", action="append", help=".safetensors or .pt file (repeatable) instead of synthetic data")
    b.add_argument("--size-mib", type=float, default=16.0)
    b.add_argument("--device", default="cpu")
    b.add_argument("--repeat", type=int, default=5)
    b.add_argument("--threads", type=int, default=0, help="torch threads (0: leave as is)")
    b.add_argument("--seed", type=int, default=0)
    b.set_defaults(fn=cmd_bench)

    w = sub.add_parser("warmup", help="compile the CPU kernels ahead of the first job (numba caches them)")
    w.set_defaults(fn=cmd_warmup)

    args = ap.parse_args(argv)
    return args.fn(args)


if __name__ == "__main__":
    sys.exit(main())
