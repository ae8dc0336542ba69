"""QLCW on accelerators: Triton kernels (CUDA; CPU tensors only under TRITON_INTERPRET=1).

Same contract as qlccomm.qlcw (encode_section / decode_section: same signatures, same
bytes, same errors; docs/format.md, "QLCW section").  Built like kernels/triton_qlc.py:
a per-chunk statistics pass, planning on the host with qlcw / qlc functions (so the
format cannot drift), one writing pass; decoding in one pass with error flags raised on
the host with the torch path's FormatError messages.  One chunk per program (programs
loop over chunks past the grid limit), each chunk walked in steps of SUB elements
(SUB / g symbols) with the bit offsets carried between steps.

Several codes per section (qlcw.CodeSet; a WideCode is one code for every chunk): each
chunk's code k is a column of the kernels' chunk table (TAB_CODE; the stats pass takes
the chunk codes as an array); the per-code tables are stacked and indexed by k: the
per-symbol kernel tables [M * 2^S] at k << S, widths and first ranks [M * 16] at 16 k,
rank tables concatenated with each code's size, offset and escape flag in info[3 k ..].

Launches per call:

  encode, given code(s)  _qlcw_stats, _qlcw_encode, _qlc_suffix_diff (coded chunks only)
                         + 1 device->host copy (per-chunk statistics, K int32)
                         + 4 host->device copies (section head, the kernels' chunk table,
                         per-symbol tables, chunk codes)
  encode, fitted code    + a memset, _qlcw_hist, the sum of its HIST_COPIES histograms and a
                         device->host copy of the histogram (2^S counts)
  decode                 _qlcw_decode + 5 small host->device copies (chunk table, widths,
                         first ranks, rank tables, per-code sizes / offsets / escape flags),
                         1 memset and 1 device->host copy (error word)
  chunk_histograms       _qlcw_chunk_hist + 1 memset and 1 device->host copy ([K, 2^w] counts)

The kernels:

  _qlcw_hist         (encode_section with a fitted code, and histogram())
                     per chunk: any bit set? (one pass over its elements); if so its
                     symbols (fields of g neighbours, s = f0 | f1 << w) are counted with
                     tl.atomic_add into HIST_COPIES global [2^S] int32 histograms (int64
                     past 2^31 symbols), symbol i of a step into copy i % HIST_COPIES: the
                     compiled layout (one element per thread) puts it in lane i % 32, so
                     the lanes of a warp never add to one address (weight exponents crowd
                     into a few symbols: one shared histogram serialises them); the copies
                     are summed on the device.  Relaxed atomics: PTX `red` without ordering
                     (nothing reads the counts before the kernel ends; Triton's default,
                     acq_rel, is an `atom` that waits).  Zero chunks and the padding
                     symbols of a short last chunk are never counted, which is the torch
                     path's bincount less its corrections.  The host fits the code:
                     qlcw.build_code.
  _qlcw_chunk_hist   (chunk_histograms) the same per chunk for single fields, into row c
                     of a [K, 2^w] int32 histogram (relaxed atomics; qlcw.cluster_codes
                     groups the chunks).
  _qlcw_stats        per chunk: stat = 4 * (sum of the suffix widths of its symbols)
                     + 2 * (some symbol its code cannot write) + (any bit set), from one
                     gather of its code's per-symbol kernel table (suffix | area << 16 |
                     width << 20 | unwritable << 25).
  (host)             EncoderError for an unwritable symbol of a non-zero chunk, modes
                     (qlcw.choose_modes), plane sizes (qlcw.plane_sizes), per-chunk plane
                     offsets, section head (qlcw.section_head + qlc.chunk_table +
                     qlcw.chunk_codes)
  _qlcw_encode       per chunk: raw planes (byte planes, then the R % 8 high bits packed)
                     for coded and raw chunks; raw chunks: fields packed at w bits; coded
                     chunks: 4-bit prefixes packed 8 per 4 bytes, suffix bit offsets by
                     tl.cumsum.  A suffix (<= 16 bits, so at most 3 bytes from its start
                     byte) is written without atomics: byte B of the chunk is owned by the
                     last symbol that starts in a byte <= B, i.e. symbol i owns the bytes
                     from its start byte b_i to the start byte of symbol i + 1 (the last
                     one: to the chunk's end).  Every part of the symbols before i lies in
                     bytes <= b_i, so the owner knows P(B) = (sum of the chunk's bytes
                     0..B) mod 256 = (exclusive tl.cumsum of the parts) + its own parts up
                     to B, and stores it into a scratch buffer
  _qlc_suffix_diff   (shared with triton_qlc) per coded chunk: byte B = P(B) - P(B-1) mod 256
  _qlcw_decode       per chunk (with its code's tables), per element: its symbol's 4-bit
                     prefix -> width (a 16-entry table), bit offsets by tl.cumsum over the symbols (the second element
                     of a pair adds width 0), a 24-bit window of three byte gathers, rank =
                     first rank of the area + suffix, the rank table gather (or the suffix
                     itself in the escape area), the element's field of the symbol; fields
                     of raw chunks unpacked; raw planes; merge, store.  Errors (prefixes vs
                     the suffix byte count, rank past the table) OR into one int32 per call
                     with tl.atomic_or; reads are masked to the chunk's own bytes, so corrupt
                     planes never read out of bounds.

Limits as in triton_qlc: int32/int64 arithmetic, uint8 only for bytes, int32 atomics only
(except the histogram of a tensor of 2^31 or more symbols), at most 65535 programs.
Chunk sizes that are not a multiple of 16 (streams the reader refuses), empty tensors
(the torch path raises) and CodeSets of several codes whose symbol bits differ from the
split's (the torch path indexes their concatenated tables by code << S | symbol) are
handed to the torch path.
"""
from __future__ import annotations

