"""Host-side glue shared by the fused QLC kernels (Triton and native).

The fused paths split the work the same way:

    encode: per-chunk statistics pass (kernel) -> host planning (this module:
            modes, plane offsets, section metadata) -> one writing pass (kernel)
    decode: host planning from the parsed, validated section (this module) ->
            one decoding pass (kernel) -> error flags checked on the host

Everything about the *format* that is not a per-element pass lives in
qlccomm.qlc (choose_modes, chunk_offsets, plane_sizes, section_head,
chunk_table, decode_error) and is reused here, so the fused paths and the torch
path cannot drift apart.
"""
from __future__ import annotations

import ctypes
import sys
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

from qlccomm import qlc
from qlccomm.codebook import ALPHABET, N_AREAS, PREFIX_BITS, Codebook, derived_table
from qlccomm.split import PLANS, Plan

# Columns of the per-chunk table the kernels read (int64 [K, TAB_COLS]).
TAB_MODE, TAB_ELEMS, TAB_PREFIX, TAB_SYMBOL, TAB_SUFFIX, TAB_SUFLEN, TAB_RAW = range(7)
TAB_COLS = 8            # one column spare: rows of 64 bytes


# The kernels take a plan's shifts and masks (ssh, smask, rsh, rhi, rlo; qlccomm.split.Plan)
# as integers and specialise on its word width (`kind`).
KIND_DTYPES = {p.kind: p.word for p in PLANS.values()}      # 0: uint8, 1: int16, 2: int32


def element_view(flat: torch.Tensor, plan: Plan) -> torch.Tensor:
    """The tensor's elements as the plan's integer words (no copy)."""
    return flat.view(plan.word)


# -- output buffers --------------------------------------------------------------------------------
_HUGE = 2 << 20
_MADV_HUGEPAGE = 14
_madvise = None


def _get_madvise():
    global _madvise
    if _madvise is None:
        _madvise = False
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None, use_errno=True)
                fn = libc.madvise
                fn.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
                fn.restype = ctypes.c_int
                _madvise = fn
            except (OSError, AttributeError):
                pass
    return _madvise


def empty_output(numel: int, dtype: torch.dtype) -> torch.Tensor:
    """torch.empty on the CPU for a buffer the kernels fill right away.

    Large fresh allocations are fresh pages, and faulting them in 4 KiB at a time
    can cost more than decoding into them.  Where transparent huge pages are in
    `madvise` mode, the buffer's 2 MiB-aligned interior asks for them (buffers of at
    least 8 MiB).  Best effort: a no-op elsewhere; the tensor is an ordinary one
    either way.
    """
    t = torch.empty(numel, dtype=dtype)
    nbytes = numel * t.element_size()
    if nbytes >= 4 * _HUGE:
        fn = _get_madvise()
        if fn:
            a = t.data_ptr()
            lo, hi = (a + _HUGE - 1) & ~(_HUGE - 1), (a + nbytes) & ~(_HUGE - 1)
            if hi > lo:
                fn(lo, hi - lo, _MADV_HUGEPAGE)
    return t


def section_buffer(nbytes: int, into: torch.Tensor | None, device) -> torch.Tensor:
    """The uint8 buffer an encoder writes `nbytes` into: the front of the caller's `into`
    (a 1-D uint8 tensor on `device`) when it has room, else a fresh one (empty_output on
    the CPU).  An encoder never needs more than raw + header except for streams that
    `compress` then stores raw, so a caller's buffer of that capacity almost always serves."""
    if into is not None and into.numel() >= nbytes:
        return into[:nbytes]
    if torch.device(device).type == "cpu":
        return empty_output(nbytes, torch.uint8)
    return torch.empty(nbytes, dtype=torch.uint8, device=device)


def decode_target(numel: int, dtype: torch.dtype, out: torch.Tensor | None, device) -> torch.Tensor:
    """The flat tensor a decoder fills: the caller's `out` (checked by api.decompress:
    contiguous, `numel` elements of `dtype` on `device`) viewed flat, else a fresh one."""
    if out is not None:
        return out.view(-1)
    if torch.device(device).type == "cpu":
        return empty_output(numel, dtype)
    return torch.empty(numel, dtype=dtype, device=device)


