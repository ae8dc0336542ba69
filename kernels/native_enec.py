"""ENEC on CPU tensors: fused native kernels compiled by numba.

Same contract as qlccomm.enec (encode_section / decode_section: same bytes, same
errors).  Blocks are independent once a few per-block counts are known, so every
kernel is a `prange` over blocks.  Every host-side decision (geometry, parameter
search, code tables, block table, plane offsets, section metadata, error messages) is
qlccomm.enec's EncodePlan / ENECSection; this module runs only the passes:

    encode  native_qlc.qlc_stats  per block: any bit set? exponent histogram  (the QLC
                                  statistics kernel with chunk = B, histogram mode)
            plan                  block modes, search on the histogram and a sample of
                                  <= 8 blocks (enec.sample_from_tensor) -> b, n, m;
                                  exceptions per block (histogram x exception table)
            enec_flags            per coded block: flagged groups (only when m < n)
            plan                  block table offsets, section metadata, plane offsets
            enec_write            per coded block: flag bits, low plane, the flagged
                                  groups' high values, raw planes, exception
                                  (position, exponent) pairs into two small arrays
            host                  packs the X exceptions with qlccomm.bitpack
    decode  enec_decode           one call: per-block flag counts (prange), their
                                  exclusive sum (serial, one value per block), then per
                                  block (prange): low plane -> y, high values OR-ed into
                                  the flagged groups, y -> exponent by a 256-entry table,
                                  raw bits merged, exceptions written over; all-zero
                                  blocks zero-filled.  Per-block error flags.
            host                  flag total == F and no exception outside its block,
                                  else the torch path's FormatError

The encoder relies on the writer's geometry (enec.BLOCK_ELEMS and enec.GROUP_ELEMS,
and so G = B / L, multiples of 8: every block's part of every plane starts on a byte).
The decoder takes any valid stream (any B, L): a value reader at arbitrary bit offsets
serves unaligned planes.  Every read is bounded by its plane's slice (bytes past it
read as zero) and every write by its block's slice, so corrupt planes cannot reach
outside; parse_section validated the metadata and plane sizes before this runs.

Kernel calls per section, constant in the number of blocks: encode 3 (qlc_stats,
enec_flags only when m < n, enec_write) plus torch's split of the <= 8 sampled blocks
and qlccomm.bitpack for the exception planes; decode 1 (enec_decode).

Specialisations: one per element width (16 / 32 bits) per kernel; everything about
the plan is integer shifts and masks (qlccomm.split.Plan).  `cache=True` keeps
the compiled kernels in kernels/__pycache__.
"""
from __future__ import annotations

import numba
import numpy as np
import torch
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.cpython.unsafe.numbers import trailing_zeros
from numba.extending import intrinsic

from qlccomm import enec
from qlccomm.bitpack import pack_bits
from qlccomm.errors import EncoderError
from qlccomm.split import Plan

from . import common
from .native_qlc import (_LOCK, _UNSIGNED, ParallelKernel, _enc_raw_planes, _load_le, _raw8_merge, _store_le, _threads,
                         qlc_stats)

# columns of the per-coded-block table, enec.block_table (int64 [Kc, enec.TAB_COLS])
T_BLK, T_ELEMS, T_GROUPS, T_GORD, T_RORD, T_XOFF, T_XCNT, T_FOFF = (
    enec.TAB_BLOCK, enec.TAB_ELEMS, enec.TAB_GROUPS, enec.TAB_GORD, enec.TAB_RORD, enec.TAB_XOFF, enec.TAB_XCNT,
    enec.TAB_FOFF)


# ---------------------------------------------------------------------------------------------------
# bit helpers (values of at most 8 bits; little-endian bit order as qlccomm.bitpack)
@njit(cache=True, inline="always")
def _getbits(src, bit, w):
    return (_load_le(src, bit >> 3, 2) >> (bit & 7)) & ((1 << w) - 1)


