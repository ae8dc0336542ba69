"""Synthetic tensors shaped like real weights, gradients and activations (for benchmarks and default codebooks).

The generator, documented so figures can be reproduced and compared:

* **weight-like**: rows of a linear layer, ``w[i, j] = s_i * t_ij`` where ``t`` is
  Student-t with 4 degrees of freedom (heavy tails: a few large weights per row)
  and the row scale ``s_i = 0.02 * exp(N(0, 0.35^2))`` (layers and rows differ in
  spread).  Exponents then cover about 2^-20 .. 2^-3 with the mode near 2^-6.
* **gradient-like**: ``g[i, j] = s_i * t_ij`` with Student-t of 3 degrees of
  freedom and ``s_i = 1e-4 * exp(N(0, 1))`` (a much wider exponent spread), and
  5% of the rows exactly zero (embedding rows that no token touched).
* **activation-like**: hidden states of a transformer, one row per token and
  ACTIVATION_CHANNELS channels: ``a[i, j] = m_j + s_j * t_ij`` with Student-t of 5
  degrees of freedom, channel scales ``s_j = 0.35 * exp(N(0, 0.3^2))`` and means
  ``m_j = N(0, 0.2^2)``; 1% of the channels are outliers (scale and mean times 8,
  the "massive activations" of LayerNorm models).  25% of the rows (padding
  tokens, masked) are exactly zero.  Exponents cover about 2^-11 .. 2^3 with the
  mode near 2^-2: far from weights and gradients.
* **8-bit floats** are produced the way FP8 training does: per-tensor scaling of
  the same values so that the largest magnitude maps to the format's maximum
  (448 for e4m3fn, 57344 for e5m2), then a round-to-nearest cast.
* **int8** is symmetric per-tensor quantisation to [-127, 127]; **uint8** the same
  shifted by 128.

Weight and gradient rows have 4096 columns, activation rows 1024; the row count
follows from the element count.  Every
draw comes from a ``torch.Generator`` seeded with ``seed``.
"""
from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch

from . import dtypes as _dtypes

# the one table of dtype names (qlccomm.dtypes), here for the CLI and older imports
DTYPE_ALIASES = _dtypes.DTYPE_ALIASES
parse_dtype = _dtypes.parse_dtype

COLUMNS = 4096
ACTIVATION_CHANNELS = 1024
KINDS = ("weight", "grad", "activation")


def _values(kind: str, numel: int, gen: torch.Generator) -> torch.Tensor:
    if kind == "activation":
        return _activations(numel, gen)
    rows = max(1, math.ceil(numel / COLUMNS))
    if kind == "weight":
        df, base, spread, zero_rows = 4.0, 0.02, 0.35, 0.0
    elif kind == "grad":
        df, base, spread, zero_rows = 3.0, 1e-4, 1.0, 0.05
    else:
        raise ValueError(f"kind must be one of {', '.join(KINDS)}, not {kind!r}")
    # Student-t as normal / sqrt(chi2/df), drawn from the generator
    z = torch.randn(rows, COLUMNS, generator=gen)
    chi2 = _chi2(df, (rows, COLUMNS), gen)
    t = z / torch.sqrt(chi2 / df)
    scale = base * torch.exp(spread * torch.randn(rows, 1, generator=gen))
    if zero_rows:
        scale = scale * (torch.rand(rows, 1, generator=gen) >= zero_rows)
    return (t * scale).reshape(-1)[:numel]


def _activations(numel: int, gen: torch.Generator) -> torch.Tensor:
    rows, cols = max(1, math.ceil(numel / ACTIVATION_CHANNELS)), ACTIVATION_CHANNELS
    t = torch.randn(rows, cols, generator=gen) / torch.sqrt(_chi2(5.0, (rows, cols), gen) / 5.0)
    scale = 0.35 * torch.exp(0.3 * torch.randn(cols, generator=gen))
    mean = 0.2 * torch.randn(cols, generator=gen)
    outlier = torch.rand(cols, generator=gen) < 0.01
    scale[outlier] *= 8
    mean[outlier] *= 8
    a = mean + scale * t
    a *= (torch.rand(rows, 1, generator=gen) >= 0.25)      # padding tokens
    return a.reshape(-1)[:numel]


def _chi2(df: float, shape, gen: torch.Generator) -> torch.Tensor:
    """Chi-squared draws for integer `df` as sums of squared normals (generator-driven)."""
    k = int(df)
    return (torch.randn(k, *shape, generator=gen) ** 2).sum(0)


def synthetic(kind: str, dtype: torch.dtype, numel: int, seed: int = 0) -> torch.Tensor:
    """A 1-D tensor of `numel` weight-like (kind="weight"), gradient-like ("grad") or
    activation-like ("activation") values in `dtype`."""
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


# Dtypes whose default codebook is fitted on activations too: there it raises the activations'
# ratio more than it lowers the weights' and gradients' (docs/benchmarks.md, "Default codebooks").
WITH_ACTIVATIONS = (torch.bfloat16, torch.float16)


def default_codebook_samples(dtype: torch.dtype) -> list[torch.Tensor]:
    """The samples the shipped default codebooks are fitted on, 1M elements each: weights and
    gradients, and for the dtypes of WITH_ACTIVATIONS activations."""
    samples = [synthetic("weight", dtype, 1 << 20, seed=1), synthetic("grad", dtype, 1 << 20, seed=2)]
    if dtype in WITH_ACTIVATIONS:
        samples.append(synthetic("activation", dtype, 1 << 20, seed=3))
    return samples


def write_default_codebooks(folder: str | Path) -> list[Path]:
    """Fit and write the default codebook of every coded dtype into `folder` (as <dtype>.json).

    A shipped codebook that changes moves to codebooks/previous/<dtype>-<n>.json by hand, so that
    streams which reference it by digest still decode (codebook.lookup loads every shipped one)."""
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
