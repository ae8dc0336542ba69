"""Exact code costs of single-symbol QLC, 16-area pair codes and entropy on real MiniLM weights.

Bits per element of the coded field (exponent, exponent + t top mantissa bits, or the byte),
optimal widths from qlccomm's dynamic programme; the ratio adds the raw bits.  A prototype's
measure of what QLCW can reach (docs/benchmarks.md, "Ratio frontier").

    python launch/pair_bounds.py
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
import minilm  # noqa: E402

from qlccomm.codebook import optimal_widths  # noqa: E402


def entropy(c: np.ndarray) -> float:
    p = c[c > 0] / c.sum()
    return float(-(p * np.log2(p)).sum())


def code_cost(counts: np.ndarray, n_areas: int, max_width: int, prefix_bits: int) -> float:
    """Mean code length (bits per symbol) of the optimal QLC code for a histogram."""
    c = np.sort(counts[counts > 0])[::-1]
    total, pos = 0, 0
    for b in optimal_widths(c, n_areas, max_width):
        total += b * c[pos : pos + (1 << b)].sum()
        pos += 1 << b
    return (total + prefix_bits * c.sum()) / c.sum()


def report(x: torch.Tensor, dtype: torch.dtype, mant: int, exp: int, item_bits: int) -> None:
    view = torch.int16 if item_bits == 16 else torch.int32
    mask = (1 << item_bits) - 1
    u = x.to(dtype).view(view).numpy().astype(np.int64) & mask
    for t in range(4):
        w = exp + t
        sym = (u >> (mant - t)) & ((1 << w) - 1)
        c = np.bincount(sym)
        line = f"{dtype} t={t}: entropy {entropy(c):.3f}"
        best = code_cost(c, 16, 16, 4)
        if w <= 8:
            single = code_cost(c, 8, 8, 3)
            best = min(best, single)
            line += f" single-QLC {single:.3f}"
        if 2 * w <= 16:
            pairs = sym[: sym.size // 2 * 2].reshape(-1, 2)
            pc = np.bincount(pairs[:, 0] | (pairs[:, 1] << w))
            pair = code_cost(pc, 16, 16, 4) / 2 + (pc > 0).sum() * 16 / sym.size
            best = min(best, pair)
            line += f" pair-16-area {pair:.3f} (table included)"
        print(line + f" -> ratio {item_bits / (item_bits - w + best):.4f}")


def main() -> None:
    w = torch.cat([p.detach().flatten() for p in minilm.load_minilm().parameters()])
    report(w, torch.bfloat16, 7, 8, 16)
    report(w, torch.float16, 10, 5, 16)
    report(w, torch.float32, 23, 8, 32)


if __name__ == "__main__":
    main()
