"""ENEC on accelerators: Triton kernels (CUDA; Ascend NPUs through triton-ascend).

Same contract as qlccomm.enec (encode_section / decode_section: same bytes, same
errors).  The block kernels take one block per program (programs loop over blocks past
the grid limit) and walks it in steps of at most SUB elements, so on-chip memory
stays small for any block size.  Two walks of a block:

  element order   SUB consecutive elements: raw planes, low plane (8 values per m
                  bytes), exceptions (ranks by tl.cumsum), all-zero fill
  group tiles     an [L, SUB / L] tile, columns = groups j0 .. j0 + SUB/L - 1, rows =
                  members (element j + G*i: every row is a contiguous run): flags (a
                  max over the members), flagged-group ranks (tl.cumsum of the flags,
                  carried between tiles), high values packed per group

Every host-side decision (geometry, sample plan, parameter search, code tables, block
table, plane offsets, section metadata, error messages) is qlccomm.enec's EncodePlan /
ENECSection; this module runs only the passes:

    encode  _enec_stats       per block: any bit set?  per program: exponent histogram
                              (tl.histogram), summed over programs by torch
            plan              block modes; search on the histogram and a sample of
                              <= 8 blocks (enec.sample_from_tensor) and, on CUDA, the
                              flagged groups of every candidate base counted on the
                              device (enec.flagged_counts) -> b, n, m; code tables ->
                              256-entry y / exception table; exceptions X from the
                              histogram.  (Elsewhere: CPU tensors under the
                              interpreter, NPUs, the host search reads the sample.)
            _enec_count       per coded block (group tiles): flagged groups,
                              exceptions (only when m < n or X > 0)
            plan              exclusive sums -> flag / exception offsets per block,
                              section metadata, plane offsets
            _enec_write       per coded block: raw planes, low plane, exceptions as
                              (position, exponent) int32 pairs at the block's offset
                              (element order); flag bits and the flagged groups' high
                              values at their ranks (group tiles, only when m < n)
            _enec_exc_pack    the X pairs packed into the two exception planes
                              (only when X > 0; chunks of SUB pairs, a multiple of 8,
                              so every byte has one writer)
    decode  _enec_flag_count  per coded block: set flag bits (only when F > 0, m < n),
                              then torch.cumsum on the device -> the rank of each
                              block's first flagged group
            _enec_decode      per block: all-zero blocks zero-filled; coded blocks in
                              group tiles: flag bit and rank per column, low and high
                              values -> y, y -> exponent (256-entry table), raw bits
                              merged, every element stored once.  Program 0 checks the
                              flag total against F.
            _enec_exc_apply   per coded block: its exceptions' exponents written over
                              (only when X > 0; a separate launch orders these writes
                              after _enec_decode's without barriers)
            host              error word -> the torch path's FormatError

A corrupt stream that lists one position twice in a block: the torch path and the
interpreter keep the later exponent; on a device either may win (valid streams list
each position once).

Launches per call, constant in the number of blocks:

  encode   kernels  _enec_stats, torch.sum, _enec_count (*), _enec_write,
                    _enec_exc_pack (**)                               3 to 5
                    + the search's torch ops on the device: index_select and the
                    split of the <= 8 sampled blocks, two steps of ~25 small ops in
                    flagged_counts (exponent counts, two matrix products)     ~60
           copies   device->host: statistics (one int64 buffer), the flagged-group
                    counts ([2^E, pairs] int64, 90 KiB for bfloat16), counts (*);
                    host->device: code table, block table (again after the counts
                    when (*)), section metadata
  decode   kernels  _enec_flag_count + torch.cumsum (***), _enec_decode,
                    _enec_exc_apply (**), the error word's memset     2 to 5
           copies   host->device: block table, exponent table; device->host: the
                    error word (and, on the error path only, the flag total)

  (*) when m < n or X > 0   (**) when X > 0   (***) when F > 0 and m < n

The encoder relies on the writer's geometry (enec.BLOCK_ELEMS and enec.GROUP_ELEMS, and
so G = B / L, multiples of 8, L a power of two: every block's part of every plane starts
on a byte).  The decoder takes any valid stream (any B, L; tiles of next_power_of_2(L)
rows): values are read at arbitrary bit offsets with masked two-byte loads bounded by
their plane, so corrupt planes cannot reach outside; parse_section validated the
metadata and plane sizes.

Specialisations: one per dtype (shifts and masks of qlccomm.split.Plan) and step
size per kernel; the decoder also per tile height (16 for the writer's L).  The widths
m, n - m, the exception position and exponent widths are runtime values.

triton-ascend limits respected: no uint32 (int32/int64 arithmetic, uint8 only for bytes),
no int64 atomics (one int32 atomic_or per program), at most 65535 programs, a few KiB of
live data per program (SUB_MAX = 1024 elements per step).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import triton
import triton.language as tl

from qlccomm import enec
from qlccomm.split import Plan

from . import common
from .triton_qlc import MAX_PROGRAMS, NUM_WARPS, _pack_store, _store_raw

# Elements per step (see triton_qlc): small on devices, whole quarter blocks under the
# interpreter, which pays per operation.  Tests lower it to exercise carried offsets.
SUB_MAX = 4096 if os.environ.get("TRITON_INTERPRET") == "1" else 1024
STATS_PROGRAMS = 2048    # the statistics pass: per-program histograms, [programs, 256] int32
NBINS = 256

ERR_EXC = tl.constexpr(1)      # an exception position outside its block
ERR_FLAGS = tl.constexpr(2)    # the flag plane's set bits differ from F

_empty = torch.empty     # output allocation (tests poison it to catch bytes nobody writes)


# ---------------------------------------------------------------------------------------------------
# helpers
@triton.jit
def _row(tab_ptr, c):
    """Block row c of the table (enec.block_table columns): block, elements, groups, group and
    raw-element ordinals, exception offset and count, flagged groups before it."""
    row = tab_ptr + c * 8
    return (tl.load(row + 0), tl.load(row + 1), tl.load(row + 2), tl.load(row + 3),
            tl.load(row + 4), tl.load(row + 5), tl.load(row + 6), tl.load(row + 7))


@triton.jit
def _unpack_rt(data_ptr, base, idx, end, mask, w):
    """Values number idx of runtime width w (0..8) of a packed plane at data_ptr + base;
    bytes at or past `end` (absolute) read as 0."""
    bit = idx * w
    p = base + (bit >> 3)
    b0 = tl.load(data_ptr + p, mask=mask & (p < end), other=0).to(tl.int32)
    b1 = tl.load(data_ptr + p + 1, mask=mask & (p + 1 < end), other=0).to(tl.int32)
    return ((b0 | (b1 << 8)) >> (bit & 7).to(tl.int32)) & ((1 << w) - 1)


@triton.jit
def _get_wide(data_ptr, base, end, count, t, mask, W):
    """Values number t of `count` values of W bits (0..24) stored as planes (qlccomm.bitpack):
    W // 8 byte planes, then the top W % 8 bits packed.  int64."""
    nb = W // 8
    count64 = count + tl.zeros([], dtype=tl.int64)
    v = tl.zeros(t.shape, dtype=tl.int64)
    for p in range(0, nb):
        q = base + p * count64 + t
        v |= tl.load(data_ptr + q, mask=mask & (q < end), other=0).to(tl.int64) << (8 * p)
    top = _unpack_rt(data_ptr, base + nb * count64, t, end, mask, W % 8)
    return v | (top.to(tl.int64) << (8 * nb))


