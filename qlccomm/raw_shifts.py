"""QLCW raw shifts (docs/format.md, "Raw shifts"): a chunk whose elements' raw values share
zero low bits (values upcast from a narrower dtype: fp16 or bf16 in fp32, fp8 in bf16 or
fp16) stores them shifted right by that many bits, as planes of the fewer bits left.

    low = low_bits(raw_rows)                      # per chunk: the lowest set bit of the raw OR
    shifts = choose(elems, nonzero, low, R)       # int64 [K], or None where they do not pay
    planes = pack(raw_rows, elems, shifts, R)     # the raw planes, chunk after chunk
    raw_rows = unpack(planes, elems, shifts, R, chunk)

The backends compute `low` their own way (numba from each chunk's word OR, Triton from a
minimum of lowest bits) and share `choose` and `segment_bytes`, so they write the same bytes.
"""
from __future__ import annotations

import numpy as np
import torch

from .bitpack import pack_bits, packed_nbytes, unpack_bits
from .qlc import _exclusive_cumsum


def segment_bytes(elems: np.ndarray, shifts: np.ndarray, raw_bits: int) -> np.ndarray:
    """Bytes of each chunk's raw planes with raw shifts (int64 [K]): its `elems` values at
    raw_bits - shift bits (pass 0 elements for all-zero chunks)."""
    rw = raw_bits - np.asarray(shifts, np.int64)
    e = np.asarray(elems, np.int64)
    return (rw // 8) * e + (e * (rw % 8) + 7) // 8


def raw_starts(elems: np.ndarray, shifts: np.ndarray | None, raw_bits: int) -> np.ndarray:
    """Where each chunk's raw values start (int64 [K]): without shifts its first element in
    the planes of all chunks' values, with shifts the first byte of its own planes (pass 0
    elements for all-zero chunks)."""
    return _exclusive_cumsum(np.asarray(elems, np.int64) if shifts is None else segment_bytes(elems, shifts, raw_bits))


def common_zero_bits(low_bit: np.ndarray, raw_bits: int) -> np.ndarray:
    """Low raw bits zero in every element of each chunk (int64 [K]), from choose()'s
    low_bit: its index, raw_bits where no bit is set."""
    low_bit = np.asarray(low_bit, np.int64)
    # log2 of a power of two below 2^53 is exact in float64
    t = np.where(low_bit > 0, np.log2(np.maximum(low_bit, 1)).astype(np.int64), raw_bits)
    return np.minimum(t, raw_bits)


def choose(elems: np.ndarray, nonzero: np.ndarray, low_bit: np.ndarray, raw_bits: int) -> np.ndarray | None:
    """The writer's raw shifts (int64 [K]), or None where they do not save bytes.

    low_bit: per chunk, the lowest set bit of the OR of its elements' raw values (a power of
    two; 0 when none is set).  A non-zero chunk's shift is that bit's index (raw_bits when
    none is set); shifts are written when the shifted raw planes and the K shift bytes are
    fewer bytes than the raw planes without them (docs/format.md, "Raw shifts")."""
    if not raw_bits:
        return None
    t = np.where(np.asarray(nonzero, np.bool_), common_zero_bits(low_bit, raw_bits), 0)
    if not t.any():
        return None
    e = np.where(nonzero, np.asarray(elems, np.int64), 0)
    if int(segment_bytes(e, t, raw_bits).sum()) + t.size >= packed_nbytes(int(e.sum()), raw_bits):
        return None
    return t


def low_bits(raw2: torch.Tensor) -> np.ndarray:
    """choose()'s low_bit (int64 [K], host) of raw rows [K, C] (zero padding adds nothing)."""
    r = raw2.to(torch.int64)                               # raw values of up to 31 bits
    low = torch.where(r == 0, torch.full_like(r, 1 << 62), r & -r).amin(dim=1)
    return torch.where(low == 1 << 62, 0, low).cpu().numpy()


def _groups(elems: np.ndarray, shifts: np.ndarray, seg: np.ndarray):
    """(rows, elements, shift) of the chunks with raw bytes, grouped by elements and shift."""
    keys = np.flatnonzero(seg > 0)
    for e, t in sorted({(int(elems[c]), int(shifts[c])) for c in keys}):
        yield keys[(elems[keys] == e) & (shifts[keys] == t)], e, t


def pack(raw2: torch.Tensor, elems: np.ndarray, shifts: np.ndarray, raw_bits: int) -> torch.Tensor:
    """The raw planes with raw shifts (uint8) of raw rows [K, C]: each chunk's values >> its
    shift as planes of raw_bits - shift bits, chunk after chunk.  elems: elements per chunk,
    0 for the all-zero chunks (they store nothing)."""
    dev = raw2.device
    seg = segment_bytes(elems, shifts, raw_bits)
    start = _exclusive_cumsum(seg)
    out = torch.zeros(int(seg.sum()), dtype=torch.uint8, device=dev)
    for rows, e, t in _groups(elems, shifts, seg):
        v = raw2.index_select(0, torch.from_numpy(rows).to(dev))[:, :e].to(torch.int64) >> t
        rw = raw_bits - t
        parts = [((v >> (8 * p)) & 255).to(torch.uint8) for p in range(rw // 8)]
        if rw % 8:
            top = (v >> (8 * (rw // 8))) & ((1 << (rw % 8)) - 1)
            parts.append(pack_bits(top.reshape(-1), rw % 8).view(len(rows), -1))
        place = torch.from_numpy(start[rows]).to(dev).unsqueeze(1) + torch.arange(int(seg[rows[0]]), device=dev)
        out[place.reshape(-1)] = torch.cat(parts, dim=1).reshape(-1)
    return out


def unpack(data: torch.Tensor, elems: np.ndarray, shifts: np.ndarray, raw_bits: int,
                       chunk: int) -> torch.Tensor:
    """Inverse of pack: raw rows (int64 [K, chunk]; zero past each chunk's
    elements and in chunks that store none) from exactly the raw planes' bytes."""
    dev = data.device
    seg = segment_bytes(elems, shifts, raw_bits)
    start = _exclusive_cumsum(seg)
    out = torch.zeros(elems.size, chunk, dtype=torch.int64, device=dev)
    for rows, e, t in _groups(elems, shifts, seg):
        rw = raw_bits - t
        place = torch.from_numpy(start[rows]).to(dev).unsqueeze(1) + torch.arange(int(seg[rows[0]]), device=dev)
        b = data[place.reshape(-1)].view(len(rows), -1)
        v = torch.zeros(len(rows), e, dtype=torch.int64, device=dev)
        for p in range(rw // 8):
            v |= b[:, p * e:(p + 1) * e].to(torch.int64) << (8 * p)
        if rw % 8:
            top = unpack_bits(b[:, (rw // 8) * e:].reshape(-1), rw % 8, len(rows) * e).view(len(rows), e)
            v |= top.to(torch.int64) << (8 * (rw // 8))
        out[torch.from_numpy(rows).to(dev), :e] = v << t
    return out
