"""QLC codebooks: the per-dtype code table and the fitter that chooses it.

A Quad Length Code has 8 *areas*.  A 3-bit prefix names the area; area k holds
2**b_k consecutive frequency ranks and its codes are 3 + b_k bits long (the
prefix, then a b_k-bit suffix = rank - first_rank[k]).  One 256-entry table maps
rank -> symbol.  A codebook is therefore (plan, widths b_0..b_7, rank->symbol).

The fitter sorts symbols by measured frequency (ties: smaller symbol first) and
chooses the widths that minimise the expected code length exactly, by dynamic
programming over the sorted frequencies (see :func:`optimal_widths`).
"""
from __future__ import annotations

import hashlib
import heapq
import json
import os
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import lru_cache
from importlib import resources
from typing import Callable, Iterable, TypeVar

import numpy as np
import torch

from .dtypes import parse_dtype
from .errors import CodebookError, EncoderError, FormatError
from .format import DTYPE_CODES, dtype_name
from .split import PLANS, Plan, candidate_plans

N_AREAS = 8
ALPHABET = 256
MAX_WIDTH = 8
PREFIX_BITS = 3
EMBEDDED_BYTES = N_AREAS + ALPHABET  # widths, then rank -> symbol

CODEBOOK_FILE_VERSION = 1
"""The version of the codebook file format (JSON) that `Codebook.load` / `from_json` read."""

# Codebooks that streams may reference by digest: the ones this process created or loaded
# (never the transient ones: codes fitted to one tensor and embedded in its stream, and
# those read back from streams).  The shipped ones join on the first unknown digest.
_REGISTRY: dict[str, "Codebook"] = {}

TABLE_CACHE_ENTRIES = 64
"""How many tables derived from codebooks (device tables: one per codebook and device)
are kept at once; the least recently used go first."""
_TABLE_CACHE: "OrderedDict[tuple, object]" = OrderedDict()
_TABLE_CACHE_LOCK = threading.Lock()        # callers may code from several threads
_T = TypeVar("_T")


def cached_table(key: tuple):
    """The table `cache_table` kept under `key`, or None (a hit makes it the most recent)."""
    with _TABLE_CACHE_LOCK:
        t = _TABLE_CACHE.get(key)
        if t is not None:
            _TABLE_CACHE.move_to_end(key)
        return t


def cache_table(key: tuple, table) -> None:
    """Keep a table derived from a codebook under `key` = (its digest, the device or None
    for host tables, what the table is); beyond TABLE_CACHE_ENTRIES the least recently
    used is dropped."""
    with _TABLE_CACHE_LOCK:
        _TABLE_CACHE[key] = table
        _TABLE_CACHE.move_to_end(key)
        while len(_TABLE_CACHE) > TABLE_CACHE_ENTRIES:
            _TABLE_CACHE.popitem(last=False)


def derived_table(key: tuple, build: Callable[[], _T]) -> _T:
    """The table under `key` in the one bounded cache of codebook tables, built on a miss."""
    t = cached_table(key)
    if t is None:
        t = build()
        cache_table(key, t)
    return t