@triton.jit
def _put_wide(out_ptr, base, count, t0, v, valid, W, SUB: tl.constexpr):
    """Values t0 .. t0 + SUB - 1 (t0 a multiple of 8; v zero where not valid) of `count`
    values of W bits stored as planes at out_ptr + base."""
    nb = W // 8
    count64 = count + tl.zeros([], dtype=tl.int64)
    t = t0 + tl.arange(0, SUB)
    for p in range(0, nb):
        tl.store(out_ptr + base + p * count64 + t, ((v >> (8 * p)) & 255).to(tl.uint8), mask=valid)
    r = W % 8
    if r > 0:
        _pack_store(out_ptr, base + nb * count64 + ((t0 * r) >> 3), (v >> (8 * nb)) & ((1 << r) - 1),
                 ((count64 * r + 7) >> 3) - ((t0 * r) >> 3), r, SUB)


# ---------------------------------------------------------------------------------------------------
# encode
@triton.jit
def _enec_stats(x_ptr, nz_ptr, part_ptr, n, B, nblocks, nprog,
                SSH: tl.constexpr, SMASK: tl.constexpr, SUB: tl.constexpr):
    """nz[c] = 1 if any bit of block c is set (int64); part[program] = exponent histogram of
    the program's blocks (int32 [256]; all-zero blocks count at exponent 0)."""
    pid = tl.program_id(0)
    h = tl.zeros([256], dtype=tl.int32)
    for c in range(pid.to(tl.int64), nblocks, nprog):   # int64: offsets past 2^31
        base = c * B
        nz = 0
        for s in range(0, B, SUB):
            idx = s + tl.arange(0, SUB)
            m = (idx < B) & (base + idx < n)
            x = tl.load(x_ptr + base + idx, mask=m, other=0).to(tl.int32)
            nz += tl.sum((x != 0).to(tl.int32), axis=0)
            h += tl.histogram((x >> SSH) & SMASK, 256, mask=m)
        tl.store(nz_ptr + c, (nz > 0).to(tl.int64))
    tl.store(part_ptr + pid * 256 + tl.arange(0, 256), h)


