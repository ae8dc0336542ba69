"""`qlccomm bench`: ratio and throughput of the codecs against zstd, lz4 and a memory copy.

Throughput is uncompressed bytes per second (GB/s = 1e9 B/s), the median of
`repeat` timed runs after one warm-up; every reference runs on the same bytes
in the same process.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass

import numpy as np
import torch

from . import api
from .codebook import entropy_bits, huffman_bits, symbol_histogram
from .split import candidate_plans


@dataclass
class Row:
    name: str
    ratio: float
    encode_gbps: float | None
    decode_gbps: float | None
    note: str = ""


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "npu":
        torch.npu.synchronize()  # type: ignore[attr-defined]


def _median_seconds(fn, repeat: int, device: torch.device) -> float:
    fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bits_bound(t: torch.Tensor) -> dict:
    """Entropy and Huffman bounds of the symbol split (bits per element, raw bits included)."""
    plans = candidate_plans(t.dtype)
    if not plans:
        return {}
    best = {}
    for plan in plans:
        hist = symbol_histogram(t, plan)
        e, h = entropy_bits(hist) + plan.raw_bits, huffman_bits(hist) + plan.raw_bits
        if not best or e < best["entropy"]:
            best = {"plan": plan.name, "entropy": e, "huffman": h, "item_bits": plan.item_bits}
    return best


def run(t: torch.Tensor, codecs: list[str], repeat: int = 5) -> tuple[list[Row], dict]:
    """Measure `codecs` on tensor `t` (any device) and the host references on its bytes."""
    device = t.device
    nbytes = t.numel() * t.element_size()
    rows = []
    for codec in codecs:
        blob = api.compress(t, codec=codec)
        out = api.decompress(blob)
        if not torch.equal(out.reshape(-1).view(torch.uint8), t.reshape(-1).view(torch.uint8)):
            raise AssertionError(f"{codec} round trip is not bit-exact")
        enc = _median_seconds(lambda: api.compress(t, codec=codec), repeat, device)
        dec = _median_seconds(lambda: api.decompress(blob), repeat, device)
        rows.append(Row(codec, nbytes / blob.numel(), nbytes / enc / 1e9, nbytes / dec / 1e9,
                        api.inspect(blob)["codec"]))
    host = t.detach().reshape(-1).view(torch.uint8).cpu().numpy().tobytes()
    rows.extend(_references(host, repeat))
    if device.type != "cpu":
        rows.append(Row(f"copy ({device.type})", 1.0,
                        nbytes / _median_seconds(lambda: t.clone(), repeat, device) / 1e9, None))
    return rows, bits_bound(t)


def _references(host: bytes, repeat: int) -> list[Row]:
    rows = []
    n = len(host)
    try:
        import zstandard
        for level in (1, 3):
            c = zstandard.ZstdCompressor(level=level)
            d = zstandard.ZstdDecompressor()
            z = c.compress(host)
            cpu = torch.device("cpu")
            rows.append(Row(f"zstd-{level}", n / len(z), n / _median_seconds(lambda: c.compress(host), repeat, cpu) / 1e9,
                            n / _median_seconds(lambda: d.decompress(z), repeat, cpu) / 1e9))
    except ImportError:
        rows.append(Row("zstd", float("nan"), None, None, "zstandard not installed"))
    try:
        import lz4.frame
        z = lz4.frame.compress(host)
        cpu = torch.device("cpu")
        rows.append(Row("lz4", n / len(z), n / _median_seconds(lambda: lz4.frame.compress(host), repeat, cpu) / 1e9,
                        n / _median_seconds(lambda: lz4.frame.decompress(z), repeat, cpu) / 1e9))
    except ImportError:
        rows.append(Row("lz4", float("nan"), None, None, "lz4 not installed"))
    arr = np.frombuffer(host, dtype=np.uint8)
    rows.append(Row("memcpy (host)", 1.0, n / _median_seconds(lambda: arr.copy(), repeat, torch.device("cpu")) / 1e9, None))
    return rows


def format_report(rows: list[Row], bound: dict, title: str) -> str:
    lines = [title]
    if bound:
        ib = bound["item_bits"]
        lines.append(f"bounds ({bound['plan']} split): entropy {bound['entropy']:.3f} bits/element -> ratio "
                     f"{ib / bound['entropy']:.3f}; Huffman {bound['huffman']:.3f} bits/element -> ratio "
                     f"{ib / bound['huffman']:.3f}")
    lines.append(f"{'codec':<16}{'ratio':>8}{'saved':>8}{'encode GB/s':>13}{'decode GB/s':>13}")
    fmt = lambda v: f"{v:13.3f}" if v is not None else f"{'-':>13}"  # noqa: E731
    for r in rows:
        saved = f"{100 * (1 - 1 / r.ratio):7.1f}%" if r.ratio == r.ratio and r.ratio > 0 else f"{'-':>8}"
        lines.append(f"{r.name:<16}{r.ratio:8.3f}{saved}{fmt(r.encode_gbps)}{fmt(r.decode_gbps)}"
                     + (f"  ({r.note})" if r.note and r.note != r.name else ""))
    return "\n".join(lines)
