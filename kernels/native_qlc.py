"""QLC on CPU tensors: fused native kernels compiled by numba.

Same contract as qlccomm.qlc (encode_section / decode_section, same bytes, same
errors).  Chunks are independent, so every kernel is a `prange` over chunks:

    qlc_stats   per chunk: is any bit set, and the sum of its suffix widths
                (adaptive mode: the chunk's symbol histogram instead)
    host        modes, plane offsets and the section metadata (kernels/common.py)
    qlc_encode  per chunk: raw planes, then prefix + suffix (coded) or symbols (raw)
                written straight into the section at its offsets
    qlc_decode  per chunk: symbols, then the raw bits merged in; errors as per-chunk
                flags, raised on the host with the torch path's messages

Inside a chunk: encoding gathers suffixes in a 64-bit accumulator flushed 32 bits
at a time; decoding reads 8 unaligned bytes per 4 codes, takes the 4 codes' bit
offsets from one lookup on their 12 prefix bits (the widths follow from the
prefixes alone) and their symbols from a table on area and 8 suffix bits, so the
only serial dependency between codes is one add.  Every read is bounded by the
chunk's own bytes (bytes past them read as zero), so corrupt planes cannot make it
read out of bounds; parse_section validated every offset and size before this runs.

Why numba rather than a compiled extension: the package stays pure Python (no
compiler or build step at install time, the same wheel everywhere, `pip install -e`
just works), the kernels live next to the Triton ones in the same language, and
`cache=True` keeps the JIT out of every process but the first (the cold compile of
all specialisations takes tens of seconds; a cached load, under a second).  There are
three specialisations per kernel at most (8-, 16- and 32-bit elements); every plan
is a set of shifts and masks passed as integers (qlccomm.split.Plan).  The
cost: numba cannot be told to skip its negative-index checks, so the hot loops
index with unsigned integers, and unaligned word loads/stores need a small LLVM
intrinsic (_u64_at, _u64_put).

The parallel kernels are compiled with `nogil=True`: while one runs, other Python
threads (a communication thread, the training loop) keep going; calls into numba's
workqueue pool from several threads are serialised by `_LOCK`.  Each is also compiled
serially (ParallelKernel) for one-thread calls.
"""
from __future__ import annotations

import os
import sys
import threading
import types as types_mod

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic

from qlccomm import qlc
from qlccomm.codebook import Codebook, derived_table
from qlccomm.errors import EncoderError
from qlccomm.split import Plan

from . import common
from .common import TAB_ELEMS, TAB_MODE, TAB_PREFIX, TAB_RAW, TAB_SUFFIX, TAB_SUFLEN, TAB_SYMBOL

_UNSIGNED = {0: np.uint8, 1: np.uint16, 2: np.uint32}

# numba's own thread pool, unless the user chose a layer: its "omp" layer shares libgomp
# with torch and changes torch's intra-op thread count behind the user's back (measured:
# torch.set_num_threads(1), one kernel call, torch.get_num_threads() == 2).  The kernels
# take as many threads as torch is set to use (_threads), so torchrun's 1 stays 1.
if "NUMBA_THREADING_LAYER" not in os.environ:
    numba.config.THREADING_LAYER = "workqueue"
# the workqueue layer must not be entered from two threads at once
_LOCK = threading.Lock()

if sys.byteorder != "little":   # the unaligned word loads/stores below assume little-endian
    raise ImportError("the native QLC kernels need a little-endian CPU")


class ParallelKernel:
    """A `prange` kernel compiled twice: for numba's thread pool, and serial (prange runs as
    range) for calls on one thread, which skip the pool's launch (it can cost more than
    the whole statistics pass of a 1 MiB slice).  Calls pick by
    numba's current thread count, which the callers set under _LOCK."""

    def __init__(self, fn):
        self.parallel = njit(cache=True, parallel=True, nogil=True)(fn)
        # a copy under its own name: numba's on-disk cache keys kernels by name and bytecode
        copy = types_mod.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial", fn.__defaults__,
                                      fn.__closure__)
        copy.__qualname__ = fn.__qualname__ + "_serial"
        self.serial = njit(cache=True, nogil=True)(copy)
        self.__doc__, self.__name__ = fn.__doc__, fn.__name__

    def __call__(self, *args):
        return (self.parallel if numba.get_num_threads() > 1 else self.serial)(*args)


@intrinsic
def _u64_at(typingctx, arr, idx):
    """The 8 bytes arr[idx:idx+8] as one little-endian int64 (an unaligned load; no bounds check)."""
    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), ir.IntType(64).as_pointer())
        return builder.load(ptr, align=1)
    return types.int64(arr, types.intp), codegen


