"""What qlccomm knows about each dtype it stores: one trait entry per dtype.

| field      | meaning                                                                      |
|------------|------------------------------------------------------------------------------|
| code       | wire code, the header's dtype byte (docs/format.md); never reused            |
| itemsize   | bytes per element                                                            |
| int_view   | the element's word type: the integer dtype of the same width that bit-level  |
|            | code views it as (uint8, int16, int32, int64; None for 16-byte complex128)   |
| qlc_plans  | names of the plans (qlccomm.split.PLANS) QLC codes it with, the default      |
|            | first; empty: QLC stores it raw                                              |
| enec_plan  | name of the plan ENEC codes it with; None: ENEC does not code it             |

A plan is a bit layout (which bits of the word are the coded symbol, which travel
raw) with its split and merge.  Plans are named here and resolved in
qlccomm.split (candidate_plans, enec_plan), so this module imports nothing of
qlccomm and every other module can read it.  Only dtypes this torch build has
get an entry.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

INT_VIEWS: dict[int, torch.dtype] = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}
"""Word type by element size in bytes."""


@dataclass(frozen=True)
class DtypeTraits:
    dtype: torch.dtype
    code: int                       # wire code (header byte 6)
    itemsize: int                   # bytes per element
    int_view: torch.dtype | None    # word type: integer dtype of `itemsize` bytes
    qlc_plans: tuple[str, ...]      # QLC plan names, default first; () = stored raw
    enec_plan: str | None           # ENEC plan name, or None


_BYTE = ("byte",)

# (wire code, torch name, QLC plans, ENEC plan), in wire-code order
_ROWS: tuple[tuple[int, str, tuple[str, ...], str | None], ...] = (
    (1, "uint8", _BYTE, None),
    (2, "int8", _BYTE, None),
    (3, "bool", _BYTE, None),
    (4, "float8_e4m3fn", _BYTE, None),
    (5, "float8_e5m2", _BYTE, None),
    (6, "float8_e4m3fnuz", _BYTE, None),
    (7, "float8_e5m2fnuz", _BYTE, None),
    (8, "bfloat16", ("bf16_exp",), "bf16_exp"),
    (9, "float16", ("fp16_exp", "fp16_hi"), "fp16_exp"),
    (10, "float32", ("fp32_exp",), "fp32_exp"),
    (11, "float64", (), None),
    (12, "int16", (), None),
    (13, "int32", (), None),
    (14, "int64", (), None),
    (15, "complex64", (), None),
    (16, "complex128", (), None),
    (17, "uint16", (), None),
    (18, "uint32", (), None),
    (19, "uint64", (), None),
    (20, "float8_e8m0fnu", _BYTE, None),
    (21, "complex32", (), None),
)


def _build() -> dict[torch.dtype, DtypeTraits]:
    table = {}
    for code, name, qlc_plans, enec_plan in _ROWS:
        dtype = getattr(torch, name, None)
        if isinstance(dtype, torch.dtype):
            table[dtype] = DtypeTraits(dtype, code, dtype.itemsize, INT_VIEWS.get(dtype.itemsize),
                                       qlc_plans, enec_plan)
    return table


TRAITS: dict[torch.dtype, DtypeTraits] = _build()
"""Every dtype qlccomm can store, in wire-code order."""

ENEC_DTYPES: tuple[torch.dtype, ...] = tuple(d for d, t in TRAITS.items() if t.enec_plan is not None)
"""The dtypes ENEC codes (bfloat16, float16, float32)."""

_SHORT_ALIASES: dict[str, str] = {
    "bf16": "bfloat16", "fp16": "float16", "half": "float16", "fp32": "float32", "float": "float32",
    "e4m3": "float8_e4m3fn", "fp8": "float8_e4m3fn", "e5m2": "float8_e5m2",
}

_BY_NAME: dict[str, torch.dtype] = {str(d).removeprefix("torch."): d for d in TRAITS}

DTYPE_ALIASES: dict[str, torch.dtype] = {
    **_BY_NAME, **{alias: _BY_NAME[name] for alias, name in _SHORT_ALIASES.items() if name in _BY_NAME}}
"""The one table of dtype names the public API and the CLI take: the torch name of every dtype
qlccomm stores ("bfloat16", "float8_e4m3fn", "int64", ...) and the short aliases bf16, fp16,
half, fp32, float, e4m3, fp8 (float8_e4m3fn) and e5m2.  Case-insensitive; a "torch." prefix is
allowed."""


def parse_dtype(name: str | torch.dtype) -> torch.dtype:
    """The torch dtype named `name` (DTYPE_ALIASES); a torch.dtype comes back as it is.

    ValueError listing the names for an unknown name; TypeError for anything but a str or dtype."""
    if isinstance(name, torch.dtype):
        return name
    if not isinstance(name, str):
        raise TypeError(f"a dtype is a torch.dtype or one of its names, not {type(name).__name__}")
    key = name.strip().lower().removeprefix("torch.")
    try:
        return DTYPE_ALIASES[key]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; one of {', '.join(sorted(DTYPE_ALIASES))}") from None
