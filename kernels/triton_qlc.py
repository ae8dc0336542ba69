"""QLC on accelerators: Triton kernels (CUDA; Ascend NPUs through triton-ascend).

Same contract as qlccomm.qlc (encode_section / decode_section: same bytes, same
errors).  One chunk per program (programs loop over chunks past the grid limit),
each chunk walked in steps of SUB elements with the bit offsets carried between
steps, so any chunk size works and on-chip memory stays small.

Launches per call (constant in the number of chunks):

  encode, referenced codebook    _qlc_stats, _qlc_encode, _qlc_suffix_diff   3 kernels
                                 + 1 device->host copy (per-chunk statistics, K int32)
                                 + 2 host->device copies (section metadata, chunk table)
  encode, adaptive codebook      + _qlc_stats writing the symbols, torch.bincount,
                                 and a device->host copy of the histogram            5 kernels
  decode                         _qlc_decode                                         1 kernel
                                 + 1 host->device copy (chunk table), 1 memset (error
                                 word), 1 device->host copy (error word)

The kernels:

  _qlc_stats         per chunk: any bit set?  sum of the suffix widths (code table
                     gather + tl.sum).  Adaptive mode first runs it writing the symbols
                     for torch.bincount; the host then fits the codebook.
  (host)             modes, plane offsets, metadata: kernels/common.py, the same code
                     the native path uses (one small scan across chunks, on the host)
  _qlc_encode        per chunk: raw planes; coded chunks: 3-bit prefixes packed 8 per
                     3 bytes (a reshape and a sum), suffix bit offsets by tl.cumsum.
                     The suffix bytes are written without atomics or shared memory:
                     byte B of a chunk is owned by the last code that starts in it,
                     which stores P(B) = (sum of the chunk's bytes 0..B) mod 256, computed
                     from two more tl.cumsum (of each code's bits that fall in its start
                     byte, and of the bits the owners spill into the next byte) into a
                     scratch buffer
  _qlc_suffix_diff   per coded chunk: byte B = P(B) - P(B-1) mod 256, into the section
  _qlc_decode        per chunk: prefixes -> widths (a 32-bit constant, no table), bit
                     offsets by tl.cumsum, two byte gathers per suffix, one table gather
                     for the symbol, raw planes, merge, store.  Errors (prefixes vs the
                     suffix byte count, rank past the table, symbol too wide) OR into one
                     int32 per call with tl.atomic_or; reads are masked to the chunk's own
                     bytes, so corrupt planes never read out of bounds.

triton-ascend limits respected: no uint32 (int32/int64 arithmetic, uint8 only for
bytes), no int64 atomics (one int32 atomic_or per program), at most 65535 programs,
a few KiB of live data per program (steps of SUB_MAX = 1024 elements).
"""
from __future__ import annotations

import os

import numpy as np
import torch
import triton
import triton.language as tl

from qlccomm import qlc
from qlccomm.codebook import Codebook
from qlccomm.split import Plan

from . import common


# Integer arguments below 2^31 arrive as int32 and their sums stay int32: every offset sum
# starts from an int64 term (a table column, or tl.zeros([], tl.int64)), never from two
# such arguments (rbase + n_nz wraps for float16 past ~1.6e9 elements).
MAX_PROGRAMS = 65535     # triton-ascend's grid limit; programs loop over the chunks beyond it
# Elements per step inside a chunk: bounds registers / on-chip memory on devices.  The
# interpreter (TRITON_INTERPRET=1) pays per operation, not per element: it takes whole
# chunks.  Tests set a small SUB_MAX to exercise the offsets carried between steps.
SUB_MAX = 4096 if os.environ.get("TRITON_INTERPRET") == "1" else 1024
NUM_WARPS = 4


def _sub(chunk: int) -> int:
    return min(SUB_MAX, triton.next_power_of_2(chunk))


