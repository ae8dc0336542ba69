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

Does coding pay on a link (`qlccomm bench --link-gbps L`)?  A simple model of one
send of S uncompressed bytes from one process to another, using what the bench
measured for each codec: ratio r, encode and decode throughputs E and D (uncompressed
bytes/s, median wall clock).  A link of L Gbit/s moves B = L * 1e9 / 8 bytes/s.

    t_raw   = S / B
    stages  = (t_enc, t_wire, t_dec) = (S / E, S / (r * B), S / D)
    t_coded = max(stages) + (sum(stages) - max(stages)) / k

The coded send is pipelined over k equal pieces (`--pieces`): the slowest stage sets
the pace, and the fill is the other stages' time for one piece (the first piece is
encoded before anything moves, the last decoded after it crossed).  Latency,
per-message overheads and contention between the stages are left out.  Coding pays
where t_coded < t_raw, by the factor t_raw / t_coded.

The break-even link speed L* solves t_raw = t_coded.  With x = 1 / B (seconds per
byte on the link), a = 1 / E, d = 1 / D, m = max(a, d), and r > 1:

    wire-bound there (x / r >= m):   x* = (a + d) / (k * (1 - 1 / r))
    codec-bound there (x / r < m):   x* = (m + (a + d - m) / k) / (1 - 1 / (r * k))
    L* = 8 / (x* * 1e9) Gbit/s

t_coded - t_raw falls strictly as x grows (its slope is 1/r - 1 or 1/(r k) - 1), so
L* is unique and coding pays on every link slower than L*; with r <= 1 it never pays.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Sequence

import numpy as np
import torch

from . import api, raw_shifts
from .codebook import ALPHABET, entropy_bits, huffman_bits, symbol_histogram
from .qlc import CHUNK_ELEMS, _pad_rows, chunk_elems
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


def interleaved_calls(cases: Sequence[Case], rounds: int, warmup: int = 1) -> int:
    """How many calls `interleaved(cases, rounds, warmup=warmup)` makes (for a progress bar)."""
    per_round = sum((c.encode is not None) + (c.decode is not None and c.encode is not None) for c in cases)
    return per_round * (warmup + rounds)


def interleaved(cases: Sequence[Case], rounds: int, device: torch.device | str = "cpu",
                warmup: int = 1, progress: Callable[[], object] | None = None) -> None:
    """Time `cases` in `rounds` interleaved rounds after `warmup` untimed ones.

    Each round calls every case's encode then its decode once, in the order given,
    and appends the seconds to `case.enc` / `case.dec`, so index i of every list is
    round i.  `progress`, if given, is called after every call (outside the timing).
    A case whose encode is None is skipped.
    """
    device = torch.device(device)
    for r in range(warmup + rounds):
        for case in cases:
            if case.encode is None:
                continue
            for fn, into in ((case.encode, case.enc), (case.decode, case.dec)):
                if fn is None:
                    continue
                wall, cpu = timed(fn, device)
                if r >= warmup:
                    into.wall.append(wall)
                    into.cpu.append(cpu)
                if progress is not None:
                    progress()


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

def nonzero_chunks(t: torch.Tensor, chunk: int = CHUNK_ELEMS) -> torch.Tensor:
    """A bool per `chunk`-element chunk of `t` (flattened; the last one may be short): True
    where some element has a non-zero bit.  QLC stores an all-zero chunk in 0 bits."""
    flat = t.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return torch.zeros(0, dtype=torch.bool, device=flat.device)
    nz = flat.view(torch.uint8).reshape(flat.numel(), -1).ne(0).any(dim=1)   # any bit set, -0.0 included
    pad = (-nz.numel()) % chunk
    if pad:
        nz = torch.cat([nz, nz.new_zeros(pad)])
    return nz.reshape(-1, chunk).any(dim=1)


def coded_elements(t: torch.Tensor, chunk: int = CHUNK_ELEMS) -> torch.Tensor:
    """The elements of `t`'s chunks that are not all-zero, in order (1-D)."""
    flat = t.detach().contiguous().reshape(-1)
    keep = nonzero_chunks(flat, chunk)
    if bool(keep.all()):
        return flat
    mask = keep.repeat_interleave(chunk)[:flat.numel()]
    return flat[mask]