# -- codebook tables -------------------------------------------------------------------------------
def codebook_tables(cb: Codebook, device: torch.device | str | None = None) -> dict:
    """Kernel tables of a codebook, in the codebook module's one bounded cache, by digest
    (and device when given).

    enc:   int32 [256] by symbol: suffix | area << 8 | suffix width << 12
    wsuf:  uint8 [256] by symbol: suffix width
    dec:   int16 [8 * 256] by area * 256 + suffix: symbol, or -1 past the rank table
    widths, masks: int64 [8] by area;  wpack: the 8 widths as 4-bit fields of one int
    Host (numpy) arrays without `device`, torch tensors on `device` with it.
    """
    if device is not None:
        dev = torch.device(device)
        return derived_table((cb.digest, str(dev), "kernel"), lambda: {
            k: (torch.from_numpy(v).to(dev) if isinstance(v, np.ndarray) else v)
            for k, v in codebook_tables(cb).items()})
    return derived_table((cb.digest, None, "kernel"), lambda: _host_tables(cb))


def _host_tables(cb: Codebook) -> dict:
    n = cb._numpy_tables()
    area = n["area"].astype(np.int32)
    suffix = n["suffix"].astype(np.int32)
    wsuf = n["length"].astype(np.int32) - PREFIX_BITS
    widths = np.asarray(cb.widths, np.int64)
    t = {
        "enc": (suffix | (area << 8) | (wsuf << 12)).astype(np.int32),
        "wsuf": wsuf.astype(np.uint8),
        "dec": n["decode"],
        "widths": widths,
        "masks": (np.int64(1) << widths) - 1,
        "wpack": int(sum(int(w) << (4 * k) for k, w in enumerate(cb.widths))),
    }
    assert t["dec"].shape == (N_AREAS * ALPHABET,)
    return t


# Error marks in the native decoder's symbol table (bit 31 set = an error; valid entries,
# symbol << ssh, stay below bit 31, and below bit 18 for the plans with 5-bit symbols)
DTAB_RANK = -(1 << 31) | (1 << 30)        # rank past the table
DTAB_WIDE = -(1 << 31) | (1 << 29)        # symbol wider than the plan's symbol bits


def decode_tables(cb: Codebook, plan: Plan) -> tuple[np.ndarray, np.ndarray]:
    """The native decoder's tables (host, cached):

    dtab: int32 [8 * 256] by area << 8 | the next 8 suffix bits (bits past the area's
          width ignored): symbol << plan.ssh, or DTAB_RANK / DTAB_WIDE.
    w4:   int32 [4096] by the 12 prefix bits of 4 consecutive codes: the bit offsets of
          codes 1, 2, 3 in bits 0-7, 8-15, 16-23 and the 4 codes' total width in 24-31.
    """
    def build() -> tuple[np.ndarray, np.ndarray]:
        host = codebook_tables(cb)
        area = np.repeat(np.arange(N_AREAS), ALPHABET)
        low = np.tile(np.arange(ALPHABET), N_AREAS)
        sym = host["dec"][(area << 8) | (low & host["masks"][area])].astype(np.int64)
        dtab = np.where(sym < 0, DTAB_RANK, np.maximum(sym, 0) << plan.ssh)
        if plan.symbol_bits < 8:
            dtab = np.where((sym >= 0) & ((sym >> plan.symbol_bits) != 0), DTAB_WIDE, dtab)
        assert int(np.where(dtab >= 0, dtab, 0).max()) < (1 << 31)
        return dtab.astype(np.int32), _offsets_of_4(cb.widths)
    return derived_table((cb.digest, None, "native-decode"), build)


@lru_cache(maxsize=256)
def _offsets_of_4(widths: tuple[int, ...]) -> np.ndarray:
    """decode_tables' w4 (it depends on the area widths alone: shared by every codebook with them)."""
    widths = np.asarray(widths, np.int64)
    p = np.arange(4096)
    w = [widths[(p >> (3 * j)) & 7] for j in range(4)]
    w4 = w[0] | ((w[0] + w[1]) << 8) | ((w[0] + w[1] + w[2]) << 16) | ((w[0] + w[1] + w[2] + w[3]) << 24)
    return w4.astype(np.int32)


# -- encode planning --------------------------------------------------------------------------------
@dataclass
class EncodeLayout:
    """Where everything goes in an encoded section (offsets in bytes from the section start).
    head and table are numpy arrays when planned from host statistics, tensors on the
    statistics' device otherwise."""

    head: np.ndarray | torch.Tensor     # uint8: plan, codebook, chunk size and count, chunk table
    table: np.ndarray | torch.Tensor    # int64 [K, TAB_COLS]
    bases: dict                 # plane name -> byte offset of the plane in the section
    sizes: dict                 # plane name -> bytes
    n_nz: int                   # elements of the non-zero chunks (the raw planes' length)
    total: int                  # section bytes


