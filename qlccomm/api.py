"""compress / decompress / inspect: one entry point over the raw, QLC and ENEC codecs."""
from __future__ import annotations

import os
import struct

import torch

from . import kernels, qlc
from .codebook import Codebook, default_codebook, fit_codebook
from .errors import FormatError
from .format import (CODEC_ENEC, CODEC_IDS, CODEC_NAMES, CODEC_QLC, CODEC_RAW, CRC_OFFSET, DTYPE_CODES,
                     ByteSource, Header, parse_header, stream_crc, stored_crc)
from .split import candidate_plans

CodebookArg = Codebook | str | os.PathLike | None


def _enec():
    from . import enec  # imported lazily: the ENEC codec is optional for QLC-only users
    return enec


def _codec_impl(codec: str, device: torch.device):
    """The module that encodes/decodes `codec` on `device`: a fused kernel set from
    qlccomm.kernels when one serves that device, else the torch path (same bytes)."""
    fused = kernels.implementation(codec, device)
    if fused is not None:
        return fused
    return qlc if codec == "qlc" else _enec()


def _resolve_codebook(codebook: CodebookArg, dtype: torch.dtype) -> Codebook | None:
    if codebook is None or codebook == "adaptive":
        return None
    if codebook == "default":
        return default_codebook(dtype)
    if isinstance(codebook, Codebook):
        if codebook.dtype != dtype:
            raise ValueError(f"codebook is for {codebook.dtype}, tensor is {dtype}")
        return codebook
    return Codebook.load(codebook, dtype=dtype)


def pick_codec(dtype: torch.dtype, codec: str) -> str:
    """The codec `compress` uses for `dtype` when asked for `codec`."""
    if codec not in ("auto", "raw", "qlc", "enec"):
        raise ValueError(f"unknown codec {codec!r}; choose auto, qlc, enec or raw")
    if codec == "enec":
        enec = _enec()
        if dtype not in enec.SUPPORTED_DTYPES:
            names = ", ".join(str(d).removeprefix("torch.") for d in enec.SUPPORTED_DTYPES)
            raise ValueError(f"ENEC codes {names}; not {dtype}")
        return codec
    if codec == "auto":  # the speed codec for the wide floats, QLC for 1-byte dtypes, else raw
        if dtype in (torch.bfloat16, torch.float16, torch.float32):
            return "enec"
        return "qlc" if candidate_plans(dtype) else "raw"
    if codec == "qlc" and not candidate_plans(dtype):
        return "raw"  # dtypes with no coded plan are stored raw behind the same header
    return codec


def max_compressed_bytes(t: torch.Tensor) -> int:
    """The most bytes `compress(t)` can return: the raw tensor plus the stream header."""
    return Header(CODEC_RAW, t.dtype, tuple(t.shape), False).nbytes + t.numel() * t.element_size()


def compress(t: torch.Tensor, codec: str = "qlc", codebook: CodebookArg = None, checksum: bool = False, *,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """Compress a tensor losslessly into a 1-D uint8 tensor on `t.device`.

    codec: "qlc" (ratio), "enec" (speed; bfloat16/float16/float32), "raw", or "auto"
        (ENEC for bfloat16/float16/float32, QLC for 1-byte dtypes, raw otherwise).
    codebook: None/"adaptive" fits the tensor's own histogram and embeds the code;
        a Codebook, a codebook file path, or "default" references it by digest.
    checksum: store a CRC32 of the stream; decompress then detects every bit flip.
    out: a 1-D contiguous uint8 tensor on t.device of at least `max_compressed_bytes(t)`
        bytes; the stream is written to its front and the result is that view (no
        allocation: reuse one buffer across calls).
    The result is never larger than the raw tensor plus the header.
    """
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"compress takes a tensor, not {type(t).__name__}")
    if t.dtype not in DTYPE_CODES:
        raise TypeError(f"qlccomm cannot store dtype {t.dtype}")
    if out is not None:
        _check_buffer(out, max_compressed_bytes(t), t.device)
    flat = t.detach().contiguous().reshape(-1)
    name = pick_codec(t.dtype, codec)
    header = Header(CODEC_IDS[name], t.dtype, tuple(t.shape), checksum)
    hlen = header.nbytes            # the codecs leave this much room in front of their section
    blob = None
    if flat.numel() and name == "qlc":
        cb = _resolve_codebook(codebook, t.dtype)
        adaptive = cb is None
        if adaptive and len(candidate_plans(t.dtype)) > 1:
            cb = fit_codebook(flat, transient=True)  # measures every plan (float16) and keeps the better
        plan = cb.plan_obj if cb is not None else candidate_plans(t.dtype)[0]
        blob = _codec_impl("qlc", flat.device).encode_section(flat, plan, cb, embed=adaptive, reserve=hlen,
                                                               into=out)
    elif flat.numel() and name == "enec":
        blob = _codec_impl("enec", flat.device).encode_section(flat, reserve=hlen, into=out)
    if blob is None or blob.numel() - hlen >= header.raw_bytes:  # never expand: store raw
        header = Header(CODEC_RAW, t.dtype, tuple(t.shape), checksum)
        size = hlen + header.raw_bytes
        blob = out[:size] if out is not None else torch.empty(size, dtype=torch.uint8, device=t.device)
        blob[hlen:] = flat.view(torch.uint8)
    blob[:hlen] = torch.frombuffer(bytearray(header.encode()), dtype=torch.uint8).to(t.device)
    if out is not None and blob.data_ptr() != out.data_ptr():   # an encoder that needed more room
        blob = out[:blob.numel()].copy_(blob)
    if checksum:
        crc = stream_crc(blob.cpu().numpy().tobytes())
        blob[CRC_OFFSET : CRC_OFFSET + 4] = torch.tensor(list(struct.pack("<I", crc)), dtype=torch.uint8)
    return blob


