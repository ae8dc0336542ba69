"""Fixed-width bit packing with whole-tensor torch operations (any device).

Bit order is little-endian throughout: value i of width w occupies stream bits
[i*w, (i+1)*w), and stream bit j is bit (j % 8) of byte j // 8.

Widths above 8 bits are stored as *planes* (see docs/format.md, "Bit planes"):
one byte plane per whole byte of the value (bits 0-7, 8-15, ...), each `n` bytes,
then one packed plane of the remaining `w % 8` high bits.
"""
from __future__ import annotations

import torch

from .errors import FormatError


def packed_nbytes(n: int, width: int) -> int:
    """Bytes taken by `n` values of `width` bits stored as planes."""
    return (width // 8) * n + (n * (width % 8) + 7) // 8


def _pack_small(values: torch.Tensor, width: int) -> torch.Tensor:
    """Pack int values of 1..8 bits; groups of 8 values make `width` bytes."""
    n = values.numel()
    pad = (-n) % 8
    v = values.to(torch.int64)
    if pad:
        v = torch.cat([v, v.new_zeros(pad)])
    shifts = torch.arange(8, device=v.device, dtype=torch.int64) * width
    words = (v.view(-1, 8) << shifts).sum(dim=1)  # disjoint bits: sum == or
    byte_shifts = torch.arange(width, device=v.device, dtype=torch.int64) * 8
    out = ((words.unsqueeze(1) >> byte_shifts) & 0xFF).to(torch.uint8).reshape(-1)
    return out[: (n * width + 7) // 8]


def _unpack_small(data: torch.Tensor, width: int, n: int) -> torch.Tensor:
    nbytes = (n * width + 7) // 8
    groups = (n + 7) // 8
    d = data[:nbytes].to(torch.int64)
    pad = groups * width - nbytes
    if pad:
        d = torch.cat([d, d.new_zeros(pad)])
    byte_shifts = torch.arange(width, device=d.device, dtype=torch.int64) * 8
    words = (d.view(-1, width) << byte_shifts).sum(dim=1)
    shifts = torch.arange(8, device=d.device, dtype=torch.int64) * width
    vals = (words.unsqueeze(1) >> shifts) & ((1 << width) - 1)
    return vals.reshape(-1)[:n]


def pack_bits(values: torch.Tensor, width: int) -> torch.Tensor:
    """Pack the low `width` bits (0..32) of each integer into a uint8 tensor (planes)."""
    if width == 0 or values.numel() == 0:
        return torch.empty(0 if width == 0 else packed_nbytes(0, width), dtype=torch.uint8, device=values.device)
    parts = []
    v = values.to(torch.int64)
    for _ in range(width // 8):
        parts.append((v & 0xFF).to(torch.uint8))
        v = v >> 8
    if width % 8:
        parts.append(_pack_small(v & ((1 << (width % 8)) - 1), width % 8))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def unpack_bits(data: torch.Tensor, width: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: `n` values (int64) from exactly `packed_nbytes(n, width)` bytes."""
    if data.numel() != packed_nbytes(n, width):
        raise FormatError(f"bit plane holds {data.numel()} bytes, expected {packed_nbytes(n, width)}")
    if width == 0 or n == 0:
        return torch.zeros(n, dtype=torch.int64, device=data.device)
    out = torch.zeros(n, dtype=torch.int64, device=data.device)
    shift = 0
    pos = 0
    for _ in range(width // 8):
        out |= data[pos : pos + n].to(torch.int64) << shift
        pos += n
        shift += 8
    if width % 8:
        out |= _unpack_small(data[pos:], width % 8, n) << shift
    return out
