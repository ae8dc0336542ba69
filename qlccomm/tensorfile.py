"""Read tensors from `.safetensors` files and `.pt` state dicts (for `qlccomm fit` and `bench --file`)."""
from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Iterator

import torch

_SAFETENSORS_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32,
    "F64": torch.float64, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
MAX_SAFETENSORS_HEADER = 100 << 20  # bytes


def iter_safetensors(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of a .safetensors file (header: u64 length + JSON; then the data)."""
    data = Path(path).read_bytes()
    if len(data) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (hlen,) = struct.unpack_from("<Q", data, 0)
    if hlen > min(MAX_SAFETENSORS_HEADER, len(data) - 8):
        raise ValueError(f"{path}: bad safetensors header length {hlen}")
    header = json.loads(data[8 : 8 + hlen])
    base = 8 + hlen
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        dtype = _SAFETENSORS_DTYPES.get(meta["dtype"])
        if dtype is None:
            continue
        start, end = meta["data_offsets"]
        raw = bytearray(data[base + start : base + end])
        t = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
        yield name, t.reshape(meta["shape"])


def _walk(obj, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{prefix}.{i}" if prefix else str(i))


def iter_tensors(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs from a .safetensors file or a torch.save'd state dict (.pt/.pth/.bin)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        yield from iter_safetensors(path)
    else:
        yield from _walk(torch.load(path, map_location="cpu", weights_only=True), "")
