"""QLC codec, torch path: whole-tensor operations, the same code on cpu, cuda and npu.

The codec section (docs/format.md, "QLC section") splits the coded symbols and
the raw bits into named planes so that a chunk decodes with gathers and one
prefix sum, no sequential dependency between symbols:

    prefix plane  3-bit area numbers of every symbol of the coded chunks (fixed width)
    symbol plane  symbols of raw-mode chunks at the plan's symbol width
    suffix plane  per coded chunk, byte aligned: the b_k-bit suffixes, in element order
    raw planes    the raw bits (sign, mantissa) of every element of non-zero chunks

A chunk's suffix bit offsets are an exclusive prefix sum of the widths its
prefixes name; its place in the other planes follows from the chunk modes.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass

import torch

from .bitpack import pack_bits, packed_nbytes, unpack_bits
from .codebook import EMBEDDED_BYTES, PREFIX_BITS, Codebook, codebook_from_histogram, lookup
from .errors import FormatError
from .format import ByteSource
from .split import PLANS_BY_ID, Plan

CHUNK_ELEMS = 4096           # default elements per chunk
MAX_CHUNK_ELEMS = 1 << 20
MODE_ZERO, MODE_CODED, MODE_RAW = 0, 1, 2
CB_EMBEDDED, CB_DIGEST = 1, 2
DIGEST_BYTES = 8


@dataclass
class ChunkLayout:
    """Per-chunk metadata: modes (uint8) and suffix byte lengths, both on the host."""

    chunk: int
    numel: int
    modes: torch.Tensor        # int64 [nchunks]
    suffix_len: torch.Tensor   # int64 [nchunks]

    @property
    def nchunks(self) -> int:
        return self.modes.numel()

    def elems(self) -> torch.Tensor:
        """Elements in each chunk (int64 [nchunks]); the last may be short."""
        e = torch.full((self.nchunks,), self.chunk, dtype=torch.int64)
        if self.nchunks:
            e[-1] = self.numel - self.chunk * (self.nchunks - 1)
        return e


def _chunk_sums(x: torch.Tensor, chunk: int) -> torch.Tensor:
    n = x.numel()
    pad = (-n) % chunk
    if pad:
        x = torch.cat([x, x.new_zeros(pad)])
    return x.view(-1, chunk).sum(dim=1)


def _elem_chunk_modes(modes: torch.Tensor, chunk: int, numel: int) -> torch.Tensor:
    return modes.repeat_interleave(chunk)[:numel]


def encode_section(flat: torch.Tensor, plan: Plan, codebook: Codebook | None, embed: bool = False,
                   chunk: int = CHUNK_ELEMS) -> torch.Tensor:
    """Encode a 1-D contiguous tensor; returns the QLC section (uint8, on flat's device).

    `codebook=None` fits one to the tensor's own histogram (all-zero chunks left
    out); a fitted codebook, or any with `embed=True`, is embedded in the stream,
    others are referenced by digest.
    The tensor must hold at least one element.
    """
    dev = flat.device
    n = flat.numel()
    sym, raw = plan.split(flat)
    nonzero_elem = (sym | raw) != 0
    chunk_nonzero = _chunk_sums(nonzero_elem.to(torch.int64), chunk) > 0

    nchunks = chunk_nonzero.numel()
    elems = torch.full((nchunks,), chunk, dtype=torch.int64, device=dev)
    elems[-1] = n - chunk * (nchunks - 1)
    if codebook is None:
        hist = torch.bincount(sym, minlength=256)
        hist[0] -= elems[~chunk_nonzero].sum()  # all-zero chunks cost nothing: leave them out
        codebook = codebook_from_histogram(hist.cpu().numpy(), flat.dtype, plan)
        embed = True
    tables = codebook.device_tables(dev)

    code_len = tables["length"][sym]
    suffix_bits = _chunk_sums(code_len, chunk) - PREFIX_BITS * elems
    coded_bytes = (PREFIX_BITS * elems + 7) // 8 + (suffix_bits + 7) // 8
    raw_sym_bytes = (elems * plan.symbol_bits + 7) // 8
    modes = torch.where(coded_bytes < raw_sym_bytes, MODE_CODED, MODE_RAW)
    modes = torch.where(chunk_nonzero, modes, MODE_ZERO)
    suffix_len = torch.where(modes == MODE_CODED, (suffix_bits + 7) // 8, 0)

    elem_mode = _elem_chunk_modes(modes, chunk, n)
    coded = elem_mode == MODE_CODED
    coded_sym = sym[coded]
    prefix_plane = pack_bits(tables["area"][coded_sym], PREFIX_BITS)
    symbol_plane = pack_bits(sym[elem_mode == MODE_RAW], plan.symbol_bits)
    suffix_plane = _pack_suffixes(coded_sym, coded.nonzero().squeeze(1) // chunk, modes, suffix_len, tables)
    raw_plane = pack_bits(raw[elem_mode != MODE_ZERO], plan.raw_bits)

    head = bytearray(struct.pack("<BB", plan.plan_id, CB_EMBEDDED if embed else CB_DIGEST))
    head += codebook.to_bytes() if embed else bytes.fromhex(codebook.digest)
    head += struct.pack("<II", chunk, nchunks)
    meta = torch.cat([modes.to(torch.uint8), suffix_len.to(torch.int32).view(torch.uint8)])
    head_t = torch.frombuffer(head, dtype=torch.uint8).to(dev)
    return torch.cat([head_t, meta, prefix_plane, symbol_plane, suffix_plane, raw_plane])


def _suffix_bit_positions(width, chunk_of, nchunks, suffix_len) -> torch.Tensor:
    """Stream bit offset of each coded symbol's suffix: its chunk's byte offset in the
    suffix plane (exclusive prefix sum of suffix_len) plus the exclusive prefix sum of
    the widths of the symbols before it in its chunk."""
    counts = torch.bincount(chunk_of, minlength=nchunks)
    first = torch.cumsum(counts, 0) - counts
    excl = torch.cumsum(width, 0) - width
    local = excl - excl[first[chunk_of]]
    start_byte = torch.cumsum(suffix_len, 0) - suffix_len
    return start_byte[chunk_of] * 8 + local


def _pack_suffixes(coded_sym, chunk_of, modes, suffix_len, tables) -> torch.Tensor:
    """Write each coded symbol's suffix at its bit offset (chunks byte aligned)."""
    dev = coded_sym.device
    total = int(suffix_len.sum())
    if coded_sym.numel() == 0:
        return torch.empty(0, dtype=torch.uint8, device=dev)
    width = tables["widths"][tables["area"][coded_sym]]
    pos = _suffix_bit_positions(width, chunk_of, modes.numel(), suffix_len)
    shifted = tables["suffix"][coded_sym] << (pos & 7)   # at most 15 bits: two bytes
    out = torch.zeros(total + 2, dtype=torch.int64, device=dev)  # zero-width codes may sit at the end
    out.index_add_(0, pos >> 3, shifted & 0xFF)          # disjoint bits: add == or
    out.index_add_(0, (pos >> 3) + 1, shifted >> 8)
    return out[:total].to(torch.uint8)