import os

import numpy as np
import torch
import triton
import triton.language as tl

from qlccomm import qlc, qlcw, raw_shifts
from qlccomm.errors import EncoderError

from . import common
from .triton_qlc import MAX_PROGRAMS, NUM_WARPS, _chunk_row, _pack_store, _qlc_suffix_diff, _unpack

__all__ = ["encode_section", "decode_section", "histogram", "chunk_histograms"]

# Elements per step inside a chunk (see triton_qlc.SUB_MAX); tests set a small value to
# exercise the offsets carried between steps.  At least 16: 8 symbols of pairs.
SUB_MAX = 4096 if os.environ.get("TRITON_INTERPRET") == "1" else 1024

# _qlcw_hist's histogram copies, one per lane of a warp (2^S int32 each: 8 MiB for pair symbols)
HIST_COPIES = 32

# the kernel table's columns (int32 per symbol)
ENC_AREA_SHIFT, ENC_WIDTH_SHIFT, ENC_BAD_SHIFT = 16, 20, 25
# the chunk table's column holding each chunk's code (the spare one; rows of 8 int64, as _chunk_row reads)
assert common.TAB_COLS == 8
TAB_CODE = tl.constexpr(common.TAB_COLS - 1)
# _qlcw_stats' lowest raw bit of a chunk with none set: 2^31 - 1, not a power of two
NO_LOW_BIT = tl.constexpr(0x7FFFFFFF)


def _sub(chunk: int) -> int:
    return max(16, min(SUB_MAX, triton.next_power_of_2(chunk)))


def _grid(nchunks: int) -> int:
    return max(1, min(nchunks, MAX_PROGRAMS))


@triton.jit
def _symbols(x_ptr, base, jj, elems, LO: tl.constexpr, W: tl.constexpr, G: tl.constexpr):
    """Symbols number jj of a chunk (fields of elements G*jj .. G*jj+G-1; elements at or
    past `elems` read as 0), whether any of their bits is set, and their words (int32; the
    first twice for G = 1)."""
    e0 = G * jj
    x0 = tl.load(x_ptr + base + e0, mask=e0 < elems, other=0).to(tl.int32)
    sym = (x0 >> LO) & ((1 << W) - 1)
    nz = x0 != 0
    x1 = x0
    if G == 2:
        x1 = tl.load(x_ptr + base + e0 + 1, mask=e0 + 1 < elems, other=0).to(tl.int32)
        sym |= ((x1 >> LO) & ((1 << W) - 1)) << W
        nz |= x1 != 0
    return sym, nz, x0, x1


@triton.jit
def _chunk_set_bits(x_ptr, base, elems, chunk, SUB: tl.constexpr):
    """How many of the chunk's `elems` elements from `base` have a set bit."""
    nz = 0
    for s in range(0, chunk, SUB):
        idx = s + tl.arange(0, SUB)
        x = tl.load(x_ptr + base + idx, mask=idx < elems, other=0)
        nz += tl.sum((x != 0).to(tl.int32), axis=0)
    return nz


