"""The common stream header (docs/format.md, "Header").

Every qlccomm stream starts with this header, whatever its codec:

| offset | size    | field                                                        |
|--------|---------|--------------------------------------------------------------|
| 0      | 4       | magic b"QLCM"                                                |
| 4      | 1       | format version: the lowest that reads the stream (1 to 4)    |
| 5      | 1       | codec id: 0 raw, 1 qlc, 2 enec, 3 qlcw (version 2)           |
| 6      | 1       | dtype code (DTYPE_CODES)                                     |
| 7      | 1       | flags: bit 0 CRC32 present; other bits 0                     |
| 8      | 8       | u64 element count                                            |
| 16     | 4       | u32 CRC32 of the whole stream with this field zeroed (or 0)  |
| 20     | 1       | ndim (0..MAX_NDIM)                                           |
| 21     | 8*ndim  | u64 shape                                                    |

All integers are little-endian.  The codec's own section follows the header.
"""
from __future__ import annotations

import math
import struct
import warnings
import zlib
from dataclasses import dataclass

import numpy as np
import torch

from .dtypes import TRAITS
from .errors import FormatError

MAGIC = b"QLCM"
FORMAT_VERSION = 4          # the newest version this qlccomm reads and writes
MAX_NDIM = 64
FIXED_HEADER_BYTES = 21
CRC_OFFSET = 16

CODEC_RAW, CODEC_QLC, CODEC_ENEC, CODEC_QLCW = 0, 1, 2, 3
CODEC_NAMES = {CODEC_RAW: "raw", CODEC_QLC: "qlc", CODEC_ENEC: "enec", CODEC_QLCW: "qlcw"}
CODEC_IDS = {v: k for k, v in CODEC_NAMES.items()}
# the format version that introduced each codec: a stream records the lowest version
# that reads it, so a stream of codecs 0-2 is byte for byte what version 1 wrote
CODEC_SINCE = {CODEC_RAW: 1, CODEC_QLC: 1, CODEC_ENEC: 1, CODEC_QLCW: 2}

FLAG_CRC = 0x01

# wire dtype codes, from the trait table (qlccomm.dtypes)
DTYPE_CODES: dict[torch.dtype, int] = {d: t.code for d, t in TRAITS.items()}
DTYPES_BY_CODE: dict[int, torch.dtype] = {t.code: d for d, t in TRAITS.items()}


@dataclass(frozen=True)
class Header:
    codec: int
    dtype: torch.dtype
    shape: tuple[int, ...]
    checksum: bool = False
    version: int = 0            # 0: the lowest version that reads this codec (CODEC_SINCE)

    def __post_init__(self):
        if not self.version:
            object.__setattr__(self, "version", CODEC_SINCE.get(self.codec, FORMAT_VERSION))

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def itemsize(self) -> int:
        """Bytes per element."""
        return self.dtype.itemsize

    @property
    def raw_bytes(self) -> int:
        """Bytes of the uncompressed tensor."""
        return self.numel * self.itemsize

    @property
    def nbytes(self) -> int:
        """Bytes of the encoded header."""
        return FIXED_HEADER_BYTES + 8 * len(self.shape)

    def encode(self) -> bytes:
        if self.dtype not in DTYPE_CODES:
            raise TypeError(f"qlccomm cannot store dtype {self.dtype}")
        flags = FLAG_CRC if self.checksum else 0
        return (
            MAGIC
            + struct.pack("<BBBBQIB", self.version, self.codec, DTYPE_CODES[self.dtype], flags,
                          self.numel, 0, len(self.shape))
            + struct.pack(f"<{len(self.shape)}Q", *self.shape)
        )


def parse_header(buf: bytes) -> Header:
    """Parse and validate the header at the start of `buf` (bytes-like, at least the header)."""
    if len(buf) < FIXED_HEADER_BYTES:
        raise FormatError(f"stream of {len(buf)} bytes is shorter than the {FIXED_HEADER_BYTES}-byte header")
    if bytes(buf[:4]) != MAGIC:
        raise FormatError("not a qlccomm stream (bad magic)")
    version, codec, dcode, flags, numel, crc, ndim = struct.unpack_from("<BBBBQIB", buf, 4)
    if not 1 <= version <= FORMAT_VERSION:
        raise FormatError(f"stream format version {version}; this qlccomm reads versions 1 to {FORMAT_VERSION}")
    if codec not in CODEC_NAMES:
        raise FormatError(f"unknown codec id {codec}")
    if version < CODEC_SINCE[codec]:
        raise FormatError(f"codec {CODEC_NAMES[codec]} in a version-{version} stream (it needs version "
                          f"{CODEC_SINCE[codec]})")
    if dcode not in DTYPES_BY_CODE:
        raise FormatError(f"unknown dtype code {dcode}")
    if flags & ~FLAG_CRC:
        raise FormatError(f"unknown header flags 0x{flags:02x}")
    if not flags & FLAG_CRC and crc != 0:
        raise FormatError("CRC field set in a stream without the CRC flag")
    if ndim > MAX_NDIM:
        raise FormatError(f"ndim {ndim} exceeds {MAX_NDIM}")
    if len(buf) < FIXED_HEADER_BYTES + 8 * ndim:
        raise FormatError("stream truncated inside the header's shape")
    shape = struct.unpack_from(f"<{ndim}Q", buf, FIXED_HEADER_BYTES)
    _check_shape(shape, numel)
    if numel >= 1 << 62:
        raise FormatError(f"element count {numel} is out of range")
    return Header(codec, DTYPES_BY_CODE[dcode], tuple(shape), bool(flags & FLAG_CRC), version)


