"""Synthetic tensors shaped like real weights and gradients (for benchmarks and default codebooks).

The generator, documented so figures can be reproduced and compared:

* **weight-like**: rows of a linear layer, ``w[i, j] = s_i * t_ij`` where ``t`` is
  Student-t with 4 degrees of freedom (heavy tails: a few large weights per row)
  and the row scale ``s_i = 0.02 * exp(N(0, 0.35^2))`` (layers and rows differ in
  spread).  Exponents then cover about 2^-20 .. 2^-3 with the mode near 2^-6.
* **gradient-like**: ``g[i, j] = s_i * t_ij`` with Student-t of 3 degrees of
  freedom and ``s_i = 1e-4 * exp(N(0, 1))`` (a much wider exponent spread), and
  5% of the rows exactly zero (embedding rows that no token touched).
* **8-bit floats** are produced the way FP8 training does: per-tensor scaling of
  the same values so that the largest magnitude maps to the format's maximum
  (448 for e4m3fn, 57344 for e5m2), then a round-to-nearest cast.
* **int8** is symmetric per-tensor quantisation to [-127, 127]; **uint8** the same
  shifted by 128.

Rows have 4096 columns; the row count follows from the element count.  Every
draw comes from a ``torch.Generator`` seeded with ``seed``.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

DTYPE_ALIASES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16, "float16": torch.float16,
    "half": torch.float16, "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
    "e4m3": torch.float8_e4m3fn, "float8_e4m3fn": torch.float8_e4m3fn, "fp8": torch.float8_e4m3fn,
    "e5m2": torch.float8_e5m2, "float8_e5m2": torch.float8_e5m2, "int8": torch.int8, "uint8": torch.uint8,
}
COLUMNS = 4096


def parse_dtype(name: str) -> torch.dtype:
    try:
        return DTYPE_ALIASES[name.lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {name!r}; one of {', '.join(sorted(DTYPE_ALIASES))}") from None


def _values(kind: str, numel: int, gen: torch.Generator) -> torch.Tensor:
    rows = max(1, math.ceil(numel / COLUMNS))
    if kind == "weight":
        df, base, spread, zero_rows = 4.0, 0.02, 0.35, 0.0
    elif kind == "grad":
        df, base, spread, zero_rows = 3.0, 1e-4, 1.0, 0.05
    else:
        raise ValueError(f"kind must be 'weight' or 'grad', not {kind!r}")
    # Student-t as normal / sqrt(chi2/df), drawn from the generator
    z = torch.randn(rows, COLUMNS, generator=gen)
    chi2 = _chi2(df, (rows, COLUMNS), gen)
    t = z / torch.sqrt(chi2 / df)
    scale = base * torch.exp(spread * torch.randn(rows, 1, generator=gen))
    if zero_rows:
        scale = scale * (torch.rand(rows, 1, generator=gen) >= zero_rows)
    return (t * scale).reshape(-1)[:numel]


def _chi2(df: float, shape, gen: torch.Generator) -> torch.Tensor:
    """Chi-squared draws for integer `df` as sums of squared normals (generator-driven)."""
    k = int(df)
    return (torch.randn(k, *shape, generator=gen) ** 2).sum(0)


def synthetic(kind: str, dtype: torch.dtype, numel: int, seed: int = 0) -> torch.Tensor:
    """A 1-D tensor of `numel` weight-like (kind="weight") or gradient-like ("grad") values."""
    gen = torch.Generator().manual_seed(seed)
    v = _values(kind, numel, gen)
    if dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        top = torch.finfo(dtype).max
        amax = v.abs().max().clamp_min(1e-30)
        return (v / amax * top).to(dtype)
    if dtype in (torch.int8, torch.uint8):
        q = torch.round(v / v.abs().max().clamp_min(1e-30) * 127).to(torch.int32)
        return (q + 128).to(torch.uint8) if dtype == torch.uint8 else q.to(torch.int8)
    return v.to(dtype)


def default_codebook_samples(dtype: torch.dtype) -> list[torch.Tensor]:
    """The samples the shipped default codebooks are fitted on: weights and gradients, 1M elements each."""
    return [synthetic("weight", dtype, 1 << 20, seed=1), synthetic("grad", dtype, 1 << 20, seed=2)]


def write_default_codebooks(folder: str | Path) -> list[Path]:
    """Fit and write the default codebook of every coded dtype into `folder`."""
    from .codebook import fit_codebook
    from .format import dtype_name

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2,
                  torch.int8, torch.uint8):
        cb = fit_codebook(default_codebook_samples(dtype))
        path = folder / f"{dtype_name(dtype)}.json"
        path.write_text(json.dumps(cb.to_json(), indent=1) + "\n")
        written.append(path)
    return written


def main() -> None:
    ap = argparse.ArgumentParser(description="Regenerate qlccomm's default codebooks from the synthetic generator.")
    ap.add_argument("--write-codebooks", metavar="FOLDER", required=True)
    for p in write_default_codebooks(ap.parse_args().write_codebooks):
        print(p)


if __name__ == "__main__":
    main()