@triton.jit
def _qlcw_hist(x_ptr, hist_ptr, n, chunk, nchunks, nprog,
               LO: tl.constexpr, W: tl.constexpr, G: tl.constexpr, SUB: tl.constexpr, COPIES: tl.constexpr):
    """hist[i % COPIES, s] += number of symbols s at lane i of a step in the chunks with a set
    bit (padding excluded); hist is [COPIES, 2^S]."""
    SUBC: tl.constexpr = SUB // G
    copy = (tl.arange(0, SUBC) % COPIES) << (W * G)
    for c in range(tl.program_id(0).to(tl.int64), nchunks, nprog):   # int64: offsets past 2^31
        base = c * chunk
        elems = tl.minimum(n - base, chunk)
        ncodes = (elems + G - 1) // G
        nz = _chunk_set_bits(x_ptr, base, elems, chunk, SUB)
        if nz > 0:
            for s in range(0, chunk // G, SUBC):
                jj = s + tl.arange(0, SUBC)
                sym, _, _, _ = _symbols(x_ptr, base, jj, elems, LO, W, G)
                tl.atomic_add(hist_ptr + copy + sym, tl.full([SUBC], 1, hist_ptr.dtype.element_ty), mask=jj < ncodes,
                              sem="relaxed")


@triton.jit
def _qlcw_chunk_hist(x_ptr, hist_ptr, n, chunk, nchunks, nprog, LO: tl.constexpr, W: tl.constexpr,
                     SUB: tl.constexpr):
    """hist[c << W | field] += 1 for each element of the chunks c with a set bit."""
    for c in range(tl.program_id(0).to(tl.int64), nchunks, nprog):   # int64: offsets past 2^31
        base = c * chunk
        elems = tl.minimum(n - base, chunk)
        nz = _chunk_set_bits(x_ptr, base, elems, chunk, SUB)
        if nz > 0:
            for s in range(0, chunk, SUB):
                idx = s + tl.arange(0, SUB)
                valid = idx < elems
                x = tl.load(x_ptr + base + idx, mask=valid, other=0).to(tl.int32)
                tl.atomic_add(hist_ptr + (c << W) + ((x >> LO) & ((1 << W) - 1)),
                              tl.full([SUB], 1, tl.int32), mask=valid, sem="relaxed")


@triton.jit
def _raw_low_bit(x, RSH: tl.constexpr, RHI: tl.constexpr, RLO: tl.constexpr):
    """The lowest set bit of the raw values of the words x (int32), NO_LOW_BIT where none is set."""
    r = ((x >> RSH) & RHI) | (x & RLO)          # < 2^31: at most 31 raw bits
    return tl.min(tl.where(r != 0, r & -r, NO_LOW_BIT), axis=0)


@triton.jit
def _qlcw_stats(x_ptr, enc_ptr, code_ptr, stat_ptr, low_ptr, n, chunk, nchunks, nprog,
                LO: tl.constexpr, W: tl.constexpr, G: tl.constexpr, S: tl.constexpr, RSH: tl.constexpr,
                RHI: tl.constexpr, RLO: tl.constexpr, RAW: tl.constexpr, SUB: tl.constexpr):
    """stat[c] = 4 * (sum of chunk c's suffix widths) + 2 * (a symbol its code cannot
    write) + (any bit of chunk c set); padding symbols of a short last chunk left out.
    Chunk c's code is code[c]: its kernel table is enc[code[c] << S : (code[c] + 1) << S].
    RAW (the split has raw bits): low[c] = the lowest set bit of the OR of chunk c's raw
    values (qlccomm.raw_shifts.choose), NO_LOW_BIT when none is set."""
    SUBC: tl.constexpr = SUB // G
    for c in range(tl.program_id(0).to(tl.int64), nchunks, nprog):   # int64: offsets past 2^31
        base = c * chunk
        enc = enc_ptr + (tl.load(code_ptr + c).to(tl.int64) << S)
        elems = tl.minimum(n - base, chunk)
        ncodes = (elems + G - 1) // G
        bits = 0
        nz = 0
        bad = 0
        low = NO_LOW_BIT
        for s in range(0, chunk // G, SUBC):
            jj = s + tl.arange(0, SUBC)
            valid = jj < ncodes
            sym, nzs, x0, x1 = _symbols(x_ptr, base, jj, elems, LO, W, G)
            e = tl.load(enc + sym, mask=valid, other=0)
            bits += tl.sum((e >> 20) & 31, axis=0)
            bad |= tl.max(((e >> 25) & 1).to(tl.int32), axis=0)
            nz |= tl.max(nzs.to(tl.int32), axis=0)
            if RAW:                                 # elements past `elems` read as 0: no bit
                low = tl.minimum(low, tl.minimum(_raw_low_bit(x0, RSH, RHI, RLO), _raw_low_bit(x1, RSH, RHI, RLO)))
        tl.store(stat_ptr + c, bits * 4 + bad * 2 + nz)
        if RAW:
            tl.store(low_ptr + c, low)


@triton.jit
def _store_raw(out_ptr, raw, valid, r0, plane, top_base, top_limit,
               RAW_BYTES: tl.constexpr, RAW_REST: tl.constexpr, SUB: tl.constexpr):
    """The raw values of SUB elements (where `valid`) into the raw planes: byte plane p at
    r0 + p * plane (per element), then the RAW_REST high bits packed at top_base, bytes at
    or past top_limit (relative to it) unwritten."""
    off = r0
    for p in tl.static_range(RAW_BYTES):
        tl.store(out_ptr + off, ((raw >> (8 * p)) & 255).to(tl.uint8), mask=valid)
        off += plane
    if RAW_REST > 0:
        top = tl.where(valid, (raw >> (8 * RAW_BYTES)) & ((1 << RAW_REST) - 1), 0)
        _pack_store(out_ptr, top_base, top, top_limit, RAW_REST, SUB)


@triton.jit
def _qlcw_encode(x_ptr, enc_ptr, tab_ptr, shift_ptr, out_ptr, scr_ptr, chunk, nchunks, nprog,
                 pbase, fbase, rbase, n_nz,
                 LO: tl.constexpr, W: tl.constexpr, G: tl.constexpr, RSH: tl.constexpr, RHI: tl.constexpr,
                 RLO: tl.constexpr, RAW_BYTES: tl.constexpr, RAW_REST: tl.constexpr, SHIFTED: tl.constexpr,
                 S: tl.constexpr, SUB: tl.constexpr):
    """SHIFTED: raw shifts (shift[c]); each chunk's raw planes from byte roff of the raw planes."""
    SUBC: tl.constexpr = SUB // G
    plane = tl.zeros([], tl.int64) + n_nz          # int64: byte plane p starts at p * n_nz
    for c in range(tl.program_id(0).to(tl.int64), nchunks, nprog):   # int64: offsets past 2^31
        mode, elems, poff, yoff, soff, slen, roff = _chunk_row(tab_ptr, c)
        enc = enc_ptr + (tl.load(tab_ptr + c * 8 + TAB_CODE) << S)   # the chunk's code's kernel table
        if mode != 0:
            base = c * chunk
            ncodes = (elems + G - 1) // G
            carry = 0          # suffix bits before this step
            tsum = 0           # sum of the suffix parts (bytes) before this step
            for s in range(0, chunk // G, SUBC):
                se = G * s                                  # first element of the step
                idx = se + tl.arange(0, SUB)
                valid = idx < elems
                x = tl.load(x_ptr + base + idx, mask=valid, other=0).to(tl.int32)
                if SHIFTED:
                    sh = tl.load(shift_ptr + c)
                    rw = 8 * RAW_BYTES + RAW_REST - sh              # the chunk's raw bits
                    pl = rw >> 3
                    tb = rw & 7
                    raw = (((x >> RSH) & RHI) | (x & RLO)) >> sh
                    r0 = rbase + roff
                    for p in tl.static_range(RAW_BYTES):
                        if p < pl:
                            tl.store(out_ptr + r0 + p * elems + idx, ((raw >> (8 * p)) & 255).to(tl.uint8),
                                     mask=valid)
                    if tb > 0:
                        top = tl.where(valid, (raw >> (8 * pl)) & ((1 << tb) - 1), 0)
                        _pack_store(out_ptr, r0 + pl * elems + tb * (se // 8), top,
                                    (tb * elems + 7) // 8 - tb * (se // 8), tb, SUB)
                elif RAW_BYTES + RAW_REST > 0:
                    _store_raw(out_ptr, ((x >> RSH) & RHI) | (x & RLO), valid, rbase + roff + idx, plane,
                               rbase + plane * RAW_BYTES + ((RAW_REST * roff) >> 3) + RAW_REST * (se // 8),
                               (RAW_REST * elems + 7) // 8 - RAW_REST * (se // 8), RAW_BYTES, RAW_REST, SUB)
                if mode == 2:
                    fld = tl.where(valid, (x >> LO) & ((1 << W) - 1), 0)
                    if W == 8:
                        tl.store(out_ptr + fbase + yoff + idx, fld.to(tl.uint8), mask=valid)
                    else:
                        _pack_store(out_ptr, fbase + ((yoff * W) >> 3) + W * (se // 8), fld,
                                    (W * elems + 7) // 8 - W * (se // 8), W, SUB)
                if mode == 1:
                    jj = s + tl.arange(0, SUBC)
                    cv = jj < ncodes
                    sym, _, _, _ = _symbols(x_ptr, base, jj, elems, LO, W, G)
                    e = tl.load(enc + sym, mask=cv, other=0)
                    e = tl.where(cv, e, 0)
                    sfx = e & 0xFFFF
                    w = (e >> 20) & 31
                    _pack_store(out_ptr, pbase + poff + s // 2, (e >> 16) & 15, (4 * ncodes + 7) // 8 - s // 2,
                                4, SUBC)
                    o = carry + tl.cumsum(w, axis=0) - w            # bit offset of each suffix
                    b = o >> 3                                      # its start byte
                    sv = sfx << (o & 7)                             # <= 23 bits: bytes b, b+1, b+2
                    p0 = sv & 255
                    p1 = (sv >> 8) & 255
                    p2 = sv >> 16
                    t = p0 + p1 + p2
                    before = tsum + tl.cumsum(t, axis=0) - t        # all parts of the earlier suffixes
                    end = tl.where(jj == ncodes - 1, slen, (o + w) >> 3)   # owned: [b, end)
                    q0 = before + p0
                    q1 = q0 + p1
                    tl.store(scr_ptr + soff + b, (q0 & 255).to(tl.uint8), mask=cv & (b < end))
                    tl.store(scr_ptr + soff + b + 1, (q1 & 255).to(tl.uint8), mask=cv & (b + 1 < end))
                    tl.store(scr_ptr + soff + b + 2, ((q1 + p2) & 255).to(tl.uint8), mask=cv & (b + 2 < end))
                    carry += tl.sum(w, axis=0)
                    tsum += tl.sum(t, axis=0)


@triton.jit
def _qlcw_decode(data_ptr, wid_ptr, first_ptr, rank_ptr, info_ptr, tab_ptr, shift_ptr, out_ptr, err_ptr, chunk,
                 nchunks, nprog, pbase, pend, fbase, fend, sbase, rbase, rend, n_nz,
                 LO: tl.constexpr, W: tl.constexpr, G: tl.constexpr, RSH: tl.constexpr, RHI: tl.constexpr,
                 RLO: tl.constexpr, RAW_BYTES: tl.constexpr, RAW_REST: tl.constexpr, SHIFTED: tl.constexpr,
                 ESC: tl.constexpr, SUB: tl.constexpr):
    """Code k (the chunk's, column TAB_CODE): widths wid[16k : 16k + 16], first ranks
    first[16k : 16k + 16], info[3k : 3k + 3] = (table size T, table offset in rank, escape
    flag); ESC: some code escapes.  SHIFTED: raw shifts, as _qlcw_encode writes them."""
    plane = tl.zeros([], tl.int64) + n_nz
    for c in range(tl.program_id(0).to(tl.int64), nchunks, nprog):   # int64: offsets past 2^31
        mode, elems, poff, yoff, soff, slen, roff = _chunk_row(tab_ptr, c)
        k = tl.load(tab_ptr + c * 8 + TAB_CODE)
        wid = wid_ptr + 16 * k
        first = first_ptr + 16 * k
        T = tl.load(info_ptr + 3 * k)
        ranks = rank_ptr + tl.load(info_ptr + 3 * k + 1)
        esc = tl.load(info_ptr + 3 * k + 2)
        base = c * chunk
        ncodes = (elems + G - 1) // G
        s0 = sbase + soff
        send = s0 + slen
        carry = 0
        flags = 0
        for s in range(0, chunk, SUB):
            idx = s + tl.arange(0, SUB)
            valid = idx < elems
            fld = tl.zeros([SUB], dtype=tl.int32)
            raw = tl.zeros([SUB], dtype=tl.int32)
            if mode == 1:
                j = idx // G                                # the element's symbol
                cv = j < ncodes
                a = _unpack(data_ptr, pbase + poff, j, pend, cv, 4)
                w = tl.where(cv, tl.load(wid + a), 0)
                if G == 2:
                    wl = tl.where((idx & 1) == 0, w, 0)     # a pair's width counted once
                else:
                    wl = w
                o = carry + tl.cumsum(wl, axis=0) - w       # the symbol's bit offset
                q = s0 + (o >> 3)
                v0 = tl.load(data_ptr + q, mask=cv & (q < send), other=0).to(tl.int32)
                v1 = tl.load(data_ptr + q + 1, mask=cv & (q + 1 < send), other=0).to(tl.int32)
                v2 = tl.load(data_ptr + q + 2, mask=cv & (q + 2 < send), other=0).to(tl.int32)
                v = ((v0 | (v1 << 8) | (v2 << 16)) >> (o & 7)) & ((1 << w) - 1)
                rank = tl.load(first + a) + v
                if ESC:
                    escaped = (a == 15) & (esc != 0)
                else:
                    escaped = a < 0
                flags |= 2 * tl.max((cv & (rank >= T) & (~escaped)).to(tl.int32), axis=0)
                sym = tl.load(ranks + tl.minimum(rank, T - 1), mask=cv, other=0)
                sym = tl.where(escaped, v, sym)
                if G == 2:
                    sym = sym >> (W * (idx & 1))
                fld = sym & ((1 << W) - 1)
                carry += tl.sum(wl, axis=0)
            if mode == 2:
                fld = _unpack(data_ptr, fbase + ((yoff * W) >> 3), idx, fend, valid, W)
            if SHIFTED:
                if mode != 0:
                    sh = tl.load(shift_ptr + c)
                    rw = 8 * RAW_BYTES + RAW_REST - sh
                    pl = rw >> 3
                    tb = rw & 7
                    r0 = rbase + roff
                    for p in tl.static_range(RAW_BYTES):
                        if p < pl:
                            raw |= tl.load(data_ptr + r0 + p * elems + idx, mask=valid, other=0).to(tl.int32) << (8 * p)
                    if tb > 0:
                        bit = idx * tb
                        q = r0 + pl * elems + (bit >> 3)
                        b0 = tl.load(data_ptr + q, mask=valid & (q < rend), other=0).to(tl.int32)
                        b1 = tl.load(data_ptr + q + 1, mask=valid & (q + 1 < rend), other=0).to(tl.int32)
                        raw |= (((b0 | (b1 << 8)) >> (bit & 7)) & ((1 << tb) - 1)) << (8 * pl)
                    raw = raw << sh
            elif RAW_BYTES + RAW_REST > 0:
                if mode != 0:
                    off = rbase + roff + idx
                    for p in tl.static_range(RAW_BYTES):
                        raw |= tl.load(data_ptr + off, mask=valid, other=0).to(tl.int32) << (8 * p)
                        off += plane
                    if RAW_REST > 0:
                        raw |= _unpack(data_ptr, rbase + plane * RAW_BYTES + ((RAW_REST * roff) >> 3), idx, rend,
                                       valid, RAW_REST) << (8 * RAW_BYTES)
            val = (fld << LO) | ((raw & RHI) << RSH) | (raw & RLO)
            tl.store(out_ptr + base + idx, val.to(out_ptr.dtype.element_ty), mask=valid)
        if mode == 1:
            flags |= ((carry + 7) // 8 != slen).to(tl.int32)
        tl.atomic_or(err_ptr, flags)


# ---------------------------------------------------------------------------------------------------
# host side
def _kernel_table(code: qlcw.WideCode) -> np.ndarray:
    """Per symbol (int32 [2^S]): suffix | area << 16 | suffix width << 20 | unwritable << 25.
    Built from the rank table alone (O(T) plus one fill of 2^S), as native_qlcw._enc_table."""
    S = code.symbol_bits
    if code.escape:                     # every symbol writable in the escape area, its suffix itself
        enc = np.arange(1 << S, dtype=np.int32) | np.int32((qlcw.ESCAPE_AREA << ENC_AREA_SHIFT) | (S << ENC_WIDTH_SHIFT))
    else:
        enc = np.full(1 << S, 1 << ENC_BAD_SHIFT, np.int32)
    suffix, area, width = code.rank_codes()
    enc[code.table] = suffix | (area << ENC_AREA_SHIFT) | (width << ENC_WIDTH_SHIFT)
    return enc


def _layout(f: qlcw.Fields, chunk: int, elems: np.ndarray, modes: np.ndarray, suffix_len: np.ndarray,
            chunk_code: np.ndarray, raw_bits: int, start: int, shifts: np.ndarray | None):
    """The kernels' chunk table (int64 [K, common.TAB_COLS]: mode, elements, and each chunk's
    place in the planes: prefix byte, field element, suffix byte, suffix bytes, raw element
    (with raw shifts: raw byte); and its code, TAB_CODE), plane bases (from `start`) and
    sizes (qlcw.plane_sizes), elements of the non-zero chunks."""
    ncodes = (elems + f.g - 1) // f.g
    coded, raw, nz = modes == qlc.MODE_CODED, modes == qlc.MODE_RAW, modes != qlc.MODE_ZERO
    excl = qlc._exclusive_cumsum
    cols = {common.TAB_MODE: modes, common.TAB_ELEMS: elems,
            common.TAB_PREFIX: excl(np.where(coded, qlcw.PREFIX_BITS * (chunk // f.g) // 8, 0)),
            common.TAB_SYMBOL: excl(np.where(raw, elems, 0)),
            common.TAB_SUFFIX: excl(suffix_len), common.TAB_SUFLEN: suffix_len,
            common.TAB_RAW: raw_shifts.raw_starts(np.where(nz, elems, 0), shifts, raw_bits),
            TAB_CODE.value: chunk_code}
    table = np.stack([np.asarray(cols[c], np.int64) for c in range(common.TAB_COLS)], 1)
    sizes = qlcw.plane_sizes(elems, ncodes, modes, suffix_len, f, raw_bits, shifts)
    bases, pos = {}, start
    for name in ("prefix", "field", "suffix", "raw"):
        bases[name] = pos
        pos += sizes[name]
    return np.ascontiguousarray(table), bases, sizes, int(elems[nz].sum())


def _shift_tensor(shifts: np.ndarray | None, dev) -> torch.Tensor:
    """The chunks' raw shifts for the kernels (int32; one unread 0 without raw shifts)."""
    return torch.from_numpy(np.zeros(1, np.int32) if shifts is None else shifts.astype(np.int32)).to(dev)


def _split_consts(f: qlcw.Fields, plan) -> dict:
    return dict(LO=f.lo, W=f.w, G=f.g, RSH=plan.rsh, RHI=plan.rhi, RLO=plan.rlo,
                RAW_BYTES=plan.raw_bits // 8, RAW_REST=plan.raw_bits % 8)


def _histogram(x: torch.Tensor, f: qlcw.Fields, chunk: int) -> np.ndarray:
    """Symbol histogram (int64 [2^S], host) of the non-zero chunks of the words `x`."""
    n = x.numel()
    nchunks = -(-n // chunk)
    # int32 counts unless a count could reach 2^31 (at most one symbol per element)
    hist = torch.zeros(HIST_COPIES, 1 << f.symbol_bits, dtype=torch.int32 if n < (1 << 31) else torch.int64,
                       device=x.device)
    g = _grid(nchunks)
    _qlcw_hist[(g,)](x, hist, n, chunk, nchunks, g, LO=f.lo, W=f.w, G=f.g, SUB=_sub(chunk), COPIES=HIST_COPIES,
                     num_warps=NUM_WARPS)
    return hist.sum(0, dtype=torch.int64).cpu().numpy()


def histogram(flat: torch.Tensor, f: qlcw.Fields, chunk: int = qlc.CHUNK_ELEMS) -> np.ndarray:
    """qlccomm.qlcw.histogram (where that exists): the symbol histogram (int64 [2^S]) of the
    non-zero chunks of `flat`, the one encode_section fits its code to."""
    if chunk < 16 or chunk % 16 or flat.numel() == 0:
        return qlcw.histogram(flat, f, chunk)
    flat = flat.detach().contiguous().view(-1)
    return _histogram(flat.view(f.plan(flat.element_size() * 8).word), f, chunk)


def chunk_histograms(flat: torch.Tensor, lo: int, w: int, chunk: int = qlc.CHUNK_ELEMS) -> np.ndarray:
    """qlccomm.qlcw.chunk_histograms: each chunk's histogram of its elements' fields (lo, w)
    (int64 [K, 2^w], host); all-zero chunks: zero rows."""
    if chunk <= 0 or flat.numel() == 0 or not 1 <= w <= 8 or lo < 0 or lo + w > 8 * flat.element_size():
        return qlcw.chunk_histograms(flat, lo, w, chunk)
    flat = flat.detach().contiguous().view(-1)
    x = flat.view(qlcw.Fields(lo, w, 1).plan(flat.element_size() * 8).word)
    n = x.numel()
    nchunks = -(-n // chunk)
    hist = torch.zeros(nchunks << w, dtype=torch.int32, device=x.device)   # counts <= chunk <= 2^20 per row
    g = _grid(nchunks)
    _qlcw_chunk_hist[(g,)](x, hist, n, chunk, nchunks, g, LO=lo, W=w, SUB=_sub(chunk), num_warps=NUM_WARPS)
    return hist.view(nchunks, 1 << w).cpu().numpy().astype(np.int64)


def _codeset(code, nchunks: int, S: int) -> "qlcw.CodeSet":
    """The section's codes as a CodeSet (qlcw.CodeSet.of: the torch path's ValueErrors)."""
    return qlcw.CodeSet.of(code, nchunks, S)


def encode_section(flat: torch.Tensor, f: qlcw.Fields, code: "qlcw.WideCode | qlcw.CodeSet | None" = None,
                   chunk: int = qlc.CHUNK_ELEMS, reserve: int = 0, into: torch.Tensor | None = None) -> torch.Tensor:
    """qlccomm.qlcw.encode_section on the tensor's device (same bytes, same errors, same
    `reserve` and `into`); a CodeSet names each chunk's code."""
    if chunk < 16 or chunk % 16 or flat.numel() == 0:     # streams no reader takes: the torch path's outcome
        return qlcw.encode_section(flat, f, code, chunk=chunk, reserve=reserve, into=into)
    flat = flat.detach().contiguous().view(-1)
    dev = flat.device
    plan = f.plan(flat.element_size() * 8)
    x = flat.view(plan.word)
    n = x.numel()
    nchunks = -(-n // chunk)
    S = f.symbol_bits
    sub = _sub(chunk)
    g = _grid(nchunks)
    if code is None:
        code = qlcw.build_code(_histogram(x, f, chunk), S)
    cs = _codeset(code, nchunks, S)
    # the codes' kernel tables one after another, each 2^S entries
    enc = torch.from_numpy(np.concatenate([_kernel_table(c) for c in cs.codes])).to(dev)
    chunk_code = np.asarray(cs.chunk_code, np.int64)
    stat = torch.empty(nchunks, dtype=torch.int32, device=dev)
    low = torch.empty(nchunks, dtype=torch.int32, device=dev)
    _qlcw_stats[(g,)](x, enc, torch.from_numpy(chunk_code.astype(np.int32)).to(dev), stat, low, n, chunk, nchunks, g,
                      LO=f.lo, W=f.w, G=f.g, S=S, RSH=plan.rsh, RHI=plan.rhi, RLO=plan.rlo, RAW=plan.raw_bits > 0,
                      SUB=sub, num_warps=NUM_WARPS)
    stat = stat.cpu().numpy().astype(np.int64)
    nonzero = (stat & 1) != 0
    if bool((nonzero & ((stat & 2) != 0)).any()):
        raise EncoderError("QLCW code cannot write a symbol of the tensor")
    elems = qlc.chunk_elems(n, chunk, nchunks, "numpy")
    modes, suffix_len = qlcw.choose_modes(elems, (elems + f.g - 1) // f.g, stat >> 2, nonzero, f.w)
    modes, suffix_len = modes.astype(np.int64), suffix_len.astype(np.int64)
    shifts = None
    if plan.raw_bits:
        low = low.cpu().numpy().astype(np.int64)
        shifts = raw_shifts.choose(elems, nonzero, np.where(low == NO_LOW_BIT.value, 0, low), plan.raw_bits)
    head = qlcw.section_meta(f, cs, chunk, modes, suffix_len, shifts)
    table, bases, sizes, n_nz = _layout(f, chunk, elems, modes, suffix_len, chunk_code, plan.raw_bits, len(head),
                                        shifts)
    total = len(head) + sum(sizes.values())
    buf = common.section_buffer(reserve + total, into, dev)
    out = buf[reserve:]
    out[: len(head)].copy_(torch.from_numpy(head))
    table = torch.from_numpy(table).to(dev)
    scratch = torch.empty(max(sizes["suffix"], 1), dtype=torch.uint8, device=dev)
    _qlcw_encode[(g,)](x, enc, table, _shift_tensor(shifts, dev), out, scratch, chunk, nchunks, g, bases["prefix"],
                       bases["field"], bases["raw"], n_nz, **_split_consts(f, plan), SHIFTED=shifts is not None, S=S,
                       SUB=sub, num_warps=NUM_WARPS)
    if sizes["suffix"]:
        # suffix bytes of a chunk: at most 2 per symbol
        _qlc_suffix_diff[(g,)](scratch, table, out, bases["suffix"], 2 * (chunk // f.g), nchunks, g,
                               SUB=_sub(2 * (chunk // f.g)), num_warps=NUM_WARPS)
    return buf


def decode_section(sec: qlcw.QLCWSection, data: torch.Tensor, header, out: torch.Tensor | None = None) -> torch.Tensor:
    """qlccomm.qlcw.decode_section on the stream's device (same result, same errors, same `out`);
    each coded chunk with its code (sec.codes[sec.chunk_code[c]])."""
    dev = data.device
    f, chunk, n = sec.fields, sec.chunk, sec.numel
    plan = sec.plan
    modes, suffix_len = np.asarray(sec.modes, np.int64), np.asarray(sec.suffix_len, np.int64)
    nchunks = modes.size
    codes = tuple(sec.codes)
    # parse_section checked the chunk codes; chunks that are not coded never read theirs
    chunk_code = np.where(modes == qlc.MODE_CODED, np.asarray(sec.chunk_code, np.int64), 0)
    assert chunk_code.size == 0 or (0 <= chunk_code.min() and chunk_code.max() < len(codes)), "chunk codes"
    elems = qlc.chunk_elems(n, chunk, nchunks, "numpy")
    table, bases, sizes, n_nz = _layout(f, chunk, elems, modes, suffix_len, chunk_code, plan.raw_bits,
                                        sec.planes_offset, sec.shifts)
    assert sizes == sec.plane_bytes, (sizes, sec.plane_bytes)   # parse_section checked the stream
    ends = {k: bases[k] + sizes[k] for k in bases}
    data = data.contiguous()
    flat = common.decode_target(n, header.dtype, out, dev)
    y = flat.view(plan.word)
    sizes_t = np.array([c.table.size for c in codes], np.int64)
    info = np.stack([sizes_t, qlc._exclusive_cumsum(sizes_t), [int(c.escape) for c in codes]], 1)
    widths = torch.from_numpy(np.asarray([c.widths for c in codes], np.int32).reshape(-1)).to(dev)
    firsts = torch.from_numpy(np.concatenate([c.firsts() for c in codes]).astype(np.int32)).to(dev)
    ranks = torch.from_numpy(np.concatenate([np.asarray(c.table) for c in codes]).astype(np.int32)).to(dev)
    info = torch.from_numpy(info.astype(np.int32).reshape(-1)).to(dev)
    table = torch.from_numpy(table).to(dev)
    err = torch.zeros(1, dtype=torch.int32, device=dev)
    g = _grid(nchunks)
    _qlcw_decode[(g,)](data, widths, firsts, ranks, info, table, _shift_tensor(sec.shifts, dev), y, err, chunk,
                       nchunks, g, bases["prefix"], ends["prefix"], bases["field"], ends["field"], bases["suffix"],
                       bases["raw"], ends["raw"], n_nz,
                       **_split_consts(f, plan), SHIFTED=sec.shifts is not None, ESC=any(c.escape for c in codes), SUB=_sub(chunk),
                       num_warps=NUM_WARPS)
    flags = int(err.item())
    if flags:
        raise qlc.decode_error(flags, plan)
    return flat