def _check_shape(shape: tuple[int, ...], numel: int) -> None:
    """FormatError unless torch can build `shape` and it holds exactly `numel` elements.

    torch takes each dimension as an int64 and multiplies them in order in 64 unsigned
    bits, refusing a product that overflows even when a later dimension is zero.  An
    empty shape must also be one torch can give an empty tensor (its strides must fit in
    int64): asked of torch itself, which allocates nothing for it.
    """
    prod = 1
    for d in shape:
        if d >= 1 << 63:
            raise FormatError(f"shape {shape}: dimension {d} does not fit in int64")
        prod *= d
        if prod >= 1 << 64:
            raise FormatError(f"shape {shape}: the product of its dimensions overflows 64 bits")
    if prod != numel:
        raise FormatError(f"shape {shape} does not hold {numel} elements")
    if numel >= 1 << 63:
        raise FormatError(f"shape {shape}: {numel} elements do not fit in int64")
    if numel == 0 and len(shape) > 1:
        try:
            torch.empty(0, dtype=torch.uint8).reshape(shape)
        except RuntimeError as e:
            raise FormatError(f"shape {shape}: torch cannot make a tensor of it ({e})") from None


def stream_crc(buf: bytes | bytearray | memoryview) -> int:
    """CRC32 of a whole stream with its CRC field taken as zero."""
    mv = memoryview(buf)
    crc = zlib.crc32(mv[:CRC_OFFSET])
    crc = zlib.crc32(b"\0\0\0\0", crc)
    return zlib.crc32(mv[CRC_OFFSET + 4 :], crc)


def stored_crc(buf: bytes | bytearray | memoryview) -> int:
    return struct.unpack_from("<I", buf, CRC_OFFSET)[0]


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


class ByteSource:
    """Read-only access to a stream held as a uint8 tensor (any device) or host memory.

    Takes a 1-D uint8 torch tensor (a non-contiguous one is made contiguous), a 1-D uint8
    numpy array (a strided one is copied; another dtype or shape: TypeError), or any
    object with the buffer protocol: bytes, bytearray, memoryview, mmap, ...  Host memory
    is shared, not copied: metadata reads (`read`) slice it, and `tensor` (the stream on
    its own device, from which the codecs slice their planes) wraps it where it is
    writable.  Read-only memory (bytes, a read-only memoryview or array) is copied once
    when `tensor` is first taken on the CPU (a decoded tensor may share the stream's
    memory, and torch tensors must not point into immutable objects); for another
    `device` it is wrapped and copied straight to that device.
    """

    def __init__(self, blob, device: torch.device | str | None = None):
        self._mv: memoryview | None = None      # host streams: the bytes, 1-D format "B"
        self._tensor: torch.Tensor | None = None
        self._device = torch.device(device) if device is not None else None
        if isinstance(blob, torch.Tensor):
            if blob.dtype != torch.uint8 or blob.dim() != 1:
                raise FormatError(f"a stream is a 1-D uint8 tensor, got {blob.dtype} of shape {tuple(blob.shape)}")
            t = blob if blob.is_contiguous() else blob.contiguous()
            if self._device is not None and self._device != t.device:
                t = t.to(self._device)
            self._tensor = t
            self._host = t.numpy() if t.device.type == "cpu" else None
            return
        if isinstance(blob, np.ndarray):
            if blob.dtype != np.uint8 or blob.ndim != 1:
                raise TypeError(f"a stream in a numpy array is 1-D uint8, got {blob.dtype} of shape {blob.shape} "
                                "(the bytes of another array: a.reshape(-1).view(np.uint8))")
            mv = memoryview(blob if blob.flags.c_contiguous else np.ascontiguousarray(blob))
        elif isinstance(blob, str):
            raise TypeError("decompress takes a uint8 tensor, a uint8 numpy array or bytes-like, not str")
        else:
            try:
                mv = memoryview(blob)
            except TypeError:
                raise TypeError("decompress takes a uint8 tensor, a uint8 numpy array or bytes-like "
                                f"(bytes, bytearray, memoryview), not {type(blob).__name__}") from None
            if not mv.c_contiguous:
                mv = memoryview(mv.tobytes())
        self._mv = mv if mv.format == "B" and mv.ndim == 1 else mv.cast("B")
        self._host = self._mv

    @property
    def tensor(self) -> torch.Tensor:
        """The stream as a 1-D uint8 tensor on its device (see the class)."""
        if self._tensor is None:
            self._tensor = _host_tensor(self._mv, self._device)
        return self._tensor

    def __len__(self) -> int:
        return self._mv.nbytes if self._mv is not None else self._tensor.numel()

    def read(self, start: int, stop: int) -> bytes:
        """Host bytes [start, stop); FormatError when the stream ends before `stop`."""
        if stop > len(self):
            raise FormatError(f"stream truncated: needs {stop} bytes, has {len(self)}")
        if self._host is not None:
            return self._host[start:stop].tobytes()
        return self._tensor[start:stop].cpu().numpy().tobytes()

    def host_all(self) -> bytes:
        return self.read(0, len(self))


def _host_tensor(mv: memoryview, device: torch.device | None) -> torch.Tensor:
    """A 1-D uint8 tensor of the bytes of `mv` (1-D, format "B") on `device` (None: the CPU)."""
    on_cpu = device is None or device.type == "cpu"
    if not mv.nbytes:
        t = torch.empty(0, dtype=torch.uint8)
    elif mv.readonly and on_cpu:
        t = torch.frombuffer(bytearray(mv), dtype=torch.uint8)     # the one copy, writable
    else:
        with warnings.catch_warnings():
            # a read-only buffer is only read here, by the copy to `device` below
            warnings.filterwarnings("ignore", message=".*not writable.*", category=UserWarning)
            t = torch.frombuffer(mv, dtype=torch.uint8)
    return t if on_cpu else t.to(device)