@dataclass
class QLCSection:
    plan: Plan
    codebook: Codebook
    embedded: bool
    layout: ChunkLayout
    planes_offset: int          # byte offset of the prefix plane within the section
    plane_bytes: dict           # name -> bytes


def parse_section(src: ByteSource, start: int, numel: int, dtype: torch.dtype,
                  codebook: Codebook | None = None) -> QLCSection:
    """Parse and validate the QLC section's metadata at byte `start`; no plane is read yet.

    Every size is checked against the stream's length before anything of that size
    is allocated; the section must end exactly where the stream ends.
    """
    head = src.read(start, start + 2)
    plan_id, cb_mode = head[0], head[1]
    if plan_id not in PLANS_BY_ID:
        raise FormatError(f"unknown plan id {plan_id}")
    plan = PLANS_BY_ID[plan_id]
    pos = start + 2
    if cb_mode == CB_EMBEDDED:
        cb = Codebook.from_bytes(src.read(pos, pos + EMBEDDED_BYTES), dtype, plan.name)
        pos += EMBEDDED_BYTES
    elif cb_mode == CB_DIGEST:
        digest = src.read(pos, pos + DIGEST_BYTES).hex()
        cb = codebook if codebook is not None and codebook.digest == digest else lookup(digest)
        if cb.dtype != dtype or cb.plan != plan.name:
            raise FormatError(f"codebook {digest} codes {cb.dtype}/{cb.plan}, stream is {dtype}/{plan.name}")
        pos += DIGEST_BYTES
    else:
        raise FormatError(f"unknown codebook mode {cb_mode}")
    chunk, nchunks = struct.unpack("<II", src.read(pos, pos + 8))
    pos += 8
    if chunk == 0 or chunk % 8 or chunk > MAX_CHUNK_ELEMS:
        raise FormatError(f"bad chunk size {chunk}")
    if nchunks != -(-numel // chunk):
        raise FormatError(f"{nchunks} chunks cannot hold {numel} elements of chunk size {chunk}")
    table = src.read(pos, pos + 5 * nchunks)   # checked against the stream length first
    pos += 5 * nchunks
    modes = torch.frombuffer(bytearray(table[:nchunks]), dtype=torch.uint8).to(torch.int64)
    suffix_len = torch.frombuffer(bytearray(table[nchunks:]), dtype=torch.int32).to(torch.int64) & 0xFFFFFFFF
    layout = ChunkLayout(chunk, numel, modes, suffix_len)
    if nchunks and int(modes.max()) > MODE_RAW:
        raise FormatError("unknown chunk mode")
    elems = layout.elems()
    if bool(((modes != MODE_CODED) & (suffix_len != 0)).any()):
        raise FormatError("suffix bytes on a chunk that is not coded")
    if bool((suffix_len > elems).any()):  # at most 8 suffix bits per symbol
        raise FormatError("suffix length exceeds its chunk")
    n_coded = int(elems[modes == MODE_CODED].sum())
    n_raw = int(elems[modes == MODE_RAW].sum())
    planes = {
        "prefix": packed_nbytes(n_coded, PREFIX_BITS),
        "symbol": packed_nbytes(n_raw, plan.symbol_bits),
        "suffix": int(suffix_len.sum()),
        "raw": packed_nbytes(n_coded + n_raw, plan.raw_bits),
    }
    end = pos + sum(planes.values())
    if len(src) != end:
        raise FormatError(f"stream is {len(src)} bytes, its QLC metadata says {end}")
    return QLCSection(plan, cb, cb_mode == CB_EMBEDDED, layout, pos, planes)


def describe(sec: QLCSection) -> dict:
    """Section facts for `qlccomm.inspect`."""
    m = sec.layout.modes
    return {
        "plan": sec.plan.name, "codebook": sec.codebook.digest, "codebook_embedded": sec.embedded,
        "chunk_elems": sec.layout.chunk, "chunks": sec.layout.nchunks,
        "chunks_zero": int((m == MODE_ZERO).sum()), "chunks_coded": int((m == MODE_CODED).sum()),
        "chunks_raw": int((m == MODE_RAW).sum()), "plane_bytes": dict(sec.plane_bytes),
        "metadata_bytes": sec.planes_offset,
    }


def decode_section(sec: QLCSection, section: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Decode the planes of a parsed section; `section` is the whole stream as a uint8
    tensor on the target device (plane offsets are absolute)."""
    dev = section.device
    lay = sec.layout
    n = lay.numel
    tables = sec.codebook.device_tables(dev)
    off = sec.planes_offset
    views = {}
    for name in ("prefix", "symbol", "suffix", "raw"):
        views[name] = section[off : off + sec.plane_bytes[name]]
        off += sec.plane_bytes[name]

    modes = lay.modes.to(dev)
    elem_mode = _elem_chunk_modes(modes, lay.chunk, n)
    coded = elem_mode == MODE_CODED
    rawmode = elem_mode == MODE_RAW
    n_coded = int(lay.elems()[lay.modes == MODE_CODED].sum())
    sym = torch.zeros(n, dtype=torch.int64, device=dev)
    if n_coded:
        sym[coded] = _decode_coded(views, n_coded, coded, lay, tables, sec.plan)
    n_raw = int(lay.elems()[lay.modes == MODE_RAW].sum())
    if n_raw:
        sym[rawmode] = unpack_bits(views["symbol"], sec.plan.symbol_bits, n_raw)
    raw = torch.zeros(n, dtype=torch.int64, device=dev)
    if sec.plan.raw_bits and n_coded + n_raw:
        raw[elem_mode != MODE_ZERO] = unpack_bits(views["raw"], sec.plan.raw_bits, n_coded + n_raw)
    return sec.plan.merge(sym, raw, dtype)


def _decode_coded(views, n_coded, coded, lay, tables, plan) -> torch.Tensor:
    dev = coded.device
    area = unpack_bits(views["prefix"], PREFIX_BITS, n_coded)
    width = tables["widths"][area]
    chunk_of = coded.nonzero().squeeze(1) // lay.chunk
    bits = torch.zeros(lay.nchunks, dtype=torch.int64, device=dev).index_add_(0, chunk_of, width)
    suffix_len = lay.suffix_len.to(dev)
    if bool(((bits + 7) // 8 != suffix_len).any()):
        raise FormatError("suffix plane does not match the prefixes (corrupt stream)")
    pos = _suffix_bit_positions(width, chunk_of, lay.nchunks, suffix_len)
    plane = torch.cat([views["suffix"], views["suffix"].new_zeros(2)]).to(torch.int64)
    byte_at = pos >> 3
    word = plane[byte_at] | (plane[byte_at + 1] << 8)
    value = (word >> (pos & 7)) & ((1 << width) - 1)
    rank = tables["first"][area] + value
    if bool((rank > 255).any()):
        raise FormatError("code names a rank past the table (corrupt stream)")
    sym = tables["symbols"][rank]
    if plan.symbol_bits < 8 and bool((sym >> plan.symbol_bits).any()):
        raise FormatError(f"decoded symbol exceeds {plan.symbol_bits} bits (corrupt stream or codebook)")
    return sym