def pair_entropy_bits(sym: torch.Tensor) -> float:
    """Entropy in bits per symbol of the pairs of consecutive symbols (0, 1), (2, 3), ... of
    `sym` (values 0..255): the pair histogram's entropy / 2.  0.0 for fewer than two symbols."""
    n = sym.numel() // 2 * 2
    if n == 0:
        return 0.0
    s = sym[:n].to(torch.int64)
    pairs = s[0::2] * ALPHABET + s[1::2]
    hist = torch.bincount(pairs, minlength=ALPHABET * ALPHABET).cpu().numpy()
    return entropy_bits(hist) / 2


def raw_bits_left(kept: torch.Tensor, plan) -> float:
    """Raw bits per element of `kept` (whole 4096-element chunks end to end) once each chunk
    drops the low raw bits zero in all its elements, as QLCW's raw shifts do."""
    if not plan.raw_bits or not kept.numel():
        return float(plan.raw_bits)
    rows = _pad_rows(plan.split(kept)[1], CHUNK_ELEMS)
    t = raw_shifts.common_zero_bits(raw_shifts.low_bits(rows), plan.raw_bits)
    elems = chunk_elems(kept.numel(), CHUNK_ELEMS, t.size, "numpy")
    return float(((plan.raw_bits - t) * elems).sum()) / kept.numel()


def bits_bound(t: torch.Tensor) -> dict:
    """Entropy and Huffman bounds of the symbol split, in bits per element of the whole
    tensor (raw bits included), counting every all-zero 4096-element chunk
    (qlc.CHUNK_ELEMS) at 0 bits as QLC stores it: the bounds are taken over the elements
    of the other chunks and scaled by their share of the elements.

    Keys: plan, item_bits, chunk_elems, chunks, zero_chunks; entropy (order 0), pair_entropy
    (pairs of consecutive symbols, per element), huffman, in bits/element; entropy_ratio,
    pair_entropy_ratio, huffman_ratio (item_bits over those; None for an all-zero tensor)."""
    flat = t.detach().contiguous().reshape(-1)
    keep = nonzero_chunks(flat)
    kept = coded_elements(flat)
    share = kept.numel() / flat.numel() if flat.numel() else 0.0
    best: dict = {}
    for plan in candidate_plans(t.dtype):
        hist = symbol_histogram(kept, plan)
        raw = raw_bits_left(kept, plan)
        e = (entropy_bits(hist) + raw) * share
        if not best or e < best["entropy"]:
            sym = plan.split(kept)[0] if kept.numel() else kept.new_zeros(0, dtype=torch.uint8)
            best = {"plan": plan.name, "item_bits": plan.item_bits, "entropy": e,
                    "pair_entropy": (pair_entropy_bits(sym) + raw) * share,
                    "huffman": (huffman_bits(hist) + raw) * share}
    if best:
        for k in ("entropy", "pair_entropy", "huffman"):
            best[f"{k}_ratio"] = best["item_bits"] / best[k] if best[k] > 0 else None
        best.update(chunk_elems=CHUNK_ELEMS, chunks=keep.numel(), zero_chunks=int((~keep).sum()))
    return best


def codec_case(t: torch.Tensor, codec: str) -> Case:
    """`api.compress` / `api.decompress` of `t` with `codec`, checked bit-exact first."""
    blob = api.compress(t, codec=codec)
    assert_bit_exact(api.decompress(blob), t, codec)
    return Case(codec, tensor_bytes(t), lambda: api.compress(t, codec=codec), lambda: api.decompress(blob),
                blob.numel(), note=api.inspect(blob)["codec"])


def run(t: torch.Tensor, codecs: list[str], repeat: int = 5,
        progress: Callable[[int, int], object] | None = None) -> tuple[list[Case], dict]:
    """Time `codecs` on tensor `t` (any device) against the references on its bytes.

    Returns the cases, timed in `repeat` interleaved rounds after one warm-up, and
    `bits_bound(t)`.  zstd, lz4 and memcpy run on a host copy of the bytes; off the
    CPU a `clone` on the device is added.  `progress(done, total)`, if given, is
    called as the timed calls proceed.
    """
    host = host_bytes(t)
    cases = [codec_case(t, c) for c in codecs]
    cases += [zstd_case(host, 1), zstd_case(host, 3), lz4_case(host), memcpy_case(host)]
    if t.device.type != "cpu":
        cases.append(clone_case(t, f"clone ({t.device.type})"))
    total, done = interleaved_calls(cases, repeat), [0]

    def step() -> None:
        done[0] += 1
        progress(done[0], total)

    interleaved(cases, repeat, t.device, progress=step if progress is not None else None)
    return cases, bits_bound(t)


