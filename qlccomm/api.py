"""compress / decompress / inspect: one entry point over the codecs of qlccomm.codecs."""
from __future__ import annotations

import os
import struct

import torch

from . import codecs, memlimits
from .codebook import Codebook, check_codebook_arg, names_codebook, resolve_codebook
from .dtypes import ENEC_DTYPES
from .errors import FormatError, OutputTooLargeError
from .format import CODEC_NAMES, CODEC_QLC, CODEC_RAW, CRC_OFFSET, DTYPE_CODES, ByteSource, Header, parse_header, \
    stream_crc, stored_crc

CodebookArg = Codebook | str | os.PathLike | dict | None
"""What `codebook=` takes everywhere (qlccomm.codebook.resolve_codebook): None or "adaptive",
"default", a Codebook, a codebook file path, or a {torch.dtype: one of those} dict."""


def pick_codec(dtype: torch.dtype, codec: str, t: torch.Tensor | None = None) -> str:
    """The codec `compress` uses for `dtype` when asked for `codec` ("auto", "raw", "qlc", "enec", ...).

    "auto" with a tensor `t`: the codec with the least modelled time to code, send and
    decode `t` at the link rate QLCCOMM_LINK_GBPS (qlccomm.autoselect: measured ratio and
    speed per dtype, device type and data kind).  Without `t`, or for a (dtype, device
    type) the table lacks: ENEC for bfloat16/float16/float32, QLC for the other dtypes
    it codes, raw otherwise."""
    if codec not in ("auto", *codecs.names()):
        raise ValueError(f"unknown codec {codec!r}; choose auto, {', '.join(codecs.names())}")
    if codec == "auto":
        from . import autoselect
        measured = autoselect.choose(dtype, t.device.type, t) if t is not None else None
        codec = measured or ("enec" if dtype in ENEC_DTYPES else "qlc")
    chosen = codecs.get(codec)
    if chosen.codes(dtype):
        return codec
    if codec == "qlc":
        return "raw"     # dtypes with no coded plan are stored raw behind the same header
    if codec == "qlcw":
        raise ValueError(f"QLCW codes floating-point and 1-byte dtypes with a coded plan; not {dtype}")
    names = ", ".join(str(d).removeprefix("torch.") for d in ENEC_DTYPES)
    raise ValueError(f"ENEC codes {names}; not {dtype}")


def max_compressed_bytes(t: torch.Tensor) -> int:
    """The most bytes `compress(t)` can return: the raw tensor plus the stream header."""
    return Header(CODEC_RAW, t.dtype, tuple(t.shape), False).nbytes + t.numel() * t.element_size()


def compress(t: torch.Tensor, codec: str = "qlc", codebook: CodebookArg = None, checksum: bool = False, *,
             out: torch.Tensor | None = None) -> torch.Tensor:
    """Compress a tensor losslessly into a 1-D uint8 tensor on `t.device`.

    codec: "qlc" (ratio), "enec" (speed; bfloat16/float16/float32), "qlcw" (pair symbols:
        more ratio, torch path only so far), "raw", or "auto" (the least modelled time to code,
        send and decode at QLCCOMM_LINK_GBPS from qlccomm.autoselect's measured table; for a
        dtype and device it lacks, ENEC for bfloat16/float16/float32, QLC for 1-byte dtypes).
    codebook: None/"adaptive" fits the tensor's own histogram and embeds the code;
        a Codebook, a codebook file path, "default", or a {dtype: any of those} dict
        (a dtype it does not list: adaptive) references it by digest.  TypeError for
        anything else; ValueError for a codebook of another dtype, and for a codebook
        with codec="enec" (ENEC takes no codebook; with "auto" a codebook applies to the
        dtypes it codes with QLC).
    checksum: store a CRC32 of the stream; decompress then detects every bit flip.
    out: a 1-D contiguous uint8 tensor on t.device of at least `max_compressed_bytes(t)`
        bytes; the stream is written to its front and the result is that view (no
        allocation: reuse one buffer across calls).
    The result is never larger than the raw tensor plus the header.
    """
    if not isinstance(t, torch.Tensor):
        hint = ": pass torch.from_numpy(a)" if type(t).__module__ == "numpy" else ""
        raise TypeError(f"compress takes a tensor, not {type(t).__name__}{hint}")
    if t.dtype not in DTYPE_CODES:
        raise TypeError(f"qlccomm cannot store dtype {t.dtype}")
    check_codebook_arg(codebook)
    if out is not None:
        _check_buffer(out, max_compressed_bytes(t), t.device)
    name = pick_codec(t.dtype, codec, t)
    if codec in ("enec", "qlcw") and names_codebook(codebook, t.dtype):
        raise ValueError(f"{codec.upper()} takes no codebook: pass codebook=None, or codec=\"qlc\" to code with one")
    cb = resolve_codebook(codebook, t.dtype) if name == "qlc" else None
    flat = t.detach().contiguous().reshape(-1)
    chosen = codecs.get(name)
    if flat.numel() and name != "raw":
        chosen = chosen.variant(flat, cb)    # the codec's choice for this tensor (QLCW: its split)
    header = Header(chosen.codec_id, t.dtype, tuple(t.shape), checksum)
    hlen = header.nbytes            # the codecs leave this much room in front of their section
    blob = chosen.encode(flat, cb, reserve=hlen, into=out) if flat.numel() and chosen.name != "raw" else None
    if blob is None or blob.numel() - hlen >= header.raw_bytes:  # never expand: store raw
        header = Header(CODEC_RAW, t.dtype, tuple(t.shape), checksum)
        blob = codecs.get("raw").encode(flat, None, reserve=hlen, into=out)
    elif hasattr(chosen, "stream_version"):     # QLCW: the version its section's flags need
        header = Header(chosen.codec_id, t.dtype, tuple(t.shape), checksum, chosen.stream_version(blob[hlen:]))
    blob[:hlen] = torch.frombuffer(bytearray(header.encode()), dtype=torch.uint8).to(t.device)
    if out is not None and blob.data_ptr() != out.data_ptr():   # an encoder that needed more room
        blob = out[:blob.numel()].copy_(blob)
    if checksum:
        crc = stream_crc(blob.cpu().numpy().tobytes())
        blob[CRC_OFFSET : CRC_OFFSET + 4] = torch.tensor(list(struct.pack("<I", crc)), dtype=torch.uint8)
    return blob