@njit(cache=True)
def _unpack(src, bit0, w, cnt, dst):
    """dst[:cnt] = values 0..cnt-1 of width w (0..8) starting at bit `bit0` of src."""
    if w == 0:
        for i in range(cnt):
            dst[i] = 0
        return
    mask = (1 << w) - 1
    i0 = 0
    if bit0 & 7 == 0:
        p = bit0 >> 3
        full = cnt >> 3
        for g in range(full):
            word = _load_le(src, p + g * w, w)
            k = np.uintp(8 * g)
            for j in range(8):
                dst[k + np.uintp(j)] = (word >> (w * j)) & mask
        i0 = full * 8
    for i in range(i0, cnt):
        dst[i] = _getbits(src, bit0 + i * w, w)


@njit(cache=True)
def _get_wide(src, count, w, idx):
    """Value idx of `count` values of width w (<= 32) stored as planes (bitpack)."""
    v = 0
    nb = w >> 3
    for p in range(nb):
        q = p * count + idx
        if q < src.shape[0]:
            v |= np.int64(src[q]) << (8 * p)
    r = w & 7
    if r:
        v |= _getbits(src[min(nb * count, src.shape[0]):], idx * r, r) << (8 * nb)
    return v


@njit(cache=True, inline="always")
def _popcount(x):
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0F0F0F0F0F0F0F0F
    return ((x * 0x0101010101010101) >> 56) & 0xFF


@njit(cache=True)
def _count_bits(src, bit0, nbits):
    c = 0
    j = 0
    if bit0 & 7 == 0:
        p = bit0 >> 3
        while j + 64 <= nbits:
            c += _popcount(_load_le(src, p + (j >> 3), 8))
            j += 64
    while j < nbits:
        c += _getbits(src, bit0 + j, 1)
        j += 1
    return c


@njit(cache=True)
def _pack_store(dst, vals, w, cnt, hi_shift):
    """Pack (vals[i] >> hi_shift) & mask at w bits (1..8), 8 values per w bytes, into dst
    from byte 0 (dst: exactly the bytes this run owns); cnt a multiple of 8 except at the
    end of a plane."""
    mask = (1 << w) - 1
    for g in range(0, cnt, 8):
        word = 0
        for j in range(min(8, cnt - g)):
            word |= np.int64((vals[g + j] >> hi_shift) & mask) << (w * j)
        _store_le(dst, w * (g >> 3), word, w)


# ---------------------------------------------------------------------------------------------------
# encode
# Every inner loop is a separate function over per-block slices indexed from 0 (as in
# native_qlc): LLVM then drops numba's negative-index wraparound code, and the loops stay
# out of the parfor body, where they optimise badly.
@njit(cache=True)
def _group_or(xs, ssh, smask, ytab, gk, L, acc):
    """acc[j] = OR of y over group j's real members (block laid out as L rows of gk)."""
    bk = xs.shape[0]
    for j in range(gk):
        acc[j] = 0
    for i in range(L):
        r0 = i * gk
        r1 = min(r0 + gk, bk)
        if r1 <= r0:
            break
        row = xs[r0:r1]
        for j in range(row.shape[0]):
            acc[j] |= ytab[np.uintp((row[j] >> ssh) & smask)]


@ParallelKernel
def enec_flags(x, B, tab, L, ssh, smask, ytab, m, fcnt):
    """fcnt[c] = flagged groups of coded block c (some member has y >= 2^m)."""
    n = x.shape[0]
    for c in prange(tab.shape[0]):
        start = tab[c, T_BLK] * B
        gk = tab[c, T_GROUPS]
        acc = np.empty(gk, np.uint8)
        _group_or(x[start:min(start + tab[c, T_ELEMS], n)], ssh, smask, ytab, gk, L, acc)
        f = 0
        for j in range(gk):
            f += (acc[j] >> m) != 0
        fcnt[c] = f


@njit(cache=True)
def _enc_y(xs, ssh, smask, ytab, y):
    for i in range(xs.shape[0]):
        y[i] = ytab[np.uintp((xs[i] >> ssh) & smask)]


