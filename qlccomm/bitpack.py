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


def value_dtype(width: int) -> torch.dtype:
    """The narrowest integer dtype that holds `width` non-negative bits."""
    return torch.uint8 if width <= 8 else torch.int16 if width <= 15 else torch.int32 if width <= 31 else torch.int64


def _pack_small(values: torch.Tensor, width: int) -> torch.Tensor:
    """Pack values of 1..7 bits: each group of 8 values makes `width` bytes.

    Neighbours are merged three times (2, 4, then 8 values per word, each merge a
    whole-tensor shift and or in the narrowest dtype), then the low `width` bytes
    of each little-endian word are kept.
    """
    n = values.numel()
    v = values.to(torch.uint8)
    if n % 8:
        v = torch.cat([v, v.new_zeros(8 - n % 8)])
    bits = width
    for _ in range(3):
        dt = value_dtype(2 * bits)
        lo, hi = v[0::2].to(dt), v[1::2].to(dt).contiguous()  # hi is updated in place: own copy
        hi <<= bits
        hi |= lo
        v, bits = hi, 2 * bits
    v = v if v.numel() > 1 else v.clone(memory_format=torch.contiguous_format)  # a 1-element view may keep odd strides
    out = v.view(torch.uint8).view(-1, v.element_size())[:, :width].reshape(-1)
    return out[: (n * width + 7) // 8]


def _unpack_small(data: torch.Tensor, width: int, n: int) -> torch.Tensor:
    """Inverse of :func:`_pack_small`: n uint8 values."""
    groups = (n + 7) // 8
    bits = 8 * width
    dt = value_dtype(bits)
    word = torch.zeros(groups, torch.empty(0, dtype=dt).element_size(), dtype=torch.uint8, device=data.device)
    flat = word[:, :width]
    full = data.numel() // width
    flat[:full] = data[: full * width].view(full, width)
    if full < groups:
        tail = data[full * width :]
        flat[full, : tail.numel()] = tail
    v = word.view(dt).view(-1)
    for _ in range(3):
        bits //= 2
        ndt = value_dtype(bits)
        lo = (v & ((1 << bits) - 1)).to(ndt)
        hi = (v >> bits).to(ndt)
        v = torch.stack([lo, hi], dim=1).view(-1)
    return v[:n].to(torch.uint8)


def pack_bits(values: torch.Tensor, width: int) -> torch.Tensor:
    """Pack the low `width` bits (0..31) of each non-negative integer into uint8 planes."""
    if width == 0 or values.numel() == 0:
        return values.new_empty(0, dtype=torch.uint8)
    parts = []
    v = values
    for p in range(width // 8):
        parts.append((v if p == 0 else v >> (8 * p)).to(torch.uint8))
    rest = width % 8
    if rest:
        top = v >> (8 * (width // 8)) if width >= 8 else v
        parts.append(_pack_small(top & ((1 << rest) - 1), rest))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def unpack_bits(data: torch.Tensor, width: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: `n` values from exactly `packed_nbytes(n, width)` bytes.

    The result has dtype `value_dtype(width)`.
    """
    if data.numel() != packed_nbytes(n, width):
        raise FormatError(f"bit plane holds {data.numel()} bytes, expected {packed_nbytes(n, width)}")
    vd = value_dtype(width)
    if width == 0 or n == 0:
        return torch.zeros(n, dtype=vd, device=data.device)
    if width == 8:
        return data
    planes = width // 8
    rest = width % 8
    if planes == 0:
        return _unpack_small(data, rest, n)
    out = data[:n].to(vd)
    for p in range(1, planes):
        out |= data[p * n : (p + 1) * n].to(vd) << (8 * p)
    if rest:
        out |= _unpack_small(data[planes * n :], rest, n).to(vd) << (8 * planes)
    return out