def _parse(src: ByteSource, codebook: CodebookArg = None, *, need_codebook: bool = True):
    """(header, section) of a stream, validated; no plane is read.  need_codebook=False
    (inspect only): a QLC section that references an unknown codebook is still parsed,
    its digest recorded and its codebook left None (it cannot be decoded)."""
    head_fixed = src.read(0, min(len(src), 21))
    header = parse_header(head_fixed + src.read(len(head_fixed), min(len(src), 21 + 8 * head_fixed[20]))
                          if len(head_fixed) == 21 else head_fixed)
    if header.checksum:
        whole = src.host_all()
        if stream_crc(whole) != stored_crc(whole):
            raise FormatError("CRC32 mismatch: the stream is corrupt")
    codec = codecs.by_id(header.codec)
    hint = resolve_codebook(codebook, header.dtype, strict=False) if header.codec == CODEC_QLC else None
    return header, codec.parse(src, header.nbytes, header, hint, need_codebook=need_codebook)


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


def decompress(blob, device: torch.device | str | None = None, codebook: CodebookArg = None,
               max_output_bytes: int | None = None, *, out: torch.Tensor | None = None) -> torch.Tensor:
    """Decode a stream from :func:`compress`; bit-exact, same dtype and shape.

    blob: a uint8 tensor (the result lands on its device, or on `device`) or
        bytes-like (the result lands on the CPU, or on `device`).
    codebook: needed only for streams that reference a codebook this process has
        not created or loaded; takes what compress takes (TypeError for anything
        else).  One of another dtype, or one the stream does not reference, is unused.
    max_output_bytes: refuse streams that declare a larger tensor, in bytes (FormatError).
    out: a contiguous tensor of the stream's dtype and element count on the decoding
        device to decode into (FormatError if the stream holds anything else); the
        result is then `out` itself, whatever its shape.
    Raises FormatError for corrupt, truncated or foreign streams, and OutputTooLargeError (a MemoryError)
    naming the declared size (in bytes) for an output that cannot be allocated:
    more than the decoding device can hold, checked before anything is allocated, or
    an allocation that fails.  For untrusted streams see docs/format.md, "Decoding
    untrusted streams".
    """
    check_codebook_arg(codebook)
    src = ByteSource(blob, device)
    header, sec = _parse(src, codebook)
    if max_output_bytes is not None and header.raw_bytes > max_output_bytes:
        raise FormatError(f"stream declares {header.raw_bytes} bytes, over max_output_bytes={max_output_bytes}")
    data = src.tensor
    if out is not None:
        _check_out(out, header, data.device)
    else:
        limit = memlimits.allocatable_bytes(data.device)
        if limit is not None and header.raw_bytes > limit:
            raise OutputTooLargeError(f"stream declares {header.raw_bytes} bytes of output, more than {data.device} can "
                              f"hold ({limit} bytes)")
    try:
        flat = codecs.by_id(header.codec).decode(sec, data, header, out)
    except (MemoryError, RuntimeError) as e:
        if not memlimits.allocation_failed(e):
            raise
        raise OutputTooLargeError(f"stream declares {header.raw_bytes} bytes of output; allocating for it on "
                          f"{data.device} failed: {e}") from e
    if out is not None:
        return out
    return flat.reshape(header.shape)


def inspect(blob, codebook: CodebookArg = None) -> dict:
    """Describe a stream without decoding it: codec, dtype, shape, sizes in bytes, codec facts.

    Every stream is described from its header and section metadata alone.  A QLC
    stream that references a codebook by digest reports the digest ("codebook") and
    whether this process knows that codebook ("codebook_known"); `codebook` (what
    `decompress` takes) supplies it, and with it its area widths.
    """
    check_codebook_arg(codebook)
    src = ByteSource(blob)
    header, sec = _parse(src, codebook, need_codebook=False)
    info = {
        "codec": CODEC_NAMES[header.codec], "format_version": header.version,
        "dtype": str(header.dtype).removeprefix("torch."), "shape": list(header.shape),
        "numel": header.numel, "raw_bytes": header.raw_bytes, "compressed_bytes": len(src),
        "header_bytes": header.nbytes, "ratio": header.raw_bytes / len(src) if len(src) else 0.0,
        "checksum": header.checksum,
    }
    info.update(codecs.by_id(header.codec).describe(sec))
    return info
