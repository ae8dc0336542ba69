"""QLCW on CPU tensors: fused native kernels compiled by numba.

Same contract as qlccomm.qlcw (encode_section / decode_section: same bytes, same errors;
the format is docs/format.md, "QLCW section").  Chunks are independent, so the kernels
run over chunks in parallel (`prange`):

    qlcw_hist    (histogram) the symbol histogram of the non-zero chunks, one per
                 block of chunks (summed on the host), and whether each chunk has a set bit
    host         qlcw.build_code (unless given a code)
    qlcw_code    per chunk: whether it has a set bit, its prefixes and suffixes under the
                 code into a slot of its own, and its suffix bits
    host         the chunks' modes and plane offsets (qlcw and qlc functions, so this
                 path and the torch path cannot drift apart)
    qlcw_write   per chunk: the raw planes, then the prefixes + suffixes copied from its
                 slot (coded) or the fields (raw), at the chunk's offsets in the section
    qlcw_decode  per chunk: fields from the prefixes, suffixes and the rank -> symbol table,
                 then the raw bits merged in; errors as per-chunk flags, raised on the host
                 with the torch path's messages in its order

A symbol is the field (`Fields.lo`, `.w`) of one element, or with g = 2 the fields of two
neighbours (the first in the low bits).  Suffixes are at most 16 bits: the encoder gathers
them in a 64-bit accumulator flushed 32 bits at a time; the decoder reads 4 bytes at the
suffix's byte offset.  Every read and write stays inside the chunk's own slices (bytes
past a slice read as zero), so corrupt planes cannot make the decoder read out of bounds;
parse_section validated every offset and size before this runs.
"""
from __future__ import annotations

import numba
import numpy as np
import torch
from numba import njit, prange

from qlccomm import qlc, qlcw, raw_shifts
from qlccomm.errors import EncoderError, FormatError

from .native_qlc import (_LOCK, ParallelKernel, _chunk_any, _chunk_or, _load_le, _raw8_merge, _raw8_split, _store_le, _threads, _u64_at,
                         _u64_put)

_UNSIGNED = {1: np.uint8, 2: np.uint16, 4: np.uint32}
_SIGNED = {1: torch.uint8, 2: torch.int16, 4: torch.int32}

# per-chunk table columns (int64 [K, 6])
T_MODE, T_ELEMS, T_PREFIX, T_FIELD, T_SUFFIX, T_SUFLEN, T_RAW = range(7)


# ---------------------------------------------------------------------------------------------------
# Inner loops index with unsigned integers (np.uintp): numba then emits no negative-index
# wraparound code, which otherwise costs more than the work itself (see native_qlc).
@njit(cache=True, inline="always")
def _symbol(xs, j, m, lo, fmask, w, g):
    """Symbol of code j of a chunk of m elements (a missing second element counts as 0)."""
    if g == 1:
        return np.uintp((xs[np.uintp(j)] >> lo) & fmask)
    k = np.uintp(2 * j)
    s = np.uintp((xs[k] >> lo) & fmask)
    if k + np.uintp(1) < m:
        s |= np.uintp((xs[k + np.uintp(1)] >> lo) & fmask) << np.uintp(w)
    return s


@njit(cache=True, inline="always")
def _pair(xs, k, lo, fmask, w):
    """Symbol of elements k, k + 1 (both present)."""
    return np.uintp((xs[k] >> lo) & fmask) | (np.uintp((xs[k + np.uintp(1)] >> lo) & fmask) << np.uintp(w))


# The splits adaptive coding weighs (qlcw.adaptive_fields, more_pair_splits): (7, 8) the
# bfloat16 exponent, (0, 8) a byte, (8, 7) float16's exponent and 2 mantissa bits.  The loops
# over a chunk's fields are inline functions called with each of them as literal constants
# (the branches marked "split cases"), which LLVM folds into the shifts and masks: 25-40% faster
# than with the split as variables (measured on the pair histograms and the enc look-ups of
# 2M pairs, one core).  Other splits take the same loop with variables.
@njit(cache=True, inline="always")
def _hist_pairs(xs, h, m, lo, fmask, w):
    """h[0] and h[1] += the pair symbols of elements 4q, 4q+1 and 4q+2, 4q+3 for 4q + 3 < m."""
    for q in range(m >> 2):
        k = np.uintp(4 * q)
        h[0, _pair(xs, k, lo, fmask, w)] += 1
        h[1, _pair(xs, k + np.uintp(2), lo, fmask, w)] += 1


@njit(cache=True, inline="always")
def _hist_fields(xs, h, m, lo, fmask):
    """h[0..3] += the fields of elements i with i % 4 = 0..3, for i < 4 (m // 4)."""
    for q in range(m >> 2):
        k = np.uintp(4 * q)
        h[0, np.uintp((xs[k] >> lo) & fmask)] += 1
        h[1, np.uintp((xs[k + np.uintp(1)] >> lo) & fmask)] += 1
        h[2, np.uintp((xs[k + np.uintp(2)] >> lo) & fmask)] += 1
        h[3, np.uintp((xs[k + np.uintp(3)] >> lo) & fmask)] += 1


@njit(cache=True, inline="always")
def _lookup_pairs(xs, lo, fmask, w, enc, es, n):
    """es[j] = enc[the pair symbol of elements 2j, 2j + 1] for j < n."""
    for j in range(n):
        es[np.uintp(j)] = enc[_pair(xs, np.uintp(2 * j), lo, fmask, w)]


@njit(cache=True, inline="always")
def _lookup_fields(xs, lo, fmask, enc, es, n):
    """es[j] = enc[the field of element j] for j < n."""
    for j in range(n):
        es[np.uintp(j)] = enc[np.uintp((xs[np.uintp(j)] >> lo) & fmask)]