@triton.jit
def _enec_count(x_ptr, tab_ptr, ctab_ptr, cnt_ptr, B, m, nrows, nprog,
                SSH: tl.constexpr, SMASK: tl.constexpr, L: tl.constexpr, SUB: tl.constexpr):
    """cnt[2c] = flagged groups of coded block c (some member has y >= 2^m), cnt[2c + 1] = its
    exceptions.  ctab[e] = y | exception << 8."""
    GS: tl.constexpr = SUB // L
    for c in range(tl.program_id(0).to(tl.int64), nrows, nprog):
        blk, bk, gk, gord, rord, xoff, xcnt, foff = _row(tab_ptr, c)
        start = blk * B
        f = 0
        xc = 0
        for j0 in range(0, gk, GS):
            j = j0 + tl.arange(0, GS)
            idx = j[None, :] + gk * tl.arange(0, L)[:, None]               # [L, GS]
            valid = (j[None, :] < gk) & (idx < bk)
            x = tl.load(x_ptr + start + idx, mask=valid, other=0).to(tl.int32)
            ct = tl.load(ctab_ptr + ((x >> SSH) & SMASK), mask=valid, other=0)
            fl = tl.max((((ct & 255) >> m) != 0).to(tl.int32), axis=0)    # [GS]
            f += tl.sum(fl, axis=0)
            xc += tl.sum(tl.sum((ct >> 8) & 1, axis=1), axis=0)
        tl.store(cnt_ptr + 2 * c, f)
        tl.store(cnt_ptr + 2 * c + 1, xc)