def report_rows(rows: list[Case]) -> list[dict]:
    """The cases as JSON-ready dicts: ratio, share saved, encode and decode GB/s (median, wall)."""
    def num(v):
        return v if v is None or math.isfinite(v) else None
    return [{"codec": c.name, "ratio": c.ratio(), "saved": 1 - 1 / c.ratio() if c.ratio() else None,
             "encode_gbps": num(gbps(c.in_bytes, c.enc.wall)), "decode_gbps": num(gbps(c.in_bytes, c.dec.wall)),
             "note": c.note} for c in rows]


def format_bound(bound: dict) -> str:
    """One line: the bounds of `bits_bound` with their ratios and the zero chunks they count."""
    def ratio(key: str) -> str:
        r = bound.get(f"{key}_ratio")
        return "-" if r is None else f"{r:.3f}"
    return (f"bounds ({bound['plan']} split; {bound['zero_chunks']} of {bound['chunks']} "
            f"{bound['chunk_elems']}-element chunks all-zero, counted at 0 bits as QLC stores them): "
            f"entropy {bound['entropy']:.3f} bits/element -> ratio {ratio('entropy')}; "
            f"pair entropy {bound['pair_entropy']:.3f} -> {ratio('pair_entropy')}; "
            f"Huffman {bound['huffman']:.3f} -> {ratio('huffman')}")


def format_report(rows: list[Case], bound: dict, title: str) -> str:
    """The `qlccomm bench` report: `title`, the bounds, and per case the ratio, the
    share of bytes saved and the encode and decode GB/s (median, wall clock)."""
    lines = [title]
    if bound:
        lines.append(format_bound(bound))
    columns = [Column("codec", 16, align="<"), Column("ratio", 8), Column("saved", 8, ".1%"),
               Column("encode GB/s", 13), Column("decode GB/s", 13), Column("", 0, align="<")]
    table = [[c.name, c.ratio(), 1 - 1 / c.ratio() if c.ratio() else None,
              gbps(c.in_bytes, c.enc.wall), gbps(c.in_bytes, c.dec.wall),
              f"  ({c.note})" if c.note and c.note != c.name else ""] for c in rows]
    return "\n".join(lines + format_table(columns, table))


# -- does coding pay on a link? (qlccomm bench --link-gbps) ------------------------

def link_Bps(link_gbps: float) -> float:
    """Bytes/s of a link of `link_gbps` Gbit/s."""
    return link_gbps * 1e9 / 8


@dataclass(frozen=True)
class Speeds:
    """What the link model takes of one codec: ratio and encode / decode uncompressed bytes/s."""
    name: str
    ratio: float
    encode_Bps: float
    decode_Bps: float

    @classmethod
    def of(cls, case: Case) -> "Speeds | None":
        """From a timed case; None for one without a ratio or a decode (a copy, a missing library)."""
        enc, dec = gbps(case.in_bytes, case.enc.wall), gbps(case.in_bytes, case.dec.wall)
        if case.ratio() is None or enc is None or dec is None:
            return None
        return cls(case.name, case.ratio(), enc * 1e9, dec * 1e9)


def raw_seconds(nbytes: float, link_gbps: float) -> float:
    """t_raw: `nbytes` sent as they are."""
    return nbytes / link_Bps(link_gbps)


def coded_stages(nbytes: float, link_gbps: float, sp: Speeds) -> tuple[float, float, float]:
    """(t_enc, t_wire, t_dec) of `nbytes` coded with `sp` over the link."""
    return nbytes / sp.encode_Bps, nbytes / (sp.ratio * link_Bps(link_gbps)), nbytes / sp.decode_Bps


def coded_seconds(nbytes: float, link_gbps: float, sp: Speeds, pieces: int) -> float:
    """t_coded: encode, send and decode pipelined over `pieces` equal pieces."""
    stages = coded_stages(nbytes, link_gbps, sp)
    slow = max(stages)
    return slow + (sum(stages) - slow) / pieces


def bound_by(nbytes: float, link_gbps: float, sp: Speeds) -> str:
    """The stage that sets the pace: "encode", "wire" or "decode"."""
    stages = coded_stages(nbytes, link_gbps, sp)
    return ("encode", "wire", "decode")[stages.index(max(stages))]