class _NoCodebookForDtype(KeyError, ValueError):
    """A codebook file holds no codebook for the dtype asked for (a KeyError, as it always
    was, and a ValueError, like a Codebook object of the wrong dtype)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


@lru_cache(maxsize=None)
def _dp_tables(alphabet: int, max_width: int):
    q = np.arange(alphabet + 1)
    steps = 1 << np.arange(max_width + 1)
    src = q[None, :] - steps[:, None]                 # predecessor of q for an area of width b
    valid = src >= 0
    src = np.where(valid, src, 0)
    # the last position (alphabet) is also reached from any p >= alphabet - 2**b (area runs past the end)
    tail_ok = q[None, :] >= (alphabet - steps)[:, None]
    return steps, src, valid, tail_ok


def optimal_widths(sorted_counts, n_areas: int = N_AREAS, max_width: int = MAX_WIDTH) -> tuple[int, ...]:
    """Area widths minimising sum_k b_k * (count of ranks in area k) for counts sorted descending.

    Exact: dynamic programming over (areas used, ranks covered).  Areas are laid
    in order; area k covers ranks [first_k, first_k + 2**b_k) clipped to the
    alphabet, and together they must cover every rank.  Ties go to the smaller
    width at each step, so the result is deterministic.
    """
    counts = np.asarray(sorted_counts, dtype=np.int64)
    A = counts.size
    if (1 << max_width) * n_areas < A:
        raise ValueError("the areas cannot cover the alphabet")
    steps, src, valid, tail_ok = _dp_tables(A, max_width)
    S = np.concatenate([[0], np.cumsum(counts)])
    big = np.int64(1) << 60  # "infinite"; two of them still fit in int64
    b = np.arange(max_width + 1, dtype=np.int64)[:, None]
    # cost of an area of width b ending at q (from src) or running past the end (from p)
    area_cost = np.where(valid, b * (S[None, :] - S[src]), big)
    tail_cost = np.where(tail_ok, b * (S[A] - S[None, :]), big)
    rows = np.arange(max_width + 1)
    cols = np.arange(A + 1)
    dp = np.full(A + 1, big, dtype=np.int64)
    dp[0] = 0
    choice_b = np.empty((n_areas, A + 1), dtype=np.int64)
    choice_p = np.empty((n_areas, A + 1), dtype=np.int64)
    for k in range(n_areas):
        cand = dp[src] + area_cost
        tail = dp[None, :] + tail_cost
        tail_p = np.argmin(tail, axis=1)               # best start for each width, reaching A
        cand[:, A] = tail[rows, tail_p]
        best_b = np.argmin(cand, axis=0)
        dp = np.minimum(cand[best_b, cols], big)
        choice_b[k] = best_b
        back = cols - steps[best_b]
        back[A] = tail_p[best_b[A]]
        choice_p[k] = back
    widths = []
    pos = A
    for k in range(n_areas - 1, -1, -1):
        widths.append(int(choice_b[k, pos]))
        pos = int(choice_p[k, pos])
    if pos != 0:
        raise EncoderError("codebook fitter: the dynamic programme did not start at rank 0")
    return tuple(reversed(widths))


def rank_areas(widths) -> np.ndarray:
    """The area of each rank 0..255 under area widths `widths` (int64 [256]): areas in order,
    area k holding 2**widths[k] ranks."""
    return np.repeat(np.arange(len(widths)), [1 << w for w in widths])[:ALPHABET]


@dataclass(frozen=True)
class Codebook:
    """A QLC code: plan (which bits form the symbol), dtype, 8 area widths, rank -> symbol table.

    Codebooks are registered by digest (so streams that reference one decode: see
    `lookup`) unless `transient`: the codes fitted to one tensor and embedded in its
    stream, and the ones read back from such streams, which would otherwise pile up
    over a long job.  Registered or not, a codebook keeps no device tables: those live
    in one bounded cache (`device_tables`).
    """

    dtype: torch.dtype
    plan: str
    widths: tuple[int, ...]
    symbols: tuple[int, ...]  # symbols[rank] = symbol
    _tables: dict = field(default_factory=dict, repr=False, compare=False, hash=False)
    transient: bool = field(default=False, repr=False, compare=False, hash=False)

    def __post_init__(self):
        if isinstance(self.dtype, str):             # a dtype name ("bf16", "float16", ...)
            object.__setattr__(self, "dtype", parse_dtype(self.dtype))
        if self.plan not in PLANS:
            raise FormatError(f"unknown plan {self.plan!r}")
        if len(self.widths) != N_AREAS or any(not 0 <= w <= MAX_WIDTH for w in self.widths):
            raise FormatError(f"bad area widths {self.widths}")
        if sum(1 << w for w in self.widths) < ALPHABET:
            raise FormatError(f"area widths {self.widths} do not cover all {ALPHABET} symbols")
        if sorted(self.symbols) != list(range(ALPHABET)):
            raise FormatError("rank -> symbol table is not a permutation of 0..255")
        if PLANS[self.plan] not in candidate_plans(self.dtype):
            raise FormatError(f"plan {self.plan} does not code {self.dtype}")
        if not self.transient:
            _REGISTRY.setdefault(self.digest, self)

    def __repr__(self) -> str:
        return (f"Codebook({dtype_name(self.dtype)}, plan={self.plan}, widths={tuple(self.widths)}, "
                f"digest={self.digest})")

    # -- derived tables -------------------------------------------------------------
    @property
    def plan_obj(self) -> Plan:
        return PLANS[self.plan]

    @property
    def first_ranks(self) -> tuple[int, ...]:
        firsts, f = [], 0
        for w in self.widths:
            firsts.append(f)
            f += 1 << w
        return tuple(firsts)

    def code_lengths(self) -> np.ndarray:
        """Code length in bits (prefix included) of each symbol 0..255."""
        return self._numpy_tables()["length"]

    def _numpy_tables(self) -> dict:
        """Host tables: area, suffix, length (int64 [256] by symbol) and decode (int16 [8 * 256]
        by area * 256 + suffix: the symbol, or -1 where the rank is past the table)."""
        t = self._tables.get("np")
        if t is None:
            rank_area = rank_areas(self.widths)
            firsts = np.asarray(self.first_ranks)
            sym = np.asarray(self.symbols)
            area = np.empty(ALPHABET, np.int64)
            suffix = np.empty(ALPHABET, np.int64)
            area[sym] = rank_area
            suffix[sym] = np.arange(ALPHABET) - firsts[rank_area]
            widths = np.asarray(self.widths, np.int64)
            decode = np.full((N_AREAS, ALPHABET), -1, np.int16)
            decode[rank_area, np.arange(ALPHABET) - firsts[rank_area]] = sym
            t = {"area": area, "suffix": suffix, "length": PREFIX_BITS + widths[area], "decode": decode.reshape(-1)}
            self._tables["np"] = t
        return t

    def device_tables(self, device: torch.device | str) -> dict[str, torch.Tensor]:
        """Encode/decode tables on `device`, in the narrow dtypes the codecs use.

        length, area, suffix: uint8 [256] indexed by symbol; widths_u8, masks (int32):
        [8] indexed by area; decode: int16 [8 * 256] indexed by area * 256 + suffix,
        the symbol, or -1 where the rank is past the table.  They come from the one
        bounded cache keyed by (digest, device) (`TABLE_CACHE_ENTRIES`), never from the
        codebook object: codebooks with equal content share them, and none stays alive
        or keeps its tables because it was used once.
        """
        dev = torch.device(device)

        def build():
            n = self._numpy_tables()
            u8 = lambda a: torch.from_numpy(np.asarray(a, np.uint8)).to(dev)  # noqa: E731
            return {
                "length": u8(n["length"]), "area": u8(n["area"]), "suffix": u8(n["suffix"]),
                "widths_u8": u8(self.widths),
                "masks": torch.tensor([(1 << w) - 1 for w in self.widths], dtype=torch.int32, device=dev),
                "decode": torch.from_numpy(n["decode"]).to(dev),
            }
        return derived_table((self.digest, str(dev), "device_tables"), build)

    # -- identity and persistence ---------------------------------------------------
    def to_bytes(self) -> bytes:
        """The embedded form: 8 width bytes, then 256 rank -> symbol bytes."""
        return bytes(self.widths) + bytes(self.symbols)

    @classmethod
    def from_bytes(cls, data: bytes, dtype: torch.dtype, plan: str) -> "Codebook":
        if len(data) != EMBEDDED_BYTES:
            raise FormatError("embedded codebook truncated")
        return cls(dtype, plan, tuple(data[:N_AREAS]), tuple(data[N_AREAS:]), transient=True)

    @property
    def digest(self) -> str:
        """Stable content hash (16 hex digits) of dtype, plan, widths and table."""
        d = self._tables.get("digest")
        if d is None:
            h = hashlib.sha256(b"qlccomm-codebook-v1")
            h.update(bytes([DTYPE_CODES[self.dtype], PLANS[self.plan].plan_id]))
            h.update(self.to_bytes())
            d = self._tables["digest"] = h.hexdigest()[:16]
        return d

    def to_json(self) -> dict:
        return {"format": "qlccomm-codebook", "version": 1, "dtype": dtype_name(self.dtype),
                "plan": self.plan, "widths": list(self.widths), "symbols": list(self.symbols),
                "digest": self.digest}

    @classmethod
    def from_json(cls, obj: dict) -> "Codebook":
        """The codebook of one `to_json` object (registered for digest look-ups).
        Raises FormatError for anything else, a file format version other than
        CODEBOOK_FILE_VERSION included."""
        try:
            if not isinstance(obj, dict) or obj.get("format") != "qlccomm-codebook":
                raise FormatError("not a qlccomm codebook")
            if obj.get("version") != CODEBOOK_FILE_VERSION:
                raise FormatError(f"codebook file version {obj.get('version')!r}; this qlccomm reads version "
                                  f"{CODEBOOK_FILE_VERSION}")
            dtype = getattr(torch, obj["dtype"], None)
            if not isinstance(dtype, torch.dtype):
                raise FormatError(f"unknown dtype {obj['dtype']!r}")
            widths, symbols = obj["widths"], obj["symbols"]
            if not all(isinstance(v, list) and all(type(x) is int for x in v) for v in (widths, symbols)):
                raise FormatError("widths and symbols must be lists of integers")
            cb = cls(dtype, obj["plan"], tuple(widths), tuple(symbols))
        except FormatError:
            raise
        except (KeyError, TypeError, AttributeError, ValueError) as e:
            raise FormatError(f"malformed codebook: {e}") from None
        if obj.get("digest", cb.digest) != cb.digest:
            raise FormatError(f"codebook digest {obj['digest']} does not match its content ({cb.digest})")
        return cb

    def save(self, path: str | os.PathLike) -> None:
        with open(path, "w") as f:
            json.dump(self.to_json(), f, indent=1)

    @classmethod
    def load(cls, path: str | os.PathLike, dtype: torch.dtype | str | None = None) -> "Codebook":
        """Load a codebook file; for a file holding several (one per dtype), pick `dtype`
        (a torch dtype or one of its names, qlccomm.dtypes.DTYPE_ALIASES: "bf16", "float16", ...).

        Raises FormatError naming the file for anything but a codebook file of version
        CODEBOOK_FILE_VERSION (binary content, bad JSON, another version, a bad codebook),
        KeyError (also a ValueError) when it holds no codebook for `dtype`, OSError when
        it cannot be read; ValueError for an unknown dtype name."""
        if dtype is not None:
            dtype = parse_dtype(dtype)
        with open(path, "rb") as f:
            data = f.read()
        try:
            try:
                obj = json.loads(data.decode("utf-8"))
            except UnicodeDecodeError:
                raise FormatError("not a codebook file: binary content, not JSON text") from None
            except json.JSONDecodeError as e:
                raise FormatError(f"not a codebook file: bad JSON ({e})") from None
            if isinstance(obj, dict) and "codebooks" in obj:
                if not isinstance(obj["codebooks"], list) or not obj["codebooks"]:
                    raise FormatError("'codebooks' is not a list of codebooks")
                books = [cls.from_json(o) for o in obj["codebooks"]]
            else:
                books = [cls.from_json(obj)]
        except FormatError as e:
            raise type(e)(f"codebook file {os.fspath(path)}: {e}") from None
        if "codebooks" not in obj:
            cb = books[0]
            if dtype is not None and cb.dtype != dtype:
                raise _NoCodebookForDtype(f"{path} holds a {dtype_name(cb.dtype)} codebook, not {dtype}")
            return cb
        if dtype is None and len(books) == 1:
            return books[0]
        for b in books:
            if b.dtype == dtype:
                return b
        raise _NoCodebookForDtype(f"{path} holds codebooks for {[dtype_name(b.dtype) for b in books]}, not {dtype}")

    # -- measures --------------------------------------------------------------------
    def expected_bits(self, t: torch.Tensor) -> float:
        """Mean coded bits per symbol (prefix + suffix) of `t` under this codebook."""
        hist = symbol_histogram(t, self.plan_obj)
        n = hist.sum()
        return float((hist * self.code_lengths()).sum() / n) if n else 0.0


def lookup(digest: str) -> Codebook:
    """The codebook with this digest: one this process has created or loaded, or a shipped one
    (the current defaults and those they replaced, qlccomm/codebooks/{,previous/}*.json).
    Never a transient one (a code embedded in a stream) nor a decoder's codebook= hint:
    `decompress` uses those directly."""
    cb = _REGISTRY.get(digest) or _shipped().get(digest)
    if cb is None:
        raise CodebookError(f"stream was coded with codebook {digest}, which this process does not know; "
                            "pass codebook= to decompress or load it first")
    return cb


ADAPTIVE, DEFAULT = "adaptive", "default"
_CODEBOOK_ARG = ("None, 'adaptive', 'default', a Codebook, a codebook file path (str or os.PathLike) "
                 "or a {torch.dtype: one of those} dict")


def check_codebook_arg(arg) -> None:
    """Raise TypeError unless `arg` is something `resolve_codebook` takes (reads no file)."""
    if isinstance(arg, dict):
        for k, v in arg.items():
            if not isinstance(k, torch.dtype):
                raise TypeError(f"a codebook dict maps torch dtypes to codebooks; its key {k!r} is not a dtype")
            if not (v is None or isinstance(v, (str, os.PathLike, Codebook))):
                raise TypeError(f"codebook dict entry {k}: takes None, 'adaptive', 'default', a Codebook or "
                                f"a codebook file path, not {type(v).__name__}")
        return
    if not (arg is None or isinstance(arg, (str, os.PathLike, Codebook))):
        raise TypeError(f"codebook= takes {_CODEBOOK_ARG}, not {type(arg).__name__}")


def names_codebook(arg, dtype: torch.dtype) -> bool:
    """Whether `arg` asks for a codebook (not adaptive coding) for tensors of `dtype`;
    reads no file."""
    check_codebook_arg(arg)
    if isinstance(arg, dict):
        arg = arg.get(dtype)
    return not (arg is None or (isinstance(arg, str) and arg == ADAPTIVE))


def resolve_codebook(arg, dtype: torch.dtype, *, strict: bool = True) -> Codebook | None:
    """The codebook that `arg` names for tensors of `dtype`, or None for adaptive coding
    (each stream embeds a code fitted to its tensor).  The one reading of `codebook=`
    for compress, decompress, the collectives, point-to-point and the hooks.

    arg: None or "adaptive" (None); "default" (the built-in codebook of `dtype`); a
        Codebook; a codebook file path (str or os.PathLike, see `Codebook.load`; files
        are read again only when they change); or a {torch.dtype: any of those} dict
        (a dtype it does not list: None).
    strict: a Codebook or file of another dtype, or "default" for a dtype that QLC does
        not code, raises ValueError; with strict=False (a decoder's hint: the stream
        names the codebook it needs) they resolve to None.
    Raises TypeError for anything else (numbers, bytes, lists, ...); FormatError or
    OSError for a file that is not a codebook file or cannot be read.
    """
    check_codebook_arg(arg)
    if isinstance(arg, dict):
        arg = arg.get(dtype)
    if arg is None or (isinstance(arg, str) and arg == ADAPTIVE):
        return None
    if isinstance(arg, str) and arg == DEFAULT:
        if not strict and not candidate_plans(dtype):
            return None
        return default_codebook(dtype)
    if isinstance(arg, Codebook):
        cb = arg
    else:
        try:
            cb = _load_file(arg, dtype)
        except _NoCodebookForDtype:
            if strict:
                raise
            return None
    if cb.dtype != dtype:
        if not strict:
            return None
        raise ValueError(f"codebook {cb.digest} is for {cb.dtype}, the tensor is {dtype}")
    return cb


_LOADED: "OrderedDict[tuple, tuple]" = OrderedDict()   # (path, dtype) -> (file stamp, Codebook)
_LOADED_LOCK = threading.Lock()
_LOADED_ENTRIES = 16


def _load_file(path, dtype: torch.dtype) -> Codebook:
    """Codebook.load(path, dtype), read again only when the file's inode, size or mtime change
    (a collective given a path resolves it on every call)."""
    name = os.fspath(path)
    st = os.stat(name)
    stamp = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    key = (os.path.abspath(name), dtype)
    with _LOADED_LOCK:
        hit = _LOADED.get(key)
        if hit is not None and hit[0] == stamp:
            _LOADED.move_to_end(key)
            return hit[1]
    cb = Codebook.load(name, dtype=dtype)
    with _LOADED_LOCK:
        _LOADED[key] = (stamp, cb)
        _LOADED.move_to_end(key)
        while len(_LOADED) > _LOADED_ENTRIES:
            _LOADED.popitem(last=False)
    return cb


def symbol_histogram(t: torch.Tensor, plan: Plan) -> np.ndarray:
    """Counts of each symbol value 0..255 of `t` under `plan` (int64 numpy)."""
    flat = t.detach().contiguous().reshape(-1)
    if flat.numel() == 0:
        return np.zeros(ALPHABET, np.int64)
    sym, _ = plan.split(flat)
    return torch.bincount(sym, minlength=ALPHABET).cpu().numpy().astype(np.int64)


def codebook_from_histogram(hist, dtype: torch.dtype, plan: Plan, transient: bool = False) -> Codebook:
    """The optimal codebook for a symbol histogram (deterministic in the histogram)."""
    hist = np.asarray(hist, dtype=np.int64)
    order = np.lexsort((np.arange(ALPHABET), -hist))  # count descending, then symbol ascending
    widths = _fast_optimal_widths()(hist[order])
    return Codebook(dtype, plan.name, widths, tuple(order.tolist()), transient=transient)


def optimal_widths_and_prefix(sorted_counts, n_areas: int, max_width: int,
                              prefix: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(optimal_widths(counts, n_areas, max_width), optimal_widths(counts[:prefix], n_areas - 1,
    max_width)): the two codes QLCW's fitter weighs (every symbol in the table, or the first
    `prefix` ranks and an escape area).  The native version runs one programme for both."""
    counts = np.asarray(sorted_counts, dtype=np.int64)
    return optimal_widths(counts, n_areas, max_width), optimal_widths(counts[:prefix], n_areas - 1, max_width)