@triton.jit
def _enec_write(x_ptr, tab_ptr, ctab_ptr, out_ptr, xpos_ptr, xexp_ptr, B, m, wh, nrows, nprog,
                flag_base, low_base, high_base, raw_base, Nr,
                SSH: tl.constexpr, SMASK: tl.constexpr, RSH: tl.constexpr, RHI: tl.constexpr,
                RLO: tl.constexpr, RAW_BITS: tl.constexpr, L: tl.constexpr, SUB: tl.constexpr):
    """Every plane of every coded block at the offsets of its table row; exceptions as
    (block-local position, exponent) int32 pairs at the block's exception offset."""
    GS: tl.constexpr = SUB // L
    for c in range(tl.program_id(0).to(tl.int64), nrows, nprog):
        blk, bk, gk, gord, rord, xoff, xcnt, foff = _row(tab_ptr, c)
        start = blk * B
        nv = gk * L                                     # low-plane values, virtual ones included
        xc = 0
        # element order: raw planes, low plane, exceptions
        for s in range(0, nv, SUB):
            idx = s + tl.arange(0, SUB)
            valid = idx < bk
            x = tl.load(x_ptr + start + idx, mask=valid, other=0).to(tl.int32)
            e = (x >> SSH) & SMASK
            ct = tl.load(ctab_ptr + e, mask=valid, other=0)
            _store_raw(out_ptr, ((x >> RSH) & RHI) | (x & RLO), valid, raw_base + rord + idx, Nr,
                       raw_base + ((3 * rord) >> 3) + Nr + 3 * (s // 8), (3 * bk + 7) // 8 - 3 * (s // 8), RAW_BITS,
                       SUB)
            if m > 0:
                _pack_store(out_ptr, low_base + (((gord * L + s) * m) >> 3), ct & ((1 << m) - 1),
                            ((nv * m) >> 3) - ((s * m) >> 3), m, SUB)
            if xcnt > 0:
                xf = (ct >> 8) & 1
                r = xoff + xc + tl.cumsum(xf, axis=0) - xf
                tl.store(xpos_ptr + r, idx.to(tl.int32), mask=xf != 0)
                tl.store(xexp_ptr + r, e, mask=xf != 0)
                xc += tl.sum(xf, axis=0)
        # group tiles: flag bits, the flagged groups' high values at their ranks
        if wh > 0:
            fc = foff
            for j0 in range(0, gk, GS):
                j = j0 + tl.arange(0, GS)
                i = tl.arange(0, L)
                idx = j[None, :] + gk * i[:, None]                          # [L, GS]
                valid = (j[None, :] < gk) & (idx < bk)
                x = tl.load(x_ptr + start + idx, mask=valid, other=0).to(tl.int32)
                hv = (tl.load(ctab_ptr + ((x >> SSH) & SMASK), mask=valid, other=0) & 255) >> m
                fl = tl.max((hv != 0).to(tl.int32), axis=0)                 # [GS]
                k = tl.arange(0, 8)
                fb = tl.sum(tl.reshape(fl, (GS // 8, 8)) << k[None, :], axis=1)
                q = tl.arange(0, GS // 8)
                tl.store(out_ptr + flag_base + ((gord + j0) >> 3) + q, fb.to(tl.uint8), mask=j0 + 8 * q < gk)
                rank = fc + tl.cumsum(fl, axis=0) - fl
                # each group's L values: L / 8 words of 8 values, wh bytes each
                v3 = tl.reshape(hv.to(tl.int64), (L // 8, 8, GS))
                word = tl.sum(v3 << (k * wh).to(tl.int64)[None, :, None], axis=1)          # [L/8, GS]
                byte = (word[:, None, :] >> (k * 8).to(tl.int64)[None, :, None]) & 255    # [L/8, 8, GS]
                half = tl.arange(0, L // 8)
                pos = high_base + rank[None, None, :] * ((L // 8) * wh) + half[:, None, None] * wh \
                    + k[None, :, None]
                tl.store(out_ptr + pos, byte.to(tl.uint8), mask=(fl[None, None, :] != 0) & (k[None, :, None] < wh))
                fc += tl.sum(fl, axis=0)


@triton.jit
def _enec_exc_pack(xpos_ptr, xexp_ptr, out_ptr, X, pos_base, exp_base, P, E, nchunks, nprog,
                   SUB: tl.constexpr):
    """Exceptions t0 .. t0 + SUB - 1 into the position (P bits) and exponent (E bits) planes."""
    for c in range(tl.program_id(0).to(tl.int64), nchunks, nprog):
        t0 = c * SUB
        t = t0 + tl.arange(0, SUB)
        valid = t < X
        pos = tl.load(xpos_ptr + t, mask=valid, other=0)
        ex = tl.load(xexp_ptr + t, mask=valid, other=0)
        _put_wide(out_ptr, pos_base, X, t0, pos, valid, P, SUB)
        _put_wide(out_ptr, exp_base, X, t0, ex, valid, E, SUB)


# ---------------------------------------------------------------------------------------------------
# decode
@triton.jit
def _enec_flag_count(data_ptr, tab_ptr, cnt_ptr, flag_lo, flag_hi, nrows, nprog, SUB: tl.constexpr):
    """cnt[c] = set bits of coded block c's part of the flag plane (int32)."""
    for c in range(tl.program_id(0).to(tl.int64), nrows, nprog):
        row = tab_ptr + c * 8
        gk = tl.load(row + 2)
        gord = tl.load(row + 3)
        f = 0
        for s in range(0, gk, SUB):
            j = s + tl.arange(0, SUB)
            bit = gord + j
            p = flag_lo + (bit >> 3)
            v = tl.load(data_ptr + p, mask=(j < gk) & (p < flag_hi), other=0).to(tl.int32)
            f += tl.sum((v >> (bit & 7).to(tl.int32)) & 1, axis=0)
        tl.store(cnt_ptr + c, f)


@triton.jit
def _enec_decode(data_ptr, tab_ptr, fo_ptr, fcnt_ptr, etab_ptr, out_ptr, err_ptr,
                 B, L, m, wh, F, use_flags, ncoded, nrows, nprog,
                 flag_lo, flag_hi, low_lo, low_hi, high_lo, high_hi, raw_lo, raw_hi, Nr,
                 SSH: tl.constexpr, RSH: tl.constexpr, RHI: tl.constexpr, RLO: tl.constexpr,
                 RAW_BITS: tl.constexpr, LP: tl.constexpr, SUB: tl.constexpr):
    """Rows < ncoded: coded blocks, decoded in [LP, SUB / LP] group tiles; the others
    all-zero blocks (groups 0), zero-filled.  fo: inclusive sums of fcnt (flag bits per
    coded block); both read only when use_flags (else the host passes an empty flag plane,
    flag_hi = flag_lo, and every flag reads 0)."""
    GS: tl.constexpr = SUB // LP
    pid = tl.program_id(0)
    flags = 0
    if use_flags != 0:
        if pid == 0:
            flags |= (tl.load(fo_ptr + ncoded - 1) != F).to(tl.int32) * ERR_FLAGS
    for c in range(pid.to(tl.int64), nrows, nprog):
        blk, bk, gk, gord, rord, xoff, xcnt, foff = _row(tab_ptr, c)
        start = blk * B
        if gk == 0:
            for s in range(0, bk, SUB):
                idx = s + tl.arange(0, SUB)
                tl.store(out_ptr + start + idx, tl.zeros([SUB], dtype=out_ptr.dtype.element_ty), mask=idx < bk)
        else:
            carry = tl.zeros([], dtype=tl.int64)         # flagged groups before the tile
            if use_flags != 0:
                carry = tl.load(fo_ptr + c) - tl.load(fcnt_ptr + c).to(tl.int64)
            for j0 in range(0, gk, GS):
                j = j0 + tl.arange(0, GS)
                i = tl.arange(0, LP)
                jv = j < gk
                bit = gord + j
                pf = flag_lo + (bit >> 3)
                fl = (tl.load(data_ptr + pf, mask=jv & (pf < flag_hi), other=0).to(tl.int32)
                      >> (bit & 7).to(tl.int32)) & 1                          # [GS]
                rank = carry + tl.cumsum(fl, axis=0) - fl
                carry += tl.sum(fl, axis=0)
                idx = j[None, :] + gk * i[:, None]                              # [LP, GS]
                valid = (i[:, None] < L) & jv[None, :] & (idx < bk)
                y = _unpack_rt(data_ptr, low_lo, gord * L + idx, low_hi, valid, m)
                hm = valid & (fl[None, :] != 0) & (rank[None, :] < F)
                y |= _unpack_rt(data_ptr, high_lo, rank[None, :] * L + i[:, None], high_hi, hm, wh) << m
                e = tl.load(etab_ptr + y, mask=valid, other=0)
                r0 = raw_lo + rord + idx
                raw = tl.load(data_ptr + r0, mask=valid & (r0 < raw_hi), other=0).to(tl.int32)
                if RAW_BITS == 24:
                    r1 = r0 + Nr
                    r2 = r1 + Nr
                    raw |= tl.load(data_ptr + r1, mask=valid & (r1 < raw_hi), other=0).to(tl.int32) << 8
                    raw |= tl.load(data_ptr + r2, mask=valid & (r2 < raw_hi), other=0).to(tl.int32) << 16
                if RAW_BITS == 11:
                    top_lo = raw_lo + tl.zeros([], dtype=tl.int64) + Nr      # int64 before the sum
                    raw |= _unpack_rt(data_ptr, top_lo, rord + idx, raw_hi, valid, 3) << 8
                val = (e << SSH) | ((raw & RHI) << RSH) | (raw & RLO)
                tl.store(out_ptr + start + idx, val.to(out_ptr.dtype.element_ty), mask=valid)
    tl.atomic_or(err_ptr, flags)


@triton.jit
def _enec_exc_apply(data_ptr, tab_ptr, out_ptr, err_ptr, B, X, P, E, nrows, nprog,
                    xp_lo, xp_hi, xe_lo, xe_hi, SSH: tl.constexpr, EMASK: tl.constexpr, SUB: tl.constexpr):
    """Write each coded block's listed exponents over the decoded ones; positions outside
    the block are not written and set ERR_EXC."""
    flags = 0
    for c in range(tl.program_id(0).to(tl.int64), nrows, nprog):
        blk, bk, gk, gord, rord, xoff, xcnt, foff = _row(tab_ptr, c)
        for s in range(0, xcnt, SUB):
            k = s + tl.arange(0, SUB)
            valid = k < xcnt
            t = xoff + k
            pos = _get_wide(data_ptr, xp_lo, xp_hi, X, t, valid, P)
            ex = _get_wide(data_ptr, xe_lo, xe_hi, X, t, valid, E)
            flags |= tl.max((valid & (pos >= bk)).to(tl.int32), axis=0)
            ok = valid & (pos < bk)
            p = out_ptr + blk * B + pos
            o = tl.load(p, mask=ok, other=0).to(tl.int64)
            o = (o & EMASK) | (ex << SSH)
            tl.store(p, o.to(out_ptr.dtype.element_ty), mask=ok)
    tl.atomic_or(err_ptr, flags)


# ---------------------------------------------------------------------------------------------------
# host side: the passes over enec.EncodePlan / enec.ENECSection
def _grid(rows: int, cap: int = MAX_PROGRAMS) -> int:
    return max(1, min(rows, cap))


def _sub(n: int, floor: int = 8) -> int:
    """Step size for blocks of n elements: a power of two, at most SUB_MAX, at least `floor`."""
    return max(floor, min(SUB_MAX, triton.next_power_of_2(max(n, 1))))


def _stats(x: torch.Tensor, geo: enec.Geometry, pb: Plan) -> tuple[np.ndarray, np.ndarray]:
    """(block modes uint8 [K], exponent histogram of the coded blocks int64 [256])."""
    K = geo.K
    g = _grid(K, STATS_PROGRAMS)
    part = torch.empty(g, NBINS, dtype=torch.int32, device=x.device)
    stat = torch.empty(NBINS + K, dtype=torch.int64, device=x.device)
    _enec_stats[(g,)](x, stat[NBINS:], part, geo.numel, geo.B, K, g, SSH=pb.ssh, SMASK=pb.smask,
                      SUB=_sub(geo.B), num_warps=NUM_WARPS)
    torch.sum(part, 0, out=stat[:NBINS])
    stat = stat.cpu().numpy()
    modes = stat[NBINS:].astype(np.uint8)
    hist = stat[:NBINS].copy()
    elems = np.full(K, geo.B, np.int64)
    elems[-1] = geo.Bt
    hist[0] -= int(elems[modes == enec.MODE_ZERO].sum())     # all-zero blocks are not coded
    return modes, hist


def _sample(flat: torch.Tensor, geo: enec.Geometry, cod: enec.Coded,
            on_host: bool | None = None) -> tuple[tuple[torch.Tensor, float, bool], bool]:
    """The search's sample (enec.sample_from_tensor) and whether the search runs on the
    host.  On CUDA the sample stays there: its exponents are split and the flagged groups
    counted for every b by torch ops on the device (enec.flagged_counts; one small copy
    back).  Elsewhere (CPU tensors under the interpreter; NPUs) the host search runs as in
    the torch path.  `on_host` forces either (tests compare them): same choice."""
    if on_host is None:
        on_host = flat.device.type != "cuda"
    return enec.sample_from_tensor(flat, geo, cod, "cpu" if on_host else None), on_host


def _search(flat: torch.Tensor, hist: np.ndarray, geo: enec.Geometry, cod: enec.Coded, E: int,
            on_host: bool | None = None) -> enec.Choice:
    """enec.search as encode_section runs it (tests/test_kernels_triton.py)."""
    sample, on_host = _sample(flat, geo, cod, on_host)
    return enec.search(hist, *sample, geo, cod, E, on_host)


def encode_section(flat: torch.Tensor, reserve: int = 0, into: torch.Tensor | None = None) -> torch.Tensor:
    """qlccomm.enec.encode_section on the tensor's device (same bytes, same `reserve` and
    `into`; the kernels write bytes, so the section may start at any address)."""
    ep = enec.plan_encode(flat)
    flat = flat.detach().contiguous().view(-1)
    dev = flat.device
    geo = ep.geo
    B, L = geo.B, geo.L
    pb = ep.plan
    x = common.element_view(flat, pb)
    modes, hist = _stats(x, geo, pb)
    ep.set_modes(modes)
    if not ep.cod.Kc:
        head = ep.layout().head
        buf = common.section_buffer(reserve + len(head), into, dev)
        buf[reserve:].copy_(torch.frombuffer(bytearray(head), dtype=torch.uint8))
        return buf
    ep.search(hist, *_sample(flat, geo, ep.cod))
    ctab = np.zeros(NBINS, np.int32)
    ctab[: ep.A] = ep.ytab.astype(np.int32) | (ep.xtab.astype(np.int32) << 8)
    ctab_d = torch.from_numpy(ctab).to(dev)
    tab = ep.table
    Kc = tab.shape[0]
    sub = _sub(B, 8 * L)
    g = _grid(Kc)
    if ep.wh or ep.X:
        tab_d = torch.from_numpy(tab).to(dev)
        cnt = torch.empty(2 * Kc, dtype=torch.int32, device=dev)
        _enec_count[(g,)](x, tab_d, ctab_d, cnt, B, ep.m, Kc, g, SSH=pb.ssh, SMASK=pb.smask, L=L, SUB=sub,
                          num_warps=NUM_WARPS)
        cnt = cnt.cpu().numpy().astype(np.int64).reshape(Kc, 2)
        ep.count(cnt[:, 1], cnt[:, 0])
    else:
        ep.count()
    tab_d = torch.from_numpy(tab).to(dev)
    lay = ep.layout()
    start = lay.start
    size = reserve + lay.nbytes
    buf = into[:size] if into is not None and into.numel() >= size else _empty(size, dtype=torch.uint8, device=dev)
    out = buf[reserve:]
    out[: len(lay.head)].copy_(torch.frombuffer(bytearray(lay.head), dtype=torch.uint8))
    X = ep.X
    xpos = torch.empty(max(X, 1), dtype=torch.int32, device=dev)
    xexp = torch.empty(max(X, 1), dtype=torch.int32, device=dev)
    _enec_write[(g,)](x, tab_d, ctab_d, out, xpos, xexp, B, ep.m, ep.wh, Kc, g,
                      start["flags"], start["low"], start["high"], start["raw"], ep.cod.Nr,
                      SSH=pb.ssh, SMASK=pb.smask, RSH=pb.rsh, RHI=pb.rhi, RLO=pb.rlo, RAW_BITS=ep.R, L=L, SUB=sub,
                      num_warps=NUM_WARPS)
    if X:
        xsub = SUB_MAX
        nch = -(-X // xsub)
        gx = _grid(nch)
        _enec_exc_pack[(gx,)](xpos, xexp, out, X, start["exc_pos"], start["exc_exp"], geo.pos_bits, ep.E, nch, gx,
                              SUB=xsub, num_warps=NUM_WARPS)
    return buf


def decode_section(sec: enec.ENECSection, data: torch.Tensor, header, out: torch.Tensor | None = None) -> torch.Tensor:
    """qlccomm.enec.decode_section on the stream's device (same result, same errors, same `out`)."""
    geo, cod = sec.geo, sec.cod
    dev = data.device
    if cod.Kc == 0:
        return sec.zeros(out, dev)
    pb = sec.plan
    E, R = sec.plan.symbol_bits, sec.plan.raw_bits
    tab = sec.block_table()
    Kc = tab.shape[0]
    zero = sec.zero_blocks()
    ztab = np.zeros((zero.size, enec.TAB_COLS), np.int64)       # groups 0: all-zero block
    ztab[:, enec.TAB_BLOCK] = zero
    ztab[:, enec.TAB_ELEMS] = np.where(zero == geo.K - 1, geo.Bt, geo.B)
    rows = np.concatenate([tab, ztab])
    tab_d = torch.from_numpy(rows).to(dev)
    etab = torch.from_numpy(sec.exponent_table().astype(np.int32)).to(dev)
    start, end = sec.plane_bounds()
    data = data.contiguous()
    flat = common.decode_target(geo.numel, sec.dtype, out, dev)
    out = common.element_view(flat, pb)
    err = torch.zeros(1, dtype=torch.int32, device=dev)
    L = geo.L
    LP = triton.next_power_of_2(L)
    sub = _sub(geo.B, LP)
    use_flags = sec.F > 0 and sec.m < sec.n
    g = _grid(Kc)
    if use_flags:
        fcnt = torch.empty(Kc, dtype=torch.int32, device=dev)
        _enec_flag_count[(g,)](data, tab_d, fcnt, start["flags"], end["flags"], Kc, g,
                               SUB=_sub(geo.G), num_warps=NUM_WARPS)
        fo = torch.cumsum(fcnt, 0, dtype=torch.int64)
    else:                                  # never read
        fcnt = torch.empty(1, dtype=torch.int32, device=dev)
        fo = torch.empty(1, dtype=torch.int64, device=dev)
    nrows = rows.shape[0]
    gd = _grid(nrows)
    _enec_decode[(gd,)](data, tab_d, fo, fcnt, etab, out, err, geo.B, L, sec.m, sec.n - sec.m, sec.F,
                        int(use_flags), Kc, nrows, gd,
                        start["flags"], end["flags"] if use_flags else start["flags"], start["low"], end["low"],
                        start["high"], end["high"], start["raw"], end["raw"], cod.Nr,
                        SSH=pb.ssh, RSH=pb.rsh, RHI=pb.rhi, RLO=pb.rlo, RAW_BITS=R, LP=LP, SUB=sub,
                        num_warps=NUM_WARPS)
    if sec.X:
        _enec_exc_apply[(g,)](data, tab_d, out, err, geo.B, sec.X, geo.pos_bits, E, Kc, g,
                              start["exc_pos"], end["exc_pos"], start["exc_exp"], end["exc_exp"],
                              SSH=pb.ssh, EMASK=~(pb.smask << pb.ssh), SUB=SUB_MAX,
                              num_warps=NUM_WARPS)
    flags = int(err.item())
    if flags & ERR_FLAGS.value:
        raise enec.flag_count_error(int(fo[-1]), sec.F)
    if flags & ERR_EXC.value:
        raise enec.exception_position_error()
    return flat