@triton.jit
def _pack_store(out_ptr, base, vals, limit, w, SUB: tl.constexpr):
    """Store SUB values of w <= 8 bits (already masked, zero past the data) packed LSB
    first, 8 values per w bytes, at out_ptr + base; bytes at or past `limit` (relative
    to base) are not written.  w may be a runtime value (ENEC's widths) or a constant
    (Triton specialises the call on it)."""
    v = tl.reshape(vals.to(tl.int64), (SUB // 8, 8))
    j = tl.arange(0, 8)
    word = tl.sum(v << (j * w).to(tl.int64)[None, :], axis=1)          # [SUB/8], 8w bits
    byte = (word[:, None] >> (j * 8).to(tl.int64)[None, :]) & 255
    pos = tl.arange(0, SUB // 8)[:, None] * w + j[None, :]
    tl.store(out_ptr + base + pos, byte.to(tl.uint8), mask=(j[None, :] < w) & (pos < limit))


@triton.jit
def _store_raw(out_ptr, raw, valid, r0, plane, top_base, top_limit, RAW_BITS: tl.constexpr, SUB: tl.constexpr):
    """The raw bits of SUB elements (where `valid`) into the raw planes: byte planes at r0
    (per element), r0 + plane and r0 + 2 * plane (24 bits); or a byte plane and the top 3
    bits packed at top_base, bytes at or past top_limit (relative to it) unwritten (11 bits)."""
    tl.store(out_ptr + r0, (raw & 255).to(tl.uint8), mask=valid)
    if RAW_BITS == 24:
        tl.store(out_ptr + r0 + plane, ((raw >> 8) & 255).to(tl.uint8), mask=valid)
        tl.store(out_ptr + r0 + plane + plane, ((raw >> 16) & 255).to(tl.uint8), mask=valid)
    if RAW_BITS == 11:
        _pack_store(out_ptr, top_base, tl.where(valid, (raw >> 8) & 7, 0), top_limit, 3, SUB)


@triton.jit
def _unpack(data_ptr, base, idx, end, mask, R: tl.constexpr):
    """Values number `idx` of width R <= 8 of a packed plane at data_ptr + base; bytes at
    or past `end` (absolute) read as 0."""
    if R == 8:
        p = base + idx
        v = tl.load(data_ptr + p, mask=mask & (p < end), other=0).to(tl.int32)
    else:
        bit = idx * R
        p = base + (bit >> 3)
        b0 = tl.load(data_ptr + p, mask=mask & (p < end), other=0).to(tl.int32)
        b1 = tl.load(data_ptr + p + 1, mask=mask & (p + 1 < end), other=0).to(tl.int32)
        v = ((b0 | (b1 << 8)) >> (bit & 7)) & ((1 << R) - 1)
    return v


@triton.jit
def _chunk_row(tab_ptr, c):
    """Chunk c's row of the table (kernels/common.py TAB_*): mode, elements, prefix, symbol,
    suffix and raw plane offsets, suffix bytes."""
    row = tab_ptr + c * 8
    return (tl.load(row + 0), tl.load(row + 1), tl.load(row + 2), tl.load(row + 3),
            tl.load(row + 4), tl.load(row + 5), tl.load(row + 6))


@triton.jit
def _qlc_stats(x_ptr, enc_ptr, stat_ptr, sym_ptr, n, chunk, nchunks, nprog,
               SSH: tl.constexpr, SMASK: tl.constexpr, WITH_LEN: tl.constexpr, WRITE_SYM: tl.constexpr,
               SUB: tl.constexpr):
    """stat[c] = 2 * (sum of the suffix widths of chunk c) + (any bit of chunk c set);
    with WRITE_SYM also sym[i] = symbol of element i."""
    for c in range(tl.program_id(0).to(tl.int64), nchunks, nprog):   # int64: offsets past 2^31
        base = c * chunk
        bits = 0
        nz = 0
        for s in range(0, chunk, SUB):
            idx = s + tl.arange(0, SUB)
            m = (idx < chunk) & (base + idx < n)
            x = tl.load(x_ptr + base + idx, mask=m, other=0).to(tl.int32)
            sym = (x >> SSH) & SMASK
            nz += tl.sum((x != 0).to(tl.int32), axis=0)
            if WITH_LEN:
                e = tl.load(enc_ptr + sym, mask=m, other=0)
                bits += tl.sum((e >> 12) & 15, axis=0)
            if WRITE_SYM:
                tl.store(sym_ptr + base + idx, sym.to(tl.uint8), mask=m)
        tl.store(stat_ptr + c, bits * 2 + (nz > 0).to(tl.int32))


@triton.jit
def _qlc_encode(x_ptr, enc_ptr, tab_ptr, out_ptr, scr_ptr, n, chunk, nchunks, nprog,
                pbase, ybase, rbase, n_nz,
                SSH: tl.constexpr, SMASK: tl.constexpr, RSH: tl.constexpr, RHI: tl.constexpr,
                RLO: tl.constexpr, SYM_BITS: tl.constexpr, RAW_BITS: tl.constexpr, SUB: tl.constexpr):
    for c in range(tl.program_id(0).to(tl.int64), nchunks, nprog):   # int64: offsets past 2^31
        mode, elems, poff, yoff, soff, slen, roff = _chunk_row(tab_ptr, c)
        if mode != 0:
            base = c * chunk
            carry = 0          # suffix bits before this step
            lsum = 0           # sum of the codes' start-byte parts before this step
            hsum = 0           # sum of the owners' spills before this step
            for s in range(0, chunk, SUB):
                idx = s + tl.arange(0, SUB)
                valid = idx < elems
                x = tl.load(x_ptr + base + idx, mask=valid, other=0).to(tl.int32)
                sym = (x >> SSH) & SMASK
                # raw planes (coded and raw chunks)
                if RAW_BITS > 0:
                    _store_raw(out_ptr, ((x >> RSH) & RHI) | (x & RLO), valid, rbase + roff + idx, n_nz,
                               rbase + ((3 * roff) >> 3) + n_nz + 3 * (s // 8), (3 * elems + 7) // 8 - 3 * (s // 8),
                               RAW_BITS, SUB)
                if mode == 1:
                    e = tl.load(enc_ptr + sym, mask=valid, other=0)
                    e = tl.where(valid, e, 0)
                    sfx = e & 255
                    w = (e >> 12) & 15
                    _pack_store(out_ptr, pbase + poff + 3 * (s // 8), (e >> 8) & 7,
                                (3 * elems + 7) // 8 - 3 * (s // 8), 3, SUB)
                    o = carry + tl.cumsum(w, axis=0) - w            # bit offset of each suffix
                    b = o >> 3                                      # its start byte
                    sv = sfx << (o & 7)
                    lo8 = sv & 255                                  # bits in the start byte
                    hi8 = sv >> 8                                   # bits spilling into b + 1
                    last = valid & (idx == elems - 1)
                    owner = valid & ((((o + w) >> 3) != b) | last)  # last code starting in byte b
                    hs = tl.where(owner, hi8, 0)
                    lcum = lsum + tl.cumsum(lo8, axis=0)
                    hcum = hsum + tl.cumsum(hs, axis=0)
                    # sum of bytes 0..b = all start-byte parts so far + the spills of earlier owners
                    tl.store(scr_ptr + soff + b, ((lcum + hcum - hs) & 255).to(tl.uint8),
                             mask=owner & (b < slen))
                    tl.store(scr_ptr + soff + b + 1, ((lcum + hcum) & 255).to(tl.uint8),
                             mask=last & (b + 1 < slen))
                    carry += tl.sum(w, axis=0)
                    lsum += tl.sum(lo8, axis=0)
                    hsum += tl.sum(hs, axis=0)
                if mode == 2:
                    if SYM_BITS == 8:
                        tl.store(out_ptr + ybase + yoff + idx, sym.to(tl.uint8), mask=valid)
                    else:
                        _pack_store(out_ptr, ybase + ((yoff * SYM_BITS) >> 3) + SYM_BITS * (s // 8),
                                    tl.where(valid, sym, 0),
                                    (SYM_BITS * elems + 7) // 8 - SYM_BITS * (s // 8), SYM_BITS, SUB)


@triton.jit
def _qlc_suffix_diff(scr_ptr, tab_ptr, out_ptr, sbase, chunk, nchunks, nprog, SUB: tl.constexpr):
    """Suffix byte B of each coded chunk = P(B) - P(B-1) mod 256 (P from _qlc_encode)."""
    for c in range(tl.program_id(0).to(tl.int64), nchunks, nprog):   # int64: offsets past 2^31
        row = tab_ptr + c * 8
        mode = tl.load(row + 0)
        if mode == 1:
            soff = tl.load(row + 4)
            slen = tl.load(row + 5)
            for s in range(0, chunk, SUB):
                idx = s + tl.arange(0, SUB)
                m = idx < slen
                cur = tl.load(scr_ptr + soff + idx, mask=m, other=0).to(tl.int32)
                prev = tl.load(scr_ptr + soff + idx - 1, mask=m & (idx > 0), other=0).to(tl.int32)
                tl.store(out_ptr + sbase + soff + idx, ((cur - prev) & 255).to(tl.uint8), mask=m)


@triton.jit
def _qlc_decode(data_ptr, dec_ptr, tab_ptr, out_ptr, err_ptr, chunk, nchunks, nprog,
                pbase, pend, ybase, yend, sbase, rbase, rend, n_nz, wpack,
                SSH: tl.constexpr, RSH: tl.constexpr, RHI: tl.constexpr, RLO: tl.constexpr,
                SYM_BITS: tl.constexpr, RAW_BITS: tl.constexpr, SUB: tl.constexpr):
    for c in range(tl.program_id(0).to(tl.int64), nchunks, nprog):   # int64: offsets past 2^31
        mode, elems, poff, yoff, soff, slen, roff = _chunk_row(tab_ptr, c)
        base = c * chunk
        s0 = sbase + soff
        send = s0 + slen
        carry = 0
        flags = 0
        for s in range(0, chunk, SUB):
            idx = s + tl.arange(0, SUB)
            inside = idx < chunk            # the torch path also decodes the padding of a short
            valid = idx < elems             # last chunk (area 0, width 0) and checks its symbol
            sym = tl.zeros([SUB], dtype=tl.int32)
            raw = tl.zeros([SUB], dtype=tl.int32)
            if mode == 1:
                a = _unpack(data_ptr, pbase + poff, idx, pend, valid, 3)
                wa = ((wpack >> (4 * a).to(tl.int64)) & 15).to(tl.int32)
                w = tl.where(valid, wa, 0)
                o = carry + tl.cumsum(w, axis=0) - w
                q = s0 + (o >> 3)
                v0 = tl.load(data_ptr + q, mask=inside & (q < send), other=0).to(tl.int32)
                v1 = tl.load(data_ptr + q + 1, mask=inside & (q + 1 < send), other=0).to(tl.int32)
                v = ((v0 | (v1 << 8)) >> (o & 7)) & ((1 << wa) - 1)
                sym = tl.load(dec_ptr + a * 256 + v, mask=inside, other=0).to(tl.int32)
                flags |= 2 * tl.max((inside & (sym < 0)).to(tl.int32), axis=0)
                if SYM_BITS < 8:
                    flags |= 4 * tl.max((inside & ((sym >> SYM_BITS) != 0)).to(tl.int32), axis=0)
                carry += tl.sum(w, axis=0)
            if mode == 2:
                sym = _unpack(data_ptr, ybase + ((yoff * SYM_BITS) >> 3), idx, yend, valid, SYM_BITS)
            if RAW_BITS > 0:
                if mode != 0:
                    r0 = rbase + roff + idx
                    raw = tl.load(data_ptr + r0, mask=valid, other=0).to(tl.int32)
                    if RAW_BITS == 24:
                        raw |= tl.load(data_ptr + r0 + n_nz, mask=valid, other=0).to(tl.int32) << 8
                        raw |= tl.load(data_ptr + r0 + n_nz + n_nz, mask=valid, other=0).to(tl.int32) << 16
                    if RAW_BITS == 11:
                        raw |= _unpack(data_ptr, rbase + ((3 * roff) >> 3) + n_nz, idx, rend, valid, 3) << 8
            val = (sym << SSH) | ((raw & RHI) << RSH) | (raw & RLO)
            tl.store(out_ptr + base + idx, val.to(out_ptr.dtype.element_ty), mask=valid)
        if mode == 1:
            flags |= ((carry + 7) // 8 != slen).to(tl.int32)
        tl.atomic_or(err_ptr, flags)


# ---------------------------------------------------------------------------------------------------
# host side
def _grid(nchunks: int) -> int:
    return max(1, min(nchunks, MAX_PROGRAMS))


def _stats(x, enc, n, chunk, nchunks, plan: Plan, with_len, sym_out=None):
    stat = torch.empty(nchunks, dtype=torch.int32, device=x.device)
    g = _grid(nchunks)
    _qlc_stats[(g,)](x, enc, stat, sym_out if sym_out is not None else stat, n, chunk, nchunks, g,
                     SSH=plan.ssh, SMASK=plan.smask, WITH_LEN=with_len, WRITE_SYM=sym_out is not None,
                     SUB=_sub(chunk), num_warps=NUM_WARPS)
    return stat


def encode_section(flat: torch.Tensor, plan: Plan, codebook: Codebook | None, embed: bool = False,
                   chunk: int = qlc.CHUNK_ELEMS, reserve: int = 0, into: torch.Tensor | None = None) -> torch.Tensor:
    """qlccomm.qlc.encode_section on the tensor's device (same bytes, same `reserve` and `into`; the
    kernels write bytes, so the section may start at any address)."""
    flat = flat.detach().contiguous()
    dev = flat.device
    x = common.element_view(flat, plan)
    n = x.numel()
    nchunks = -(-n // chunk)
    if codebook is None:
        sym = torch.empty(n, dtype=torch.uint8, device=dev)
        stat = _stats(x, x, n, chunk, nchunks, plan, False, sym)
        hist = torch.bincount(sym, minlength=256)
        del sym
        zero = (stat & 1) == 0                                   # all-zero chunks: left out
        hist[0] -= (qlc.chunk_elems(n, chunk, nchunks, dev) * zero).sum()
        codebook = qlc.adaptive_codebook(hist.cpu().numpy().astype(np.int64), flat.dtype, plan)
        embed = True
    enc = common.codebook_tables(codebook, dev)["enc"]
    stat = _stats(x, enc, n, chunk, nchunks, plan, True)
    # planned on the device: only the three plane totals come back (one copy)
    lay = common.encode_layout(n, chunk, plan, codebook, embed, stat >> 1, (stat & 1) != 0)
    buf = common.section_buffer(reserve + lay.total, into, dev)
    out = buf[reserve:]
    out[: len(lay.head)].copy_(lay.head)
    table = lay.table
    scratch = torch.empty(max(lay.sizes["suffix"], 1), dtype=torch.uint8, device=dev)
    b = lay.bases
    g = _grid(nchunks)
    _qlc_encode[(g,)](x, enc, table, out, scratch, n, chunk, nchunks, g,
                      b["prefix"], b["symbol"], b["raw"], lay.n_nz,
                      SSH=plan.ssh, SMASK=plan.smask, RSH=plan.rsh, RHI=plan.rhi, RLO=plan.rlo,
                      SYM_BITS=plan.symbol_bits, RAW_BITS=plan.raw_bits, SUB=_sub(chunk), num_warps=NUM_WARPS)
    if lay.sizes["suffix"]:
        _qlc_suffix_diff[(g,)](scratch, table, out, b["suffix"], chunk, nchunks, g, SUB=_sub(chunk),
                               num_warps=NUM_WARPS)
    return buf


def decode_section(sec: qlc.QLCSection, section: torch.Tensor, header, out: torch.Tensor | None = None) -> torch.Tensor:
    """qlccomm.qlc.decode_section on the stream's device (same result, same errors, same `out`)."""
    dev = section.device
    plan = sec.plan
    lay = common.decode_layout(sec, dev)
    data = section.contiguous()
    flat = common.decode_target(lay.numel, header.dtype, out, dev)
    out = common.element_view(flat, plan)
    dec = sec.codebook.device_tables(dev)["decode"]
    wpack = common.codebook_tables(sec.codebook)["wpack"]
    table = lay.table
    err = torch.zeros(1, dtype=torch.int32, device=dev)
    nchunks = lay.table.shape[0]
    g = _grid(nchunks)
    b, e = lay.bases, lay.ends
    _qlc_decode[(g,)](data, dec, table, out, err, lay.chunk, nchunks, g,
                      b["prefix"], e["prefix"], b["symbol"], e["symbol"], b["suffix"], b["raw"], e["raw"],
                      lay.n_nz, wpack,
                      SSH=plan.ssh, RSH=plan.rsh, RHI=plan.rhi, RLO=plan.rlo, SYM_BITS=plan.symbol_bits,
                      RAW_BITS=plan.raw_bits, SUB=_sub(lay.chunk), num_warps=NUM_WARPS)
    common.raise_flags(int(err.item()), plan)
    return flat
