"""The benchmark harness: `qlccomm bench` and the measuring core that kernels/bench.py builds on.

`qlccomm bench` reports the ratio and throughput of the codecs against zstd, lz4 and
memory copies of the same bytes, in the same process.

The core:

* a `Case` is one row: an encode callable, optionally a decode callable, and the
  sizes in bytes of the input and of what encode produces;
* `interleaved` times the cases in rounds: every round calls each case's encode and
  decode once, in turn, on the same bytes, so load from other processes hits all of
  them alike; each call is timed by wall clock and by process CPU time (seconds),
  with the device synchronised before and after;
* the reference cases (`zstd_case`, `lz4_case`, `memcpy_case`, `copy_case`,
  `clone_case`) run on the bytes of the measured tensor;
* `gbps` turns timings into GB/s = uncompressed bytes / s / 1e9 (the median of the
  rounds by default), and `format_table` lays out the rows.
"""
from __future__ import annotations

import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from . import api
from .codebook import entropy_bits, huffman_bits, symbol_histogram
from .split import candidate_plans

Call = Callable[[], object]


@dataclass
class Timings:
    """Seconds of each timed round of one callable, by wall clock and by process CPU time."""
    wall: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)


@dataclass
class Case:
    """One benchmark row: what to time, on how many bytes, and how many bytes `encode` produces.

    `in_bytes` is the uncompressed size (what GB/s counts).  `encode` is None for a
    case that cannot run here (`note` says why); `decode` is None for a copy.
    `out_bytes` None means the output is as large as the input.  `interleaved`
    fills `enc` and `dec`.
    """
    name: str
    in_bytes: int
    encode: Call | None
    decode: Call | None = None
    out_bytes: int | None = None
    note: str = ""
    enc: Timings = field(default_factory=Timings)
    dec: Timings = field(default_factory=Timings)

    def ratio(self) -> float | None:
        """Uncompressed over compressed bytes; None for a case that cannot run."""
        if self.encode is None:
            return None
        return 1.0 if self.out_bytes is None else self.in_bytes / self.out_bytes


def sync(device: torch.device | str) -> None:
    """Wait for the work queued on `device` (no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type != "cpu":
        backend = getattr(torch, device.type, None)
        if hasattr(backend, "synchronize"):
            backend.synchronize()


def timed(fn: Call, device: torch.device | str = "cpu") -> tuple[float, float]:
    """(wall seconds, process CPU seconds) of one call of `fn`, `device` synchronised before and after."""
    sync(device)
    c0, t0 = time.process_time(), time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t0, time.process_time() - c0


def interleaved(cases: Sequence[Case], rounds: int, device: torch.device | str = "cpu",
                warmup: int = 1) -> None:
    """Time `cases` in `rounds` interleaved rounds after `warmup` untimed ones.

    Each round calls every case's encode then its decode once, in the order given,
    and appends the seconds to `case.enc` / `case.dec`, so index i of every list is
    round i.
    """
    device = torch.device(device)
    for r in range(warmup + rounds):
        for case in cases:
            for fn, into in ((case.encode, case.enc), (case.decode, case.dec)):
                if fn is None:
                    continue
                wall, cpu = timed(fn, device)
                if r >= warmup:
                    into.wall.append(wall)
                    into.cpu.append(cpu)


def gbps(nbytes: int, seconds: Sequence[float],
         pick: Callable[[Sequence[float]], float] = statistics.median) -> float | None:
    """GB/s (1e9 uncompressed bytes per second) of `nbytes` over pick(seconds); None without samples."""
    if not seconds:
        return None
    s = pick(seconds)
    return nbytes / s / 1e9 if s > 0 else float("inf")


# -- reference cases ----------------------------------------------------------------

def tensor_bytes(x: torch.Tensor) -> int:
    """The size of `x`'s data in bytes."""
    return x.numel() * x.element_size()


def host_bytes(x: torch.Tensor) -> bytes:
    """The raw bytes of `x`, copied to the host."""
    return x.detach().reshape(-1).view(torch.uint8).cpu().numpy().tobytes()


def zstd_case(host: bytes, level: int = 1) -> Case:
    """zstd at `level` compressing and decompressing `host` (one thread)."""
    name = f"zstd-{level}"
    try:
        import zstandard
    except ImportError:
        return Case(name, len(host), None, note="zstandard not installed")
    c, d = zstandard.ZstdCompressor(level=level), zstandard.ZstdDecompressor()
    blob = c.compress(host)
    return Case(name, len(host), lambda: c.compress(host), lambda: d.decompress(blob), len(blob))


def lz4_case(host: bytes) -> Case:
    """lz4 frame compressing and decompressing `host`."""
    try:
        import lz4.frame
    except ImportError:
        return Case("lz4", len(host), None, note="lz4 not installed")
    blob = lz4.frame.compress(host)
    return Case("lz4", len(host), lambda: lz4.frame.compress(host), lambda: lz4.frame.decompress(blob),
                len(blob))