def _layout(chunk: int, elems, modes, suffix_len, plan: Plan, start: int,
            totals: tuple[int, int, int] | None = None) -> tuple[object, dict, dict, int]:
    """Chunk table for the kernels, plane bases (from `start`), plane sizes, raw-plane length.
    numpy arrays, or torch tensors on any device (then one copy of three totals to the host,
    unless `totals` = qlc.plane_totals are given)."""
    xp = qlc._xp(modes)
    off = qlc.chunk_offsets(chunk, elems, modes, suffix_len)
    cols = {TAB_MODE: modes, TAB_ELEMS: elems, TAB_PREFIX: off["prefix"], TAB_SYMBOL: off["symbol"],
            TAB_SUFFIX: off["suffix"], TAB_SUFLEN: suffix_len, TAB_RAW: off["raw"], TAB_COLS - 1: elems * 0}
    table = xp.stack([cols[c] for c in range(TAB_COLS)], 1)
    totals = totals or qlc.plane_totals(elems, modes, suffix_len)
    sizes = qlc.plane_sizes(elems, modes, suffix_len, plan, totals)
    bases, pos = {}, start
    for name in ("prefix", "symbol", "suffix", "raw"):
        bases[name] = pos
        pos += sizes[name]
    return table, bases, sizes, totals[0] + totals[1]


def encode_layout(n: int, chunk: int, plan: Plan, codebook: Codebook, embed: bool,
                  suffix_bits, nonzero) -> EncodeLayout:
    """Plan an encoded section from per-chunk statistics (K entries each): suffix_bits, the
    sum of the suffix widths of each chunk's symbols (int64); nonzero, whether any bit of
    the chunk is set (bool).  Host arrays, or tensors on a device, where the plan then stays
    (the Triton path: only three totals come back).  Same decisions as qlc.encode_section."""
    nchunks = -(-n // chunk)
    fixed = qlc.section_head(plan, codebook, embed, chunk, nchunks)
    if isinstance(suffix_bits, torch.Tensor):
        dev = suffix_bits.device
        suffix_bits, nonzero = suffix_bits.to(torch.int64), nonzero.to(torch.bool)
        elems = qlc.chunk_elems(n, chunk, nchunks, dev)
        modes, suffix_len = qlc.choose_modes(elems, suffix_bits, nonzero, plan.symbol_bits)
        head = torch.cat([torch.frombuffer(bytearray(fixed), dtype=torch.uint8).to(dev),
                          qlc.chunk_table(modes, suffix_len)])
    else:
        suffix_bits = np.asarray(suffix_bits, np.int64)
        nonzero = np.asarray(nonzero, np.bool_)
        elems = qlc.chunk_elems(n, chunk, nchunks, "numpy")
        modes, suffix_len = qlc.choose_modes(elems, suffix_bits, nonzero, plan.symbol_bits)
        head = np.concatenate([np.frombuffer(fixed, np.uint8), qlc.chunk_table(modes, suffix_len)])
    table, bases, sizes, n_nz = _layout(chunk, elems, modes, suffix_len, plan, len(head))
    return EncodeLayout(head, table, bases, sizes, n_nz, len(head) + sum(sizes.values()))


# -- decode planning --------------------------------------------------------------------------------
@dataclass
class DecodeLayout:
    table: np.ndarray           # int64 [K, TAB_COLS]
    bases: dict                 # plane name -> absolute byte offset in the stream
    ends: dict                  # plane name -> absolute end offset
    n_nz: int
    numel: int
    chunk: int


def decode_layout(sec, device: torch.device | None = None) -> DecodeLayout:
    """Per-chunk offsets of a parsed (validated) QLC section; the table as a numpy array, or
    computed on `device` from the chunk table's modes and lengths (a fifth of its bytes)."""
    lay = sec.layout
    elems, modes, suffix_len = lay.elems().numpy(), lay.modes.numpy(), lay.suffix_len.numpy()
    totals = qlc.plane_totals(elems, modes, suffix_len)
    if device is not None:      # 9 bytes per chunk travel, not the table's 64
        elems = qlc.chunk_elems(lay.numel, lay.chunk, len(modes), device)
        modes = torch.from_numpy(modes.astype(np.uint8)).to(device).to(torch.int64)
        suffix_len = torch.from_numpy(suffix_len.astype(np.int64)).to(device)
    table, bases, sizes, n_nz = _layout(lay.chunk, elems, modes, suffix_len, sec.plan, sec.planes_offset, totals)
    for name, size in sec.plane_bytes.items():
        assert sizes[name] == size, (name, sizes[name], size)   # parse_section checked the stream
    ends = {k: bases[k] + sizes[k] for k in bases}
    return DecodeLayout(table, bases, ends, n_nz, lay.numel, lay.chunk)


def raise_flags(flags: int, plan: Plan) -> None:
    """Raise the torch path's FormatError for the decoders' OR of qlc.ERR_* flags."""
    if flags:
        raise qlc.decode_error(int(flags), plan)
