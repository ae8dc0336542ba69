"""Issue 12's two gradient targets on the real MiniLM fine-tuning gradient, one core:

* a bf16 gradient with half its rows zero: the dense part of the gradient (no word
  embedding), first 4,096,000 elements, every other 4096-element row set to +0.0;
* an e4m3 dense gradient: the dense part, each parameter's gradient scaled to +-448 by its
  own absolute maximum (per-tensor scaling, as fp8 training does), then cast; and the whole
  dense gradient scaled by one maximum.

For each: ratio, saving and one-core encode/decode GB/s (medians) of qlccomm's codecs and of
zstd-1 on the same bytes; every result checked bit-exact.

    python launch/gradient_targets.py [--repeat 5]
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import minilm  # noqa: E402

from qlccomm import bench  # noqa: E402


def half_zero_bf16() -> torch.Tensor:
    x = minilm.flat_gradient(torch.float32, dense_only=True)[:4_096_000].to(torch.bfloat16).view(-1, 4096).clone()
    x[0::2] = 0
    return x.reshape(-1)


def e4m3_per_tensor() -> torch.Tensor:
    grads = minilm.real_gradients(torch.float32)
    parts = [g.flatten() / g.abs().max().clamp(min=1e-30) * 448 for n, g in grads.items()
             if n != "embeddings.word_embeddings.weight"]
    return torch.cat(parts).to(torch.float8_e4m3fn)


def e4m3_one_scale() -> torch.Tensor:
    g = minilm.flat_gradient(torch.float32, dense_only=True)
    return (g / g.abs().max() * 448).to(torch.float8_e4m3fn)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    torch.set_num_threads(1)
    for title, t, codecs in (("bf16 gradient, every other 4096-element row zero", half_zero_bf16(), ["qlc", "enec"]),
                             ("e4m3 dense gradient, per-tensor scale", e4m3_per_tensor(), ["qlc"]),
                             ("e4m3 dense gradient, one scale", e4m3_one_scale(), ["qlc"])):
        cases, bound = bench.run(t, codecs, repeat=args.repeat)
        print(bench.format_report(cases, bound, f"{title}: {t.numel()} elements, 1 thread"), flush=True)


if __name__ == "__main__":
    main()
