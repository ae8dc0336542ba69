"""QLCW codec (codec 3), torch path: QLC over wide symbols with 16 areas (docs/format.md, "QLCW section").

A *field* of each element (`Fields.lo`, `Fields.w`: the exponent, the exponent and top mantissa
bits, or the whole byte) is coded; with `g = 2` the fields of two neighbouring elements form one
symbol of up to 16 bits (a *pair*), so one prefix read, one suffix read and one table look-up
decode two elements.  The planes are QLC's: prefixes (4 bits), fields of raw chunks, per-chunk
byte-aligned suffixes, raw bits; a chunk decodes with gathers and one prefix sum.

    code = build_code(histogram)          # WideCode: 16 widths, rank -> symbol table, escape flag
    f = adaptive_fields(flat)             # codec="qlc": the pair split it weighs (or None: QLC) ...
    choice = prefer_wide(histogram(flat, f), f, flat.dtype)  # ... (split, code), or None for QLC
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from functools import cached_property, lru_cache
from typing import Callable, NamedTuple

import numpy as np
import torch

from . import raw_shifts
from .bitpack import concat_into, pack_bits, packed_nbytes, unpack_bits
from .codebook import _fast_optimal_widths, _fast_optimal_widths_and_prefix, fitted_bits
from .errors import EncoderError, FormatError
from .format import CODEC_QLCW, CODEC_SINCE, ByteSource, Header
from .qlc import (CHUNK_ELEMS, MAX_CHUNK_ELEMS, MODE_CODED, MODE_RAW, MODE_ZERO, _exclusive_cumsum,
                  _pack_suffixes, _pad_rows, _rows, _scatter_rows, _select_rows, chunk_elems, chunk_table,
                  read_chunk_table, split_rows)
from .split import Plan, candidate_plans

N_AREAS = 16
PREFIX_BITS = 4
MAX_WIDTH = 16            # suffix bits
TABLE_MAX = 32768         # rank -> symbol entries (u16 each: 64 KiB)
FIT_MAX = 4096            # the writer's tables: at most this many symbols, the rest escaped
MAX_CODES = 8             # codes in one section (the chunks name theirs)
MULTI_MIN_ELEMS = 1 << 21 # smaller tensors: the writer weighs one code only
SEVERAL_CODES_SINCE = 3   # the format version that introduced sections of several codes
RAW_SHIFTS_SINCE = 4      # the format version that introduced raw shifts
FLAG_RAW_SHIFTS = 1 << 4  # the section flags' raw-shifts bit
ESCAPE_AREA = 15
HEAD_BYTES = 4 + N_AREAS + 4
MIN_WIDE_ELEMS = 16384    # smaller tensors are written as QLC sections
SAMPLE_CHUNKS = 64        # chunks the writer's choice looks at


@dataclass(frozen=True)
class Fields:
    """Which bits of an element are coded, and how many elements make one symbol.

    lo: the field's low bit; w: its width in bits (1..8); g: elements per symbol (1 or 2).
    """

    lo: int
    w: int
    g: int

    @property
    def symbol_bits(self) -> int:
        return self.g * self.w

    def plan(self, item_bits: int) -> Plan:
        """The split as a Plan on a word of `item_bits` bits: symbol = the field, raw = the rest."""
        return _field_plan(item_bits, self.lo, self.w)


@lru_cache(maxsize=None)
def _field_plan(item_bits: int, lo: int, w: int) -> Plan:
    above = item_bits - lo - w
    return Plan(f"field{lo}+{w}", -1, item_bits, ssh=lo, smask=(1 << w) - 1, rsh=w,
                rhi=((1 << above) - 1) << lo, rlo=(1 << lo) - 1)


def candidates(dtype: torch.dtype) -> list[Fields]:
    """The QLCW splits the writer measures for `dtype` (empty: never QLCW)."""
    plans = [p.name for p in candidate_plans(dtype)]
    if plans == ["byte"]:
        return [Fields(0, 8, 2)]
    if dtype == torch.bfloat16:
        return [Fields(7, 8, 2)]
    if dtype == torch.float32:
        return [Fields(23, 8, 2)]
    if dtype == torch.float16:
        return [Fields(10 - t, 5 + t, 2) for t in range(4)]   # the exponent and 0..3 top mantissa bits
    return []


def valid_fields(dtype: torch.dtype, f: Fields) -> bool:
    return 1 <= f.w <= 8 and f.g in (1, 2) and f.lo + f.w <= dtype.itemsize * 8


# -- the code ---------------------------------------------------------------------------------

@dataclass(frozen=True)
class WideCode:
    """A QLCW code: 16 area widths, the rank -> symbol table, whether area 15 escapes."""

    symbol_bits: int
    widths: tuple[int, ...]
    table: np.ndarray           # int64 [T], symbols in rank order
    escape: bool

    def _sizes(self) -> np.ndarray:
        """Ranks each area holds (int64 [16]); the escape area holds none."""
        return np.array([0 if (self.escape and k == ESCAPE_AREA) else 1 << b for k, b in enumerate(self.widths)])

    def firsts(self) -> np.ndarray:
        """First rank of each area (int64 [16]); the escape area holds none."""
        sizes = self._sizes()
        return np.cumsum(sizes) - sizes

    def rank_areas(self) -> np.ndarray:
        """The area of each rank of the table (int64 [T])."""
        return np.searchsorted(np.cumsum(self._sizes()), np.arange(self.table.size), side="right")

    def rank_codes(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Each rank's code (int64 [T] each): its suffix, its area and the area's width in bits."""
        area = self.rank_areas()
        return np.arange(self.table.size) - self.firsts()[area], area, np.asarray(self.widths, np.int64)[area]

    @cached_property
    def tables(self) -> dict[str, np.ndarray]:
        """symbol_tables(), computed once per code."""
        return self.symbol_tables()

    def symbol_tables(self) -> dict[str, np.ndarray]:
        """Per symbol (int64 [2^S]): its area, suffix and code length in bits (prefix included);
        length 0 for a symbol the code cannot write."""
        n = 1 << self.symbol_bits
        area, suffix, length = np.zeros(n, np.int64), np.zeros(n, np.int64), np.zeros(n, np.int64)
        if self.escape:
            area[:] = ESCAPE_AREA
            suffix[:] = np.arange(n)
            length[:] = PREFIX_BITS + self.symbol_bits
        suffix[self.table], area[self.table], width = self.rank_codes()
        length[self.table] = PREFIX_BITS + width
        return {"area": area, "suffix": suffix, "length": length}

    def to_bytes(self) -> bytes:
        return (bytes(self.widths) + struct.pack("<I", self.table.size)
                + self.table.astype("<u2").tobytes())


