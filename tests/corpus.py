"""A recorded corpus of format-v1 streams: the inputs, the streams qlccomm wrote for them, and
the codebook the referenced cases use.  tests/test_corpus.py checks that today's code writes
the same bytes for the same inputs on every CPU backend and decodes every recorded stream to
its input, bit for bit.  It guards refactors of the codec layer: regenerate it only for a
deliberate format change (and move the format version):

    python tests/corpus.py --write          # tests/data/streams_v1.npz (written by the torch path)
"""
from __future__ import annotations

import io
import json
import sys
import zlib
from pathlib import Path

import numpy as np
import torch

PATH = Path(__file__).resolve().parent / "data" / "streams_v1.npz"

FLOATS = (torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2)
INTS = (torch.int8, torch.uint8)
RAW_ONLY = (torch.int32, torch.float64)
ENEC = (torch.bfloat16, torch.float16, torch.float32)
INT_VIEW = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def _name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _specials(dtype: torch.dtype) -> torch.Tensor:
    """Every kind of special bit pattern of a float dtype: NaN payloads of both signs, infinities,
    -0.0, the smallest and largest subnormals, the largest finite values."""
    isz = dtype.itemsize
    bits = 8 * isz
    exp_bits = {torch.bfloat16: 8, torch.float16: 5, torch.float32: 8, torch.float8_e4m3fn: 4,
                torch.float8_e5m2: 5}[dtype]
    man = bits - 1 - exp_bits
    sign = 1 << (bits - 1)
    top = ((1 << exp_bits) - 1) << man
    pats = [0, sign, 1, sign | 1, (1 << man) - 1, top | 1, top | ((1 << man) - 1), sign | top | 3,
            top - 1, sign | (top - 1)]
    if dtype != torch.float8_e4m3fn:
        pats += [top, sign | top]                     # infinities
    vals = torch.tensor([p - (1 << bits) if p >= 1 << (bits - 1) else p for p in pats], dtype=torch.int64)
    return vals.to(INT_VIEW[isz]).view(dtype)


def _values(dtype: torch.dtype, n: int, seed: int, kind: str) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    if dtype in INTS:
        base = 128 if dtype == torch.uint8 else 0
        lo, hi = (0, 255) if dtype == torch.uint8 else (-128, 127)
        return (base + torch.randn(n, generator=g) * 6).round().clamp(lo, hi).to(dtype)
    if dtype == torch.int32:
        return torch.randint(-1000, 1000, (n,), generator=g, dtype=torch.int32)
    scale = {"weight": 0.02, "grad": 1e-4}[kind]
    if dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        scale *= 50.0
    x = torch.randn(n, generator=g, dtype=torch.float64) * scale
    if kind == "grad":
        x[n // 3: n // 3 + n // 4] = 0                # a run of zeros, as in a sparse gradient
        x = x * torch.rand(n, generator=g, dtype=torch.float64).pow(4)
    x = x.to(dtype)
    sp = _specials(dtype) if dtype in FLOATS else torch.tensor([-0.0, float("nan"), float("inf")], dtype=dtype)
    k = min(n, sp.numel())
    x[:k] = sp[:k]
    return x


def cases() -> list[dict]:
    """Every (input, options) the corpus records."""
    out = []

    def add(dtype, shape, seed, kind, **opts):
        out.append({"id": f"{len(out):03d}", "dtype": _name(dtype), "shape": list(shape), "seed": seed,
                    "kind": kind, **opts})

    for dtype in FLOATS + INTS:
        for kind in ("weight", "grad") if dtype in FLOATS else ("weight",):
            for shape in ((5003,), (20, 1001)):
                add(dtype, shape, 1, kind, codec="qlc", codebook="adaptive", checksum=False)
            add(dtype, (5003,), 2, kind, codec="qlc", codebook="default", checksum=True)
            add(dtype, (5003,), 3, kind, codec="qlc", codebook="fitted", checksum=False)
        if dtype in ENEC:
            for kind in ("weight", "grad"):
                add(dtype, (20, 1001), 4, kind, codec="enec", checksum=False)
            add(dtype, (5003,), 5, "weight", codec="enec", checksum=True)
    add(torch.bfloat16, (140003,), 6, "weight", codec="qlc", codebook="adaptive", checksum=False)
    add(torch.bfloat16, (140003,), 6, "weight", codec="enec", checksum=False)       # sampled search
    add(torch.bfloat16, (3, 0, 5), 7, "weight", codec="qlc", codebook="adaptive", checksum=False)
    add(torch.float16, (), 8, "weight", codec="qlc", codebook="adaptive", checksum=True)
    add(torch.bfloat16, (7,), 9, "weight", codec="enec", checksum=False)             # stored raw: expands
    for dtype in RAW_ONLY:
        add(dtype, (1001,), 10, "weight", codec="qlc", codebook="adaptive", checksum=True)
    return out


def dtype_of(name: str) -> torch.dtype:
    return getattr(torch, name)


def make_input(case: dict) -> torch.Tensor:
    dtype = dtype_of(case["dtype"])
    shape = tuple(case["shape"])
    n = int(np.prod(shape)) if shape else 1
    seed = zlib.crc32(f"{case['dtype']}/{case['seed']}/{case['kind']}".encode())
    return _values(dtype, n, seed, case["kind"]).reshape(shape)


def fitted_codebook(dtype: torch.dtype):
    import qlccomm
    x = torch.cat([make_input({"dtype": _name(dtype), "shape": [20000], "seed": 100 + s, "kind": k})
                   for s, k in ((0, "weight"), (1, "grad"))])
    return qlccomm.fit_codebook([x])


def compress_case(case: dict, x: torch.Tensor, books: dict) -> torch.Tensor:
    import qlccomm
    kw = {"codec": case["codec"], "checksum": case["checksum"]}
    if case["codec"] == "qlc":
        mode = case["codebook"]
        kw["codebook"] = books[case["dtype"]] if mode == "fitted" else mode
    return qlccomm.compress(x, **kw)


def as_bytes(t: torch.Tensor) -> np.ndarray:
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().copy()


def write(path: Path = PATH) -> None:
    import os
    os.environ["QLCCOMM_KERNELS"] = "torch"
    arrays, manifest, books = {}, [], {}
    for dtype in FLOATS + INTS:
        cb = fitted_codebook(dtype)
        books[_name(dtype)] = cb
        arrays[f"codebook_{_name(dtype)}"] = np.frombuffer(json.dumps(cb.to_json()).encode(), dtype=np.uint8)
    for case in cases():
        x = make_input(case)
        blob = compress_case(case, x, books)
        case["input"] = f"in_{case['dtype']}_{'x'.join(map(str, case['shape']))}_{case['seed']}_{case['kind']}"
        arrays[case["input"]] = as_bytes(x)            # cases on the same input share it
        arrays[f"stream_{case['id']}"] = blob.numpy().copy()
        manifest.append(case)
    arrays["manifest"] = np.frombuffer(json.dumps(manifest).encode(), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    np.savez_compressed(buf, **arrays)
    path.write_bytes(buf.getvalue())
    print(f"{path}: {len(manifest)} streams, {path.stat().st_size} bytes")


def load(path: Path = PATH) -> tuple[list[dict], dict]:
    """(manifest, arrays) of the recorded corpus."""
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    return json.loads(arrays["manifest"].tobytes()), arrays


if __name__ == "__main__":
    if sys.argv[1:] != ["--write"]:
        sys.exit(__doc__)
    write()
