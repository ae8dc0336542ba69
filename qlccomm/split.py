"""The split of each element into a coded *symbol* and *raw* bits (per dtype plan).

A plan names which bits of an element form the 8-bit symbol that QLC codes
(or the exponent that ENEC codes) and which bits travel raw.  `split` and
`merge` are exact inverses on every bit pattern (NaN payloads, -0.0, ...).

| plan       | dtypes                  | symbol bits            | raw bits (layout)                  |
|------------|-------------------------|------------------------|------------------------------------|
| byte       | any 1-byte dtype        | the whole byte (8)     | none (0)                           |
| bf16_exp   | bfloat16                | exponent, bits 14..7   | sign<<7 | mantissa[6:0]   (8)      |
| fp16_hi    | float16                 | high byte, bits 15..8  | low byte                  (8)      |
| fp16_exp   | float16                 | exponent, bits 14..10  | sign<<10 | mantissa[9:0]  (11)     |
| fp32_exp   | float32                 | exponent, bits 30..23  | sign<<23 | mantissa[22:0] (24)     |
"""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Plan:
    name: str
    plan_id: int       # stored in streams and codebooks
    symbol_bits: int   # bits of the coded symbol (alphabet size 2**symbol_bits)
    raw_bits: int      # bits per element that travel raw
    item_bits: int     # bits per element

    def split(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split a 1-D contiguous tensor into (symbols, raw).

        symbols: uint8.  raw: the narrowest of uint8 / int16 / int32 holding
        `raw_bits` non-negative bits (empty for the byte plan).
        """
        if self.name == "byte":
            return flat.view(torch.uint8), flat.new_empty(0, dtype=torch.uint8)
        if self.name == "bf16_exp":
            x = flat.view(torch.int16)
            return (x >> 7).to(torch.uint8), (((x >> 8) & 0x80) | (x & 0x7F)).to(torch.uint8)
        if self.name == "fp16_hi":
            x = flat.view(torch.int16)
            return (x >> 8).to(torch.uint8), x.to(torch.uint8)
        if self.name == "fp16_exp":
            x = flat.view(torch.int16)
            return ((x >> 10) & 0x1F).to(torch.uint8), ((x >> 5) & 0x400) | (x & 0x3FF)
        if self.name == "fp32_exp":
            x = flat.view(torch.int32)
            return (x >> 23).to(torch.uint8), ((x >> 8) & 0x800000) | (x & 0x7FFFFF)
        raise AssertionError(self.name)

    def merge(self, symbols: torch.Tensor, raw: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Inverse of :meth:`split` (any integer dtypes in); returns a 1-D tensor of `dtype`."""
        if self.name == "byte":
            return symbols.to(torch.uint8).view(dtype)
        if self.name == "fp32_exp":
            s, r = symbols.to(torch.int32), raw.to(torch.int32)
            return (((r & 0x800000) << 8) | (s << 23) | (r & 0x7FFFFF)).view(dtype)
        s, r = symbols.to(torch.int16), raw.to(torch.int16)
        if self.name == "bf16_exp":
            x = ((r & 0x80) << 8) | (s << 7) | (r & 0x7F)
        elif self.name == "fp16_hi":
            x = (s << 8) | (r & 0xFF)
        elif self.name == "fp16_exp":
            x = ((r & 0x400) << 5) | (s << 10) | (r & 0x3FF)
        else:
            raise AssertionError(self.name)
        return x.view(dtype)


PLANS: dict[str, Plan] = {
    p.name: p
    for p in (
        Plan("byte", 0, 8, 0, 8),
        Plan("bf16_exp", 1, 8, 8, 16),
        Plan("fp16_hi", 2, 8, 8, 16),
        Plan("fp16_exp", 3, 5, 11, 16),
        Plan("fp32_exp", 4, 8, 24, 32),
    )
}
PLANS_BY_ID = {p.plan_id: p for p in PLANS.values()}

def candidate_plans(dtype: torch.dtype) -> list[Plan]:
    """Plans that can code `dtype`, best default first; empty when the dtype is stored raw."""
    if dtype == torch.bfloat16:
        return [PLANS["bf16_exp"]]
    if dtype == torch.float16:
        return [PLANS["fp16_exp"], PLANS["fp16_hi"]]
    if dtype == torch.float32:
        return [PLANS["fp32_exp"]]
    if torch.empty(0, dtype=dtype).element_size() == 1 and not dtype.is_complex:
        return [PLANS["byte"]]
    return []
