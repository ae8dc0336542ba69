"""Read tensors from `.safetensors` files and `.pt` state dicts (for `qlccomm fit` and `bench --file`).

Tensors are read one at a time: a .safetensors file is read tensor by tensor (its
header first, then each tensor's bytes), a .pt file is memory-mapped where torch can
(the zip format of torch.save), so a file is never held in memory whole.  A file
that is not what its name says raises ValueError naming the file.
"""
from __future__ import annotations

import json
import math
import os
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


def _safetensors_header(f, path, size: int) -> tuple[dict, int]:
    head = f.read(8)
    if len(head) < 8:
        raise ValueError(f"{path}: too short for a safetensors file")
    (hlen,) = struct.unpack("<Q", head)
    if hlen > min(MAX_SAFETENSORS_HEADER, size - 8):
        raise ValueError(f"{path}: bad safetensors header length {hlen}")
    try:
        header = json.loads(f.read(hlen))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: safetensors header is not JSON ({e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: safetensors header is not a JSON object")
    return header, 8 + hlen


def iter_safetensors(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs of a .safetensors file (header: u64 length + JSON; then the data),
    read one tensor at a time.  Tensors of dtypes torch has no name for here are skipped."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        header, base = _safetensors_header(f, path, size)
        for name, meta in header.items():
            if name == "__metadata__":
                continue
            try:
                dtype = _SAFETENSORS_DTYPES.get(meta["dtype"])
                start, end = (int(v) for v in meta["data_offsets"])
                shape = [int(v) for v in meta["shape"]]
            except (KeyError, TypeError, ValueError):
                raise ValueError(f"{path}: bad safetensors entry for {name!r}") from None
            if dtype is None:
                continue
            itemsize = torch.empty(0, dtype=dtype).element_size()
            if not 0 <= start <= end <= size - base or end - start != math.prod(shape) * itemsize:
                raise ValueError(f"{path}: tensor {name!r} has bad data offsets {[start, end]} "
                                 f"for shape {shape} of {dtype} (the file holds {size - base} data bytes)")
            raw = bytearray(end - start)
            f.seek(base + start)
            if f.readinto(raw) != len(raw):
                raise ValueError(f"{path}: tensor {name!r} is truncated")
            t = torch.frombuffer(raw, dtype=dtype) if raw else torch.empty(0, dtype=dtype)
            yield name, t.reshape(shape)


def _walk(obj, prefix: str) -> Iterator[tuple[str, torch.Tensor]]:
    if isinstance(obj, torch.Tensor):
        yield prefix, obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _walk(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{prefix}.{i}" if prefix else str(i))


def _why(e: BaseException) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _load_pt(path: Path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as e:                # pickle errors, a file that is not a torch.save archive
        if "mmap" not in str(e):          # (an old, non-zip torch.save file cannot be mapped: read it whole)
            raise ValueError(f"{path}: cannot read as a torch.save file ({_why(e)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise ValueError(f"{path}: cannot read as a torch.save file ({_why(e)})") from None


def iter_tensors(path: str | Path) -> Iterator[tuple[str, torch.Tensor]]:
    """(name, tensor) pairs from a .safetensors file or a torch.save'd state dict (.pt/.pth/.bin)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        yield from iter_safetensors(path)
    else:
        yield from _walk(_load_pt(path), "")