@njit(cache=True)
def _enc_low(xs, ssh, smask, yx, m, y, low, xpos, xexp):
    """One pass over a block of whole 8-element runs: y[i] = y of element i, the low m bits
    packed into `low` (8 values per m bytes), and the exceptions as (position, exponent).
    yx[exponent] = y | 256 for the exceptions (whose y is 0).  Returns the exceptions."""
    mask = (1 << m) - 1
    t = 0
    cap = xpos.shape[0]
    for g in range(0, xs.shape[0], 8):
        word = 0
        ex = 0
        for j in range(8):
            k = np.uintp(g + j)
            v = yx[np.uintp((xs[k] >> ssh) & smask)]
            y[k] = v & 0xFF
            word |= np.int64(v & mask) << (m * j)
            ex |= v
        if m:
            _store_le(low, m * (g >> 3), word, m)
        if ex >> 8:                       # rare: some element of the run is an exception
            for j in range(8):
                e = (xs[g + j] >> ssh) & smask
                if yx[np.uintp(e)] >> 8:
                    if t < cap:
                        xpos[t] = g + j
                        xexp[t] = e
                    t += 1
    return t


@njit(cache=True)
def _enc_exceptions(xs, ssh, smask, xtab, xpos, xexp):
    """(position, exponent) of the block's exceptions, in element order; returns how many."""
    t = 0
    cap = xpos.shape[0]
    for i in range(xs.shape[0]):
        e = (xs[i] >> ssh) & smask
        if xtab[np.uintp(e)]:
            if t < cap:
                xpos[t] = i
                xexp[t] = e
            t += 1
    return t


@njit(cache=True)
def _enc_high(acc, y, gk, L, m, wh, fdst, hdst):
    """Flag bits of the block's groups into fdst; the flagged groups' members' y >> m at wh
    bits into hdst (L * wh / 8 bytes per group).  Returns the flagged groups."""
    hv = np.empty(L, np.uint8)
    hbytes = (L * wh) >> 3
    f = 0
    for g in range(0, gk, 8):
        byte = 0
        for j in range(g, min(g + 8, gk)):
            if (acc[j] >> m) != 0:
                byte |= 1 << (j - g)
                if (f + 1) * hbytes <= hdst.shape[0]:
                    for i in range(L):
                        hv[i] = y[j + gk * i]
                    _pack_store(hdst[f * hbytes:(f + 1) * hbytes], hv, wh, L, m)
                f += 1
        fdst[g >> 3] = byte
    return f


@ParallelKernel
def enec_write(x, B, tab, fcnt, out, L, m, wh, ssh, smask, rsh, rhi, rlo, R, ytab, xtab, yx,
               flag_base, flag_end, low_base, low_end, high_base, high_end, raw_base, raw_end, Nr,
               xpos, xexp, check):
    """Every plane of every coded block at the offsets of `tab`; exceptions as (block-local
    position, exponent) into xpos / xexp at the block's offset.  check[c] = (flagged
    groups, exceptions) written, compared on the host with the counting passes."""
    n = x.shape[0]
    empty = out[0:0]
    hbytes = (L * wh) >> 3
    for c in prange(tab.shape[0]):
        start = tab[c, T_BLK] * B
        bk = tab[c, T_ELEMS]
        gk = tab[c, T_GROUPS]
        gord = tab[c, T_GORD]
        rord = tab[c, T_RORD]
        xs = x[start:min(start + bk, n)]
        nv = gk * L
        y = np.zeros(nv, np.uint8)
        r0 = raw_base + rord
        if R == 24:
            p1 = out[r0 + Nr:r0 + Nr + bk]
            p2 = out[r0 + 2 * Nr:r0 + 2 * Nr + bk]
        else:
            p1 = empty
            p2 = empty
        if R == 11:
            t0 = raw_base + Nr + ((3 * rord) >> 3)
            top = out[t0:min(t0 + ((3 * bk + 7) >> 3), raw_end)]
        else:
            top = empty
        _enc_raw_planes(xs, rsh, rhi, rlo, R, out[r0:r0 + bk], p1, p2, top)
        xoff = tab[c, T_XOFF]
        xcnt = tab[c, T_XCNT]
        lo = low_base + ((gord * L * m) >> 3)
        low = out[lo:min(lo + ((nv * m + 7) >> 3), low_end)]
        if bk == nv and bk % 8 == 0:      # every block but a short last one: one fused pass
            check[c, 1] = _enc_low(xs, ssh, smask, yx, m, y, low, xpos[xoff:xoff + xcnt], xexp[xoff:xoff + xcnt])
        else:
            _enc_y(xs, ssh, smask, ytab, y)
            if xcnt:
                check[c, 1] = _enc_exceptions(xs, ssh, smask, xtab, xpos[xoff:xoff + xcnt],
                                              xexp[xoff:xoff + xcnt])
            if m > 0:
                _pack_store(low, y, m, nv, 0)
        if wh > 0:
            acc = np.empty(gk, np.uint8)
            for j in range(gk):
                acc[j] = 0
            for i in range(L):
                _or_row(acc, y[i * gk:(i + 1) * gk])
            fl = flag_base + (gord >> 3)
            h0 = high_base + tab[c, T_FOFF] * hbytes
            check[c, 0] = _enc_high(acc, y, gk, L, m, wh, out[fl:min(fl + ((gk + 7) >> 3), flag_end)],
                                    out[h0:min(h0 + fcnt[c] * hbytes, high_end)])


