"""The codec interface and its registry: what `compress`, `decompress` and `inspect` dispatch through.

A codec owns the *section* that follows the stream header (docs/format.md): it writes it
for a flat tensor and reads it back.  Every codec has the same five operations:

    codes(dtype)                                  -> bool: whether it codes this dtype at all
    variant(flat, codebook)                       -> the codec that writes this tensor's stream: itself,
                                                     or one configured for it (QLCW: the split)
    encode(flat, codebook, reserve=, into=)       -> the stream with `reserve` bytes free in front,
                                                     or None: nothing gained, store the tensor raw
    parse(src, start, header, codebook)           -> a section object (metadata only, validated)
    decode(section, data, header, out=)           -> the flat tensor
    describe(section)                             -> dict of section facts for `inspect`

Host planning (layout, parameters, sizes) lives in each codec's module once; which backend
runs the passes (torch, numba, Triton) is `qlccomm.kernels.implementation`'s choice, made
here per call and nowhere else.  Codecs are looked up by name (`get`) or by the header's
codec id (`by_id`); `register` adds one.
"""
from __future__ import annotations

from typing import Protocol

import torch

from . import kernels, qlc, qlcw
from .codebook import Codebook, fit_codebook
from .dtypes import ENEC_DTYPES
from .errors import FormatError
from .format import CODEC_ENEC, CODEC_QLC, CODEC_QLCW, CODEC_RAW, ByteSource, Header
from .split import candidate_plans


class Codec(Protocol):
    name: str
    codec_id: int

    def codes(self, dtype: torch.dtype) -> bool: ...

    def encode(self, flat: torch.Tensor, codebook: Codebook | None, *, reserve: int,
               into: torch.Tensor | None) -> torch.Tensor | None: ...

    def parse(self, src: ByteSource, start: int, header: Header, codebook: Codebook | None, *,
              need_codebook: bool = True): ...

    def decode(self, section, data: torch.Tensor, header: Header, out: torch.Tensor | None) -> torch.Tensor: ...

    def describe(self, section) -> dict: ...

    def variant(self, flat: torch.Tensor, codebook: Codebook | None) -> "Codec": ...


def _backend(name: str, fallback, device: torch.device):
    """The module that runs `name`'s passes on `device`: a fused kernel set, else `fallback`."""
    fused = kernels.implementation(name, device)
    return fused if fused is not None else fallback


class RawCodec:
    """The tensor's bytes as they are (codec 0): every dtype, and the fallback of the others."""

    name, codec_id = "raw", CODEC_RAW

    def codes(self, dtype: torch.dtype) -> bool:
        return True

    def encode(self, flat, codebook, *, reserve, into):
        nbytes = flat.numel() * flat.element_size()
        blob = into[:reserve + nbytes] if into is not None else torch.empty(reserve + nbytes, dtype=torch.uint8,
                                                                             device=flat.device)
        blob[reserve:] = flat.view(torch.uint8)
        return blob

    def parse(self, src, start, header, codebook, *, need_codebook=True):
        if len(src) != start + header.raw_bytes:
            raise FormatError(f"raw stream is {len(src)} bytes, expected {start + header.raw_bytes}")
        return None

    def decode(self, section, data, header, out):
        raw = data[header.nbytes:]
        if out is not None:
            out.view(-1).view(torch.uint8).copy_(raw)
            return out.view(-1)
        if not header.numel:
            return torch.empty(0, dtype=header.dtype, device=data.device)
        return raw.clone().view(header.dtype)

    def describe(self, section) -> dict:
        return {}

    def variant(self, flat, codebook):
        return self


class QLCCodec:
    """Quad Length Codes (codec 1): a codebook per stream, embedded (adaptive) or by digest."""

    name, codec_id = "qlc", CODEC_QLC

    def codes(self, dtype: torch.dtype) -> bool:
        return bool(candidate_plans(dtype))

    def encode(self, flat, codebook, *, reserve, into):
        adaptive = codebook is None
        if adaptive and len(candidate_plans(flat.dtype)) > 1:
            codebook = fit_codebook(flat, transient=True)   # measures every plan (float16), keeps the better
        plan = codebook.plan_obj if codebook is not None else candidate_plans(flat.dtype)[0]
        return _backend("qlc", qlc, flat.device).encode_section(flat, plan, codebook, embed=adaptive,
                                                                 reserve=reserve, into=into)

    def parse(self, src, start, header, codebook, *, need_codebook=True):
        if not self.codes(header.dtype):
            raise FormatError(f"QLC stream of dtype {header.dtype}, which QLC does not code")
        if header.numel == 0:
            raise FormatError("QLC stream with no elements")
        sec = qlc.parse_section(src, start, header.numel, header.dtype, codebook, need_codebook=need_codebook)
        if sec.plan not in candidate_plans(header.dtype):
            raise FormatError(f"plan {sec.plan.name} does not code {header.dtype}")
        return sec

    def decode(self, section, data, header, out):
        return _backend("qlc", qlc, data.device).decode_section(section, data, header, out=out)

    def describe(self, section) -> dict:
        return qlc.describe(section)

    def variant(self, flat, codebook):
        """Adaptive coding (no codebook) writes a QLCW stream where QLCW codes fitted to the
        tensor (pairs, single fields, or single fields with a code per group of chunks) are
        smaller than QLC's (qlcw.prefer_wide), and for float16 tensors of MIN_WIDE_ELEMS
        elements or more; else a QLC stream."""
        f = qlcw.adaptive_fields(flat) if codebook is None else None
        if f is None:
            return self
        backend = _backend("qlcw", qlcw, flat.device)
        chunk_hist = None
        if qlcw.weighs_chunk_codes(flat):
            chunk_hist = backend.chunk_histograms(flat, f.lo, f.w)
        more = [(s, backend.histogram(flat, s)) for s in qlcw.more_pair_splits(flat.dtype)]
        choice = qlcw.prefer_wide(backend.histogram(flat, f), f, flat.dtype, chunk_hist, more)
        return self if choice is None else QLCWCodec(*choice)