@dataclass(frozen=True)
class CodeSet:
    """M QLCW codes (1..MAX_CODES) and the code of each chunk (int64 [K], each < M)."""

    codes: tuple[WideCode, ...]
    chunk_code: np.ndarray

    @staticmethod
    def of(code: "WideCode | CodeSet", nchunks: int, symbol_bits: int | None = None) -> "CodeSet":
        """A CodeSet as is, or one code for every chunk; ValueError for one the format cannot
        write (other than 1..MAX_CODES codes, codes of other than `symbol_bits` bits when
        given, a chunk naming a code past the set, another number of chunks)."""
        cs = code if isinstance(code, CodeSet) else CodeSet((code,), np.zeros(nchunks, np.int64))
        M = len(cs.codes)
        if not 1 <= M <= MAX_CODES:
            raise ValueError(f"a QLCW section holds 1..{MAX_CODES} codes, not {M}")
        if symbol_bits is not None and any(c.symbol_bits != symbol_bits for c in cs.codes):
            raise ValueError(f"QLCW codes of {sorted({c.symbol_bits for c in cs.codes})}-bit symbols for a split "
                             f"of {symbol_bits}-bit symbols")
        if cs.chunk_code.shape != (nchunks,):
            raise ValueError(f"CodeSet names codes for {cs.chunk_code.size} chunks, the tensor has {nchunks}")
        if nchunks and (int(cs.chunk_code.min()) < 0 or int(cs.chunk_code.max()) >= M):
            raise ValueError(f"a chunk names a code outside the CodeSet's {M}")
        return cs

    def stacked(self) -> dict[str, np.ndarray]:
        """The codes' symbol_tables() one after another (int64 [M * 2^S] each): index
        code << S | symbol."""
        return {k: np.concatenate([c.tables[k] for c in self.codes]) for k in ("area", "suffix", "length")}

    def head_bytes(self) -> int:
        """Bytes of the codes' tables after the first (an escape flag each) and of the chunk codes."""
        extra = sum(1 + N_AREAS + 4 + 2 * c.table.size for c in self.codes[1:])
        return extra + (self.chunk_code.size if len(self.codes) > 1 else 0)


def section_version(flags: int) -> int:
    """The format version a stream records for a QLCW section with this flags byte (its
    fourth): the lowest that reads it (4 with raw shifts, 3 with several codes, else 2)."""
    if flags & FLAG_RAW_SHIFTS:
        return RAW_SHIFTS_SINCE
    if (flags >> 1) & 7:
        return SEVERAL_CODES_SINCE
    return CODEC_SINCE[CODEC_QLCW]


def _sorted_symbols(hist: np.ndarray) -> np.ndarray:
    """Symbols with a non-zero count, count descending, then symbol ascending."""
    used = np.flatnonzero(hist != 0)        # a bool scan: ~6x faster than on the counts
    return used[np.argsort(-hist[used], kind="stable")]     # stable: ties stay by symbol


def _widths(sorted_counts: np.ndarray, n_areas: int) -> tuple[int, ...]:
    return tuple(_fast_optimal_widths()(sorted_counts, n_areas, MAX_WIDTH))


def _kept(counts: np.ndarray) -> int:
    """How many of the symbols with `counts` an escaping code's table keeps: those seen more
    than once, at most FIT_MAX (at least one)."""
    return min(FIT_MAX, int((counts > 1).sum()) or 1)


def build_code(hist: np.ndarray, symbol_bits: int) -> WideCode:
    """fit_code's code."""
    return fit_code(hist, symbol_bits)[0]


def fit_code(hist: np.ndarray, symbol_bits: int) -> tuple[WideCode, int]:
    """The smallest code (code bits plus table bytes) for a histogram of symbols (int64 [2^S]).

    Either every used symbol is in the table (16 areas), or the table keeps the most
    frequent ones (symbols seen more than once, at most FIT_MAX) and area 15 escapes the
    rest.  FIT_MAX bounds the fitting time (the width programme is linear in the table's
    length, ~1 ms per 1000 symbols on one core) and the decoder's table (8 KiB); the
    format allows up to TABLE_MAX.  Returns the code and its prefix and suffix bits for `hist`.
    """
    hist = np.asarray(hist, np.int64)
    order = _sorted_symbols(hist)
    if order.size == 0:
        order = np.array([0])
    counts = hist[order]
    keep = _kept(counts)
    full, escaping = order.size <= FIT_MAX, keep < order.size
    if full and escaping:                   # both codes from one programme
        w, w_kept = _fast_optimal_widths_and_prefix()(counts, N_AREAS, MAX_WIDTH, keep)
    else:
        w = _widths(counts, N_AREAS) if full else None
        w_kept = _widths(counts[:keep], N_AREAS - 1) if escaping else None
    options = []
    if full:
        options.append(WideCode(symbol_bits, w, order, False))
    if escaping:
        options.append(WideCode(symbol_bits, w_kept + (symbol_bits,), order[:keep], True))
    costs = [_rank_bits(c, counts) for c in options]
    best = min(range(len(options)), key=lambda i: costs[i] + 16 * options[i].table.size)
    return options[best], costs[best]