@intrinsic
def _u64_put(typingctx, arr, idx, val):
    """Store int64 `val` little-endian at arr[idx:idx+8] (unaligned; no bounds check)."""
    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), ir.IntType(64).as_pointer())
        builder.store(args[2], ptr, align=1)
        return context.get_dummy_value()
    return types.none(arr, types.intp, types.int64), codegen


# ---------------------------------------------------------------------------------------------------
# Every inner loop runs over per-chunk slices (xs = x[lo:hi], ...) indexed from 0: LLVM then
# knows the indices are non-negative and drops numba's negative-index wraparound checks,
# which otherwise cost more than the work itself.

# one raw byte plane (bfloat16: sign and 7 mantissa bits; float16 high-byte plan: the low
# byte), shared with native_enec.  The bfloat16 masks as constants let LLVM vectorise the
# loops on narrow lanes (measured: the decode merge 2x faster than with runtime masks).
@njit(cache=True, inline="always")
def _raw8_split(xs, p0, count, rsh, rhi, rlo):
    """p0[i] = the raw byte of element i, i < count."""
    if rsh == 8 and rhi == 0x80 and rlo == 0x7F:
        for i in range(count):
            v = xs[i]
            p0[i] = ((v >> np.uint16(8)) & np.uint16(0x80)) | (v & np.uint16(0x7F))
    else:
        for i in range(count):
            v = xs[i]
            p0[i] = ((v >> rsh) & rhi) | (v & rlo)


@njit(cache=True, inline="always")
def _raw8_merge(o, p0, count, rsh, rhi, rlo):
    """o[i] |= the bits of raw byte p0[i] in place, i < count."""
    if rsh == 8 and rhi == 0x80 and rlo == 0x7F:
        for i in range(count):
            r = np.uint16(p0[i])
            o[i] |= ((r & np.uint16(0x80)) << np.uint16(8)) | (r & np.uint16(0x7F))
    else:
        for i in range(count):
            r = np.int64(p0[i])
            o[i] |= ((r & rhi) << rsh) | (r & rlo)


# statistics
@njit(cache=True)
def _chunk_or(xs):
    """The OR of the chunk's words."""
    acc = 0
    for i in range(xs.shape[0]):
        acc |= xs[i]
    return acc


@njit(cache=True)
def _chunk_any(xs):
    return _chunk_or(xs) != 0


@njit(cache=True)
def _chunk_bits(xs, ssh, wsuf):
    b0 = 0
    b1 = 0
    m = xs.shape[0]
    half = m >> 1
    for i in range(half):
        k = np.uintp(2 * i)
        b0 += wsuf[np.uintp(xs[k] >> ssh)]
        b1 += wsuf[np.uintp(xs[k + np.uintp(1)] >> ssh)]
    if m & 1:
        b0 += wsuf[np.uintp(xs[m - 1] >> ssh)]
    return b0 + b1


@njit(cache=True)
def _chunk_hist(xs, ssh, smask, hrow):
    h = np.zeros((4, 256), np.int32)            # 4 sub-histograms: no store-to-load stalls
    m = xs.shape[0]
    quad = m >> 2
    for i in range(quad):
        k = np.uintp(4 * i)
        h[0, np.uintp((xs[k] >> ssh) & smask)] += 1
        h[1, np.uintp((xs[k + np.uintp(1)] >> ssh) & smask)] += 1
        h[2, np.uintp((xs[k + np.uintp(2)] >> ssh) & smask)] += 1
        h[3, np.uintp((xs[k + np.uintp(3)] >> ssh) & smask)] += 1
    for i in range(4 * quad, m):
        h[0, np.uintp((xs[i] >> ssh) & smask)] += 1
    for s in range(256):
        hrow[s] = h[0, s] + h[1, s] + h[2, s] + h[3, s]


@ParallelKernel
def qlc_stats(x, chunk, ssh, smask, wsuf, want_hist, bits, nz, hist):
    """Per chunk c: nz[c] = any bit set; bits[c] = sum of suffix widths (wsuf by x >> ssh,
    see _wide), or with want_hist: hist[c] = symbol histogram (left zero for all-zero
    chunks)."""
    n = x.shape[0]
    for c in prange(bits.shape[0]):
        lo = c * chunk
        xs = x[lo:min(lo + chunk, n)]
        nonzero = _chunk_any(xs)
        nz[c] = nonzero
        if want_hist:
            if nonzero:
                _chunk_hist(xs, ssh, smask, hist[c])
        else:
            bits[c] = _chunk_bits(xs, ssh, wsuf)


