"""The arithmetic of qlccomm's reductions: one definition for the collectives and the reference.

Contributions are reduced in rank order in an accumulator of float32 (float64
for float64, int64 for integer dtypes; integer sums wrap like torch's), divided
by the count for AVG, and cast back to the tensor's dtype.  Whoever reduces a
slice (its owner) does exactly this, so the result does not depend on how the
tensor was sliced, which rank owned what, or whether the slices were coded.
"""
from __future__ import annotations

import torch
import torch.distributed as dist

OP_SUM, OP_AVG, OP_MIN, OP_MAX = 1, 2, 3, 4
OP_NAMES = {OP_SUM: "SUM", OP_AVG: "AVG", OP_MIN: "MIN", OP_MAX: "MAX"}
_NO_PROMOTION = {torch.float8_e4m3fn, torch.float8_e5m2}     # torch does not mix these into other dtypes


def opcode(op) -> int:
    """qlccomm's code of a torch ReduceOp (SUM, AVG, MIN or MAX; ValueError otherwise)."""
    for code, ref in ((OP_SUM, dist.ReduceOp.SUM), (OP_AVG, dist.ReduceOp.AVG),
                      (OP_MIN, dist.ReduceOp.MIN), (OP_MAX, dist.ReduceOp.MAX)):
        try:
            if op == ref:
                return code
        except TypeError:
            pass
    raise ValueError(f"qlccomm reduces with ReduceOp SUM, AVG, MIN or MAX, not {op}")


def accumulate_dtype(dtype: torch.dtype, code: int) -> torch.dtype:
    """The dtype contributions are summed in (TypeError for dtypes qlccomm does not reduce)."""
    if dtype == torch.bool or dtype.is_complex:
        raise TypeError(f"qlccomm does not reduce {dtype}")
    if dtype.is_floating_point:
        return torch.float64 if dtype == torch.float64 else torch.float32
    if code == OP_AVG:
        raise TypeError(f"ReduceOp.AVG needs a floating dtype, not {dtype}")
    return torch.int64


class Accumulator:
    """Reduces contributions of up to `numel` elements in the order they are added.

    The accumulator buffer is allocated once and reused for every slice:

        acc.add(x0, first=True); acc.add(x1); ...; acc.result(count, out)
    """

    def __init__(self, code: int, dtype: torch.dtype, numel: int, device: torch.device | str):
        self.code, self.dtype = code, dtype
        self._buf = torch.empty(numel, dtype=accumulate_dtype(dtype, code), device=device)
        self._n = 0

    def add(self, x: torch.Tensor, first: bool = False) -> None:
        """Fold the 1-D tensor `x` in (`first`: start a new reduction of x.numel() elements)."""
        if first:
            self._n = x.numel()
            self._view().copy_(x)
            return
        acc = self._view()
        if x.dtype in _NO_PROMOTION:
            x = x.to(acc.dtype)
        if self.code in (OP_SUM, OP_AVG):
            acc.add_(x)         # mixed dtypes: each element cast to the accumulator's, as .to() would
        elif self.code == OP_MIN:
            torch.minimum(acc, x.to(acc.dtype), out=acc)
        else:
            torch.maximum(acc, x.to(acc.dtype), out=acc)

    def result(self, count: int, out: torch.Tensor) -> torch.Tensor:
        """Write the reduction of `count` contributions into `out` (its dtype) and return it."""
        acc = self._view()
        if self.code == OP_AVG:
            acc.div_(count)
        return out.copy_(acc)

    def _view(self) -> torch.Tensor:
        return self._buf[:self._n]


_DIRECT_SUM = {torch.float16, torch.float32, torch.float64, torch.int8, torch.uint8, torch.int16, torch.int32,
               torch.int64}


def sum_of_two_in_dtype(code: int, dtype: torch.dtype, count: int) -> bool:
    """Whether `out = x0 + x1` computed in `dtype` itself gives the accumulator's bits: a SUM of
    exactly two contributions of a dtype whose torch add rounds once from the exact float32 (or
    wider) sum, or wraps like the int64 accumulator (checked on every float16 bit pattern and
    the specials).  Not bfloat16: torch's bfloat16 add canonicalises a NaN that the
    accumulator's cast keeps; not MIN/MAX: a direct minimum keeps NaN payloads the cast may not."""
    return count == 2 and code == OP_SUM and dtype in _DIRECT_SUM


def reduce_in_order(parts: list[torch.Tensor], code: int, dtype: torch.dtype) -> torch.Tensor:
    """Reduce equal-length 1-D tensors in list order (the definition of every qlccomm result)."""
    acc = Accumulator(code, dtype, parts[0].numel(), parts[0].device)
    for i, p in enumerate(parts):
        acc.add(p, first=i == 0)
    return acc.result(len(parts), torch.empty(parts[0].numel(), dtype=dtype, device=parts[0].device))


def reference_all_reduce(tensors, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """What `all_reduce(..., deterministic=True)` returns on every rank when rank i holds
    `tensors[i]` (and what every coded all_reduce returns), computed without communication."""
    tensors = list(tensors)
    if not tensors:
        raise ValueError("reference_all_reduce needs at least one tensor")
    shape, dtype = tensors[0].shape, tensors[0].dtype
    for x in tensors:
        if x.shape != shape or x.dtype != dtype:
            raise ValueError("reference_all_reduce needs tensors of one shape and dtype")
    return reduce_in_order([x.reshape(-1) for x in tensors], opcode(op), dtype).reshape(shape)
