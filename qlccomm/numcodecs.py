"""A numcodecs codec over qlccomm streams, for zarr and everything else that takes numcodecs codecs.

    from qlccomm.numcodecs import QLC          # registers codec_id "qlccomm" with numcodecs
    codec = QLC(codec="auto")                  # or numcodecs.get_codec({"id": "qlccomm", "codec": "qlc"})
    enc = codec.encode(a)                      # bytes: a whole qlccomm stream (shape in its header)
    b = codec.decode(enc)                      # numpy array, bit-exact: a's dtype and shape

Importing this module needs numcodecs (it registers the codec on import).  `encode` takes a
numpy array (or any buffer: bytes-like data is coded as uint8) of a dtype qlccomm stores, by
its name:

* numpy's own: bool, uint8, int8, uint16, int16, uint32, int32, uint64, int64, float16,
  float32, float64, complex64, complex128 (QLC codes the 1-byte ones and float16/float32;
  ENEC float16/float32; the others travel raw behind the stream header);
* ml_dtypes' (where installed): bfloat16, float8_e4m3fn, float8_e5m2, float8_e4m3fnuz,
  float8_e5m2fnuz, float8_e8m0fnu, and complex32 (ml_dtypes >= 0.6; two float16s, as
  torch.complex32).  Decoding a stream of these needs ml_dtypes too (TypeError otherwise).

Non-native byte order is swapped to native order first (decode returns native order).
Object, string, datetime and structured dtypes raise TypeError, as do ml_dtypes' types
that torch lacks (float8_e4m3, int4, ...).
"""
from __future__ import annotations

import os

import numpy as np
import torch

try:
    from numcodecs.abc import Codec
    from numcodecs.compat import ensure_contiguous_ndarray, ensure_ndarray, ndarray_copy
    from numcodecs.registry import register_codec
except ImportError as e:     # pragma: no cover - depends on the environment
    raise ImportError("qlccomm.numcodecs needs the numcodecs package (pip install numcodecs)") from e

from . import api
from .dtypes import TRAITS
from .format import FIXED_HEADER_BYTES, MAX_NDIM, parse_header

__all__ = ["QLC", "numpy_dtype", "torch_dtype"]

_TORCH_BY_NAME: dict[str, torch.dtype] = {str(d).removeprefix("torch."): d for d in TRAITS}
_ML_DTYPES = ("bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
              "complex32")
CODECS = ("auto", "qlc", "enec", "raw")


def torch_dtype(dtype) -> torch.dtype:
    """The torch dtype a numpy dtype's arrays are stored as (TypeError: qlccomm does not store it)."""
    dt = np.dtype(dtype)
    t = _TORCH_BY_NAME.get(dt.name)
    if t is None or dt.itemsize != t.itemsize or dt.fields is not None or dt.subdtype is not None:
        raise TypeError(f"qlccomm stores no numpy dtype {dt}; it takes {', '.join(_TORCH_BY_NAME)}")
    return t


def numpy_dtype(dtype: torch.dtype) -> np.dtype:
    """The numpy dtype of a torch dtype's arrays: numpy's own, or ml_dtypes' for bfloat16 and the
    8-bit floats (TypeError where there is none, or ml_dtypes is not installed)."""
    name = str(dtype).removeprefix("torch.")
    if name in _ML_DTYPES:
        try:
            import ml_dtypes
        except ImportError:
            raise TypeError(f"a {name} array needs the ml_dtypes package (pip install ml_dtypes)") from None
        found = getattr(ml_dtypes, name, None)
        if found is None:
            raise TypeError(f"this ml_dtypes ({ml_dtypes.__version__}) has no {name}")
        return np.dtype(found)
    try:
        dt = np.dtype(name)
    except TypeError:
        raise TypeError(f"numpy has no dtype for {dtype}") from None
    if dt.name != name:
        raise TypeError(f"numpy has no dtype for {dtype}")
    return dt