@lru_cache(maxsize=1)
def _fast_optimal_widths_and_prefix():
    """optimal_widths_and_prefix from the native kernels where installed (the same widths)."""
    try:
        from .kernels.native_qlc import optimal_widths_and_prefix_native
    except Exception:      # noqa: BLE001 - no numba, or a broken install: the numpy programmes
        return optimal_widths_and_prefix
    return optimal_widths_and_prefix_native


@lru_cache(maxsize=1)
def _fast_optimal_widths():
    """optimal_widths compiled by numba where the native kernels are installed (the same
    result, ~30x faster: it runs once per adaptively coded tensor or slice), else itself."""
    try:
        from .kernels.native_qlc import optimal_widths_native
    except Exception:      # noqa: BLE001 - no numba, or a broken install: the numpy programme
        return optimal_widths
    return optimal_widths_native


def total_bits(hist, cb: Codebook) -> int:
    """Coded plus raw bits for the histogram's elements under `cb`."""
    hist = np.asarray(hist, np.int64)
    return int((hist * cb.code_lengths()).sum()) + int(hist.sum()) * cb.plan_obj.raw_bits


def fitted_bits(hist, plan: Plan) -> int:
    """total_bits(hist, codebook_from_histogram(hist, dtype, plan)) without building the
    codebook: the coded plus raw bits of the histogram's elements under its optimal code
    (rank r's code length is the prefix and the width of the area holding r)."""
    hist = np.asarray(hist, np.int64)
    counts = np.sort(hist)[::-1]                    # the counts in rank order
    widths = _fast_optimal_widths()(counts)
    lengths = PREFIX_BITS + np.asarray(widths, np.int64)[rank_areas(widths)]
    return int(counts @ lengths) + int(hist.sum()) * plan.raw_bits