@ParallelKernel
def qlcw_hist(x, chunk, lo, w, g, nz, hist):
    """hist[b] = the symbol histogram of block b's non-zero chunks (chunks split evenly over
    hist's rows); nz[c] = whether chunk c has a set bit."""
    n = x.shape[0]
    K = nz.shape[0]
    B = hist.shape[0]
    fmask = (1 << w) - 1
    for b in prange(B):
        h = np.zeros((2, hist.shape[1]), np.int32)     # two halves: fewer store-to-load stalls
        for c in range(b * K // B, (b + 1) * K // B):
            xs = x[c * chunk:min(c * chunk + chunk, n)]
            m = xs.shape[0]
            nonzero = _chunk_any(xs)
            nz[c] = nonzero
            if not nonzero:
                continue
            ncodes = (m + g - 1) // g
            j = 0
            if g == 2:
                if lo == 7 and w == 8:                  # split cases (see _hist_pairs)
                    _hist_pairs(xs, h, m, 7, 0xFF, 8)
                elif lo == 0 and w == 8:
                    _hist_pairs(xs, h, m, 0, 0xFF, 8)
                elif lo == 8 and w == 7:
                    _hist_pairs(xs, h, m, 8, 0x7F, 7)
                else:
                    _hist_pairs(xs, h, m, lo, fmask, w)
                j = 2 * (m >> 2)
            for jj in range(j, ncodes):
                h[0, _symbol(xs, jj, m, lo, fmask, w, g)] += 1
        for s in range(hist.shape[1]):
            hist[b, s] = h[0, s] + h[1, s]


# ---------------------------------------------------------------------------------------------------
# encode
@njit(cache=True, inline="always")
def _flush_word(dst, q, acc, nacc):
    """Store acc's low 32 bits at dst[q:] once nacc (pending bits) reaches 32: (acc, nacc, q)."""
    if nacc >= 32:
        _store_le(dst, q, acc, 4)
        return acc >> 32, nacc - 32, q + 4
    return acc, nacc, q


@njit(cache=True)
def _put_fields(dst, xs, lo, fmask, w):
    """The elements' fields, w bits each, LSB first (bitpack.pack_bits' order for w <= 8)."""
    acc = 0
    nacc = 0
    q = 0
    for i in range(xs.shape[0]):
        acc |= np.int64((xs[i] >> lo) & fmask) << nacc
        nacc += w
        acc, nacc, q = _flush_word(dst, q, acc, nacc)
    _store_le(dst, q, acc, (nacc + 7) >> 3)


@njit(cache=True)
def _put_raw(out, r0, n_nz, top0, xs, w, rhi, rlo, planes, tb, t):
    """The elements' raw bits >> t (a raw shift) as planes (bitpack.pack_bits): `planes` byte
    planes, each n_nz bytes from r0 on, then the top tb bits packed LSB first from top0."""
    m = xs.shape[0]
    if t:
        pass                             # shifted: the general loops below
    elif planes == 1 and tb == 0:          # one byte plane (bfloat16): the loop native_qlc vectorises
        _raw8_split(xs, out[r0:r0 + m], m, w, rhi, rlo)
        return
    elif w == 7 and rhi == 0x100 and rlo == 0xFF and tb == 1:
        # float16, split (8, 7): the raw value is the low byte and the sign; two loops with
        # constants, which LLVM vectorises (qlcw_decode's _merge_raw mirrors it)
        dst = out[r0:r0 + m]
        for i in range(m):
            dst[np.uintp(i)] = np.uint8(xs[np.uintp(i)] & np.uint16(0xFF))
        top = out[top0:top0 + ((m + 7) >> 3)]
        for g8 in range(m >> 3):
            b = np.uint16(0)
            for j in range(8):
                b |= (xs[np.uintp(8 * g8 + j)] >> np.uint16(15)) << np.uint16(j)
            top[np.uintp(g8)] = np.uint8(b)
        if m & 7:
            b = np.uint16(0)
            for j in range(m & 7):
                b |= (xs[np.uintp((m & ~7) + j)] >> np.uint16(15)) << np.uint16(j)
            top[np.uintp(m >> 3)] = np.uint8(b)
        return
    elif planes == 1:                    # float16: a byte plane and 1..3 top bits, in one pass
        dst = out[r0:r0 + m]
        top = out[top0:top0 + ((m * tb + 7) >> 3)]
        tmask = (1 << tb) - 1
        for g8 in range((m + 7) >> 3):
            base = 8 * g8
            word = 0
            for j in range(min(8, m - base)):
                v = np.int64(xs[base + j])
                r = ((v >> w) & rhi) | (v & rlo)
                dst[base + j] = r & 0xFF
                word |= ((r >> 8) & tmask) << (tb * j)
            _store_le(top, tb * g8, word, tb)
        return
    for p in range(planes):
        dst = out[r0 + p * n_nz:r0 + p * n_nz + m]
        sh = 8 * p + t
        for i in range(m):
            v = xs[np.uintp(i)]
            dst[np.uintp(i)] = ((((v >> w) & rhi) | (v & rlo)) >> sh) & 0xFF
    if tb:
        dst = out[top0:top0 + ((m * tb + 7) >> 3)]
        sh = 8 * planes + t
        tmask = (1 << tb) - 1
        for g8 in range((m + 7) >> 3):      # 8 values make tb bytes
            base = 8 * g8
            word = 0
            for j in range(min(8, m - base)):
                v = np.int64(xs[base + j])
                word |= (((((v >> w) & rhi) | (v & rlo)) >> sh) & tmask) << (tb * j)
            _store_le(dst, tb * g8, word, tb)


@njit(cache=True, inline="always")
def _two_codes(xs, t, lo, fmask, w, g, enc):
    """enc entries of codes 2t and 2t + 1 (all their elements present)."""
    if g == 2:
        k = np.uintp(4 * t)
        return (np.int64(enc[_pair(xs, k, lo, fmask, w)]),
                np.int64(enc[_pair(xs, k + np.uintp(2), lo, fmask, w)]))
    k = np.uintp(2 * t)
    return (np.int64(enc[np.uintp((xs[k] >> lo) & fmask)]),
            np.int64(enc[np.uintp((xs[k + np.uintp(1)] >> lo) & fmask)]))


@njit(cache=True, inline="always")
def _add_code(suf, q, acc, nacc, e):
    """One code's suffix (enc entry e) into the accumulator, flushed with a bounded store."""
    acc |= (e & 0xFFFF) << nacc
    nacc += (e >> 16) & 31
    return _flush_word(suf, q, acc, nacc)


@njit(cache=True, inline="always")
def _lookup_codes(xs, lo, fmask, w, g, enc, es, n):
    """es[j] = the enc entry of code j for j < n (all of its elements present).  No value
    carries from one code to the next, so LLVM vectorises all of it but the look-ups, and
    the look-ups of many codes overlap."""
    if g == 2:
        if lo == 7 and w == 8:                  # split cases (see _hist_pairs)
            _lookup_pairs(xs, 7, 0xFF, 8, enc, es, n)
        elif lo == 0 and w == 8:
            _lookup_pairs(xs, 0, 0xFF, 8, enc, es, n)
        elif lo == 8 and w == 7:
            _lookup_pairs(xs, 8, 0x7F, 7, enc, es, n)
        else:
            _lookup_pairs(xs, lo, fmask, w, enc, es, n)
    elif lo == 0 and w == 8:
        _lookup_fields(xs, 0, 0xFF, enc, es, n)
    elif lo == 8 and w == 7:
        _lookup_fields(xs, 8, 0x7F, enc, es, n)
    else:
        _lookup_fields(xs, lo, fmask, enc, es, n)


@njit(cache=True, inline="always")
def _group_suffixes(es, gs, gw, n, k):
    """gs[u] = the suffixes of codes k*u .. k*u + k - 1 (enc entries in es) joined LSB first,
    gw[u] = their bits, for u < n; k is 4 or 2.  No value carries from one group to the next,
    so LLVM vectorises it (variable shifts per lane)."""
    if k == 4:
        for u in range(n):
            e0 = np.int64(es[np.uintp(4 * u)])
            e1 = np.int64(es[np.uintp(4 * u + 1)])
            e2 = np.int64(es[np.uintp(4 * u + 2)])
            e3 = np.int64(es[np.uintp(4 * u + 3)])
            w0 = (e0 >> 16) & 31
            w01 = w0 + ((e1 >> 16) & 31)
            w012 = w01 + ((e2 >> 16) & 31)
            gs[np.uintp(u)] = (e0 & 0xFFFF) | ((e1 & 0xFFFF) << w0) | ((e2 & 0xFFFF) << w01) | ((e3 & 0xFFFF) << w012)
            gw[np.uintp(u)] = w012 + ((e3 >> 16) & 31)
    else:
        for u in range(n):
            e0 = np.int64(es[np.uintp(2 * u)])
            e1 = np.int64(es[np.uintp(2 * u + 1)])
            w0 = (e0 >> 16) & 31
            gs[np.uintp(u)] = (e0 & 0xFFFF) | ((e1 & 0xFFFF) << w0)
            gw[np.uintp(u)] = w0 + ((e1 >> 16) & 31)


@njit(cache=True)
def _put_groups(suf, gs, gw, n, room):
    """Append groups gs[u] (gw[u] bits, at most 56) for u < n while suf has 8 bytes of room
    at the write position: each store is unconditional and the position advances by whole
    bytes without a branch (< 8 bits pending, so a group always fits the 64-bit
    accumulator).  Returns (acc, pending bits, byte position, groups written).  Its own
    function: inlined, its loop's values spill to the stack (measured: the accumulator then
    goes through memory every step)."""
    acc = 0
    nacc = 0
    q = 0
    u = 0
    while u < n and q <= room:
        acc |= gs[np.uintp(u)] << nacc
        nacc += gw[np.uintp(u)]
        _u64_put(suf, q, acc)
        adv = nacc >> 3
        acc >>= adv << 3
        nacc &= 7
        q += adv
        u += 1
    return acc, nacc, q, u


@njit(cache=True)
def _put_coded(pre, suf, xs, lo, fmask, w, g, enc, narrow, es, gs, gw):
    """Prefixes (4 bits per code) into pre, suffixes LSB first into suf; returns the suffix bits.

    The codes whose elements are all present go through four loops: their enc entries into
    the scratch `es` (int32, at least m // g entries), the prefix bytes from them, their
    suffixes joined in groups of four codes (`narrow`: every suffix at most 14 bits, so a
    group has at most 56) or two into the scratch `gs`, `gw` (int64, at least m // (2g)
    entries each), then the groups appended in order (_put_groups).  Only the last loop
    carries a value (the accumulator) from step to step, and it does little per step.  The
    rest (the codes past the last whole group, a chunk's codes past the point where suf has
    no 8 bytes of room) flush with bounded stores, clipped at suf's end: the bits are counted
    all the same.  Returns -1 where a symbol has no code (enc entry -1)."""
    m = xs.shape[0]
    ncodes = (m + g - 1) // g
    full = m // (2 * g)                 # prefix bytes whose two codes' elements are all present
    _lookup_codes(xs, lo, fmask, w, g, enc, es, 2 * full)
    err = 0
    for t in range(full):
        e0 = es[np.uintp(2 * t)]
        e1 = es[np.uintp(2 * t + 1)]
        err |= e0 | e1
        pre[np.uintp(t)] = ((e0 >> 21) & 15) | (((e1 >> 21) & 15) << 4)
    k = 4 if narrow else 2
    groups = 2 * full // k
    _group_suffixes(es, gs, gw, groups, k)
    acc, nacc, q, u = _put_groups(suf, gs, gw, groups, suf.shape[0] - 8)
    for j in range(k * u, ncodes, 2):
        if j + 1 < ncodes and 2 * g * (j >> 1) + 2 * g <= m:
            e0, e1 = _two_codes(xs, j >> 1, lo, fmask, w, g, enc)
        else:
            e0 = np.int64(enc[_symbol(xs, j, m, lo, fmask, w, g)])
            e1 = np.int64(enc[_symbol(xs, j + 1, m, lo, fmask, w, g)]) if j + 1 < ncodes else np.int64(0)
        err |= e0 | e1
        pre[j >> 1] = ((e0 >> 21) & 15) | (((e1 >> 21) & 15) << 4 if j + 1 < ncodes else 0)
        acc, nacc, q = _add_code(suf, q, acc, nacc, e0)
        acc, nacc, q = _add_code(suf, q, acc, nacc, e1)
    _store_le(suf, q, acc, (nacc + 7) >> 3)
    return -1 if err < 0 else 8 * q + nacc


@ParallelKernel
def qlcw_code(x, chunk, lo, w, g, encs, narrow, chunk_code, pre, suf, ors, bits):
    """Per chunk c: ors[c] = the OR of its words; a non-zero chunk's prefixes into pre[c]
    and suffixes into suf[c] under its code (encs, narrow by chunk_code); bits[c] = its
    suffix bits, or -1 where it holds a symbol its code cannot write.  suf[c] has room for
    the suffix bytes a coded chunk can have (fewer than its fields take raw, less its
    prefixes) and 8 bytes of slack: a chunk that needs more is clipped there (it is written
    raw; its bits are counted all the same)."""
    n = x.shape[0]
    fmask = (1 << w) - 1
    for c in prange(bits.shape[0]):
        xs = x[c * chunk:min(c * chunk + chunk, n)]
        acc = _chunk_or(xs)
        ors[c] = acc
        if acc == 0:
            continue
        m = xs.shape[0]
        pbytes = (4 * ((m + g - 1) // g) + 7) >> 3
        cap = max(((m * w + 7) >> 3) - pbytes, 0) + 8
        k = chunk_code[c]
        es = np.empty(m // g, np.int32)              # _put_coded's scratch (in L1 for 4096-element chunks)
        gs = np.empty(m // (2 * g) + 1, np.int64)
        gw = np.empty(m // (2 * g) + 1, np.int64)
        bits[c] = _put_coded(pre[c, :pbytes], suf[c, :cap], xs, lo, fmask, w, g, encs[k], narrow[k], es, gs, gw)


@njit(cache=True, inline="always")
def _copy_bytes(dst, src):
    """dst[:] = src[:dst.size].  A plain loop, which LLVM turns into a memory copy: numba's
    slice assignment costs 15x more (measured: 2 MB in 2 KiB pieces, 0.50 vs 0.033 ms)."""
    for i in range(dst.shape[0]):
        dst[np.uintp(i)] = src[np.uintp(i)]


@ParallelKernel
def qlcw_write(x, chunk, lo, w, g, rhi, rlo, planes, tb, pre, suf, table, out, pbase, fbase, sbase, rbase, n_nz,
               shifts):
    """Write every plane of every non-zero chunk at the offsets of `table` (T_* columns): the
    raw planes, then a coded chunk's prefixes and suffixes from qlcw_code's pre and suf, or
    a raw chunk's fields.  With raw shifts (`shifts`: int64 [K], else empty) each chunk's
    raw planes are its own, from byte T_RAW of the raw planes."""
    n = x.shape[0]
    fmask = (1 << w) - 1
    for c in prange(table.shape[0]):
        mode = table[c, T_MODE]
        if mode == qlc.MODE_ZERO:
            continue
        m = table[c, T_ELEMS]
        xs = x[c * chunk:min(c * chunk + m, n)]
        r = table[c, T_RAW]
        if shifts.shape[0]:
            t = shifts[c]
            rw = 8 * planes + tb - t
            r0 = rbase + r
            _put_raw(out, r0, m, r0 + (rw >> 3) * m, xs, w, rhi, rlo, rw >> 3, rw & 7, t)
        elif planes or tb:
            _put_raw(out, rbase + r, n_nz, rbase + planes * n_nz + ((r * tb) >> 3), xs, w, rhi, rlo, planes, tb, 0)
        if mode == qlc.MODE_CODED:
            p0 = pbase + table[c, T_PREFIX]
            pbytes = (4 * ((m + g - 1) // g) + 7) >> 3
            _copy_bytes(out[p0:p0 + pbytes], pre[c])
            s0 = sbase + table[c, T_SUFFIX]
            sbytes = table[c, T_SUFLEN]
            _copy_bytes(out[s0:s0 + sbytes], suf[c])
        else:
            f0 = fbase + ((table[c, T_FIELD] * w) >> 3)
            _put_fields(out[f0:f0 + ((m * w + 7) >> 3)], xs, lo, fmask, w)


# ---------------------------------------------------------------------------------------------------
# decode
@njit(cache=True, inline="always")
def _symbol_of(a, v, firsts, table, T, escape):
    """The symbol of a code (area a, suffix value v: np.uintp), and whether its rank is past
    the table."""
    if escape and a == qlcw.ESCAPE_AREA:
        return v, False
    rank = np.uintp(firsts[a]) + v
    if rank < T:
        return np.uintp(table[rank]), False
    return np.uintp(0), True


@njit(cache=True, inline="always")
def _put_symbol(o, j, s, lo, fmask, w, g):
    """The field(s) of code j's symbol s into o (all of its elements present)."""
    if g == 2:
        k = np.uintp(2 * j)
        o[k] = (s & fmask) << lo
        o[k + np.uintp(1)] = (s >> w) << lo
    else:
        o[np.uintp(j)] = s << lo


@njit(cache=True, inline="always")
def _two_suffix_loads(suf, pos, pos1, safe):
    """The suffix bits from bit positions pos and pos1 (>= 57 valid bits each): unchecked
    8-byte loads below bit `safe` (both then lie inside suf), else bounded ones."""
    if pos < safe:
        b0 = np.uintp(_u64_at(suf, pos >> 3))
        b1 = np.uintp(_u64_at(suf, pos1 >> 3))
    else:
        b0 = np.uintp(_load_le(suf, pos >> 3, 8))
        b1 = np.uintp(_load_le(suf, pos1 >> 3, 8))
    return b0 >> np.uintp(pos & 7), b1 >> np.uintp(pos1 & 7)


@njit(cache=True, inline="always")
def _get_narrow(pre, suf, o, ulo, w2, dtab, dsh, dmask, full):
    """_get_coded's narrow loop where one table entry is one item of `o`: code j's entry,
    shifted by ulo, into o[j].  Single fields (g = 1): o is the chunk's output, entries the
    symbols.  Packed pairs: o is the chunk's output as 32-bit words, each entry both elements
    of a pair code in place (_decode_tables' `packed`), ulo 0.  Eight codes (four prefix
    bytes) per step, the steps whose two 8-byte suffix loads stay inside suf without a bounds
    test, then two codes per step to the last full prefix byte.  An entry of -1 (a rank past
    the table) only sets the flag: the chunk's output is garbage then, and the host raises.
    Returns (prefix bytes done: `full`, suffix bit position, whether a rank was past the
    table)."""
    t = 0
    pos = 0
    bad = 0
    safe = (suf.shape[0] - 16) * 8       # below this bit position both loads are in bounds
    while t + 3 < full:
        p0 = np.uintp(pre[np.uintp(t)])
        p1 = np.uintp(pre[np.uintp(t + 1)])
        p2 = np.uintp(pre[np.uintp(t + 2)])
        p3 = np.uintp(pre[np.uintp(t + 3)])
        w0 = np.uintp(w2[p0])
        w1 = np.uintp(w2[p1])
        w2_ = np.uintp(w2[p2])
        w3 = np.uintp(w2[p3])
        o1 = w0 >> np.uintp(8)
        pos1 = pos + np.int64(o1 + (w1 >> np.uintp(8)))
        b0, b1 = _two_suffix_loads(suf, pos, pos1, safe)
        o3 = w2_ >> np.uintp(8)
        e0 = dtab[((p0 & np.uintp(15)) << dsh) | (b0 & dmask)]
        e1 = dtab[((p0 >> np.uintp(4)) << dsh) | ((b0 >> (w0 & np.uintp(31))) & dmask)]
        e2 = dtab[((p1 & np.uintp(15)) << dsh) | ((b0 >> o1) & dmask)]
        e3 = dtab[((p1 >> np.uintp(4)) << dsh) | ((b0 >> (o1 + (w1 & np.uintp(31)))) & dmask)]
        e4 = dtab[((p2 & np.uintp(15)) << dsh) | (b1 & dmask)]
        e5 = dtab[((p2 >> np.uintp(4)) << dsh) | ((b1 >> (w2_ & np.uintp(31))) & dmask)]
        e6 = dtab[((p3 & np.uintp(15)) << dsh) | ((b1 >> o3) & dmask)]
        e7 = dtab[((p3 >> np.uintp(4)) << dsh) | ((b1 >> (o3 + (w3 & np.uintp(31)))) & dmask)]
        bad |= e0 | e1 | e2 | e3 | e4 | e5 | e6 | e7
        pos = pos1 + np.int64(o3 + (w3 >> np.uintp(8)))
        k = np.uintp(2 * t)
        o[k] = np.uintp(e0) << ulo
        o[k + np.uintp(1)] = np.uintp(e1) << ulo
        o[k + np.uintp(2)] = np.uintp(e2) << ulo
        o[k + np.uintp(3)] = np.uintp(e3) << ulo
        o[k + np.uintp(4)] = np.uintp(e4) << ulo
        o[k + np.uintp(5)] = np.uintp(e5) << ulo
        o[k + np.uintp(6)] = np.uintp(e6) << ulo
        o[k + np.uintp(7)] = np.uintp(e7) << ulo
        t += 4
    while t < full:
        p0 = np.uintp(pre[np.uintp(t)])
        w0 = np.uintp(w2[p0])
        b0 = np.uintp(_load_le(suf, pos >> 3, 8)) >> np.uintp(pos & 7)
        e0 = dtab[((p0 & np.uintp(15)) << dsh) | (b0 & dmask)]
        e1 = dtab[((p0 >> np.uintp(4)) << dsh) | ((b0 >> (w0 & np.uintp(31))) & dmask)]
        bad |= e0 | e1
        pos += np.int64(w0 >> np.uintp(8))
        k = np.uintp(2 * t)
        o[k] = np.uintp(e0) << ulo
        o[k + np.uintp(1)] = np.uintp(e1) << ulo
        t += 1
    return t, pos, bad < 0


@njit(cache=True, inline="always")
def _two_of_byte(p, b, w2, dtab, dsh, dmask, ulo, ebits):
    """Both codes of prefix byte p (suffix bits from b's low bits) as one output word, from
    the single-code table: (word, the two entries OR-ed: negative for a rank past the table)."""
    e0 = dtab[((p & np.uintp(15)) << dsh) | (b & dmask)]
    e1 = dtab[((p >> np.uintp(4)) << dsh) | ((b >> (np.uintp(w2[p]) & np.uintp(31))) & dmask)]
    return (np.uintp(e0) << ulo) | ((np.uintp(e1) << ulo) << ebits), e0 | e1


@njit(cache=True, inline="always")
def _get_byte_pairs(pre, suf, op, ulo, w2, dtab, dsh, dmask, btab, K, ebits, full):
    """_get_coded's narrow loop for single fields with a byte-pair table: both codes of a
    prefix byte in one look-up, btab[byte << K | the next K suffix bits], an entry holding
    both elements' fields in place as one item of `op` (the chunk's output as items of twice
    the element's width), or -1 where the two suffixes take more than K bits or name a rank
    past the table: that byte decodes from the single-code table instead.  Four prefix bytes
    per step, two 8-byte suffix loads (unchecked below the plane's last 16 bytes).  Returns
    as _get_narrow does."""
    t = 0
    pos = 0
    bad = 0
    kmask = np.uintp((1 << K) - 1)
    uk = np.uintp(K)
    ueb = np.uintp(ebits)
    safe = (suf.shape[0] - 16) * 8
    while t + 3 < full:
        p0 = np.uintp(pre[np.uintp(t)])
        p1 = np.uintp(pre[np.uintp(t + 1)])
        p2 = np.uintp(pre[np.uintp(t + 2)])
        p3 = np.uintp(pre[np.uintp(t + 3)])
        o1 = np.uintp(w2[p0]) >> np.uintp(8)
        pos1 = pos + np.int64(o1 + (np.uintp(w2[p1]) >> np.uintp(8)))
        o3 = np.uintp(w2[p2]) >> np.uintp(8)
        b0, b1 = _two_suffix_loads(suf, pos, pos1, safe)
        f0 = btab[(p0 << uk) | (b0 & kmask)]
        f1 = btab[(p1 << uk) | ((b0 >> o1) & kmask)]
        f2 = btab[(p2 << uk) | (b1 & kmask)]
        f3 = btab[(p3 << uk) | ((b1 >> o3) & kmask)]
        k = np.uintp(t)
        if (f0 | f1 | f2 | f3) >= 0:
            op[k] = f0
            op[k + np.uintp(1)] = f1
            op[k + np.uintp(2)] = f2
            op[k + np.uintp(3)] = f3
        else:                           # a wide pair or a rank past the table: code by code
            v, e = _two_of_byte(p0, b0, w2, dtab, dsh, dmask, ulo, ueb)
            op[k] = v
            bad |= e
            v, e = _two_of_byte(p1, b0 >> o1, w2, dtab, dsh, dmask, ulo, ueb)
            op[k + np.uintp(1)] = v
            bad |= e
            v, e = _two_of_byte(p2, b1, w2, dtab, dsh, dmask, ulo, ueb)
            op[k + np.uintp(2)] = v
            bad |= e
            v, e = _two_of_byte(p3, b1 >> o3, w2, dtab, dsh, dmask, ulo, ueb)
            op[k + np.uintp(3)] = v
            bad |= e
        pos = pos1 + np.int64(o3 + (np.uintp(w2[p3]) >> np.uintp(8)))
        t += 4
    while t < full:
        p0 = np.uintp(pre[np.uintp(t)])
        b0 = np.uintp(_load_le(suf, pos >> 3, 8)) >> np.uintp(pos & 7)
        v, e = _two_of_byte(p0, b0, w2, dtab, dsh, dmask, ulo, ueb)
        op[np.uintp(t)] = v
        bad |= e
        pos += np.int64(np.uintp(w2[p0]) >> np.uintp(8))
        t += 1
    return t, pos, bad < 0


@njit(cache=True)
def _get_coded(pre, suf, o, lo, w, g, masks, firsts, table, escape, w2, dtab, dbits, narrow, op, btab, K):
    """Decode a coded chunk's fields (shifted into place) into `o`; returns qlc.ERR_* flags.

    Two codes per prefix byte: w2[byte] gives the first code's width (bits 0-7) and both
    widths' sum (bits 8-15), so one 8-byte load at the pair's bit offset serves both
    suffixes (<= 32 bits of the >= 57 it holds) and the only serial dependency is one add.
    A code's symbol is one look-up, dtab[area << dbits | next dbits suffix bits]
    (_decode_tables), except for codes of the escape area, of areas wider than dbits and
    ranks past the table (entry -1), which take _symbol_of.  `narrow` (every area at most
    dbits <= 10 wide, no escape): four codes (<= 40 bits) per 8-byte load, their offsets
    from two w2 look-ups, and an entry of -1 can only be a rank past the table.  Narrow
    codes with a non-empty `op` (the chunk's output as items of twice the element's width)
    take _get_byte_pairs (single fields, byte-pair table btab of K suffix bits) or
    _get_narrow (pairs, dtab packed); other narrow single fields take _get_narrow."""
    m = o.shape[0]
    ncodes = (m + g - 1) // g
    T = np.uintp(table.shape[0])
    dsh = np.uintp(dbits)
    dmask = np.uintp((1 << dbits) - 1)
    fmask = np.uintp((1 << w) - 1)
    ulo = np.uintp(lo)
    uw = np.uintp(w)
    pos = 0
    past = False
    full = m // (2 * g)                 # prefix bytes whose two codes' elements are all present
    t = 0
    if narrow and g == 1 and op.shape[0]:     # byte pairs: both codes of a prefix byte at once
        t, pos, past = _get_byte_pairs(pre, suf, op, ulo, w2, dtab, dsh, dmask, btab, K, 8 * o.itemsize, full)
    elif narrow and g == 1:
        t, pos, past = _get_narrow(pre, suf, o, ulo, w2, dtab, dsh, dmask, full)
    elif narrow and op.shape[0]:        # packed pairs: one 32-bit store per code
        t, pos, past = _get_narrow(pre, suf, op, np.uintp(0), w2, dtab, dsh, dmask, full)
    elif narrow:
        while t + 1 < full:
            p0 = np.uintp(pre[np.uintp(t)])
            p1 = np.uintp(pre[np.uintp(t + 1)])
            w0 = np.uintp(w2[p0])
            w1 = np.uintp(w2[p1])
            buf = np.uintp(_load_le(suf, pos >> 3, 8)) >> np.uintp(pos & 7)
            o2 = w0 >> np.uintp(8)
            e0 = dtab[((p0 & np.uintp(15)) << dsh) | (buf & dmask)]
            e1 = dtab[((p0 >> np.uintp(4)) << dsh) | ((buf >> (w0 & np.uintp(31))) & dmask)]
            e2 = dtab[((p1 & np.uintp(15)) << dsh) | ((buf >> o2) & dmask)]
            e3 = dtab[((p1 >> np.uintp(4)) << dsh) | ((buf >> (o2 + (w1 & np.uintp(31)))) & dmask)]
            past |= (e0 | e1 | e2 | e3) < 0
            pos += np.int64(o2 + (w1 >> np.uintp(8)))
            _put_symbol(o, 2 * t, np.uintp(max(e0, 0)), ulo, fmask, uw, g)
            _put_symbol(o, 2 * t + 1, np.uintp(max(e1, 0)), ulo, fmask, uw, g)
            _put_symbol(o, 2 * t + 2, np.uintp(max(e2, 0)), ulo, fmask, uw, g)
            _put_symbol(o, 2 * t + 3, np.uintp(max(e3, 0)), ulo, fmask, uw, g)
            t += 2
    for t in range(t, full):
        byte = np.uintp(pre[np.uintp(t)])
        a0 = byte & np.uintp(15)
        a1 = byte >> np.uintp(4)
        ww = np.uintp(w2[byte])
        buf = np.uintp(_load_le(suf, pos >> 3, 8)) >> np.uintp(pos & 7)
        b1 = buf >> (ww & np.uintp(31))
        e0 = dtab[(a0 << dsh) | (buf & dmask)]
        e1 = dtab[(a1 << dsh) | (b1 & dmask)]
        if e0 >= 0:
            s0 = np.uintp(e0)
        else:
            s0, p0 = _symbol_of(a0, buf & np.uintp(masks[a0]), firsts, table, T, escape)
            past |= p0
        if e1 >= 0:
            s1 = np.uintp(e1)
        else:
            s1, p1 = _symbol_of(a1, b1 & np.uintp(masks[a1]), firsts, table, T, escape)
            past |= p1
        pos += np.int64(ww >> np.uintp(8))
        if g == 2:
            k = np.uintp(4 * t)
            o[k] = (s0 & fmask) << ulo
            o[k + np.uintp(1)] = (s0 >> uw) << ulo
            o[k + np.uintp(2)] = (s1 & fmask) << ulo
            o[k + np.uintp(3)] = (s1 >> uw) << ulo
        else:
            k = np.uintp(2 * t)
            o[k] = s0 << ulo
            o[k + np.uintp(1)] = s1 << ulo
    for j in range(2 * full, ncodes):   # the codes of a short last chunk's tail
        a = (np.uintp(pre[np.uintp(j >> 1)]) >> np.uintp(4 * (j & 1))) & np.uintp(15)
        buf = np.uintp(_load_le(suf, pos >> 3, 3)) >> np.uintp(pos & 7)
        s, p = _symbol_of(a, buf & np.uintp(masks[a]), firsts, table, T, escape)
        past |= p
        pos += np.int64(w2[a] & 31)
        if g == 1:
            o[j] = s << ulo
        else:
            o[2 * j] = (s & fmask) << ulo
            if 2 * j + 1 < m:
                o[2 * j + 1] = (s >> uw) << ulo
    flags = qlc.ERR_RANK if past else 0
    if (pos + 7) >> 3 != suf.shape[0]:
        flags |= qlc.ERR_MISMATCH
    return flags


@njit(cache=True)
def _get_fields(src, o, lo, w):
    fmask = (1 << w) - 1
    for i in range(o.shape[0]):
        bit = i * w
        o[i] = ((_load_le(src, bit >> 3, 2) >> (bit & 7)) & fmask) << lo


@njit(cache=True)
def _merge_raw(data, r0, n_nz, top0, top_end, o, w, rhi, rlo, planes, tb, t):
    """o[i] |= the raw bits of element i, stored >> t (a raw shift): byte planes from r0,
    each n_nz bytes, top bits from top0."""
    m = o.shape[0]
    if t:
        pass                             # shifted: the general loops below
    elif planes == 1 and tb == 0:
        _raw8_merge(o, data[r0:r0 + m], m, w, rhi, rlo)
        return
    elif w == 7 and rhi == 0x100 and rlo == 0xFF and tb == 1:
        # float16, split (8, 7): the raw value is the low byte and the sign; constants let
        # LLVM vectorise the loop
        src = data[r0:r0 + m]
        top = data[top0:top_end]
        for g8 in range(m >> 3):
            t = np.uint16(top[np.uintp(g8)])
            for j in range(8):
                i = np.uintp(8 * g8 + j)
                o[i] |= np.uint16(src[i]) | (((t >> np.uint16(j)) & np.uint16(1)) << np.uint16(15))
        for i in range(m & ~7, m):
            o[i] |= np.uint16(src[i]) | (((np.uint16(top[i >> 3]) >> np.uint16(i & 7)) & np.uint16(1)) << np.uint16(15))
        return
    elif planes == 1:                    # float16: a byte plane and 1..3 top bits, in one pass
        src = data[r0:r0 + m]
        top = data[top0:top_end]
        tmask = (1 << tb) - 1
        for g8 in range(m >> 3):
            word = _load_le(top, tb * g8, tb)
            for j in range(8):
                i = np.uintp(8 * g8 + j)
                r = np.int64(src[i]) | (((word >> (tb * j)) & tmask) << 8)
                o[i] |= ((r & rhi) << w) | (r & rlo)
        base = m & ~7
        word = _load_le(top, tb * (m >> 3), tb)
        for j in range(m - base):
            r = np.int64(src[base + j]) | (((word >> (tb * j)) & tmask) << 8)
            o[base + j] |= ((r & rhi) << w) | (r & rlo)
        return
    for p in range(planes):
        src = data[r0 + p * n_nz:r0 + p * n_nz + m]
        sh = 8 * p + t
        for i in range(m):
            r = np.int64(src[np.uintp(i)]) << sh
            o[np.uintp(i)] |= ((r & rhi) << w) | (r & rlo)
    if tb:
        top = data[top0:top_end]
        sh = 8 * planes + t
        tmask = (1 << tb) - 1
        for g8 in range((m + 7) >> 3):      # 8 values from tb bytes
            base = 8 * g8
            word = _load_le(top, tb * g8, tb)
            for j in range(min(8, m - base)):
                r = ((word >> (tb * j)) & tmask) << sh
                o[base + j] |= ((r & rhi) << w) | (r & rlo)


@ParallelKernel
def qlcw_decode(data, out, outp, chunk, lo, w, g, rhi, rlo, planes, tb, masks, firsts, tables, toff, escape, w2,
                dtab, dbits, narrow, btab, K, chunk_code, table,
                pbase, pend, fbase, fend, sbase, rbase, rend, n_nz, shifts, flags):
    """Decode every chunk of `table` into out, coded chunks with their code (the per-code
    arrays by chunk_code; code k's table is tables[toff[k]:toff[k + 1]]), raw planes as
    qlcw_write writes them (`shifts`: the raw shifts, or empty); flags[c] = the
    chunk's qlc.ERR_* flags.  outp: the 16-bit out as 32-bit words where dtab is packed
    (pairs) or btab is built (single fields), else empty."""
    n = out.shape[0]
    for c in prange(table.shape[0]):
        mode = table[c, T_MODE]
        m = table[c, T_ELEMS]
        o = out[c * chunk:min(c * chunk + m, n)]
        if mode == qlc.MODE_ZERO:
            o[:] = 0
            continue
        if mode == qlc.MODE_CODED:
            p0 = pbase + table[c, T_PREFIX]
            s0 = sbase + table[c, T_SUFFIX]
            ncodes = (m + g - 1) // g
            pre = data[p0:min(p0 + ((4 * ncodes + 7) >> 3), pend)]
            suf = data[s0:s0 + table[c, T_SUFLEN]]
            k = chunk_code[c]
            syms = tables[toff[k]:toff[k + 1]]
            op = outp[(c * chunk) >> 1:((c * chunk) >> 1) + m // (2 * g) * g] if outp.shape[0] else outp
            if escape[k]:
                flags[c] = _get_coded(pre, suf, o, lo, w, g, masks[k], firsts[k], syms, True, w2[k], dtab[k], dbits, False,
                                      op, btab[k], K)
            else:
                flags[c] = _get_coded(pre, suf, o, lo, w, g, masks[k], firsts[k], syms, False, w2[k], dtab[k], dbits,
                                      narrow[k], op, btab[k], K)
        else:
            f0 = fbase + ((table[c, T_FIELD] * w) >> 3)
            _get_fields(data[f0:min(f0 + ((m * w + 7) >> 3), fend)], o, lo, w)
        r = table[c, T_RAW]
        if shifts.shape[0]:
            t = shifts[c]
            rw = 8 * planes + tb - t
            r0 = rbase + r
            t0 = r0 + (rw >> 3) * m
            _merge_raw(data, r0, m, t0, min(t0 + ((m * (rw & 7) + 7) >> 3), rend), o, w, rhi, rlo, rw >> 3, rw & 7, t)
        elif planes or tb:
            t0 = rbase + planes * n_nz + ((r * tb) >> 3)
            _merge_raw(data, rbase + r, n_nz, t0, min(t0 + ((m * tb + 7) >> 3), rend), o, w, rhi, rlo, planes, tb, 0)


# ---------------------------------------------------------------------------------------------------
# host side
_NO_SHIFTS = np.empty(0, np.int64)   # qlcw_write / qlcw_decode without raw shifts

def _enc_table(code: qlcw.WideCode) -> np.ndarray:
    """int32 [2^S] by symbol: suffix | suffix width << 16 | area << 21; -1 where the code
    cannot write the symbol.  Built from the table alone (O(T) plus one fill)."""
    S = code.symbol_bits
    if code.escape:
        enc = np.arange(1 << S, dtype=np.int32) | np.int32((S << 16) | (qlcw.ESCAPE_AREA << 21))
    else:
        enc = np.full(1 << S, -1, np.int32)
    suffix, area, width = code.rank_codes()
    enc[code.table] = suffix | (width << 16) | (area << 21)
    return enc


def _pair_widths(widths: tuple[int, ...]) -> np.ndarray:
    """int64 [256] by prefix byte (two areas): the low area's width | both widths' sum << 8."""
    b = np.arange(256)
    w = np.asarray(widths, np.int64)
    return w[b & 15] | ((w[b & 15] + w[b >> 4]) << 8)


def _lookup_bits(codes) -> int:
    """Suffix bits the decode tables look up (8..10): the widest non-escape area of the
    codes, so that a code whose rare last area is 9 or 10 bits wide still decodes four
    codes per load (its table: 16 << bits int32 entries, 16..64 KiB)."""
    widths = [b for c in codes for k, b in enumerate(c.widths) if not (c.escape and k == qlcw.ESCAPE_AREA)]
    return min(max(8, *widths), 10)


@njit(cache=True)
def _fill_decode_tables(widths, firsts, tables, toff, escape, bits, packed, lo, w, dtab):
    """dtab[k, a << bits | v] for code k (see _decode_tables)."""
    fmask = (1 << w) - 1
    for k in range(dtab.shape[0]):
        T = toff[k + 1] - toff[k]
        for a in range(16):
            wa = widths[k, a]
            simple = wa <= bits and not (escape[k] and a == qlcw.ESCAPE_AREA)
            for v in range(1 << bits):
                rank = firsts[k, a] + (v & ((1 << wa) - 1))
                if not (simple and rank < T):
                    dtab[k, (a << bits) | v] = -1
                    continue
                s = np.int64(tables[toff[k] + rank])
                dtab[k, (a << bits) | v] = (((s & fmask) << lo) | ((s >> w) << (lo + 16))) if packed else s


BYTE_PAIR_BITS = 6
"""Suffix bits the byte-pair tables look up (256 << 6 int32 entries, 64 KiB a code, ~25 us to
build one)."""


@njit(cache=True)
def _fill_byte_pair_tables(widths, firsts, tables, toff, K, lo, ebits, btab):
    """btab[k, byte << K | v] for code k (see _byte_pair_tables)."""
    for k in range(btab.shape[0]):
        T = toff[k + 1] - toff[k]
        for p in range(256):
            wa = widths[k, p & 15]
            wb = widths[k, p >> 4]
            for v in range(1 << K):
                r0 = firsts[k, p & 15] + (v & ((1 << wa) - 1))
                r1 = firsts[k, p >> 4] + ((v >> wa) & ((1 << wb) - 1))
                if wa + wb > K or r0 >= T or r1 >= T:
                    btab[k, (p << K) | v] = -1
                else:
                    s0 = np.int64(tables[toff[k] + r0])
                    s1 = np.int64(tables[toff[k] + r1])
                    btab[k, (p << K) | v] = (s0 << lo) | ((s1 << lo) << ebits)


def _byte_pair_tables(codes, widths, firsts, tables, toff, lo: int, ebits: int, K: int = BYTE_PAIR_BITS) -> np.ndarray:
    """int32 [M, 256 << K] for single-field codes of `ebits`-bit elements, code k's row by
    prefix byte << K | the next K suffix bits: both codes' fields shifted into place as one
    item of twice the element's width (the first code low), or -1 where their suffixes take
    more than K bits or a rank is past the table (the decoder then takes the single-code
    table).  Needs lo + w < ebits, so entries stay positive."""
    btab = np.empty((len(codes), 256 << K), np.int32)
    _fill_byte_pair_tables(widths, firsts, tables, toff, K, lo, ebits, btab)
    return btab


def _decode_tables(codes, widths, firsts, tables, toff, bits: int, packed: bool = False, lo: int = 0,
                   w: int = 0) -> np.ndarray:
    """int32 [M, 16 << bits], code k's row by area << bits | the next `bits` suffix bits: the
    symbol, or -1 for the escape area, areas wider than `bits` and ranks past the table.
    `packed` (pair codes of 16-bit elements, lo + w <= 15): in place of the symbol, both
    elements' fields shifted into place as one 32-bit word (the first element low), which
    the decoder stores as it is.  (widths, firsts: int64 [M, 16]; tables: the codes' tables
    end to end, code k's from toff[k] to toff[k + 1].)"""
    dtab = np.empty((len(codes), 16 << bits), np.int32)
    _fill_decode_tables(widths, firsts, tables, toff, np.array([c.escape for c in codes]), bits, packed, lo, w, dtab)
    return dtab


def _layout(f: qlcw.Fields, chunk: int, elems, modes, suffix_len, raw_bits: int, shifts):
    """Chunk table for the kernels (int64 [K, 7]; T_RAW: the chunk's first raw element, or
    with raw shifts its first raw byte) and each chunk's symbols."""
    coded, raw = modes == qlc.MODE_CODED, modes == qlc.MODE_RAW
    ncodes = (elems + f.g - 1) // f.g
    cum = qlc._exclusive_cumsum
    raw_at = raw_shifts.raw_starts(np.where(coded | raw, elems, 0), shifts, raw_bits)
    table = np.stack([modes, elems, cum(np.where(coded, qlcw.PREFIX_BITS * ncodes // 8, 0)),
                      cum(np.where(raw, elems, 0)), cum(suffix_len), suffix_len, raw_at], 1).astype(np.int64)
    return table, ncodes


def _bases(planes: dict, start: int) -> dict:
    bases, pos = {}, start
    for name in ("prefix", "field", "suffix", "raw"):
        bases[name] = pos
        pos += planes[name]
    return bases


def _words(flat: torch.Tensor) -> np.ndarray:
    return flat.view(_SIGNED[flat.element_size()]).numpy().view(_UNSIGNED[flat.element_size()])


def histogram(flat: torch.Tensor, f: qlcw.Fields, chunk: int = qlc.CHUNK_ELEMS) -> np.ndarray:
    """qlccomm.qlcw.histogram for CPU tensors."""
    x = _words(flat.detach().contiguous())
    nchunks = -(-x.shape[0] // chunk)
    nz = np.zeros(nchunks, np.bool_)
    with _LOCK:
        numba.set_num_threads(_threads())
        hist = np.zeros((min(_threads(), nchunks), 1 << f.symbol_bits), np.int64)
        qlcw_hist(x, chunk, f.lo, f.w, f.g, nz, hist)
    return hist[0] if hist.shape[0] == 1 else hist.sum(axis=0)


def encode_section(flat: torch.Tensor, f: qlcw.Fields, code: "qlcw.WideCode | qlcw.CodeSet | None" = None,
                   chunk: int = qlc.CHUNK_ELEMS, reserve: int = 0, into: torch.Tensor | None = None) -> torch.Tensor:
    """qlccomm.qlcw.encode_section for CPU tensors (same bytes, same `reserve` and `into`)."""
    from .common import section_buffer
    qlcw.check_chunk(chunk)
    flat = flat.detach().contiguous()
    x = _words(flat)
    n = x.shape[0]
    nchunks = -(-n // chunk)
    item_bits = 8 * flat.element_size()
    plan = f.plan(item_bits)
    if code is None:
        code = qlcw.build_code(histogram(flat, f, chunk), f.symbol_bits)
    cs = qlcw.CodeSet.of(code, nchunks, f.symbol_bits)
    encs = np.stack([_enc_table(c) for c in cs.codes])
    narrow = np.array([max(c.widths) <= 14 for c in cs.codes])
    pbytes = (qlcw.PREFIX_BITS * (chunk // f.g) + 7) >> 3
    pre = np.empty((nchunks, pbytes), np.uint8)                          # each chunk's prefixes ...
    suf = np.empty((nchunks, max((chunk * f.w + 7) // 8 - pbytes, 0) + 8), np.uint8)   # ... and suffixes
    ors = np.zeros(nchunks, x.dtype)
    bits = np.zeros(nchunks, np.int64)
    with _LOCK:
        numba.set_num_threads(_threads())
        qlcw_code(x, chunk, f.lo, f.w, f.g, encs, narrow, cs.chunk_code, pre, suf, ors, bits)
    if (bits < 0).any():
        raise EncoderError("QLCW code cannot write a symbol of the tensor")
    nz = ors != 0
    elems = qlc.chunk_elems(n, chunk, nchunks, "numpy")
    modes, suffix_len = qlcw.choose_modes(elems, (elems + f.g - 1) // f.g, bits, nz, f.w)
    o64 = ors.astype(np.int64)
    raw_or = ((o64 >> plan.rsh) & plan.rhi) | (o64 & plan.rlo)               # the OR of the raw values
    shifts = raw_shifts.choose(elems, nz, raw_or & -raw_or, plan.raw_bits)
    head = qlcw.section_meta(f, cs, chunk, modes, suffix_len, shifts)
    table, ncodes = _layout(f, chunk, elems, modes, suffix_len, plan.raw_bits, shifts)
    planes = qlcw.plane_sizes(elems, ncodes, modes, suffix_len, f, plan.raw_bits, shifts)
    b = _bases(planes, len(head))
    total = len(head) + sum(planes.values())
    out = section_buffer(reserve + total, into, "cpu")
    o = out.numpy()[reserve:]
    o[:len(head)] = head
    nzt = int(table[:, T_ELEMS][modes != qlc.MODE_ZERO].sum())
    with _LOCK:
        numba.set_num_threads(_threads())
        qlcw_write(x, chunk, f.lo, f.w, f.g, plan.rhi, plan.rlo, plan.raw_bits // 8, plan.raw_bits % 8, pre, suf, table,
                   o, b["prefix"], b["field"], b["suffix"], b["raw"], nzt, _NO_SHIFTS if shifts is None else shifts)
    return out


def decode_section(sec: qlcw.QLCWSection, data: torch.Tensor, header, out: torch.Tensor | None = None) -> torch.Tensor:
    """qlccomm.qlcw.decode_section for CPU streams (same result, same errors, same `out`)."""
    from .common import decode_target
    f, codes, plan = sec.fields, sec.codes, sec.plan
    nchunks = sec.modes.size
    elems = qlc.chunk_elems(sec.numel, sec.chunk, nchunks, "numpy")
    table, _ = _layout(f, sec.chunk, elems, sec.modes, sec.suffix_len, plan.raw_bits, sec.shifts)
    b = _bases(sec.plane_bytes, sec.planes_offset)
    e = {k: b[k] + sec.plane_bytes[k] for k in b}
    flat = decode_target(sec.numel, header.dtype, out, "cpu")
    words = _words(flat)
    flags = np.zeros(nchunks, np.int32)
    nzt = int(elems[sec.modes != qlc.MODE_ZERO].sum())
    widths = np.asarray([c.widths for c in codes], np.int64)                  # [M, 16]
    firsts = np.stack([c.firsts() for c in codes]).astype(np.int64)
    sizes = np.array([c.table.size for c in codes], np.int64)
    toff = np.concatenate([[0], np.cumsum(sizes)])
    tables = np.concatenate([c.table for c in codes]).astype(np.uint16)
    buf = data.contiguous().numpy()
    dbits = _lookup_bits(codes)
    narrow = np.array([max(c.widths) <= dbits and not c.escape for c in codes])
    ebits = 8 * words.itemsize
    packed = f.g == 2 and ebits == 16 and f.lo + f.w <= 15 and bool(narrow.all())
    # byte pairs for 16-bit single fields (float16): on 1-byte fields (e4m3 codes, wider
    # suffixes) too many pairs miss the table for it to repay building it
    byte_pairs = f.g == 1 and ebits == 16 and f.lo + f.w < ebits and bool(narrow.all())
    dtab = _decode_tables(codes, widths, firsts, tables, toff, dbits, packed, f.lo, f.w)
    K = BYTE_PAIR_BITS
    btab = (_byte_pair_tables(codes, widths, firsts, tables, toff, f.lo, ebits, K) if byte_pairs
            else np.empty((len(codes), 0), np.int32))
    outp = words[:words.shape[0] & ~1].view(np.uint32) if packed or byte_pairs else np.empty(0, np.uint32)
    with _LOCK:
        numba.set_num_threads(_threads())
        qlcw_decode(buf, words, outp, sec.chunk, f.lo, f.w, f.g, plan.rhi, plan.rlo, plan.raw_bits // 8, plan.raw_bits % 8,
                    (np.int64(1) << widths) - 1, firsts, tables, toff,
                    np.array([c.escape for c in codes]), np.stack([_pair_widths(c.widths) for c in codes]),
                    dtab, dbits, narrow, btab, K, sec.chunk_code, table,
                    b["prefix"], e["prefix"], b["field"], e["field"],
                    b["suffix"], b["raw"], e["raw"], nzt, _NO_SHIFTS if sec.shifts is None else sec.shifts, flags)
    bad = int(np.bitwise_or.reduce(flags)) if flags.size else 0
    if bad & qlc.ERR_MISMATCH:
        raise FormatError("suffix plane does not match the prefixes (corrupt stream)")
    if bad & qlc.ERR_RANK:
        raise FormatError("code names a rank past the table (corrupt stream)")
    return flat


@njit(cache=True, fastmath={"reassoc", "contract"})
def _group_scores(h, models, out):
    """out[r, m] = h[r] . models[m]: sums of integers below 2^53 (qlcw.MODEL_SCALE), exact in
    any order, so the reordering the vectorised sum does changes nothing."""
    B = np.uintp(h.shape[1])
    for r in range(h.shape[0]):
        hr = h[r]
        for m in range(models.shape[0]):
            mm = models[m]
            acc = 0.0
            for b in range(B):
                acc += hr[np.uintp(b)] * mm[np.uintp(b)]
            out[r, m] = acc


def group_scores(h: np.ndarray, models: np.ndarray) -> np.ndarray:
    """qlccomm.qlcw._scores (float64 [rows, M]: each row of `h` under each model) in numba; the
    same numbers (exact integer sums, qlcw.MODEL_SCALE).  `h` may be int64 counts (chunk
    histograms as they are) or float64."""
    out = np.empty((h.shape[0], models.shape[0]), np.float64)
    if h.dtype != np.int64:
        h = np.ascontiguousarray(h, np.float64)
    _group_scores(np.ascontiguousarray(h), np.ascontiguousarray(models, np.float64), out)
    return out


@njit(cache=True)
def _group_sums(h, group, out):
    """out[group[r]] += h[r] for every row r with group[r] >= 0."""
    for r in range(h.shape[0]):
        if group[r] < 0:
            continue
        hr = h[r]
        o = out[group[r]]
        for b in range(h.shape[1]):
            o[b] += hr[b]


def group_sums(h: np.ndarray, group: np.ndarray, M: int) -> np.ndarray:
    """qlccomm.qlcw._group_sums (each group's rows of `h` summed: [M, columns], h's dtype; rows of
    group -1 left out) in numba, in one pass over `h` (numpy takes one per group).  The same
    numbers: h holds integers (counts), whose sums are exact in any order."""
    out = np.zeros((M, h.shape[1]), h.dtype)
    _group_sums(np.ascontiguousarray(h), np.ascontiguousarray(group, np.int64), out)
    return out


@ParallelKernel
def qlcw_chunk_hist(x, chunk, lo, w, hist):
    """hist[c] = chunk c's histogram of its elements' fields (lo, w); zero for all-zero chunks.
    Four partial histograms per chunk (int32: a chunk has fewer than 2^31 elements), so that
    runs of one field do not wait on each other's stores."""
    n = x.shape[0]
    fmask = (1 << w) - 1
    for c in prange(hist.shape[0]):
        xs = x[c * chunk:min(c * chunk + chunk, n)]
        if not _chunk_any(xs):
            continue
        h = np.zeros((4, hist.shape[1]), np.int32)
        m = xs.shape[0]
        if lo == 0 and w == 8:                  # split cases (see _hist_pairs)
            _hist_fields(xs, h, m, 0, 0xFF)
        elif lo == 8 and w == 7:
            _hist_fields(xs, h, m, 8, 0x7F)
        else:
            _hist_fields(xs, h, m, lo, fmask)
        for i in range(4 * (m >> 2), m):
            h[0, np.uintp((xs[np.uintp(i)] >> lo) & fmask)] += 1
        row = hist[c]
        for s in range(hist.shape[1]):
            row[s] = h[0, s] + h[1, s] + h[2, s] + h[3, s]


def chunk_histograms(flat: torch.Tensor, lo: int, w: int, chunk: int = qlc.CHUNK_ELEMS) -> np.ndarray:
    """qlccomm.qlcw.chunk_histograms for CPU tensors."""
    x = _words(flat.detach().contiguous())
    hist = np.zeros((-(-x.shape[0] // chunk), 1 << w), np.int64)
    with _LOCK:
        numba.set_num_threads(_threads())
        qlcw_chunk_hist(x, chunk, lo, w, hist)
    return hist