def _as_tensor(arr: np.ndarray) -> torch.Tensor:
    """A torch tensor over `arr`'s memory (C-contiguous, writable, native order), same shape."""
    dtype = torch_dtype(arr.dtype)
    flat = arr.reshape(-1).view(np.uint8)
    return torch.from_numpy(flat).view(dtype).reshape(arr.shape)


class QLC(Codec):
    """qlccomm's lossless tensor compression as a numcodecs codec (codec_id "qlccomm").

    codec: "auto" (ENEC for bfloat16/float16/float32, QLC for the 1-byte dtypes, raw
        otherwise), "qlc", "enec" (bfloat16/float16/float32 only) or "raw"; see
        qlccomm.compress.
    checksum: store a CRC32 in each chunk's stream (decode then detects every bit flip).
    codebook: None or "adaptive" (each chunk embeds a code fitted to it), "default" (the
        built-in codebook of the chunk's dtype: no embedded table, better for small
        chunks), or a codebook file path (needed again to decode).  Only names and paths:
        the configuration must stay JSON.

    Every chunk is a complete qlccomm stream: qlccomm.decompress reads it too.
    """

    codec_id = "qlccomm"

    def __init__(self, codec: str = "auto", checksum: bool = False, codebook: str | os.PathLike | None = None):
        if codec not in CODECS:
            raise ValueError(f"codec must be one of {', '.join(CODECS)}, not {codec!r}")
        if not isinstance(checksum, (bool, np.bool_)):
            raise TypeError(f"checksum is a bool, not {type(checksum).__name__}")
        if codebook is not None and not isinstance(codebook, (str, os.PathLike)):
            raise TypeError("QLC(codebook=) takes None, 'adaptive', 'default' or a codebook file path, "
                            f"not {type(codebook).__name__}")
        if codec == "enec" and codebook not in (None, "adaptive"):
            raise ValueError("ENEC takes no codebook: pass codebook=None, or codec=\"qlc\" to code with one")
        self.codec = codec
        self.checksum = bool(checksum)
        self.codebook = os.fspath(codebook) if codebook is not None else None

    def encode(self, buf) -> bytes:
        """The qlccomm stream of the array `buf` (its dtype and shape in the header), as bytes."""
        arr = ensure_ndarray(buf)
        if not arr.dtype.isnative:
            arr = arr.astype(arr.dtype.newbyteorder("="))
        torch_dtype(arr.dtype)                      # TypeError before any copy
        if not arr.flags.c_contiguous or not arr.flags.writeable:
            arr = arr.copy(order="C")               # torch wraps writable C-contiguous memory only
        blob = api.compress(_as_tensor(arr), codec=self.codec, codebook=self.codebook, checksum=self.checksum)
        return blob.numpy().tobytes()

    def decode(self, buf, out=None):
        """The array of the stream in `buf`; into `out` (exactly the decoded size in bytes,
        any dtype: its bytes are overwritten, as numcodecs' codecs do) when given."""
        src = ensure_contiguous_ndarray(buf)
        if src.dtype != np.uint8:
            src = src.view(np.uint8)
        header = parse_header(src[:FIXED_HEADER_BYTES + 8 * MAX_NDIM])
        if out is None:
            np_dtype = numpy_dtype(header.dtype)    # TypeError before decoding
            t = api.decompress(src, codebook=self.codebook)
            return t.reshape(-1).view(torch.uint8).numpy().view(np_dtype).reshape(header.shape)
        dst = out if isinstance(out, np.ndarray) else ensure_contiguous_ndarray(out)
        if dst.nbytes != header.raw_bytes:
            raise ValueError(f"out holds {dst.nbytes} bytes; the chunk decodes to {header.raw_bytes} "
                             f"({header.numel} x {header.dtype})")
        if dst.flags.c_contiguous and dst.flags.writeable and dst.dtype != object:
            target = torch.from_numpy(dst.reshape(-1).view(np.uint8)).view(header.dtype)
            api.decompress(src, codebook=self.codebook, out=target)     # straight into out's memory
            return dst
        t = api.decompress(src, codebook=self.codebook)
        return ndarray_copy(t.reshape(-1).view(torch.uint8).numpy(), out)


register_codec(QLC)