def break_even_gbps(sp: Speeds, pieces: int) -> float | None:
    """The link speed (Gbit/s) where t_coded = t_raw; coding pays on slower links.
    None where coding never pays (ratio <= 1)."""
    r, k = sp.ratio, pieces
    if not r > 1:
        return None
    a, d = 1 / sp.encode_Bps, 1 / sp.decode_Bps
    m = max(a, d)
    x = (a + d) / (k * (1 - 1 / r))                     # wire-bound at the break-even
    if x / r < m:                                       # codec-bound there instead
        x = (m + (a + d - m) / k) / (1 - 1 / (r * k))
    return 8 / (x * 1e9)


def pays(nbytes: int, speeds: Sequence[Speeds], links: Sequence[float], pieces: int) -> dict:
    """The link model for `nbytes` per codec and link: JSON-ready.

    {"pieces": k, "links": [{"link_gbps", "raw_s", "codecs": [{"codec", "coded_s", "speedup",
    "pays", "bound_by"}]}], "break_even_gbps": {codec: Gbit/s or None}}
    """
    out = {"pieces": pieces, "links": [], "break_even_gbps": {sp.name: break_even_gbps(sp, pieces) for sp in speeds}}
    for link in links:
        raw = raw_seconds(nbytes, link)
        rows = []
        for sp in speeds:
            t = coded_seconds(nbytes, link, sp, pieces)
            rows.append({"codec": sp.name, "coded_s": t, "speedup": raw / t, "pays": t < raw,
                         "bound_by": bound_by(nbytes, link, sp)})
        out["links"].append({"link_gbps": link, "raw_s": raw, "codecs": rows})
    return out


def format_pays(model: dict) -> str:
    """The human table of `pays`: per link and codec the raw and coded milliseconds."""
    columns = [Column("link Gbit/s", 12, ".4g"), Column("  codec", 16, align="<"), Column("raw ms", 11),
               Column("coded ms", 11), Column("speedup", 9, ".2f"), Column("  pays", 7, align="<"),
               Column("bound by", 9, align="<")]
    table = [[lk["link_gbps"], f"  {c['codec']}", lk["raw_s"] * 1e3, c["coded_s"] * 1e3, c["speedup"],
              "  yes" if c["pays"] else "  no", c["bound_by"]] for lk in model["links"] for c in lk["codecs"]]
    be = ", ".join(f"{name} {'never' if v is None else f'below {v:.4g} Gbit/s'}"
                   for name, v in model["break_even_gbps"].items())
    return "\n".join([f"does coding pay (pipelined over {model['pieces']} pieces; see qlccomm.bench):"]
                     + format_table(columns, table) + [f"coding pays: {be}"])


def plot_pays(groups: Sequence[tuple[str, int, Sequence[Speeds]]], links: Sequence[float], pieces: int,
              path: str) -> None:
    """Draw, per (title, nbytes, speeds) group, time against link speed for raw and every codec,
    break-even points marked and the links asked about as dotted lines; write `path` (PNG).
    matplotlib is imported here, on first use."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(groups), 1, figsize=(8, 4.5 * len(groups)), squeeze=False)
    for ax, (title, nbytes, speeds) in zip(axes[:, 0], groups):
        marks = [v for v in (break_even_gbps(sp, pieces) for sp in speeds) if v] + list(links)
        lo = max(min(marks, default=10.0) / 10, 1e-3)
        hi = max(max(marks, default=100.0) * 10, lo * 100)
        xs = np.geomspace(lo, hi, 200)
        ax.plot(xs, [raw_seconds(nbytes, x) * 1e3 for x in xs], "k-", lw=2, label="raw")
        for sp in speeds:
            line, = ax.plot(xs, [coded_seconds(nbytes, x, sp, pieces) * 1e3 for x in xs],
                            label=f"{sp.name} (ratio {sp.ratio:.3f})")
            be = break_even_gbps(sp, pieces)
            if be:
                ax.plot([be], [raw_seconds(nbytes, be) * 1e3], "o", color=line.get_color())
                ax.annotate(f"{be:.3g}", (be, raw_seconds(nbytes, be) * 1e3), textcoords="offset points",
                            xytext=(4, 4), fontsize=8, color=line.get_color())
        for link in links:
            ax.axvline(link, color="grey", ls=":", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("link Gbit/s")
        ax.set_ylabel("ms to send")
        ax.set_title(f"{title} (pipelined over {pieces} pieces; dots: break-even)", fontsize=9)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