def _rank_bits(code: WideCode, counts: np.ndarray) -> int:
    """Code bits of symbols in rank order with `counts` (int64, at least T; ranks past the
    table escaped)."""
    T = code.table.size
    lengths = PREFIX_BITS + np.asarray(code.widths, np.int64)[code.rank_areas()]
    escaped = int(counts[T:].sum()) * (PREFIX_BITS + code.symbol_bits)
    return int(counts[:T] @ lengths) + escaped


def code_bits(hist: np.ndarray, code: WideCode) -> int:
    """Prefix and suffix bits of the histogram's symbols under `code`."""
    length = code.tables["length"]
    used = np.flatnonzero(hist)
    if (length[used] == 0).any():
        raise EncoderError("QLCW code cannot write a symbol of its histogram")
    return int((hist[used] * length[used]).sum())


# -- the writer's choice ------------------------------------------------------------------------

def sample_rows(flat: torch.Tensor, chunk: int = CHUNK_ELEMS) -> torch.Tensor:
    """Up to SAMPLE_CHUNKS evenly spaced full chunks of `flat` that are not all-zero ([k, chunk])."""
    full = flat.numel() // chunk
    rows = flat[: full * chunk].view(full, chunk)
    if full > SAMPLE_CHUNKS:
        rows = rows[torch.linspace(0, full - 1, SAMPLE_CHUNKS, device=flat.device).long()]
    return rows[rows.view(torch.uint8).ne(0).any(dim=1)] if rows.numel() else rows


def symbols_of(fields: torch.Tensor, f: Fields) -> torch.Tensor:
    """Symbols (int32 [rows, C / g]) of the fields of [rows, C] elements."""
    s = fields.to(torch.int32)
    if f.g == 2:
        return s[:, 0::2] | (s[:, 1::2] << f.w)
    return s


def estimate_bits(sample: torch.Tensor, numel: int) -> list[tuple[float, Fields | None]]:
    """Estimated coded bits per element of the non-zero chunks, for QLC (None) and each QLCW
    split, from `sample` ([k, C] rows of the tensor); tables amortised over `numel` elements."""
    n = sample.numel()
    flat = sample.reshape(-1)
    out = []
    for plan in candidate_plans(sample.dtype):
        sym, _ = plan.split(flat)
        hist = torch.bincount(sym, minlength=256).cpu().numpy()
        out.append(((fitted_bits(hist, plan) + 264 * 8 * n / numel) / n, None))
    for f in candidates(sample.dtype):
        plan = f.plan(sample.element_size() * 8)
        fld, _ = plan.split(flat)
        sym = symbols_of(fld.view(sample.shape), f).reshape(-1)
        hist = torch.bincount(sym, minlength=1 << f.symbol_bits).cpu().numpy()
        code = build_code(hist, f.symbol_bits)
        table = 8 * (HEAD_BYTES + 2 * code.table.size)
        out.append(((code_bits(hist, code) + plan.raw_bits * n + table * n / numel) / n, f))
    return out


def best_split(flat: torch.Tensor) -> Fields:
    """The QLCW split of the dtype's candidates with the smallest estimate for `flat`."""
    sample = sample_rows(flat)
    if sample.shape[0] == 0 or len(candidates(flat.dtype)) == 1:
        return candidates(flat.dtype)[0]
    wide = [e for e in estimate_bits(sample, flat.numel()) if e[1] is not None]
    return min(wide, key=lambda e: e[0])[1]


def adaptive_fields(flat: torch.Tensor) -> Fields | None:
    """The pair split adaptive `codec="qlc"` weighs for `flat` (prefer_wide), or None where it
    writes QLC without looking (tensors under MIN_WIDE_ELEMS elements, dtypes QLCW does not
    code): the exponent for bfloat16 and float32, the exponent and the top 2 mantissa bits for
    float16, the byte for 1-byte dtypes."""
    if flat.numel() < MIN_WIDE_ELEMS or not candidates(flat.dtype):
        return None
    if flat.dtype == torch.float16:
        return Fields(8, 7, 2)
    return candidates(flat.dtype)[0]


def singles_can_win(dtype: torch.dtype) -> bool:
    """Whether single-field QLCW codes can beat pairs or QLC on `dtype`: 1-byte dtypes and
    float16 (high-entropy fields).  For bfloat16 and float32 exponents (~2.7 bits of entropy)
    the 4-bit prefix alone costs more than pairs do."""
    return dtype.itemsize == 1 or dtype == torch.float16


def weighs_chunk_codes(flat: torch.Tensor) -> bool:
    """Whether adaptive coding of `flat` also weighs single-field codes per group of chunks
    (prefer_wide's `chunk_hist`): tensors of MULTI_MIN_ELEMS elements or more (grouping the
    chunks costs ~10 ms on one core, which smaller tensors do not repay; the collectives'
    slices are smaller) of the dtypes where single fields can win (singles_can_win)."""
    return flat.numel() >= MULTI_MIN_ELEMS and singles_can_win(flat.dtype)


def more_pair_splits(dtype: torch.dtype) -> list[Fields]:
    """Pair splits adaptive coding weighs besides adaptive_fields' (prefer_wide's
    `more_pairs`): for float16 the exponent with 3 mantissa bits (smaller on sparse
    gradients, where the split with 2 wins on weights)."""
    return [Fields(7, 8, 2)] if dtype == torch.float16 else []