@njit(cache=True)
def _or_row(acc, row):
    for j in range(row.shape[0]):
        acc[j] |= row[j]


# ---------------------------------------------------------------------------------------------------
# decode
@intrinsic
def _u32_put(typingctx, arr, idx, val):
    """Store the low 32 bits of int `val` at arr's element idx (two 16-bit elements; unaligned,
    no bounds check)."""
    def codegen(context, builder, sig, args):
        ary = context.make_array(sig.args[0])(context, builder, args[0])
        ptr = builder.bitcast(builder.gep(ary.data, [args[1]]), ir.IntType(32).as_pointer())
        builder.store(builder.trunc(args[2], ir.IntType(32)), ptr, align=1)
        return context.get_dummy_value()
    return types.none(arr, types.intp, types.int64), codegen


@njit(cache=True)
def _dec_pairs(low, lp, m, p0, g8, o, ptab, rhi, rsh, rlo):
    """The first g8 (a multiple of 8) elements of a byte-aligned block of 16-bit elements with
    one raw byte plane (bfloat16): two exponents per lookup in ptab (2m-bit index -> both
    elements' exponent bits, stored as one 32-bit word), then the raw bits merged in a
    separate loop that the compiler vectorises."""
    mask2 = ptab.shape[0] - 1
    for g in range(0, g8, 8):
        word = _load_le(low, lp + m * (g >> 3), m)
        for k in range(4):
            _u32_put(o, np.uintp(g + 2 * k), np.int64(ptab[np.uintp((word >> (2 * m * k)) & mask2)]))
    _raw8_merge(o, p0, g8, rsh, rhi, rlo)


@njit(cache=True)
def _dec_main(low, lbit, m, p0, p1, p2, top, tbit, R, o, etab, ptab, rhi, rsh, rlo):
    """o[i] = exponent of the low bits (etab: y -> exponent << ssh) | the raw bits, for the
    block's real elements; the flagged groups' high bits and the exceptions come after.
    ptab: the pair table of _dec_pairs where it applies (16-bit elements, R == 8), else empty."""
    bk = o.shape[0]
    mask = (1 << m) - 1
    aligned = (lbit & 7) == 0 and (R != 11 or (tbit & 7) == 0)
    g8 = (bk >> 3) << 3 if aligned else 0
    lp = lbit >> 3
    tp = tbit >> 3
    if R == 8 and o.itemsize == 2 and ptab.shape[0] == 1 << (2 * m) and m > 0:
        _dec_pairs(low, lp, m, p0, g8, o, ptab, rhi, rsh, rlo)
        g0 = g8
    else:
        g0 = 0
    for g in range(g0, g8, 8):
        word = _load_le(low, lp + m * (g >> 3), m) if m else 0
        if R == 8:
            rw = _load_le(p0, g, 8)
            for j in range(8):
                r = (rw >> (8 * j)) & 0xFF
                o[np.uintp(g + j)] = etab[np.uintp((word >> (m * j)) & mask)] | \
                    ((r & rhi) << rsh) | (r & rlo)
        elif R == 24:
            for j in range(8):
                k = np.uintp(g + j)
                r = np.int64(p0[k]) | (np.int64(p1[k]) << 8) | (np.int64(p2[k]) << 16)
                o[k] = etab[np.uintp((word >> (m * j)) & mask)] | ((r & rhi) << rsh) | (r & rlo)
        else:
            tw = _load_le(top, tp + 3 * (g >> 3), 3)
            for j in range(8):
                k = np.uintp(g + j)
                r = np.int64(p0[k]) | (((tw >> (3 * j)) & 7) << 8)
                o[k] = etab[np.uintp((word >> (m * j)) & mask)] | ((r & rhi) << rsh) | (r & rlo)
    for i in range(g8, bk):
        yv = _getbits(low, lbit + i * m, m) if m else 0
        r = np.int64(p0[i])
        if R == 24:
            r |= (np.int64(p1[i]) << 8) | (np.int64(p2[i]) << 16)
        elif R == 11:
            r |= _getbits(top, tbit + 3 * i, 3) << 8
        o[i] = etab[np.uintp(yv)] | ((r & rhi) << rsh) | (r & rlo)