def adaptive_bits(hists: dict, dtype: torch.dtype) -> int:
    """Estimated bits of one tensor coded adaptively (`compress(t, codec="qlc")`): the fewest
    coded + raw bits over its plans, each plan with the code fitted to its histogram
    (`hists`: {plan name: histogram}), plus the embedded code (EMBEDDED_BYTES).  Chunk
    modes (all-zero and raw chunks) and the pair-symbol sections are left out."""
    best = min(total_bits(h, codebook_from_histogram(h, dtype, plan, transient=True))
               for plan in candidate_plans(dtype) for h in [hists[plan.name]])
    return best + 8 * EMBEDDED_BYTES


def fit_codebook(samples: torch.Tensor | Iterable[torch.Tensor], dtype: torch.dtype | str | None = None, *,
                 transient: bool = False, warn: bool = True) -> Codebook:
    """Fit the optimal codebook to sample tensors of one dtype (`dtype`: a torch dtype or one of
    its names, qlccomm.dtypes.DTYPE_ALIASES; by default the samples' dtype).

    For float16 both plans (high byte, 5-bit exponent) are measured and the one
    with fewer total bits (coded + raw) is kept.  `transient`: do not register it for
    digest look-ups (a code that will only travel embedded in a stream).
    `warn`: issue a qlccomm.errors.CodebookFitWarning when the fitted codebook codes the
    samples in more bits than coding each adaptively would (an estimate from the
    histograms, `adaptive_bits`; `qlccomm fit` measures the real stream sizes): samples
    that mix kinds of data (weights and gradients) are better fitted apart.
    """
    tensors = [samples] if isinstance(samples, torch.Tensor) else list(samples)
    if dtype is not None:
        dtype = parse_dtype(dtype)
    if dtype is None:
        if not tensors:
            raise ValueError("fit_codebook needs samples or a dtype")
        dtype = tensors[0].dtype
    plans = candidate_plans(dtype)
    if not plans:
        raise ValueError(f"no QLC plan codes {dtype}; it is stored raw")
    for t in tensors:
        if t.dtype != dtype:
            raise ValueError(f"samples mix dtypes {t.dtype} and {dtype}")
    own = [{plan.name: symbol_histogram(t, plan) for plan in plans} for t in tensors if t.numel()]
    best = None
    for plan in plans:
        hist = sum((h[plan.name] for h in own), np.zeros(ALPHABET, np.int64))
        cb = codebook_from_histogram(hist, dtype, plan, transient=True)
        bits = total_bits(hist, cb)
        if best is None or bits < best[0]:
            best = (bits, cb)
    bits, cb = best
    if warn and len(own) > 1:
        import warnings
        from .errors import CodebookFitWarning
        alone = sum(adaptive_bits(h, dtype) for h in own)
        if bits > alone:
            warnings.warn(f"the fitted {dtype_name(dtype)} codebook codes its {len(own)} samples in {bits} bits, "
                          f"more than adaptive coding would (about {alone}): the samples mix kinds of data; fit "
                          f"each kind (weights, gradients, activations) apart", CodebookFitWarning, stacklevel=2)
    return cb if transient else Codebook(cb.dtype, cb.plan, cb.widths, cb.symbols)