def prefer_wide(hist: np.ndarray, f: Fields, dtype: torch.dtype, chunk_hist: np.ndarray | None = None,
                more_pairs: "list[tuple[Fields, np.ndarray]]" = ()) -> "tuple[Fields, WideCode | CodeSet] | None":
    """What adaptive `codec="qlc"` writes, from the symbol histogram of pair split `f`
    (histogram()) and, optionally, each chunk's histogram of the single fields
    (chunk_histograms()): a QLCW split and its code(s), or None for a QLC section.  The
    smallest of

    * QLCW pairs: the code fitted to `hist`, and to each (split, histogram) of `more_pairs`
      (their raw bits counted against `f`'s: the fields differ in width);
    * QLCW single fields (g = 1), where singles_can_win: the code fitted to the fields'
      histogram (it pays for high-entropy fields such as 1-byte floats: their codes are
      long, so the 4-bit prefix costs nothing extra, and 16 areas fit them closer than QLC's 8);
    * with `chunk_hist`: single fields with up to 8 codes, one per group of chunks whose
      statistics are alike (cluster_codes);
    * QLC: the adaptive codebook of the fields' histogram, where the QLC plan's symbol is that
      field (bfloat16 and float32 exponents, bytes; for float16 the QLC plans split
      differently and QLCW is written: smaller on every float16 tensor measured);

    in bits, tables and chunk codes included (the raw bits are the same in all).  Both
    backends compute the same histograms, so they choose alike."""
    if chunk_hist is not None:
        single = chunk_hist.sum(axis=0)
    else:
        pairs = hist.reshape(1 << f.w, 1 << f.w)            # [high field, low field]
        single = pairs.sum(axis=0) + pairs.sum(axis=1)
    f1 = Fields(f.lo, f.w, 1)
    options = []
    if singles_can_win(dtype):
        code, bits = fit_code(single, f1.symbol_bits)
        options.append((bits + 8 * (HEAD_BYTES + 2 * code.table.size), f1, code))
    if chunk_hist is not None:
        options += [(bits, f1, cs) for bits, cs in cluster_codes(chunk_hist, f1)]
    if dtype != torch.float16:
        plan = candidate_plans(dtype)[0]
        options.append((fitted_bits(single, plan) + 8 * 264, None, None))
    elements = 2 * int(hist.sum())                          # of the non-zero chunks (pairs)
    for fp, h in [(f, hist), *more_pairs]:
        raw = (f.w - fp.w) * elements                       # raw bits beside f's
        if not options or pair_bound_bits(h, fp.symbol_bits) + raw < min(o[0] for o in options):
            code, bits = fit_code(h, fp.symbol_bits)        # else these pairs cannot win: no fit
            options.insert(0, (bits + raw + 8 * (HEAD_BYTES + 2 * code.table.size), fp, code))
    best = min(options, key=lambda o: o[0])
    return None if best[1] is None else (best[1], best[2])


def pair_bound_bits(hist: np.ndarray, symbol_bits: int) -> float:
    """A lower bound on what fit_code(hist) can cost, metadata included: the entropy of the
    symbols (with more than FIT_MAX used, of the FIT_MAX most frequent plus one escape symbol
    for the rest, which also pay their symbol_bits), the fixed metadata and the smaller of
    the two tables fit_code can write (every used symbol, or those seen more than once up to
    FIT_MAX), 16 bits an entry; less a margin of a bit and more than float64's rounding of
    the sum, so that the bound stays below a code that reaches it exactly (dyadic counts):
    prefer_wide fits pairs only below the best option so far, and pairs win ties.  Cheap next
    to the fit itself (no sort of the used symbols)."""
    counts = hist[hist > 0].astype(np.float64)
    n = counts.sum()
    if n == 0:
        return 0.0
    table = 16 * min(counts.size, _kept(counts))
    if counts.size > FIT_MAX:
        top = np.partition(counts, counts.size - FIT_MAX)[counts.size - FIT_MAX:]
        tail = n - top.sum()
        counts = np.append(top, tail) if tail > 0 else top
        extra = tail * symbol_bits
    else:
        extra = 0.0
    bound = float(-(counts * np.log2(counts / n)).sum() + extra + 8 * HEAD_BYTES + table)
    return bound - 1 - 1e-9 * bound


CLUSTER_COUNTS = (8,)           # the numbers of codes cluster_codes tries (empty groups are dropped)
CLUSTER_SAMPLE = 512            # chunks its iterations look at
CLUSTER_ROUNDS = 3


def cluster_codes(chunk_hist: np.ndarray, f: Fields) -> list[tuple[int, CodeSet]]:
    """CodeSets of up to 8 single-field codes (CLUSTER_COUNTS) for the chunks of `chunk_hist`
    (int64 [K, 2^w], each chunk's field histogram; all-zero rows: all-zero chunks), each with
    its bits (codes, tables and chunk codes).

    Chunks are grouped by k-means under code length: each group's model is the log2 frequency
    of its fields; a chunk joins the group whose model codes it in the fewest bits.  The
    groups start as quantiles of the chunks' entropy and take CLUSTER_ROUNDS rounds over at
    most CLUSTER_SAMPLE evenly spaced chunks; every chunk then joins its best group, and each
    group's code is fitted to its chunks' exact histogram.  Both backends call this on the
    same integer histograms in the same process, so they choose alike."""
    live = np.flatnonzero(chunk_hist.any(axis=1))
    out = []
    if live.size < 2:
        return out
    sample = live[np.unique(np.linspace(0, live.size - 1, min(live.size, CLUSTER_SAMPLE)).round().astype(np.int64))]
    hs = chunk_hist[sample]
    order = np.argsort(_entropies(hs), kind="stable")
    for M in CLUSTER_COUNTS:
        if M > sample.size:
            break
        assign = np.empty(sample.size, np.int64)
        assign[order] = np.arange(sample.size) * M // sample.size
        for _ in range(CLUSTER_ROUNDS):
            assign = _nearest(hs, _models(hs, assign, M))
        models = _models(hs, assign, M)
        group = np.concatenate([_nearest(chunk_hist[live[i:i + 4096]], models) for i in range(0, live.size, 4096)])
        used, group = np.unique(group, return_inverse=True)         # drop empty groups, keep their order
        if used.size < 2:
            continue
        codes, bits = [], 8 * (4 + chunk_hist.shape[0]) + 8 * (N_AREAS + 4)
        chunk_group = np.full(chunk_hist.shape[0], -1, np.int64)       # all-zero chunks: none
        chunk_group[live] = group
        group_hist = _fast_cluster().group_sums(chunk_hist, chunk_group, used.size)
        for m in range(used.size):
            code, b = fit_code(group_hist[m], f.symbol_bits)
            codes.append(code)
            bits += b + 8 * (1 + N_AREAS + 4 + 2 * code.table.size)
        chunk_code = np.maximum(chunk_group, 0)                         # all-zero chunks name code 0
        out.append((bits, CodeSet(tuple(codes), chunk_code)))
    return out