@njit(cache=True, inline="always")
def _patch(o, pos, h, low, lbit, m, etab, emask):
    yv = (_getbits(low, lbit + pos * m, m) if m else 0) | (h << m)
    o[pos] = (np.int64(o[pos]) & emask) | etab[np.uintp(yv)]


@njit(cache=True)
def _dec_high(flags, fbit, gk, high, F, r, L, wh, m, low, lbit, o, etab, emask):
    """OR the flagged groups' high bits into their members' y (r: rank of the block's first
    flagged group) and rewrite those members' exponents; members past the block's real
    elements are virtual and skipped.  Reads past F are skipped (the host raises)."""
    bk = o.shape[0]
    hv = np.empty(L, np.uint8)
    hmask = (1 << wh) - 1
    one_word = L * wh <= 56
    j0 = 0
    while j0 < gk:
        nb = min(56, gk - j0)                          # flag bits taken from one 8-byte load
        fw = (_load_le(flags, (fbit + j0) >> 3, 8) >> ((fbit + j0) & 7)) & ((1 << nb) - 1)
        while fw != 0:
            j = j0 + trailing_zeros(fw)
            fw &= fw - 1
            if r < F:
                hb = r * L * wh
                if one_word:
                    hw = (_load_le(high, hb >> 3, 8) >> (hb & 7)) & ((1 << (L * wh)) - 1)
                    i = 0
                    while hw != 0:
                        h = hw & hmask
                        if h:
                            pos = j + gk * i
                            if pos < bk:
                                _patch(o, pos, h, low, lbit, m, etab, emask)
                        hw >>= wh
                        i += 1
                else:
                    _unpack(high, hb, wh, L, hv)
                    for i in range(L):
                        pos = j + gk * i
                        if hv[i] and pos < bk:
                            _patch(o, pos, np.int64(hv[i]), low, lbit, m, etab, emask)
            r += 1
        j0 += nb


@njit(cache=True)
def _dec_exceptions(xpp, xep, X, P, E, xoff, xcnt, o, ssh, emask):
    """Write the block's listed exponents over the computed ones; 1 if a position lies
    outside the block (those are not written)."""
    bad = 0
    bk = o.shape[0]
    if P >> 3 == 1 and E == 8 and xoff + xcnt <= X and xep.shape[0] == X and xpp.shape[0] >= X:
        # the writer's B = 16384: a byte plane and a packed (P - 8)-bit plane; 8-bit exponents
        hi = xpp[X:]
        w = P - 8
        for t in range(xoff, xoff + xcnt):
            pos = np.int64(xpp[t]) | ((_getbits(hi, t * w, w) if w else 0) << 8)
            if pos >= bk:
                bad = 1
            else:
                o[pos] = (np.int64(o[pos]) & emask) | (np.int64(xep[t]) << ssh)
        return bad
    for t in range(xcnt):
        pos = _get_wide(xpp, X, P, xoff + t)
        if pos >= bk:
            bad = 1
        else:
            o[pos] = (np.int64(o[pos]) & emask) | (_get_wide(xep, X, E, xoff + t) << ssh)
    return bad


@njit(cache=True)
def _zero(o):
    for i in range(o.shape[0]):
        o[i] = 0


