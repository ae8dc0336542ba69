"""Compression ratio of the shipped default codebooks against those they replaced and the
adaptive code (a codebook fitted to each tensor), on synthetic and real all-MiniLM-L6-v2 data.

    python launch/default_codebooks.py        # prints one table per dtype (docs/benchmarks.md)

Real data (launch/minilm.py): the dense fine-tuning gradient, the pretrained weights, and the
activation and activation gradient of a pipeline cut after layer 3 (stage_boundary(0)); 8-bit
floats get them per-tensor scaled as qlccomm.datagen does.  Synthetic: seed 50 (the codebooks
were fitted on seeds 1-3).  Ratios are raw bytes / stream bytes with codec="qlc".
"""
from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import qlccomm                                                            # noqa: E402
from qlccomm.codebook import Codebook                                     # noqa: E402
from qlccomm.datagen import KINDS, synthetic                              # noqa: E402
from qlccomm.format import dtype_name                                     # noqa: E402

DTYPES = (torch.bfloat16, torch.float16, torch.float8_e4m3fn, torch.float8_e5m2)


def previous(dtype: torch.dtype) -> Codebook | None:
    """The newest codebook the shipped default for `dtype` replaced, if any."""
    folder = resources.files("qlccomm") / "codebooks" / "previous"
    names = sorted(p.name for p in folder.iterdir() if p.name.startswith(dtype_name(dtype) + "-"))
    return Codebook.from_json(json.loads((folder / names[-1]).read_text())) if names else None


def cast(v: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return (v / v.abs().max() * torch.finfo(dtype).max).to(dtype)
    return v.to(dtype)


def ratio(x: torch.Tensor, codebook) -> float:
    return x.numel() * x.element_size() / qlccomm.compress(x, codec="qlc", codebook=codebook).numel()


def real_tensors() -> dict[str, torch.Tensor]:
    from minilm import flat_gradient, load_minilm, stage_boundary
    act, act_grad = stage_boundary(0, dtype=torch.float32)
    return {"MiniLM gradient": flat_gradient(torch.float32, dense_only=True),
            "MiniLM weights": torch.cat([p.detach().reshape(-1) for p in load_minilm().parameters()]),
            "MiniLM activation": act.reshape(-1), "MiniLM act. gradient": act_grad.reshape(-1)}


def main() -> None:
    torch.set_num_threads(2)
    real = real_tensors()
    for dtype in DTYPES:
        old = previous(dtype)
        print(f"\n{dtype_name(dtype)}" + ("" if old else " (default unchanged: no previous codebook)"))
        print(f"  {'tensor':<22} {'previous':>9} {'default':>8} {'adaptive':>9}")
        tensors = {f"synthetic {k}": synthetic(k, dtype, 1 << 21, seed=50) for k in KINDS}
        tensors.update({k: cast(v, dtype) for k, v in real.items()})
        for name, x in tensors.items():
            prev = f"{ratio(x, old):9.3f}" if old else f"{'-':>9}"
            print(f"  {name:<22} {prev} {ratio(x, 'default'):8.3f} {ratio(x, None):9.3f}")


if __name__ == "__main__":
    main()