def memcpy_case(host: bytes) -> Case:
    """A numpy copy of `host` (host memory bandwidth)."""
    arr = np.frombuffer(host, dtype=np.uint8)
    return Case("memcpy (host)", len(host), arr.copy)


def copy_case(x: torch.Tensor, name: str = "copy_") -> Case:
    """`copy_` of `x` into an existing tensor on its device (memory bandwidth)."""
    y = torch.empty_like(x)
    return Case(name, tensor_bytes(x), lambda: y.copy_(x))


def clone_case(x: torch.Tensor, name: str = "clone") -> Case:
    """`x.clone()`: allocate and copy, what an out-of-place result costs (fresh pages fault in)."""
    return Case(name, tensor_bytes(x), x.clone)


def assert_bit_exact(out: torch.Tensor, x: torch.Tensor, what: str) -> None:
    """Raise AssertionError unless `out` has exactly the bytes of `x`."""
    if not torch.equal(out.reshape(-1).view(torch.uint8), x.reshape(-1).view(torch.uint8)):
        raise AssertionError(f"{what} round trip is not bit-exact")


# -- tables -------------------------------------------------------------------------

@dataclass(frozen=True)
class Column:
    """A table column `width` characters wide; numbers use format `spec`, None prints "-"."""
    title: str
    width: int
    spec: str = ".3f"
    align: str = ">"


def format_table(columns: Sequence[Column], rows: Iterable[Sequence[object]]) -> list[str]:
    """The header line and one line per row (cells in column order: str, number or None)."""
    def cell(col: Column, value: object) -> str:
        text = "-" if value is None else value if isinstance(value, str) else format(value, col.spec)
        return f"{text:{col.align}{col.width}}"

    lines = ["".join(f"{c.title:{c.align}{c.width}}" for c in columns)]
    lines += ["".join(cell(c, v) for c, v in zip(columns, row)) for row in rows]
    return lines


# -- qlccomm bench ------------------------------------------------------------------

def bits_bound(t: torch.Tensor) -> dict:
    """Entropy and Huffman bounds of the symbol split (bits per element, raw bits included)."""
    best: dict = {}
    for plan in candidate_plans(t.dtype):
        hist = symbol_histogram(t, plan)
        e, h = entropy_bits(hist) + plan.raw_bits, huffman_bits(hist) + plan.raw_bits
        if not best or e < best["entropy"]:
            best = {"plan": plan.name, "entropy": e, "huffman": h, "item_bits": plan.item_bits}
    return best


def codec_case(t: torch.Tensor, codec: str) -> Case:
    """`api.compress` / `api.decompress` of `t` with `codec`, checked bit-exact first."""
    blob = api.compress(t, codec=codec)
    assert_bit_exact(api.decompress(blob), t, codec)
    return Case(codec, tensor_bytes(t), lambda: api.compress(t, codec=codec), lambda: api.decompress(blob),
                blob.numel(), note=api.inspect(blob)["codec"])


def run(t: torch.Tensor, codecs: list[str], repeat: int = 5) -> tuple[list[Case], dict]:
    """Time `codecs` on tensor `t` (any device) against the references on its bytes.

    Returns the cases, timed in `repeat` interleaved rounds after one warm-up, and
    `bits_bound(t)`.  zstd, lz4 and memcpy run on a host copy of the bytes; off the
    CPU a `clone` on the device is added.
    """
    host = host_bytes(t)
    cases = [codec_case(t, c) for c in codecs]
    cases += [zstd_case(host, 1), zstd_case(host, 3), lz4_case(host), memcpy_case(host)]
    if t.device.type != "cpu":
        cases.append(clone_case(t, f"clone ({t.device.type})"))
    interleaved(cases, repeat, t.device)
    return cases, bits_bound(t)


def format_report(rows: list[Case], bound: dict, title: str) -> str:
    """The `qlccomm bench` report: `title`, the bounds, and per case the ratio, the
    share of bytes saved and the encode and decode GB/s (median, wall clock)."""
    lines = [title]
    if bound:
        ib = bound["item_bits"]
        lines.append(f"bounds ({bound['plan']} split): entropy {bound['entropy']:.3f} bits/element -> ratio "
                     f"{ib / bound['entropy']:.3f}; Huffman {bound['huffman']:.3f} bits/element -> ratio "
                     f"{ib / bound['huffman']:.3f}")
    columns = [Column("codec", 16, align="<"), Column("ratio", 8), Column("saved", 8, ".1%"),
               Column("encode GB/s", 13), Column("decode GB/s", 13), Column("", 0, align="<")]
    table = [[c.name, c.ratio(), 1 - 1 / c.ratio() if c.ratio() else None,
              gbps(c.in_bytes, c.enc.wall), gbps(c.in_bytes, c.dec.wall),
              f"  ({c.note})" if c.note and c.note != c.name else ""] for c in rows]
    return "\n".join(lines + format_table(columns, table))