@ParallelKernel
def enec_decode(data, out, B, tab, zero_blocks, L, b, n, m, F, X, P, E, ssh, smask, rsh, rhi, rlo, R, etab, ptab,
                flag_lo, flag_hi, low_lo, low_hi, high_lo, high_hi, xp_lo, xp_hi, xe_lo, xe_hi, raw_lo, raw_hi,
                Nr, fcnt, err):
    """Decode every coded block of `tab` into out and zero the all-zero blocks.
    fcnt[c] = set flag bits of block c (0 when F == 0: the torch path reads no flag then);
    err[c] = 1 when an exception position lies outside block c."""
    nout = out.shape[0]
    Kc = tab.shape[0]
    flags = data[flag_lo:flag_hi]
    low = data[low_lo:low_hi]
    high = data[high_lo:high_hi]
    xpp = data[xp_lo:xp_hi]
    xep = data[xe_lo:xe_hi]
    raw = data[raw_lo:raw_hi]
    empty = data[0:0]
    wh = n - m
    use_flags = F > 0 and wh > 0
    for z in prange(zero_blocks.shape[0]):
        s = zero_blocks[z] * B
        _zero(out[s:min(s + B, nout)])
    foff = np.zeros(Kc, np.int64)
    if use_flags:
        for c in prange(Kc):
            fcnt[c] = _count_bits(flags, tab[c, T_GORD], tab[c, T_GROUPS])
        acc = 0
        for c in range(Kc):
            foff[c] = acc
            acc += fcnt[c]
    emask = ~(smask << ssh)
    nraw = raw.shape[0]
    for c in prange(Kc):
        start = tab[c, T_BLK] * B
        bk = tab[c, T_ELEMS]
        gord = tab[c, T_GORD]
        rord = tab[c, T_RORD]
        o = out[start:min(start + bk, nout)]
        lbit = gord * L * m
        if R == 24:
            p1 = raw[min(rord + Nr, nraw):min(rord + Nr + bk, nraw)]
            p2 = raw[min(rord + 2 * Nr, nraw):min(rord + 2 * Nr + bk, nraw)]
        else:
            p1 = empty
            p2 = empty
        top = raw[min(Nr, nraw):] if R == 11 else empty
        _dec_main(low, lbit, m, raw[rord:min(rord + bk, nraw)], p1, p2, top, 3 * rord, R, o, etab, ptab, rhi, rsh,
                  rlo)
        if use_flags:
            _dec_high(flags, gord, tab[c, T_GROUPS], high, F, foff[c], L, wh, m, low, lbit, o, etab, emask)
        if tab[c, T_XCNT]:
            err[c] = _dec_exceptions(xpp, xep, X, P, E, tab[c, T_XOFF], tab[c, T_XCNT], o, ssh, emask)


# ---------------------------------------------------------------------------------------------------
# host side: the passes over enec.EncodePlan / enec.ENECSection
def _elements(flat: torch.Tensor, pb: Plan) -> np.ndarray:
    """The tensor's elements as unsigned integers of their width (no copy)."""
    return common.element_view(flat, pb).numpy().view(_UNSIGNED[pb.kind])