@ParallelKernel
def qlc_bits_from_hist(hist, wsuf, bits):
    for c in prange(hist.shape[0]):
        b = 0
        for s in range(256):
            b += hist[c, s] * np.int64(wsuf[s])
        bits[c] = b


# ---------------------------------------------------------------------------------------------------
# encode
@njit(cache=True, inline="always")
def _store_le(dst, p, word, nbytes):
    """The low `nbytes` (<= 8) bytes of word, little-endian, at dst[p:], clipped to dst's end.
    With room in dst it stores 8 bytes at once: the bytes past `nbytes` are the word's
    higher bytes, which the callers either overwrite next or want anyway."""
    if p + 8 <= dst.shape[0]:
        _u64_put(dst, p, word)
    else:
        for t in range(nbytes):
            if p + t < dst.shape[0]:
                dst[p + t] = (word >> (8 * t)) & 0xFF


@njit(cache=True)
def _enc_raw_planes(xs, rsh, rhi, rlo, raw_bits, p0, p1, p2, top):
    """Raw bits of the chunk's elements: byte planes p0 (, p1, p2), or p0 + 3-bit `top`."""
    m = xs.shape[0]
    if raw_bits == 8:
        _raw8_split(xs, p0, m, rsh, rhi, rlo)
    elif raw_bits == 24:
        for i in range(m):
            v = xs[i]
            r = ((v >> rsh) & rhi) | (v & rlo)
            p0[i] = r & 0xFF
            p1[i] = (r >> 8) & 0xFF
            p2[i] = (r >> 16) & 0xFF
    else:  # 11 bits: a byte plane, then the top 3 bits packed (8 values -> 3 bytes)
        for g in range(0, m, 8):
            word = 0
            for j in range(min(8, m - g)):
                v = xs[g + j]
                r = ((v >> rsh) & rhi) | (v & rlo)
                p0[g + j] = r & 0xFF
                word |= ((r >> 8) & 7) << (3 * j)
            _store_le(top, 3 * (g >> 3), word, 3)


@njit(cache=True)
def _enc_symbols(xs, ssh, smask, sym_bits, dst):
    m = xs.shape[0]
    if sym_bits == 8:
        for i in range(m):
            dst[i] = (xs[i] >> ssh) & smask
    else:  # 5 bits: 8 values -> 5 bytes
        for g in range(0, m, 8):
            word = 0
            for j in range(min(8, m - g)):
                word |= np.int64((xs[g + j] >> ssh) & smask) << (5 * j)
            _store_le(dst, 5 * (g >> 3), word, 5)


@njit(cache=True, inline="always")
def _enc_code(xs, k, ssh, enc, acc, nacc, pw, j):
    """Code of element k, the j-th of its 8-code group: suffix into acc at bit nacc,
    area into pw at bits 3j.  enc[symbol] = suffix | area << 8 | width << 12."""
    e = np.int64(enc[np.uintp(xs[k] >> ssh)])
    return acc | ((e & 0xFF) << nacc), nacc + ((e >> 12) & 15), pw | (((e >> 8) & 7) << (3 * j))


@njit(cache=True, inline="always")
def _enc_group(xs, g, ssh, smask, sym_bits, enc, ptab, pairs, acc, nacc, q, pre, suf):
    """The 8 codes of group g, with unchecked stores (the caller checked the room); returns
    acc, nacc, q.  `pairs` (a constant at each call): two codes per lookup in ptab
    (_pair_table: index s0 | s1 << sym_bits), else one per lookup in enc."""
    pw = 0
    for half in range(2):
        if pairs:
            for j in range(2):
                k = np.uintp(g + 4 * half + 2 * j)
                s = ((xs[k] >> ssh) & smask) | (((xs[k + np.uintp(1)] >> ssh) & smask) << sym_bits)
                t = np.int64(ptab[np.uintp(s)])
                acc |= (t & 0xFFFF) << nacc
                nacc += (t >> 16) & 31
                pw |= ((t >> 21) & 63) << (6 * (2 * half + j))
        else:
            for j in range(4 * half, 4 * half + 4):
                acc, nacc, pw = _enc_code(xs, np.uintp(g + j), ssh, enc, acc, nacc, pw, j)
        if nacc >= 32:
            _u64_put(suf, q, acc)
            q += 4
            acc >>= 32
            nacc -= 32
    _u64_put(pre, 3 * (g >> 3), pw)
    return acc, nacc, q