def _entropies(h: np.ndarray) -> np.ndarray:
    """Each row's entropy in bits per element (float64 [rows]; h: int64 counts, no all-zero
    row): log2(n) - sum(c log2 c) / n, the sum over integers (c log2 c in units of
    1 / MODEL_SCALE bits, rounded), so exact in any order."""
    c = np.arange(int(h.max()) + 1, dtype=np.float64)
    c_log_c = np.round(c * np.log2(np.maximum(c, 1)) * MODEL_SCALE).astype(np.int64)
    n = h.sum(axis=1)
    return np.log2(n) - c_log_c[h].sum(axis=1) / (n * float(MODEL_SCALE))


MODEL_SCALE = 1 << 20
"""cluster_codes' models hold code lengths in units of 1 / MODEL_SCALE bits, rounded: a chunk's
score (at most 2^20 fields, lengths below 40 bits: 2^26 units) is then a sum of integers
below 2^46, exact in float64 whatever the order of the sum, so every backend scores alike."""


def _models(h: np.ndarray, assign: np.ndarray, M: int) -> np.ndarray:
    """Each group's code length of every field in units of 1 / MODEL_SCALE bits, rounded
    (float64 [M, 2^w] holding integers; a small floor for unseen fields)."""
    counts = _fast_cluster().group_sums(h, assign, M).astype(np.float64) + 1e-3
    return np.round(-np.log2(counts / counts.sum(axis=1, keepdims=True)) * MODEL_SCALE)


def _nearest(h: np.ndarray, models: np.ndarray) -> np.ndarray:
    """Each row's group: the model that codes it in the fewest bits (first on ties); exact
    integer sums (MODEL_SCALE), from the native kernel where there is one.  `h`: int64 counts
    or float64."""
    return _fast_cluster().scores(h, models).argmin(axis=1)


def _scores(h: np.ndarray, models: np.ndarray) -> np.ndarray:
    """Bits (1 / MODEL_SCALE) of each row under each model: float64 [rows, M].  einsum, not
    matmul: BLAS would start its own threads, which then spin beside the kernels'."""
    return np.einsum("rb,mb->rm", np.asarray(h, np.float64), models)


def _group_sums(h: np.ndarray, group: np.ndarray, M: int) -> np.ndarray:
    """Each group's rows of `h` summed ([M, columns], h's dtype); group[r] < M is row r's, -1
    leaves it out."""
    return np.stack([h[group == m].sum(axis=0) for m in range(M)])


class _ClusterKernels(NamedTuple):
    scores: Callable[[np.ndarray, np.ndarray], np.ndarray]          # _scores
    group_sums: Callable[[np.ndarray, np.ndarray, int], np.ndarray]  # _group_sums


@lru_cache(maxsize=1)
def _fast_cluster() -> _ClusterKernels:
    """_scores and _group_sums compiled by numba where the native kernels are installed (the
    same, exact, numbers), else themselves."""
    try:
        from .kernels.native_qlcw import group_scores, group_sums
    except Exception:      # noqa: BLE001 - no numba, or a broken install: numpy
        return _ClusterKernels(_scores, _group_sums)
    return _ClusterKernels(group_scores, group_sums)


# -- encoding ---------------------------------------------------------------------------------

def histogram(flat: torch.Tensor, f: Fields, chunk: int = CHUNK_ELEMS) -> np.ndarray:
    """Symbol histogram (int64 [2^S]) of the non-zero chunks of `flat`, the one encode_section
    fits its code to (a short last code's missing element counts as field 0)."""
    plan = f.plan(flat.element_size() * 8)
    _, f2, _, nonzero, elems = split_rows(flat, plan, chunk)
    return _histogram(symbols_of(f2, f), nonzero, elems, f, chunk)


def chunk_histograms(flat: torch.Tensor, lo: int, w: int, chunk: int = CHUNK_ELEMS) -> np.ndarray:
    """Each chunk's histogram of its elements' fields (lo, w) (int64 [K, 2^w]); all-zero
    chunks: zero rows."""
    plan = _field_plan(flat.element_size() * 8, lo, w)
    _, f2, _, nonzero, elems = split_rows(flat, plan, chunk)
    K = f2.shape[0]
    index = (torch.arange(K, device=flat.device).unsqueeze(1) << w) + f2.to(torch.int64)
    keep = (torch.arange(chunk, device=flat.device).unsqueeze(0) < elems.unsqueeze(1)) & nonzero.unsqueeze(1)
    return torch.bincount(index[keep], minlength=K << w).view(K, 1 << w).cpu().numpy()


