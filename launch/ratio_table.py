"""The ratio frontier on real model tensors: every dtype x weights / gradients / activations.

For each tensor: ratio and one-core encode/decode GB/s of QLC, QLCW and ENEC (where it codes
the dtype), zstd-1, zstd-3 and lz4 on the same bytes, and the entropy bounds of the split
(qlccomm.bench.bits_bound).  Real all-MiniLM-L6-v2 tensors (launch/minilm.py): the pretrained
weights, the fine-tuning gradient (its word-embedding part is mostly zero rows) and hidden
states after layer 3.  e4m3 tensors are scaled to +-448 first.  Every result is checked
bit-exact.

    python launch/ratio_table.py [--elems 4000000] [--repeat 3] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import minilm  # noqa: E402

from qlccomm import bench  # noqa: E402
from qlccomm.dtypes import ENEC_DTYPES  # noqa: E402

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32, "e4m3": torch.float8_e4m3fn}


def tensors(elems: int) -> dict[str, torch.Tensor]:
    """fp32 sources by kind, at most `elems` elements each."""
    w = torch.cat([p.detach().flatten() for p in minilm.load_minilm().parameters()])
    g = minilm.flat_gradient(torch.float32)
    a = minilm.hidden_states(torch.float32, layer=3).flatten()
    return {"weights": w[-elems:], "gradient": g[:elems], "activations": a[:elems]}


def cast(x: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    if dtype == torch.float8_e4m3fn:
        x = x / x.abs().max() * 448
    return x.to(dtype).contiguous()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--elems", type=int, default=4_000_000, help="elements per tensor")
    ap.add_argument("--repeat", type=int, default=3, help="timed rounds (median)")
    ap.add_argument("--dtypes", default=",".join(DTYPES))
    ap.add_argument("--json", help="write the rows here too")
    args = ap.parse_args()
    torch.set_num_threads(1)
    rows = []
    for kind, src in tensors(args.elems).items():
        for name in args.dtypes.split(","):
            t = cast(src, DTYPES[name])
            codecs = ["qlc", "qlcw"] + (["enec"] if t.dtype in ENEC_DTYPES else [])
            cases, bound = bench.run(t, codecs, repeat=args.repeat)
            title = f"{kind} {name}: {t.numel()} elements, {bench.tensor_bytes(t) / 2**20:.1f} MiB, 1 thread"
            print(bench.format_report(cases, bound, title), flush=True)
            rows.append({"kind": kind, "dtype": name, "bound": bound, "cases": bench.report_rows(cases)})
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
    main()