class QLCWCodec:
    """QLC over wide symbols (codec 3, format version 2; 3 with several codes, 4 with raw shifts): a field of each element, alone or
    paired with its neighbour's, 16 areas, an embedded rank -> symbol table fitted to each
    tensor.  Asked for by name (`codec="qlcw"`; the split is the writer's estimate per tensor),
    and written by adaptive `codec="qlc"` where it is smaller (QLCCodec.variant)."""

    name, codec_id = "qlcw", CODEC_QLCW

    def __init__(self, fields: "qlcw.Fields | None" = None, code: "qlcw.WideCode | qlcw.CodeSet | None" = None):
        self.fields = fields        # None: the writer's choice per tensor
        self.code = code            # None: fitted to the tensor by encode; else one fitted to it already

    @staticmethod
    def stream_version(section: torch.Tensor) -> int:
        """The format version a stream of this section (uint8, as encode wrote it) records."""
        return qlcw.section_version(int(section[3]))

    def codes(self, dtype: torch.dtype) -> bool:
        return bool(qlcw.candidates(dtype))

    def variant(self, flat, codebook):
        if codebook is not None:
            raise ValueError("QLCW takes no codebook (its code is fitted to each tensor and embedded)")
        if self.fields is not None:
            return self
        return QLCWCodec(qlcw.best_split(flat))

    def encode(self, flat, codebook, *, reserve, into):
        fields = self.fields or qlcw.candidates(flat.dtype)[0]
        return _backend("qlcw", qlcw, flat.device).encode_section(flat, fields, self.code, reserve=reserve, into=into)

    def parse(self, src, start, header, codebook, *, need_codebook=True):
        if not self.codes(header.dtype):
            raise FormatError(f"QLCW stream of dtype {header.dtype}, which QLCW does not code")
        if header.numel == 0:
            raise FormatError("QLCW stream with no elements")
        return qlcw.parse_section(src, start, header)

    def decode(self, section, data, header, out):
        return _backend("qlcw", qlcw, data.device).decode_section(section, data, header, out=out)

    def describe(self, section) -> dict:
        return qlcw.describe(section)


class ENECCodec:
    """ENEC (codec 2): block-wise fixed-width exponents for bfloat16, float16, float32.
    Its module is imported on first use (QLC-only users never load it)."""

    name, codec_id = "enec", CODEC_ENEC

    @staticmethod
    def _module():
        from . import enec
        return enec

    def codes(self, dtype: torch.dtype) -> bool:
        return dtype in ENEC_DTYPES

    def encode(self, flat, codebook, *, reserve, into):
        return _backend("enec", self._module(), flat.device).encode_section(flat, reserve=reserve, into=into)

    def parse(self, src, start, header, codebook, *, need_codebook=True):
        return self._module().parse_section(src, start, header)

    def decode(self, section, data, header, out):
        return _backend("enec", self._module(), data.device).decode_section(section, data, header, out=out)

    def describe(self, section) -> dict:
        return self._module().describe(section)

    def variant(self, flat, codebook):
        return self


_BY_NAME: dict[str, Codec] = {}
_BY_ID: dict[int, Codec] = {}


def register(codec: Codec) -> None:
    """Make `codec` available to compress/decompress under its name and header id."""
    _BY_NAME[codec.name] = codec
    _BY_ID[codec.codec_id] = codec


def get(name: str) -> Codec:
    try:
        return _BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown codec {name!r}; choose one of {', '.join(names())}") from None


def by_id(codec_id: int) -> Codec:
    try:
        return _BY_ID[codec_id]
    except KeyError:
        raise FormatError(f"unknown codec {codec_id}") from None


def names() -> list[str]:
    return list(_BY_NAME)


for _codec in (RawCodec(), QLCCodec(), ENECCodec(), QLCWCodec()):
    register(_codec)