def default_codebook(dtype: torch.dtype | str) -> Codebook:
    """The built-in codebook for `dtype` (a torch dtype or one of its names,
    qlccomm.dtypes.DTYPE_ALIASES: "bf16", "fp16", "float8_e4m3fn", ...), fitted on qlccomm's
    synthetic weights and gradients (and activations for bfloat16 and float16:
    qlccomm.datagen.default_codebook_samples).  ValueError for an unknown name and for a
    dtype QLC stores raw."""
    dtype = parse_dtype(dtype)
    plans = candidate_plans(dtype)
    if not plans:
        raise ValueError(f"no QLC plan codes {dtype}; it is stored raw")
    return _default_codebook(dtype)


@lru_cache(maxsize=None)
def _default_codebook(dtype: torch.dtype) -> Codebook:
    name = f"{dtype_name(dtype)}.json"
    ref = resources.files("qlccomm") / "codebooks" / name
    if ref.is_file():
        return Codebook.from_json(json.loads(ref.read_text()))
    # 1-byte dtypes without a shipped table: a flat code (8 bits per symbol).
    return Codebook(dtype, candidate_plans(dtype)[0].name, (5,) * N_AREAS, tuple(range(ALPHABET)))


@lru_cache(maxsize=1)
def _shipped() -> dict[str, Codebook]:
    """Every shipped codebook, current and previous, by digest: read once into a map of its
    own (reading also registers them, as every loaded codebook is), so that look-ups find
    them whatever the registry holds later."""
    folder = resources.files("qlccomm") / "codebooks"
    books = [Codebook.from_json(json.loads(ref.read_text()))
             for ref in (*folder.iterdir(), *(folder / "previous").iterdir())
             if ref.name.endswith(".json") and ref.is_file()]
    return {b.digest: b for b in books}


# -- reference measures for reports (CLI, bench) ------------------------------------------
def entropy_bits(hist) -> float:
    """Shannon entropy in bits per symbol of a histogram."""
    h = np.asarray(hist, np.float64)
    n = h.sum()
    p = h[h > 0] / n
    return float(-(p * np.log2(p)).sum()) if n else 0.0


def huffman_bits(hist) -> float:
    """Mean Huffman code length in bits per symbol of a histogram (unbounded code length)."""
    counts = [int(c) for c in np.asarray(hist) if c > 0]
    n = sum(counts)
    if len(counts) <= 1:
        return 1.0 if n else 0.0
    heap = [(c, i, 0) for i, c in enumerate(counts)]  # (weight, tiebreak, total depth cost)
    heapq.heapify(heap)
    cost = 0
    tie = len(counts)
    while len(heap) > 1:
        a, _, _ = heapq.heappop(heap)
        b, _, _ = heapq.heappop(heap)
        cost += a + b  # every merge adds one bit to each symbol below it
        heapq.heappush(heap, (a + b, tie, 0))
        tie += 1
    return cost / n