@njit(cache=True)
def _enc_coded(xs, ssh, smask, sym_bits, enc, ptab, pre, suf):
    """Prefixes into `pre` (3 bits per code), suffixes into `suf`; returns the suffix bits.

    Suffixes gather in a 64-bit accumulator (< 64 bits pending: bit 63 is never set)
    flushed 32 bits at a time.  Groups of 8 codes run in a loop of unchecked 8-byte
    stores while both slices have room for them (two codes per table lookup when ptab
    is given); the last groups and the short tail of a last chunk store byte by byte
    near the slices' ends.  No store leaves the chunk's own slices (neighbouring chunks
    may be written by other threads)."""
    m = xs.shape[0]
    acc = 0
    nacc = 0
    q = 0
    g = 0
    # fast: room for the group's 8-byte prefix store and two 8-byte suffix flushes
    g_room = min(m & ~7, max(0, (pre.shape[0] - 8) // 3) * 8)
    if ptab.shape[0]:
        while g < g_room and q + 12 <= suf.shape[0]:
            acc, nacc, q = _enc_group(xs, g, ssh, smask, sym_bits, enc, ptab, True, acc, nacc, q, pre, suf)
            g += 8
    while g < g_room and q + 12 <= suf.shape[0]:
        acc, nacc, q = _enc_group(xs, g, ssh, smask, sym_bits, enc, ptab, False, acc, nacc, q, pre, suf)
        g += 8
    while g < m:
        pw = 0
        for j in range(min(8, m - g)):
            acc, nacc, pw = _enc_code(xs, g + j, ssh, enc, acc, nacc, pw, j)
            if nacc >= 32:
                _store_le(suf, q, acc, 4)
                q += 4
                acc >>= 32
                nacc -= 32
        _store_le(pre, 3 * (g >> 3), pw, 3)
        g += 8
    _store_le(suf, q, acc, (nacc + 7) >> 3)
    return q * 8 + nacc


@njit(cache=True)
def _fill_pair_table(enc, sym_bits, out):
    """out[s0 | s1 << sym_bits] = the codes of symbols s0 then s1 (enc by symbol):
    suffix s0 | suffix s1 << width s0 (16 bits), both widths' sum << 16 (5 bits),
    area s0 << 21, area s1 << 24."""
    ns = 1 << sym_bits
    for s1 in range(ns):
        e1 = np.int64(enc[s1])
        for s0 in range(ns):
            e0 = np.int64(enc[s0])
            w0 = (e0 >> 12) & 15
            out[s0 | (s1 << sym_bits)] = ((e0 & 0xFF) | ((e1 & 0xFF) << w0) | ((w0 + ((e1 >> 12) & 15)) << 16)
                                          | (((e0 >> 8) & 7) << 21) | (((e1 >> 8) & 7) << 24))


@ParallelKernel
def qlc_encode(x, chunk, ssh, smask, rsh, rhi, rlo, sym_bits, raw_bits, enc, ptab, table, out,
               pbase, ybase, sbase, rbase, n_nz, check):
    """Write every plane of every non-zero chunk at the offsets of `table` (common.TAB_*);
    enc is indexed by x >> ssh (see _wide), ptab by symbol pairs (_pair_table; empty: not
    used).  check[c] = the suffix bits written (the host compares them with the statistics)."""
    n = x.shape[0]
    for c in prange(table.shape[0]):
        mode = table[c, TAB_MODE]
        if mode == 0:
            continue
        lo = c * chunk
        m = table[c, TAB_ELEMS]
        xs = x[lo:min(lo + m, n)]
        if raw_bits:
            r0 = rbase + table[c, TAB_RAW]
            if raw_bits == 11:
                t0 = rbase + n_nz + 3 * (table[c, TAB_RAW] >> 3)
                top = out[t0:t0 + ((3 * m + 7) >> 3)]
            else:
                top = out[0:0]
            _enc_raw_planes(xs, rsh, rhi, rlo, raw_bits, out[r0:r0 + m],
                            out[r0 + n_nz:r0 + n_nz + m] if raw_bits == 24 else out[0:0],
                            out[r0 + 2 * n_nz:r0 + 2 * n_nz + m] if raw_bits == 24 else out[0:0], top)
        if mode == 1:
            p0 = pbase + table[c, TAB_PREFIX]
            s0 = sbase + table[c, TAB_SUFFIX]
            check[c] = _enc_coded(xs, ssh, smask, sym_bits, enc, ptab, out[p0:p0 + ((3 * m + 7) >> 3)],
                                  out[s0:s0 + table[c, TAB_SUFLEN]])
        else:
            y0 = ybase + (table[c, TAB_SYMBOL] * sym_bits >> 3)
            _enc_symbols(xs, ssh, smask, sym_bits, out[y0:y0 + ((sym_bits * m + 7) >> 3)])


# ---------------------------------------------------------------------------------------------------
# decode
@njit(cache=True, inline="always")
def _load_le(src, p, nbytes):
    """Little-endian bytes [p, p + nbytes) of src (nbytes <= 8); bytes past its end read as 0.
    Bits above 8 * nbytes may hold the following bytes (callers mask what they use)."""
    if p + 8 <= src.shape[0]:
        return _u64_at(src, p)
    w = 0
    for t in range(nbytes):
        if p + t < src.shape[0]:
            w |= np.int64(src[p + t]) << (8 * t)
    return w


@njit(cache=True, inline="always")
def _dec_group(pre, suf, checked, pos, bad, o, g, dtab, w4):
    """Decode the 8 codes of group g (see _dec_coded); returns the new pos and bad.
    `checked` (a constant at each call): bounds-tested loads, else unchecked ones."""
    pw = _load_le(pre, 3 * (g >> 3), 3) if checked else _u64_at(pre, 3 * (g >> 3))
    for half in range(2):
        p12 = (pw >> (12 * half)) & 0xFFF
        w = w4[p12]
        word = _load_le(suf, pos >> 3, 8) if checked else _u64_at(suf, pos >> 3)
        buf = word >> (pos & 7)                   # >= 57 valid bits; 4 codes use <= 32
        e0 = dtab[((p12 & 7) << 8) | (buf & 0xFF)]
        e1 = dtab[(((p12 >> 3) & 7) << 8) | ((buf >> (w & 0xFF)) & 0xFF)]
        e2 = dtab[(((p12 >> 6) & 7) << 8) | ((buf >> ((w >> 8) & 0xFF)) & 0xFF)]
        e3 = dtab[(((p12 >> 9) & 7) << 8) | ((buf >> ((w >> 16) & 0xFF)) & 0xFF)]
        pos += (w >> 24) & 0xFF
        bad |= e0 | e1 | e2 | e3
        j = np.uintp(g + 4 * half)     # unsigned: no negative-index wraparound code
        o[j] = e0
        o[j + np.uintp(1)] = e1
        o[j + np.uintp(2)] = e2
        o[j + np.uintp(3)] = e3
    return pos, bad


@njit(cache=True)
def _dec_coded(slack, pre, suf, o, dtab, w4, wpack, sym_check, padded):
    """Decode a coded chunk into the output slice `o` (symbols shifted into place).

    pre, suf: the chunk's prefix and suffix bytes (slices: nothing outside them is read).
    Tables (common.decode_tables): dtab[area << 8 | next 8 suffix bits] = symbol << ssh
    or an error mark (bit 31); w4[12 prefix bits] = the offsets of 4 codes' suffixes.
    The offsets come from the prefixes alone: no serial dependency through the
    symbol lookups.  With `slack`, the stream's buffer extends 8 bytes past every
    read of the 8-code groups and they skip the bounds test (_dec_group; a
    corrupt chunk can then decode bytes past its suffix, but only after its codes ran
    past the suffix's end, which flags a mismatch, the error the torch path reports
    first).  Returns qlc.ERR_* flags."""
    m = o.shape[0]
    pos = 0            # suffix bits consumed
    bad = 0            # OR of the table entries: bit 31 marks an error
    g = 0
    g_end = m & ~7
    if slack:          # a loop without bounds tests (nor the slices' lengths held in registers)
        while g < g_end:
            pos, bad = _dec_group(pre, suf, False, pos, bad, o, g, dtab, w4)
            g += 8
    while g < g_end:
        pos, bad = _dec_group(pre, suf, True, pos, bad, o, g, dtab, w4)
        g += 8
    g = m & ~7
    if g < m:
        pw = _load_le(pre, 3 * (g >> 3), 3)
        for j in range(m - g):
            a = (pw >> (3 * j)) & 7
            e = dtab[(a << 8) | ((_load_le(suf, pos >> 3, 2) >> (pos & 7)) & 0xFF)]
            pos += (wpack >> (a << 2)) & 15
            bad |= e
            o[g + j] = e
    if padded:
        # the torch path also decodes the zero padding of a short last chunk (area 0 at
        # suffix bit `pos`) and checks its symbol; do the same so errors agree exactly
        bad |= dtab[(_load_le(suf, pos >> 3, 2) >> (pos & 7)) & 0xFF]
    flags = 0
    if (pos + 7) >> 3 != suf.shape[0]:
        flags |= 1
    if bad < 0:
        flags |= 2 if (not sym_check or (bad >> 30) & 1) else 4
    return flags


@njit(cache=True)
def _dec_symbols(src, o, ssh, sym_bits):
    m = o.shape[0]
    if sym_bits == 8:
        for i in range(m):
            o[i] = np.int64(src[i]) << ssh
    else:
        for g in range(0, m, 8):
            word = _load_le(src, 5 * (g >> 3), 5)
            for j in range(min(8, m - g)):
                o[g + j] = ((word >> (5 * j)) & 31) << ssh


@njit(cache=True)
def _dec_raw_planes(o, rsh, rhi, rlo, raw_bits, p0, p1, p2, top):
    m = o.shape[0]
    if raw_bits == 8:
        _raw8_merge(o, p0, m, rsh, rhi, rlo)
    elif raw_bits == 24:
        for i in range(m):
            r = np.int64(p0[i]) | (np.int64(p1[i]) << 8) | (np.int64(p2[i]) << 16)
            o[i] |= ((r & rhi) << rsh) | (r & rlo)
    else:
        for g in range(0, m, 8):
            word = _load_le(top, 3 * (g >> 3), 3)
            for j in range(min(8, m - g)):
                r = np.int64(p0[g + j]) | (((word >> (3 * j)) & 7) << 8)
                o[g + j] |= ((r & rhi) << rsh) | (r & rlo)


@ParallelKernel
def qlc_decode(data, out, chunk, ssh, rsh, rhi, rlo, sym_bits, raw_bits, dtab, w4, wpack, table,
               pbase, pend, ybase, yend, sbase, rbase, rend, n_nz, flags):
    """Decode every chunk of `table` into out; flags[c] = the chunk's qlc.ERR_* flags."""
    n = out.shape[0]
    for c in prange(table.shape[0]):
        mode = table[c, TAB_MODE]
        lo = c * chunk
        m = table[c, TAB_ELEMS]
        o = out[lo:min(lo + m, n)]
        if mode == 0:
            o[:] = 0
            continue
        if mode == 1:
            p0 = pbase + table[c, TAB_PREFIX]
            s0 = sbase + table[c, TAB_SUFFIX]
            pre = data[p0:min(p0 + ((3 * m + 7) >> 3), pend)]
            suf = data[s0:s0 + table[c, TAB_SUFLEN]]
            # suffix reads start below byte m (8-bit codes at most), prefix reads below 3m/8
            slack = max(s0 + m, p0 + ((3 * m) >> 3)) + 8 <= data.shape[0]
            flags[c] = _dec_coded(slack, pre, suf, o, dtab, w4, wpack, sym_bits < 8, m < chunk)
        else:
            y0 = ybase + (table[c, TAB_SYMBOL] * sym_bits >> 3)
            _dec_symbols(data[y0:min(y0 + ((sym_bits * m + 7) >> 3), yend)], o, ssh, sym_bits)
        if raw_bits:
            r0 = rbase + table[c, TAB_RAW]
            if raw_bits == 11:
                t0 = rbase + n_nz + 3 * (table[c, TAB_RAW] >> 3)
                top = data[t0:min(t0 + ((3 * m + 7) >> 3), rend)]
            else:
                top = data[0:0]
            _dec_raw_planes(o, rsh, rhi, rlo, raw_bits, data[r0:r0 + m],
                            data[r0 + n_nz:r0 + n_nz + m] if raw_bits == 24 else data[0:0],
                            data[r0 + 2 * n_nz:r0 + 2 * n_nz + m] if raw_bits == 24 else data[0:0], top)


# ---------------------------------------------------------------------------------------------------
# codebook fitting: qlccomm.codebook.optimal_widths, compiled (the same programme, the same ties)
@njit(cache=True, nogil=True)
def _cap(A, max_width):
    """An area wider than the narrowest that holds all A symbols costs more, or ties and loses
    to the narrower one met first: widths past it are left out (the same result, fewer steps)."""
    cap = 0
    while (1 << cap) < A:
        cap += 1
    return min(max_width, cap)


@njit(cache=True, nogil=True)
def _tail(dp, S, end, width_cap, at_end):
    """The best last area reaching `end`, from the previous layer's dp (at_end in place of
    dp[end]): (cost, width, start), widths ascending, starts from the first minimum."""
    big = np.int64(1) << 60
    best, best_b, best_p = big, 0, 0
    for b in range(width_cap + 1):
        step = np.int64(1) << b
        c, p_b = big, 0
        for p in range(max(0, end - step), end + 1):
            v = (at_end if p == end else dp[p]) + b * (S[end] - S[p])
            if v < c:
                c, p_b = v, p
        if c < best:
            best, best_b, best_p = c, b, p_b
    return best, best_b, best_p


@njit(cache=True, nogil=True)
def _optimal_widths(counts, n_areas, max_width, end2):
    """The widths of codebook.optimal_widths(counts, n_areas, max_width) and the start rank
    its back-track reaches; with 0 < end2 < A also those of optimal_widths(counts[:end2],
    n_areas - 1, max_width), from the same programme: its layers agree with this one's below
    rank end2, so only its last areas (each layer's area reaching end2) are extra."""
    A = counts.shape[0]
    big = np.int64(1) << 60
    S = np.zeros(A + 1, np.int64)
    for i in range(A):
        S[i + 1] = S[i] + counts[i]
    max_width = _cap(A, max_width)
    cap2 = _cap(end2, max_width)
    dp = np.full(A + 1, big, np.int64)
    dp[0] = 0
    nxt = np.empty(A + 1, np.int64)
    choice_b = np.empty((n_areas, A + 1), np.int64)
    choice_p = np.empty((n_areas, A + 1), np.int64)
    tail2_b = np.zeros(n_areas, np.int64)        # layer k's last area reaching end2
    tail2_p = np.zeros(n_areas, np.int64)
    at_end2 = big                                # the layer before's cost of covering end2 ranks
    for k in range(n_areas):
        if 0 < end2 < A and k < n_areas - 1:
            c2, tail2_b[k], tail2_p[k] = _tail(dp, S, end2, cap2, at_end2)
            at_end2 = min(c2, big)
        for q in range(A + 1):
            best, best_b, best_p = big, 0, 0
            if q == A:
                # an area of width b reaching the end: from the best p >= A - 2**b (first minimum)
                best, best_b, best_p = _tail(dp, S, A, max_width, dp[A])
            else:
                for b in range(max_width + 1):
                    step = np.int64(1) << b
                    if q - step >= 0:
                        c = dp[q - step] + b * (S[q] - S[q - step])
                        if c < best:
                            best, best_b, best_p = c, b, q - step
            nxt[q] = min(best, big)
            choice_b[k, q] = best_b
            choice_p[k, q] = best_p
        dp[:] = nxt
    widths = np.empty(n_areas, np.int64)
    pos = A
    for k in range(n_areas - 1, -1, -1):
        widths[k] = choice_b[k, pos]
        pos = choice_p[k, pos]
    widths2 = np.zeros(max(n_areas - 1, 0), np.int64)
    pos2 = end2
    if 0 < end2 < A:
        for k in range(n_areas - 2, -1, -1):
            if pos2 == end2:                     # an area reaching end2 (or an empty one)
                widths2[k], pos2 = tail2_b[k], tail2_p[k]
            else:
                widths2[k], pos2 = choice_b[k, pos2], choice_p[k, pos2]
    return widths, pos, widths2, pos2


def _start_at_zero(start: int) -> None:
    if start != 0:
        raise EncoderError("native codebook fitter: the dynamic programme did not start at rank 0")


def optimal_widths_native(sorted_counts, n_areas: int = 8, max_width: int = 8) -> tuple[int, ...]:
    """qlccomm.codebook.optimal_widths in numba (the same widths for the same counts)."""
    counts = np.ascontiguousarray(sorted_counts, dtype=np.int64)
    if (1 << max_width) * n_areas < counts.size:
        raise ValueError("the areas cannot cover the alphabet")
    widths, start, _, _ = _optimal_widths(counts, n_areas, max_width, 0)
    _start_at_zero(start)
    return tuple(widths.tolist())


def optimal_widths_and_prefix_native(sorted_counts, n_areas: int, max_width: int,
                                     prefix: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """codebook.optimal_widths_and_prefix in numba: one programme for both (the same widths)."""
    counts = np.ascontiguousarray(sorted_counts, dtype=np.int64)
    if not 0 < prefix < counts.size:
        raise ValueError("prefix must be shorter than the counts and not empty")
    if (1 << max_width) * n_areas < counts.size or (1 << max_width) * (n_areas - 1) < prefix:
        raise ValueError("the areas cannot cover the alphabet")
    widths, start, widths2, start2 = _optimal_widths(counts, n_areas, max_width, prefix)
    _start_at_zero(start)
    _start_at_zero(start2)
    return tuple(widths.tolist()), tuple(widths2.tolist())


# ---------------------------------------------------------------------------------------------------
# host side
def _threads() -> int:
    """numba threads: as many as torch uses (torchrun sets 1), at most numba's pool."""
    return max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS))


# Two codes per table lookup pay from this size on: the table (2^(2 * symbol bits) int32,
# 256 KiB for 8-bit symbols) takes ~0.1 ms to build per codebook and is cached by digest;
# the coding loop runs ~25% faster with it (measured on bf16 weights, one core).
PAIRS_MIN_ELEMS = 1 << 18
_NO_PAIRS = np.zeros(0, np.int32)


def _pair_table(cb: Codebook, plan: Plan) -> np.ndarray:
    def build() -> np.ndarray:
        t = np.empty(1 << (2 * plan.symbol_bits), np.int32)
        _fill_pair_table(common.codebook_tables(cb)["enc"], plan.symbol_bits, t)
        return t
    return derived_table((cb.digest, None, "native-pairs"), build)


def _wide(table: np.ndarray, plan: Plan) -> np.ndarray:
    """A by-symbol table indexed by x >> ssh instead (the bits above the symbol ignored):
    the kernels then skip the mask.  At most 512 entries (float32: sign and exponent)."""
    return table[np.arange(1 << (plan.item_bits - plan.ssh)) & plan.smask]


def _elements(flat: torch.Tensor, plan: Plan) -> np.ndarray:
    """The tensor's elements as unsigned words of the plan's width (no copy)."""
    return common.element_view(flat, plan).numpy().view(_UNSIGNED[plan.kind])


def encode_section(flat: torch.Tensor, plan: Plan, codebook: Codebook | None, embed: bool = False,
                   chunk: int = qlc.CHUNK_ELEMS, reserve: int = 0, into: torch.Tensor | None = None) -> torch.Tensor:
    """qlccomm.qlc.encode_section for CPU tensors (same bytes, same `reserve` and `into`)."""
    flat = flat.detach().contiguous()
    x = _elements(flat, plan)
    n = x.shape[0]
    nchunks = -(-n // chunk)
    bits = np.zeros(nchunks, np.int64)
    nz = np.zeros(nchunks, np.bool_)
    with _LOCK:
        numba.set_num_threads(_threads())
        if codebook is None:
            hist = np.zeros((nchunks, 256), np.int32)
            qlc_stats(x, chunk, plan.ssh, plan.smask, np.zeros(256, np.uint8), True, bits, nz, hist)
            codebook = qlc.adaptive_codebook(hist.sum(axis=0, dtype=np.int64), flat.dtype, plan)
            embed = True
            tabs = common.codebook_tables(codebook)
            qlc_bits_from_hist(hist, tabs["wsuf"], bits)
        else:
            tabs = common.codebook_tables(codebook)
            qlc_stats(x, chunk, plan.ssh, plan.smask, _wide(tabs["wsuf"], plan), False, bits, nz,
                      np.zeros((0, 256), np.int32))
        lay = common.encode_layout(n, chunk, plan, codebook, embed, bits, nz)
        out = common.section_buffer(reserve + lay.total, into, "cpu")
        o = out.numpy()[reserve:]
        o[: lay.head.size] = lay.head
        check = np.zeros(nchunks, np.int64)
        b = lay.bases
        ptab = _pair_table(codebook, plan) if n >= PAIRS_MIN_ELEMS else _NO_PAIRS
        qlc_encode(x, chunk, plan.ssh, plan.smask, plan.rsh, plan.rhi, plan.rlo, plan.symbol_bits, plan.raw_bits,
                   _wide(tabs["enc"], plan), ptab, lay.table, o, b["prefix"], b["symbol"], b["suffix"], b["raw"],
                   lay.n_nz, check)
    coded = lay.table[:, TAB_MODE] == qlc.MODE_CODED
    if not np.array_equal(check[coded], bits[coded]):      # the two passes must agree
        raise EncoderError("the tensor changed while it was being encoded (suffix bits differ between passes)")
    return out


def decode_section(sec: qlc.QLCSection, section: torch.Tensor, header, out: torch.Tensor | None = None) -> torch.Tensor:
    """qlccomm.qlc.decode_section for CPU streams (same result, same errors, same `out`)."""
    plan = sec.plan
    lay = common.decode_layout(sec)
    dtab, w4 = common.decode_tables(sec.codebook, plan)
    data = section.contiguous().numpy()
    flat = common.decode_target(lay.numel, header.dtype, out, "cpu")
    out = _elements(flat, plan)
    flags = np.zeros(lay.table.shape[0], np.int32)
    b, e = lay.bases, lay.ends
    with _LOCK:
        numba.set_num_threads(_threads())
        qlc_decode(data, out, lay.chunk, plan.ssh, plan.rsh, plan.rhi, plan.rlo, plan.symbol_bits, plan.raw_bits,
                   dtab, w4, common.codebook_tables(sec.codebook)["wpack"], lay.table,
                   b["prefix"], e["prefix"], b["symbol"], e["symbol"], b["suffix"], b["raw"], e["raw"],
                   lay.n_nz, flags)
    common.raise_flags(int(np.bitwise_or.reduce(flags)) if flags.size else 0, plan)
    return flat