def encode_section(flat: torch.Tensor, reserve: int = 0, into: torch.Tensor | None = None) -> torch.Tensor:
    """qlccomm.enec.encode_section for CPU tensors (same bytes, same `reserve` and `into`)."""
    ep = enec.plan_encode(flat)
    geo = ep.geo
    B, L, K = geo.B, geo.L, geo.K
    pb = ep.plan
    x = _elements(flat, pb)
    nz = np.zeros(K, np.bool_)
    hist = np.zeros((K, 256), np.int32)                 # exponent histogram per block
    with _LOCK:
        numba.set_num_threads(_threads())
        qlc_stats(x, B, pb.ssh, pb.smask, np.zeros(256, np.uint8), True, np.zeros(K, np.int64), nz, hist)
    ep.set_modes(nz)
    if not ep.cod.Kc:
        head = ep.layout().head
        buf = common.section_buffer(reserve + len(head), into, "cpu")
        buf[reserve:] = torch.frombuffer(bytearray(head), dtype=torch.uint8)
        return buf
    tab = ep.table
    hist = hist[tab[:, enec.TAB_BLOCK]]                 # the coded blocks'
    ep.search(hist.sum(0, dtype=np.int64), enec.sample_from_tensor(flat, geo, ep.cod))
    ytab = np.zeros(256, np.uint8)
    xtab = np.zeros(256, np.uint8)
    ytab[: ep.A] = ep.ytab
    xtab[: ep.A] = ep.xtab
    fcnt = np.zeros(len(tab), np.int64)
    if ep.wh:
        with _LOCK:
            numba.set_num_threads(_threads())
            enec_flags(x, B, tab, L, pb.ssh, pb.smask, ytab, ep.m, fcnt)
    ep.count(ep.exceptions_of(hist), fcnt)
    lay = ep.layout()
    buf = common.section_buffer(reserve + lay.nbytes, into, "cpu")
    out = buf[reserve:]
    o = out.numpy()
    o[: len(lay.head)] = np.frombuffer(lay.head, np.uint8)
    start, end = lay.start, lay.end
    xpos = np.zeros(ep.X, np.int32)
    xexp = np.zeros(ep.X, np.int32)
    check = np.zeros((len(tab), 2), np.int64)
    yx = ytab.astype(np.int32) | (xtab.astype(np.int32) << 8)
    with _LOCK:
        numba.set_num_threads(_threads())
        enec_write(x, B, tab, fcnt, o, L, ep.m, ep.wh, pb.ssh, pb.smask, pb.rsh, pb.rhi, pb.rlo, ep.R, ytab, xtab, yx,
                   start["flags"], end["flags"], start["low"], end["low"], start["high"], end["high"],
                   start["raw"], end["raw"], ep.cod.Nr, xpos, xexp, check)
    if not (np.array_equal(check[:, 1], tab[:, T_XCNT]) and (ep.wh == 0 or np.array_equal(check[:, 0], fcnt))):
        raise EncoderError("native ENEC encoder: counts differ between its passes")
    if ep.X:
        out[start["exc_pos"]:end["exc_pos"]] = pack_bits(torch.from_numpy(xpos), geo.pos_bits)
        out[start["exc_exp"]:end["exc_exp"]] = pack_bits(torch.from_numpy(xexp), ep.E)
    return buf


def decode_section(sec: enec.ENECSection, data: torch.Tensor, header, out: torch.Tensor | None = None) -> torch.Tensor:
    """qlccomm.enec.decode_section for CPU streams (same result, same errors, same `out`)."""
    geo, cod = sec.geo, sec.cod
    if cod.Kc == 0:
        return sec.zeros(out, "cpu")
    pb = sec.plan
    E, R = sec.plan.symbol_bits, sec.plan.raw_bits
    tab = sec.block_table()
    start, end = sec.plane_bounds()
    etab = sec.exponent_table().astype(np.int64) << pb.ssh
    # two exponents per lookup for bfloat16 (16-bit elements, one raw byte plane), 2m <= 12 bits
    ptab = np.zeros(0, np.int32)
    if pb.kind == 1 and R == 8 and 1 <= sec.m <= 6:
        i = np.arange(1 << (2 * sec.m))
        ptab = (etab[i & ((1 << sec.m) - 1)] | (etab[i >> sec.m] << 16)).astype(np.uint32).view(np.int32)
    d = data.contiguous().numpy()
    flat = common.decode_target(geo.numel, sec.dtype, out, "cpu")
    out = common.element_view(flat, pb).numpy().view(_UNSIGNED[pb.kind])
    Kc = tab.shape[0]
    fcnt = np.zeros(Kc, np.int64)
    err = np.zeros(Kc, np.int32)
    with _LOCK:
        numba.set_num_threads(_threads())
        enec_decode(d, out, geo.B, tab, sec.zero_blocks(), geo.L, sec.b, sec.n, sec.m, sec.F, sec.X, geo.pos_bits, E,
                    pb.ssh, pb.smask, pb.rsh, pb.rhi, pb.rlo, R, etab, ptab,
                    start["flags"], end["flags"], start["low"], end["low"], start["high"], end["high"],
                    start["exc_pos"], end["exc_pos"], start["exc_exp"], end["exc_exp"], start["raw"], end["raw"],
                    cod.Nr, fcnt, err)
    if sec.m < sec.n and sec.F and int(fcnt.sum()) != sec.F:
        raise enec.flag_count_error(int(fcnt.sum()), sec.F)
    if err.any():
        raise enec.exception_position_error()
    return flat
