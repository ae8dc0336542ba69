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


def concat_into(parts: list[torch.Tensor], into: torch.Tensor | None) -> torch.Tensor:
    """torch.cat of 1-D uint8 `parts`, written into the front of `into` when it has room
    (the result is then a view of `into`), else into a fresh tensor."""
    total = sum(p.numel() for p in parts)
    if into is not None and into.numel() >= total:
        return torch.cat(parts, out=into[:total])
    return torch.cat(parts)


def value_dtype(width: int) -> torch.dtype:
    """The narrowest integer dtype that holds `width` non-negative bits."""
    return torch.uint8 if width <= 8 else torch.int16 if width <= 15 else torch.int32 if width <= 31 else torch.int64


def _lanes(pattern: int, period: int) -> int:
    """`pattern` repeated every `period` bits across 64 bits, as a signed int64 constant."""
    v = 0
    for shift in range(0, 64, period):
        v |= pattern << shift
    v &= (1 << 64) - 1
    return v - (1 << 64) if v >> 63 else v


def _pack_small(values: torch.Tensor, width: int) -> torch.Tensor:
    """Pack uint8 values < 2^width (1 <= width <= 7): each group of 8 values makes `width` bytes.

    Eight values fill one little-endian int64 (one per byte); three in-place
    shift/mask rounds squeeze them to its low 8*width bits, whose first `width`
    bytes are the packed bytes.
    """
    n = values.numel()
    g = (n + 7) // 8
    buf = torch.empty(g * 8, dtype=torch.uint8, device=values.device)
    buf[:n] = values
    buf[n:] = 0
    x = buf.view(torch.int64)
    t = torch.empty_like(x)
    for step, keep in ((0, 8), (1, 16), (2, 32)):
        torch.bitwise_and(x, _lanes(((1 << keep) - 1) << keep, 2 * keep), out=t)
        x ^= t
        t >>= keep - (width << step)
        x |= t
    return x.view(torch.uint8).view(g, 8)[:, :width].reshape(-1)[: (n * width + 7) // 8]


def _unpack_small(data: torch.Tensor, width: int, n: int) -> torch.Tensor:
    """Inverse of :func:`_pack_small`: n uint8 values from ceil(n*width/8) bytes."""
    g = (n + 7) // 8
    buf = torch.zeros(g, 8, dtype=torch.uint8, device=data.device)
    full = data.numel() // width
    if full:
        buf[:full, :width] = data[: full * width].view(full, width)
    if full < g:
        buf[full, : data.numel() - full * width] = data[full * width :]
    x = buf.view(-1).view(torch.int64)
    t = torch.empty_like(x)
    for step, keep in ((2, 32), (1, 16), (0, 8)):
        part = width << step                       # bits per half-lane now
        torch.bitwise_and(x, _lanes(((1 << part) - 1) << part, 2 * keep), out=t)
        x ^= t
        t <<= keep - part
        x |= t
    return x.view(torch.uint8)[:n]


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
        parts.append(_pack_small((top & ((1 << rest) - 1)).to(torch.uint8), rest))
    return parts[0] if len(parts) == 1 else torch.cat(parts)


def unpack_planes(data: torch.Tensor, width: int, n: int) -> list[torch.Tensor]:
    """The planes of `n` values as uint8 tensors: the byte planes (bits 0-7, 8-15, ...),
    then the top `width % 8` bits unpacked one value per byte."""
    if data.numel() != packed_nbytes(n, width):
        raise FormatError(f"bit plane holds {data.numel()} bytes, expected {packed_nbytes(n, width)}")
    planes = [data[p * n : (p + 1) * n] for p in range(width // 8)]
    if width % 8:
        planes.append(_unpack_small(data[(width // 8) * n :], width % 8, n))
    return planes


def unpack_bits(data: torch.Tensor, width: int, n: int) -> torch.Tensor:
    """Inverse of :func:`pack_bits`: `n` values from exactly `packed_nbytes(n, width)` bytes.

    The result has dtype `value_dtype(width)` (for width 8, a view of `data`).
    """
    planes = unpack_planes(data, width, n)
    vd = value_dtype(width)
    if not planes or n == 0:
        return torch.zeros(n, dtype=vd, device=data.device)
    out = planes[0].to(vd)
    for p, plane in enumerate(planes[1:], 1):
        out |= plane.to(vd) << (8 * p)
    return out
