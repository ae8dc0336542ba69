"""The split of each element into a coded *symbol* and *raw* bits (per plan).

A plan names which bits of an element form the symbol that QLC codes (or the
exponent that ENEC codes) and which bits travel raw, as shifts and masks on the
element's integer word x (uint8 / int16 / int32, `Plan.word`):

    symbol = (x >> ssh) & smask
    raw    = ((x >> rsh) & rhi) | (x & rlo)
    x      = (symbol << ssh) | ((raw & rhi) << rsh) | (raw & rlo)

The symbol and raw fields partition the word's bits, so `split` and `merge` are
exact inverses on every bit pattern (NaN payloads, -0.0, ...).  Every backend
(the torch path here, the numba and Triton kernels) reads these fields.

| plan       | word bits | symbol bits            | raw bits (layout)                  |
|------------|-----------|------------------------|------------------------------------|
| byte       | 8         | the whole byte (8)     | none (0)                           |
| bf16_exp   | 16        | exponent, bits 14..7   | sign<<7 | mantissa[6:0]   (8)      |
| fp16_hi    | 16        | high byte, bits 15..8  | low byte                  (8)      |
| fp16_exp   | 16        | exponent, bits 14..10  | sign<<10 | mantissa[9:0]  (11)     |
| fp32_exp   | 32        | exponent, bits 30..23  | sign<<23 | mantissa[22:0] (24)     |

Which plans code which dtype is the trait table's (qlccomm.dtypes).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .dtypes import INT_VIEWS, TRAITS


@dataclass(frozen=True)
class Plan:
    name: str
    plan_id: int       # stored in streams and codebooks
    item_bits: int     # bits per element (the word's width: 8, 16 or 32)
    ssh: int           # symbol = (x >> ssh) & smask
    smask: int
    rsh: int           # raw = ((x >> rsh) & rhi) | (x & rlo)
    rhi: int
    rlo: int

    def __post_init__(self):
        sym, hi, lo = self.smask << self.ssh, self.rhi << self.rsh, self.rlo
        raw = self.rhi | self.rlo
        assert sym & hi == sym & lo == hi & lo == 0 and sym | hi | lo == (1 << self.item_bits) - 1, self
        assert self.rhi & self.rlo == 0 and raw & (raw + 1) == 0, self    # raw bits: the low raw_bits

    @property
    def symbol_bits(self) -> int:
        """Bits of the coded symbol (alphabet size 2**symbol_bits)."""
        return self.smask.bit_length()

    @property
    def raw_bits(self) -> int:
        """Bits per element that travel raw."""
        return (self.rhi | self.rlo).bit_length()

    @property
    def kind(self) -> int:
        """Word width as the kernels' specialisation key: 0 = 8-bit, 1 = 16-bit, 2 = 32-bit."""
        return (self.item_bits // 8).bit_length() - 1

    @property
    def word(self) -> torch.dtype:
        """The element's integer word type (uint8, int16, int32)."""
        return INT_VIEWS[self.item_bits // 8]

    def split(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Split a 1-D contiguous tensor into (symbols, raw).

        symbols: uint8.  raw: uint8 when raw_bits <= 8, else the word type, holding
        `raw_bits` non-negative bits (empty uint8 when raw_bits is 0).
        """
        x = flat.view(self.word)
        symbols = _field(x >> self.ssh if self.ssh else x, self.smask, torch.uint8)
        if not self.raw_bits:
            return symbols, flat.new_empty(0, dtype=torch.uint8)
        raw_dtype = torch.uint8 if self.raw_bits <= 8 else self.word
        if self.rhi:
            return symbols, (((x >> self.rsh) & self.rhi) | (x & self.rlo)).to(raw_dtype)
        return symbols, _field(x, self.rlo, raw_dtype)

    def merge(self, symbols: torch.Tensor, raw: torch.Tensor | None, dtype: torch.dtype) -> torch.Tensor:
        """Inverse of :meth:`split` (any integer dtypes in; `raw` unused when raw_bits is 0);
        returns a 1-D tensor of `dtype`."""
        x = symbols.to(self.word)
        if self.ssh:
            x = x << self.ssh
        if self.raw_bits:
            r = raw.to(self.word)
            if self.rhi:
                x = x | ((r & self.rhi) << self.rsh)
            x = x | (r & self.rlo)
        return x.view(dtype)


def _field(v: torch.Tensor, mask: int, dtype: torch.dtype) -> torch.Tensor:
    """(v & mask) as `dtype`; the & is left to the cast when that truncates to exactly `mask`."""
    if not (dtype == torch.uint8 and mask == 0xFF):
        v = v & mask
    return v.to(dtype)


PLANS: dict[str, Plan] = {
    p.name: p
    for p in (
        Plan("byte", 0, 8, ssh=0, smask=0xFF, rsh=0, rhi=0, rlo=0),
        Plan("bf16_exp", 1, 16, ssh=7, smask=0xFF, rsh=8, rhi=0x80, rlo=0x7F),
        Plan("fp16_hi", 2, 16, ssh=8, smask=0xFF, rsh=0, rhi=0, rlo=0xFF),
        Plan("fp16_exp", 3, 16, ssh=10, smask=0x1F, rsh=5, rhi=0x400, rlo=0x3FF),
        Plan("fp32_exp", 4, 32, ssh=23, smask=0xFF, rsh=8, rhi=0x800000, rlo=0x7FFFFF),
    )
}
PLANS_BY_ID = {p.plan_id: p for p in PLANS.values()}

_QLC_PLANS = {d: tuple(PLANS[n] for n in t.qlc_plans) for d, t in TRAITS.items()}
_ENEC_PLAN = {d: PLANS[t.enec_plan] for d, t in TRAITS.items() if t.enec_plan is not None}


def candidate_plans(dtype: torch.dtype) -> list[Plan]:
    """Plans that can code `dtype`, best default first; empty when the dtype is stored raw
    (or is not one qlccomm stores)."""
    return list(_QLC_PLANS.get(dtype, ()))


def enec_plan(dtype: torch.dtype) -> Plan | None:
    """The plan ENEC codes `dtype` with; None when ENEC does not code it."""
    return _ENEC_PLAN.get(dtype)