def _histogram(s2: torch.Tensor, nonzero: torch.Tensor, elems: torch.Tensor, f: Fields, chunk: int) -> np.ndarray:
    per_row = chunk // f.g
    last_codes = int((elems[-1] + f.g - 1) // f.g)
    hist = torch.bincount(s2[nonzero].view(-1), minlength=1 << f.symbol_bits)
    if last_codes < per_row and bool(nonzero[-1]):
        hist[0] -= per_row - last_codes                 # the last chunk's padding codes
    return hist.cpu().numpy()


# -- encoding ---------------------------------------------------------------------------------

def check_chunk(chunk: int) -> None:
    """ValueError unless `chunk` (elements) is one the format allows: a multiple of 16, at most 2^20."""
    if chunk <= 0 or chunk % 16 or chunk > MAX_CHUNK_ELEMS:
        raise ValueError(f"QLCW chunk of {chunk} elements: a multiple of 16 up to {MAX_CHUNK_ELEMS}")


def section_head(f: Fields, code: "WideCode | CodeSet", chunk: int, nchunks: int, shifts: bool = False) -> bytes:
    """Split, codes, chunk size and count (the chunk table, chunk codes and shifts follow)."""
    codes = CodeSet.of(code, nchunks).codes
    flags = int(codes[0].escape) | (len(codes) - 1) << 1 | (FLAG_RAW_SHIFTS if shifts else 0)
    head = struct.pack("<BBBB", f.lo, f.w, f.g, flags) + codes[0].to_bytes()
    for c in codes[1:]:
        head += bytes([int(c.escape)]) + c.to_bytes()
    return head + struct.pack("<II", chunk, nchunks)


def chunk_codes(code: "WideCode | CodeSet", nchunks: int) -> bytes:
    """The chunk-code bytes after the chunk table (none for one code)."""
    cs = CodeSet.of(code, nchunks)
    return cs.chunk_code.astype(np.uint8).tobytes() if len(cs.codes) > 1 else b""


def section_meta(f: Fields, code: "WideCode | CodeSet", chunk: int, modes: np.ndarray, suffix_len: np.ndarray,
                 shifts: np.ndarray | None) -> np.ndarray:
    """The section's bytes before its planes (uint8): head, chunk table, chunk codes, shifts."""
    nchunks = len(modes)
    parts = [np.frombuffer(section_head(f, code, chunk, nchunks, shifts is not None), np.uint8),
             np.asarray(chunk_table(modes, suffix_len)), np.frombuffer(chunk_codes(code, nchunks), np.uint8)]
    if shifts is not None:
        parts.append(np.asarray(shifts, np.uint8))
    return np.concatenate(parts)


def choose_modes(elems, ncodes, suffix_bits, nonzero, w: int):
    """Chunk modes and suffix-plane bytes (int64 each; tensors or arrays alike)."""
    xp = np if isinstance(elems, np.ndarray) else torch
    coded_bytes = (PREFIX_BITS * ncodes + 7) // 8 + (suffix_bits + 7) // 8
    modes = xp.where(coded_bytes < (elems * w + 7) // 8, MODE_CODED, MODE_RAW)
    modes = xp.where(nonzero, modes, MODE_ZERO)
    return modes, xp.where(modes == MODE_CODED, (suffix_bits + 7) // 8, 0)


def encode_section(flat: torch.Tensor, f: Fields, code: "WideCode | CodeSet | None" = None,
                   chunk: int = CHUNK_ELEMS, reserve: int = 0, into: torch.Tensor | None = None) -> torch.Tensor:
    """Encode a 1-D contiguous tensor (at least one element) as a QLCW section with split `f`;
    `code=None` fits one to the tensor's non-zero chunks; a CodeSet names each chunk's code.
    `reserve` bytes, uninitialised, precede the section; `into`: a uint8 buffer on flat's
    device to write into when it has room."""
    check_chunk(chunk)
    dev = flat.device
    g = f.g
    plan = f.plan(flat.element_size() * 8)
    fld, f2, raw2, nonzero, elems = split_rows(flat, plan, chunk)
    nchunks = f2.shape[0]
    ncodes = (elems + g - 1) // g
    s2 = symbols_of(f2, f)                                  # int32 [K, C/g]
    per_row = chunk // g
    last_codes = int(ncodes[-1])
    if code is None:
        code = build_code(_histogram(s2, nonzero, elems, f, chunk), f.symbol_bits)
    cs = CodeSet.of(code, nchunks, f.symbol_bits)
    t = {k: torch.from_numpy(v).to(dev) for k, v in cs.stacked().items()}
    s2 = s2 + (torch.from_numpy(cs.chunk_code).to(dev).unsqueeze(1) << f.symbol_bits)   # code << S | symbol
    s_idx = s2.view(-1)
    length = t["length"].index_select(0, s_idx).view(nchunks, per_row)
    if last_codes < per_row:
        length[-1, last_codes:] = PREFIX_BITS               # padding: zero-width suffixes
    if bool((length[nonzero] == 0).any()):
        raise EncoderError("QLCW code cannot write a symbol of the tensor")
    suffix_bits = length.sum(dim=1) - PREFIX_BITS * per_row
    modes, suffix_len = choose_modes(elems, ncodes, suffix_bits, nonzero, f.w)

    coded, raw_rows, nz = _rows(modes, MODE_CODED), _rows(modes, MODE_RAW), _rows(modes, MODE_CODED, MODE_RAW)
    n_codes = int(ncodes.index_select(0, coded).sum())
    n_raw = int(elems.index_select(0, raw_rows).sum())
    n_nz = int(elems.index_select(0, nz).sum())
    coded_sym = _select_rows(s2, coded).reshape(-1)
    prefix_plane = pack_bits(t["area"].index_select(0, coded_sym)[:n_codes], PREFIX_BITS)
    field_plane = pack_bits(f2.index_select(0, raw_rows).view(-1)[:n_raw], f.w)
    suffix_val = t["suffix"].index_select(0, coded_sym).view(-1, per_row)
    if n_codes % per_row:
        suffix_val[-1, n_codes % per_row:] = 0
    suffix_plane = _pack_suffixes(suffix_val, _select_rows(length, coded) - PREFIX_BITS,
                                  suffix_len.index_select(0, coded), max_width=MAX_WIDTH)
    shifts = None
    if raw2 is not None:
        e_nz = np.where(nonzero.cpu().numpy(), elems.cpu().numpy(), 0)
        shifts = raw_shifts.choose(e_nz, e_nz > 0, raw_shifts.low_bits(raw2), plan.raw_bits)
    if shifts is not None:
        raw_plane = raw_shifts.pack(raw2, e_nz, shifts, plan.raw_bits)
    elif raw2 is not None:
        raw_plane = pack_bits(_select_rows(raw2, nz).reshape(-1)[:n_nz], plan.raw_bits)
    else:
        raw_plane = fld.new_empty(0)
    meta = section_meta(f, cs, chunk, modes.cpu().numpy(), suffix_len.cpu().numpy(), shifts)
    return concat_into([torch.empty(reserve, dtype=torch.uint8, device=dev), torch.from_numpy(meta).to(dev),
                        prefix_plane, field_plane, suffix_plane, raw_plane], into)


# -- parsing ----------------------------------------------------------------------------------

@dataclass
class QLCWSection:
    fields: Fields
    codes: tuple[WideCode, ...]
    chunk_code: np.ndarray      # int64 [K]: each chunk's code
    chunk: int
    numel: int
    modes: np.ndarray           # int64 [K]
    suffix_len: np.ndarray      # int64 [K]
    planes_offset: int
    plane_bytes: dict
    item_bits: int              # the element word's width
    shifts: np.ndarray | None = None   # int64 [K]: each chunk's raw shift, None without raw shifts

    @property
    def plan(self) -> Plan:
        return self.fields.plan(self.item_bits)

    @property
    def code(self) -> WideCode:
        """The first code (the only one of most sections)."""
        return self.codes[0]

    @property
    def codeset(self) -> CodeSet:
        return CodeSet(self.codes, self.chunk_code)


def plane_sizes(elems, ncodes, modes, suffix_len, f: Fields, raw_bits: int, shifts: np.ndarray | None = None) -> dict:
    """Bytes of each plane (numpy arrays in; `shifts`: the chunks' raw shifts, if any)."""
    coded, raw = modes == MODE_CODED, modes == MODE_RAW
    n_codes, n_raw = int(ncodes[coded].sum()), int(elems[raw].sum())
    if shifts is None:
        raw_bytes = packed_nbytes(int(elems[coded | raw].sum()), raw_bits)
    else:
        raw_bytes = int(raw_shifts.segment_bytes(np.where(coded | raw, elems, 0), shifts, raw_bits).sum())
    return {"prefix": packed_nbytes(n_codes, PREFIX_BITS), "field": packed_nbytes(n_raw, f.w),
            "suffix": int(suffix_len.sum()), "raw": raw_bytes}


def parse_section(src: ByteSource, start: int, header: Header) -> QLCWSection:
    """Parse and validate a QLCW section at byte `start`; every size is checked against the
    stream's length before anything of that size is allocated."""
    item_bits = header.dtype.itemsize * 8
    head = src.read(start, start + 4)
    lo, w, g, flags = head[0], head[1], head[2], head[3]
    f = Fields(lo, w, g)
    if not candidate_plans(header.dtype) or not valid_fields(header.dtype, f):
        raise FormatError(f"QLCW split lo={lo} w={w} g={g} does not code {header.dtype}")
    if flags >> 5:
        raise FormatError(f"unknown QLCW flags {flags:#x}")
    if (flags >> 1) & 7 and header.version < SEVERAL_CODES_SINCE:
        raise FormatError(f"QLCW section of several codes in a version-{header.version} stream (it needs "
                          f"version {SEVERAL_CODES_SINCE})")
    raw_bits = item_bits - w
    if flags & FLAG_RAW_SHIFTS and header.version < RAW_SHIFTS_SINCE:
        raise FormatError(f"QLCW section with raw shifts in a version-{header.version} stream (it needs "
                          f"version {RAW_SHIFTS_SINCE})")
    if flags & FLAG_RAW_SHIFTS and not raw_bits:
        raise FormatError("QLCW raw shifts in a section without raw bits")
    pos = start + 4
    codes = []
    for k in range(((flags >> 1) & 7) + 1):
        if k:
            esc = src.read(pos, pos + 1)[0]
            pos += 1
            if esc > 1:
                raise FormatError(f"unknown QLCW escape flag {esc}")
        else:
            esc = flags & 1
        code, pos = _read_code(src, pos, f.symbol_bits, esc)
        codes.append(code)
    numel = header.numel
    chunk, modes, suffix_len, elems, pos = read_chunk_table(src, pos, numel, 16)
    chunk_code = np.zeros(modes.size, np.int64)
    if len(codes) > 1:
        chunk_code = np.frombuffer(src.read(pos, pos + modes.size), np.uint8).astype(np.int64)
        pos += modes.size
        if bool((chunk_code >= len(codes)).any()):
            raise FormatError(f"a chunk names a code past the section's {len(codes)}")
    shifts = None
    if flags & FLAG_RAW_SHIFTS:
        shifts = np.frombuffer(src.read(pos, pos + modes.size), np.uint8).astype(np.int64)
        pos += modes.size
        if bool((shifts > raw_bits).any()) or bool((shifts[modes == MODE_ZERO] != 0).any()):
            raise FormatError(f"a QLCW raw shift past the {raw_bits} raw bits, or one of an all-zero chunk")
    ncodes = (elems + g - 1) // g
    if bool((suffix_len > 2 * ncodes).any()):              # at most 16 suffix bits per symbol
        raise FormatError("suffix length exceeds its chunk")
    planes = plane_sizes(elems, ncodes, modes, suffix_len, f, raw_bits, shifts)
    end = pos + sum(planes.values())
    if len(src) != end:
        raise FormatError(f"stream is {len(src)} bytes, its QLCW metadata says {end}")
    return QLCWSection(f, tuple(codes), chunk_code, chunk, numel, modes, suffix_len, pos, planes, item_bits, shifts)


def _read_code(src: ByteSource, pos: int, S: int, esc: int) -> tuple[WideCode, int]:
    """One code's widths, table size and table at byte `pos` (its escape flag read already)."""
    head = src.read(pos, pos + N_AREAS + 4)
    widths = tuple(head[:N_AREAS])
    (T,) = struct.unpack("<I", head[N_AREAS:])
    if max(widths) > MAX_WIDTH or (esc and widths[ESCAPE_AREA] != S):
        raise FormatError(f"bad QLCW area widths {widths}")
    if not 1 <= T <= TABLE_MAX:
        raise FormatError(f"QLCW table of {T} entries (1..{TABLE_MAX})")
    pos += N_AREAS + 4
    table = np.frombuffer(src.read(pos, pos + 2 * T), "<u2").astype(np.int64)
    if int(table.max()) >> S:
        raise FormatError(f"QLCW table entry exceeds {S} bits")
    return WideCode(S, widths, table, bool(esc)), pos + 2 * T


def describe(sec: QLCWSection) -> dict:
    m = sec.modes
    return {"fields": {"lo": sec.fields.lo, "w": sec.fields.w, "g": sec.fields.g},
            "symbol_bits": sec.fields.symbol_bits, "codes": len(sec.codes),
            "table_entries": int(sum(c.table.size for c in sec.codes)),
            "escape": any(c.escape for c in sec.codes), "widths": list(sec.code.widths), "chunk_elems": sec.chunk,
            "chunks": int(m.size), "chunks_zero": int((m == MODE_ZERO).sum()),
            "chunks_coded": int((m == MODE_CODED).sum()), "chunks_raw": int((m == MODE_RAW).sum()),
            "chunks_shifted": 0 if sec.shifts is None else int((sec.shifts > 0).sum()),
            "plane_bytes": dict(sec.plane_bytes), "metadata_bytes": sec.planes_offset}


# -- decoding ---------------------------------------------------------------------------------

def decode_section(sec: QLCWSection, data: torch.Tensor, header: Header,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """Decode a parsed section; `data` is the whole stream (uint8, on the target device)."""
    dev = data.device
    f, chunk, n = sec.fields, sec.chunk, sec.numel
    plan = sec.plan
    views, off = {}, sec.planes_offset
    for name in ("prefix", "field", "suffix", "raw"):
        views[name] = data[off : off + sec.plane_bytes[name]]
        off += sec.plane_bytes[name]
    modes = torch.from_numpy(sec.modes)
    nchunks = modes.numel()
    elems = chunk_elems(n, chunk, nchunks)
    coded, raw_rows, nz = (_rows(modes, MODE_CODED), _rows(modes, MODE_RAW), _rows(modes, MODE_CODED, MODE_RAW))
    n_raw = int(elems.index_select(0, raw_rows).sum())
    n_nz = int(elems.index_select(0, nz).sum())
    fields = _scatter_rows(nchunks, chunk, [
        (coded.to(dev), lambda: _decode_coded(sec, views, elems.index_select(0, coded), dev)),
        (raw_rows.to(dev), lambda: _pad_rows(unpack_bits(views["field"], f.w, n_raw), chunk)),
    ], dev)
    raw = None
    if sec.shifts is not None:
        e_nz = np.where(sec.modes != MODE_ZERO, elems.numpy(), 0)
        raw = raw_shifts.unpack(views["raw"], e_nz, sec.shifts, plan.raw_bits, chunk).view(-1)[:n]
    elif plan.raw_bits:
        raw = _scatter_rows(nchunks, chunk, [
            (nz.to(dev), lambda: _pad_rows(unpack_bits(views["raw"], plan.raw_bits, n_nz), chunk))], dev).view(-1)[:n]
    flat = plan.merge(fields.view(-1)[:n], raw, header.dtype)
    return flat if out is None else out.view(-1).copy_(flat)


def _decode_coded(sec: QLCWSection, views: dict, elems: torch.Tensor, dev) -> torch.Tensor:
    """Fields ([coded chunks, C], int32) of the coded chunks from the prefix and suffix planes."""
    f, codes = sec.fields, sec.codes
    per_row = sec.chunk // f.g
    ncodes = (elems + f.g - 1) // f.g
    n_codes = int(ncodes.sum())
    coded = sec.modes == MODE_CODED
    chunk_bytes = torch.from_numpy(sec.suffix_len[coded]).to(dev)
    ci = torch.from_numpy(sec.chunk_code[coded]).to(dev).unsqueeze(1)       # each coded chunk's code
    area = _pad_rows(unpack_bits(views["prefix"], PREFIX_BITS, n_codes), per_row).to(torch.int64)
    at = (ci << 4) | area                                                    # code << 4 | area
    widths = torch.tensor([c.widths for c in codes], dtype=torch.int64, device=dev).view(-1)
    width = widths.index_select(0, at.view(-1)).view(area.shape)
    if n_codes % per_row:
        width[-1, n_codes % per_row:] = 0
    if bool(((width.sum(dim=1) + 7) // 8 != chunk_bytes).any()):
        raise FormatError("suffix plane does not match the prefixes (corrupt stream)")
    local = torch.cumsum(width, dim=1) - width
    start = _exclusive_cumsum(chunk_bytes)
    byte_at = (local >> 3) + start.unsqueeze(1)
    plane = torch.cat([views["suffix"], views["suffix"].new_zeros(3)]).to(torch.int64)
    window = plane[:-2] | (plane[1:-1] << 8) | (plane[2:] << 16)   # 24 bits from each byte offset
    value = window.index_select(0, byte_at.view(-1)).view(area.shape)
    value = (value >> (local & 7)) & ((1 << width) - 1)
    firsts = torch.from_numpy(np.concatenate([c.firsts() for c in codes])).to(dev)
    rank = firsts.index_select(0, at.view(-1)).view(area.shape) + value
    escape = torch.tensor([c.escape for c in codes], device=dev)
    escaped = (area == ESCAPE_AREA) & escape[ci]
    sizes = torch.tensor([c.table.size for c in codes], dtype=torch.int64, device=dev)
    if bool(((rank >= sizes[ci]) & ~escaped).any()):
        raise FormatError("code names a rank past the table (corrupt stream)")
    table = torch.from_numpy(np.concatenate([c.table for c in codes])).to(dev)
    offset = (torch.cumsum(sizes, 0) - sizes)[ci]
    index = offset + torch.minimum(rank, sizes[ci] - 1)
    sym = torch.where(escaped, value, table.index_select(0, index.view(-1)).view(area.shape))
    if f.g == 1:
        return sym
    mask = (1 << f.w) - 1
    return torch.stack([sym & mask, sym >> f.w], dim=2).view(sym.shape[0], sec.chunk)