def _parse(src: ByteSource, codebook: Codebook | None = None):
    head_fixed = src.read(0, min(len(src), 21))
    header = parse_header(head_fixed + src.read(len(head_fixed), min(len(src), 21 + 8 * head_fixed[20]))
                          if len(head_fixed) == 21 else head_fixed)
    if header.checksum:
        whole = src.host_all()
        if stream_crc(whole) != stored_crc(whole):
            raise FormatError("CRC32 mismatch: the stream is corrupt")
    start = header.nbytes
    if header.codec == CODEC_RAW:
        if len(src) != start + header.raw_bytes:
            raise FormatError(f"raw stream is {len(src)} bytes, expected {start + header.raw_bytes}")
        return header, None
    if header.codec == CODEC_QLC:
        if not candidate_plans(header.dtype):
            raise FormatError(f"QLC stream of dtype {header.dtype}, which QLC does not code")
        if header.numel == 0:
            raise FormatError("QLC stream with no elements")
        sec = qlc.parse_section(src, start, header.numel, header.dtype, codebook)
        if sec.plan not in candidate_plans(header.dtype):
            raise FormatError(f"plan {sec.plan.name} does not code {header.dtype}")
        return header, sec
    if header.codec == CODEC_ENEC:
        return header, _enec().parse_section(src, start, header)
    raise FormatError(f"unknown codec {header.codec}")


def _check_buffer(buf: torch.Tensor, nbytes: int, device: torch.device) -> None:
    """A caller's output buffer for a stream: 1-D contiguous uint8 on `device`, >= nbytes."""
    if not isinstance(buf, torch.Tensor) or buf.dtype != torch.uint8 or buf.dim() != 1 or not buf.is_contiguous():
        raise TypeError("compress(out=) takes a 1-D contiguous uint8 tensor")
    if buf.device != device:
        raise ValueError(f"compress(out=) is on {buf.device}, the tensor on {device}")
    if buf.numel() < nbytes:
        raise ValueError(f"compress(out=) holds {buf.numel()} bytes; the stream may need {nbytes}")


def _check_out(out: torch.Tensor, header: Header, device: torch.device) -> None:
    """decompress(out=): a contiguous tensor on `device` of the stream's dtype and element count."""
    if not isinstance(out, torch.Tensor) or not out.is_contiguous():
        raise TypeError("decompress(out=) takes a contiguous tensor")
    if out.device != device:
        raise ValueError(f"decompress(out=) is on {out.device}, the stream decodes on {device}")
    if out.dtype != header.dtype or out.numel() != header.numel:
        raise FormatError(f"the stream holds {header.numel} elements of {header.dtype}; "
                          f"out= has {out.numel()} of {out.dtype}")


def decompress(blob, device: torch.device | str | None = None, codebook: Codebook | None = None,
               max_output_bytes: int | None = None, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Decode a stream from :func:`compress`; bit-exact, same dtype and shape.

    blob: a uint8 tensor (the result lands on its device, or on `device`) or
        bytes-like (the result lands on the CPU, or on `device`).
    codebook: needed only for streams that reference a codebook this process has
        not created or loaded.
    max_output_bytes: refuse streams that declare a larger tensor (FormatError).
    out: a contiguous tensor of the stream's dtype and element count on the decoding
        device to decode into (FormatError if the stream holds anything else); the
        result is then `out` itself, whatever its shape.
    Raises FormatError for corrupt, truncated or foreign streams.
    """
    src = ByteSource(blob, device)
    header, sec = _parse(src, codebook)
    if max_output_bytes is not None and header.raw_bytes > max_output_bytes:
        raise FormatError(f"stream declares {header.raw_bytes} bytes, over max_output_bytes={max_output_bytes}")
    data = src.tensor
    if out is not None:
        _check_out(out, header, data.device)
    if header.codec == CODEC_RAW:
        raw = data[header.nbytes :]
        if out is not None:
            out.view(-1).view(torch.uint8).copy_(raw)
            return out
        flat = raw.clone().view(header.dtype) if header.numel else \
            torch.empty(0, dtype=header.dtype, device=data.device)
    else:
        flat = _codec_impl(CODEC_NAMES[header.codec], data.device).decode_section(sec, data, header, out=out)
        if out is not None:
            return out
    return flat.reshape(header.shape)


def inspect(blob) -> dict:
    """Describe a stream without decoding it: codec, dtype, shape, sizes in bytes, codec facts."""
    src = ByteSource(blob)
    header, sec = _parse(src)
    info = {
        "codec": CODEC_NAMES[header.codec], "format_version": header.version,
        "dtype": str(header.dtype).removeprefix("torch."), "shape": list(header.shape),
        "numel": header.numel, "raw_bytes": header.raw_bytes, "compressed_bytes": len(src),
        "header_bytes": header.nbytes, "ratio": header.raw_bytes / len(src) if len(src) else 0.0,
        "checksum": header.checksum,
    }
    if header.codec == CODEC_QLC:
        info.update(qlc.describe(sec))
    elif header.codec == CODEC_ENEC:
        info.update(_enec().describe(sec))
    return info
