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

import numpy as np
import torch

from .bitpack import concat_into, pack_bits, packed_nbytes, unpack_bits
from .codebook import EMBEDDED_BYTES, PREFIX_BITS, Codebook, codebook_from_histogram, lookup
from .errors import CodebookError, FormatError
from .format import ByteSource, Header
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
        return chunk_elems(self.numel, self.chunk, self.nchunks)

    def chunk_offsets(self) -> dict[str, torch.Tensor]:
        """Where each chunk's data starts in each plane (int64 [nchunks] each, on the host).

        prefix: byte offset in the prefix plane (coded chunks before it, times 3*C/8);
        symbol: element index in the symbol plane (elements of raw chunks before it);
        suffix: byte offset in the suffix plane (exclusive sum of the table);
        raw:    element index in the raw planes (elements of non-zero chunks before it).
        Only the last chunk may be short, so every offset of a full chunk is byte aligned.
        """
        return chunk_offsets(self.chunk, self.elems(), self.modes, self.suffix_len)


def chunk_elems(numel: int, chunk: int, nchunks: int, device=None) -> torch.Tensor:
    """Elements in each of `nchunks` chunks of `chunk` (int64); the last may be short.
    A torch tensor (on `device`), or a numpy array with device="numpy"."""
    if device == "numpy":
        e = np.full(nchunks, chunk, np.int64)
        if nchunks:
            e[-1] = numel - chunk * (nchunks - 1)
        return e
    e = torch.full((nchunks,), chunk, dtype=torch.int64, device=device)
    if nchunks:
        e[-1] = numel - chunk * (nchunks - 1)
    return e


# The chunk-table helpers below take torch tensors (the torch path, on any device) or
# numpy arrays (the fused paths plan on the host): only operations both spell alike.
def _xp(a):
    return np if isinstance(a, np.ndarray) else torch


def _exclusive_cumsum(x):
    return _xp(x).cumsum(x, 0) - x


def chunk_offsets(chunk: int, elems, modes, suffix_len) -> dict:
    """Per-chunk plane offsets; see :meth:`ChunkLayout.chunk_offsets`."""
    xp = _xp(modes)
    coded, raw = modes == MODE_CODED, modes == MODE_RAW
    return {
        "prefix": _exclusive_cumsum(xp.where(coded, PREFIX_BITS * chunk // 8, 0)),
        "symbol": _exclusive_cumsum(xp.where(raw, elems, 0)),
        "suffix": _exclusive_cumsum(suffix_len),
        "raw": _exclusive_cumsum(xp.where(coded | raw, elems, 0)),
    }


def choose_modes(elems, suffix_bits, nonzero, symbol_bits: int):
    """Chunk modes and suffix-plane bytes (int64 each) from per-chunk statistics.

    elems, suffix_bits (sum of the suffix widths of each chunk's symbols): int64;
    nonzero: bool, whether any bit of the chunk is set.  A chunk is coded when its
    prefix and suffix bytes are fewer than its symbols stored at `symbol_bits`.
    """
    xp = _xp(elems)
    coded_bytes = (PREFIX_BITS * elems + 7) // 8 + (suffix_bits + 7) // 8
    raw_sym_bytes = (elems * symbol_bits + 7) // 8
    modes = xp.where(coded_bytes < raw_sym_bytes, MODE_CODED, MODE_RAW)
    modes = xp.where(nonzero, modes, MODE_ZERO)
    suffix_len = xp.where(modes == MODE_CODED, (suffix_bits + 7) // 8, 0)
    return modes, suffix_len


def plane_totals(elems, modes, suffix_len) -> tuple[int, int, int]:
    """Elements of the coded chunks, elements of the raw chunks, suffix bytes (one copy to
    the host for tensors on a device)."""
    xp = _xp(modes)
    tot = xp.stack([(elems * (modes == MODE_CODED)).sum(), (elems * (modes == MODE_RAW)).sum(), suffix_len.sum()])
    n_coded, n_raw, suffix = (int(v) for v in tot.tolist())
    return n_coded, n_raw, suffix


def plane_sizes(elems, modes, suffix_len, plan: Plan, totals: tuple[int, int, int] | None = None) -> dict:
    """Bytes of each plane (prefix, symbol, suffix, raw) for a chunk table (tensors or arrays),
    or from its plane_totals."""
    n_coded, n_raw, suffix = totals or plane_totals(elems, modes, suffix_len)
    return {
        "prefix": packed_nbytes(n_coded, PREFIX_BITS),
        "symbol": packed_nbytes(n_raw, plan.symbol_bits),
        "suffix": suffix,
        "raw": packed_nbytes(n_coded + n_raw, plan.raw_bits),
    }


def section_head(plan: Plan, codebook: Codebook, embed: bool, chunk: int, nchunks: int) -> bytes:
    """The section's fixed metadata: plan, codebook (embedded or digest), chunk size and count."""
    head = bytearray(struct.pack("<BB", plan.plan_id, CB_EMBEDDED if embed else CB_DIGEST))
    head += codebook.to_bytes() if embed else bytes.fromhex(codebook.digest)
    head += struct.pack("<II", chunk, nchunks)
    return bytes(head)


def chunk_table(modes, suffix_len):
    """The chunk table as stored: K mode bytes, then K u32 suffix byte counts (uint8, modes' device
    for tensors; a numpy array for numpy arrays)."""
    if isinstance(modes, np.ndarray):
        return np.concatenate([modes.astype(np.uint8), suffix_len.astype("<u4").view(np.uint8)])
    return torch.cat([modes.to(torch.uint8), suffix_len.to(torch.int32).view(torch.uint8)])


# Errors that only decoding the planes reveals, as bit flags (the fused decoders report
# them as an OR of flags; the first set flag in this order is the one raised, as the
# torch path checks them in this order).
ERR_MISMATCH, ERR_RANK, ERR_SYMBOL = 1, 2, 4


def decode_error(flags: int, plan: Plan) -> FormatError:
    """The FormatError for a non-zero OR of ERR_* flags (first flag in check order)."""
    if flags & ERR_MISMATCH:
        return FormatError("suffix plane does not match the prefixes (corrupt stream)")
    if flags & ERR_RANK:
        return FormatError("code names a rank past the table (corrupt stream)")
    if flags & ERR_SYMBOL:
        return FormatError(f"decoded symbol exceeds {plan.symbol_bits} bits (corrupt stream or codebook)")
    raise ValueError(f"decode_error called without an error flag ({flags:#x})")


def adaptive_codebook(hist, dtype: torch.dtype, plan: Plan) -> Codebook:
    """The codebook of adaptive mode: fitted to the histogram of the symbols of the
    chunks that are not all-zero (int64 [256], host)."""
    return codebook_from_histogram(hist, dtype, plan, transient=True)     # embedded: never looked up


def _pad_rows(x: torch.Tensor, chunk: int) -> torch.Tensor:
    """View a 1-D tensor as [chunks, chunk] rows, zero-padding the last row."""
    pad = (-x.numel()) % chunk
    if pad:
        x = torch.cat([x, x.new_zeros(pad)])
    return x.view(-1, chunk)


def _rows(modes: torch.Tensor, *wanted: int) -> torch.Tensor:
    """Indices (int64) of the chunks whose mode is one of `wanted`."""
    sel = modes == wanted[0]
    for w in wanted[1:]:
        sel |= modes == w
    return sel.nonzero().squeeze(1)


def _select_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Rows `rows` of a 2-D tensor; no copy when that is every row."""
    return x if rows.numel() == x.shape[0] else x.index_select(0, rows)


def split_rows(flat: torch.Tensor, plan: Plan, chunk: int):
    """A flat tensor split by `plan` and cut into chunks: (symbols, symbol rows [K, C], raw rows
    [K, C] or None when the plan has no raw bits, whether each chunk has a set bit (bool [K]),
    elements per chunk (int64 [K])); the last row is zero-padded."""
    sym, raw = plan.split(flat)
    sym2 = _pad_rows(sym, chunk)
    raw2 = _pad_rows(raw, chunk) if plan.raw_bits else None
    nonzero = sym2.any(dim=1).bool()
    if raw2 is not None:
        nonzero |= raw2.any(dim=1).bool()
    return sym, sym2, raw2, nonzero, chunk_elems(flat.numel(), chunk, sym2.shape[0], flat.device)


def encode_section(flat: torch.Tensor, plan: Plan, codebook: Codebook | None, embed: bool = False,
                   chunk: int = CHUNK_ELEMS, reserve: int = 0, into: torch.Tensor | None = None) -> torch.Tensor:
    """Encode a 1-D contiguous tensor; returns the QLC section (uint8, on flat's device).

    `codebook=None` fits one to the tensor's own histogram (all-zero chunks left
    out); a fitted codebook, or any with `embed=True`, is embedded in the stream,
    others are referenced by digest.  The tensor must hold at least one element.
    `reserve` bytes, left uninitialised, precede the section in the result: room
    for the caller's stream header without a copy.  `into`: a 1-D uint8 buffer on
    flat's device to write the result into when it has room (the result is then its front).
    """
    dev = flat.device
    n = flat.numel()
    sym, sym2, raw2, nonzero, elems = split_rows(flat, plan, chunk)
    nchunks = sym2.shape[0]

    if codebook is None:
        hist = torch.bincount(sym, minlength=256)
        hist[0] -= elems[~nonzero].sum()                # all-zero chunks cost nothing: leave them out
        codebook = adaptive_codebook(hist.cpu().numpy(), flat.dtype, plan)
        embed = True
    tables = codebook.device_tables(dev)

    sym_idx = sym2.view(-1).to(torch.int32)
    code_len = tables["length"].index_select(0, sym_idx).view(nchunks, chunk)
    if n % chunk:
        code_len[-1, n % chunk :] = PREFIX_BITS          # padding: zero-width codes
    # float32 sums are exact here (< 2^24) and much faster than integer reductions on CPU
    suffix_bits = code_len.sum(dim=1, dtype=torch.float32).to(torch.int64) - PREFIX_BITS * chunk
    modes, suffix_len = choose_modes(elems, suffix_bits, nonzero, plan.symbol_bits)

    coded_rows, raw_rows, nz_rows = _rows(modes, MODE_CODED), _rows(modes, MODE_RAW), _rows(modes, MODE_CODED, MODE_RAW)
    n_coded = int(elems.index_select(0, coded_rows).sum())
    n_raw = int(elems.index_select(0, raw_rows).sum())
    coded_idx = _select_rows(sym_idx.view(nchunks, chunk), coded_rows).view(-1)
    prefix_plane = pack_bits(tables["area"].index_select(0, coded_idx)[:n_coded], PREFIX_BITS)
    symbol_plane = pack_bits(sym2.index_select(0, raw_rows).view(-1)[:n_raw], plan.symbol_bits)
    suffix_val = tables["suffix"].index_select(0, coded_idx).view(-1, chunk)
    if n_coded % chunk:
        # the zero padding of a short last coded chunk has zero-width codes: its suffix
        # values must be zero too, or they would land in the chunk's unused high bits
        suffix_val[-1, n_coded % chunk :] = 0
    suffix_plane = _pack_suffixes(
        suffix_val,
        _select_rows(code_len, coded_rows).sub_(PREFIX_BITS) if coded_rows.numel() else code_len[:0],
        suffix_len.index_select(0, coded_rows))
    raw_plane = (pack_bits(_select_rows(raw2, nz_rows).reshape(-1)[: n_coded + n_raw], plan.raw_bits)
                 if raw2 is not None else sym.new_empty(0))

    head = bytearray(section_head(plan, codebook, embed, chunk, nchunks))
    meta = chunk_table(modes, suffix_len)
    head_t = torch.frombuffer(head, dtype=torch.uint8).to(dev)
    return concat_into([torch.empty(reserve, dtype=torch.uint8, device=dev), head_t, meta, prefix_plane,
                        symbol_plane, suffix_plane, raw_plane], into)


def _merge_pairs(value: torch.Tensor, width: torch.Tensor, dtype: torch.dtype):
    """Concatenate neighbouring codes: (v0, w0), (v1, w1) -> (v0 | v1 << w0, w0 + w1)."""
    lo, hi = value[:, 0::2].to(dtype), value[:, 1::2].to(dtype)
    if value.dtype == torch.int16 and dtype == torch.int64:
        lo &= 0xFFFF                                     # the int16 words are unsigned bit fields
        hi &= 0xFFFF
    wlo = width[:, 0::2]
    hi <<= wlo.to(dtype)
    hi |= lo
    return hi, wlo + width[:, 1::2]


def _pack_suffixes(value: torch.Tensor, width: torch.Tensor, chunk_bytes: torch.Tensor,
                   max_width: int = 8) -> torch.Tensor:
    """The suffix plane: per coded chunk (rows of `value`/`width`, [rows, codes]) its
    suffixes concatenated LSB first, padded to `chunk_bytes` bytes.

    Codes are merged in pairs (whole-tensor shifts and ors) until a word holds 64 bits
    at most: three times for suffixes of up to 8 bits (8 codes a word), twice for up to 16
    (QLCW, 4 codes a word); then each word is added into the 64-bit words it overlaps.
    """
    dev = value.device
    total = int(chunk_bytes.sum())
    if value.shape[0] == 0:
        return torch.empty(0, dtype=torch.uint8, device=dev)
    if max_width <= 8:
        v, w = _merge_pairs(value, width, torch.int16)   # <= 16 bits
        v, w = _merge_pairs(v, w, torch.int64)           # <= 32 bits
    else:
        v, w = _merge_pairs(value, width, torch.int64)   # <= 32 bits
    v, w = _merge_pairs(v, w, torch.int64)               # <= 64 bits
    local = torch.cumsum(w, dim=1, dtype=torch.int64) - w
    start = (torch.cumsum(chunk_bytes, 0) - chunk_bytes) * 8
    pos = (local + start.unsqueeze(1)).view(-1)
    v = v.view(-1)
    word = pos >> 6
    shift = pos & 63
    lo = v << shift
    hi = (v >> (64 - shift).clamp(max=63)) & ((1 << shift) - 1)   # bits that spill into the next word
    out = torch.zeros((total + 7) // 8 + 2, dtype=torch.int64, device=dev)
    out.index_add_(0, word, lo)                          # disjoint bits: add == or
    out.index_add_(0, word + 1, hi)
    return out.view(torch.uint8)[:total]


@dataclass
class QLCSection:
    plan: Plan
    codebook: Codebook
    embedded: bool
    layout: ChunkLayout
    planes_offset: int          # byte offset of the prefix plane within the section
    plane_bytes: dict           # name -> bytes
    digest: str = ""            # the digest a by-digest stream names (set even where `codebook` is None)


def read_chunk_table(src: ByteSource, pos: int, numel: int, multiple: int):
    """Read and check chunk size, count and table at byte `pos` (QLC and QLCW sections):
    (chunk, modes, suffix_len, elems: int64 numpy [K] each, the byte after the table).
    The chunk size must be a multiple of `multiple` elements."""
    chunk, nchunks = struct.unpack("<II", src.read(pos, pos + 8))
    pos += 8
    if chunk == 0 or chunk % multiple or chunk > MAX_CHUNK_ELEMS:
        raise FormatError(f"bad chunk size {chunk}")
    if nchunks != -(-numel // chunk):
        raise FormatError(f"{nchunks} chunks cannot hold {numel} elements of chunk size {chunk}")
    table = src.read(pos, pos + 5 * nchunks)   # checked against the stream length first
    # checked with numpy: a few passes over K entries (the stream may hold 10^5 chunks)
    modes = np.frombuffer(table, np.uint8, nchunks).astype(np.int64)
    suffix_len = np.frombuffer(table, "<u4", nchunks, nchunks).astype(np.int64)
    if nchunks and int(modes.max()) > MODE_RAW:
        raise FormatError("unknown chunk mode")
    if bool(((modes != MODE_CODED) & (suffix_len != 0)).any()):
        raise FormatError("suffix bytes on a chunk that is not coded")
    return chunk, modes, suffix_len, chunk_elems(numel, chunk, nchunks, "numpy"), pos + 5 * nchunks


def parse_section(src: ByteSource, start: int, numel: int, dtype: torch.dtype,
                  codebook: Codebook | None = None, *, need_codebook: bool = True) -> QLCSection:
    """Parse and validate the QLC section's metadata at byte `start`; no plane is read yet.

    Every size is checked against the stream's length before anything of that size
    is allocated; the section must end exactly where the stream ends.
    A stream that references a codebook by digest needs it: `codebook` when its digest
    matches, else one this process knows (`lookup`: CodebookError otherwise).  With
    need_codebook=False (describing a stream, `qlccomm.inspect`) an unknown digest is
    recorded and the section's codebook left None: such a section cannot be decoded.
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
        try:
            cb = codebook if codebook is not None and codebook.digest == digest else lookup(digest)
        except CodebookError:
            if need_codebook:
                raise
            cb = None
        if cb is not None and (cb.dtype != dtype or cb.plan != plan.name):
            raise FormatError(f"codebook {digest} codes {cb.dtype}/{cb.plan}, stream is {dtype}/{plan.name}")
        pos += DIGEST_BYTES
    else:
        raise FormatError(f"unknown codebook mode {cb_mode}")
    chunk, modes, suffix_len, elems, pos = read_chunk_table(src, pos, numel, 8)
    if bool((suffix_len > elems).any()):  # at most 8 suffix bits per symbol
        raise FormatError("suffix length exceeds its chunk")
    planes = plane_sizes(elems, modes, suffix_len, plan)
    layout = ChunkLayout(chunk, numel, torch.from_numpy(modes), torch.from_numpy(suffix_len))
    end = pos + sum(planes.values())
    if len(src) != end:
        raise FormatError(f"stream is {len(src)} bytes, its QLC metadata says {end}")
    return QLCSection(plan, cb, cb_mode == CB_EMBEDDED, layout, pos, planes, digest if cb_mode == CB_DIGEST else "")


def describe(sec: QLCSection) -> dict:
    """Section facts for `qlccomm.inspect`."""
    m = sec.layout.modes
    known = {} if sec.codebook is None else {"codebook_widths": list(sec.codebook.widths)}
    return {
        "plan": sec.plan.name, "codebook": sec.digest or sec.codebook.digest, "codebook_embedded": sec.embedded,
        "codebook_known": sec.codebook is not None,
        "chunk_elems": sec.layout.chunk, "chunks": sec.layout.nchunks,
        "chunks_zero": int((m == MODE_ZERO).sum()), "chunks_coded": int((m == MODE_CODED).sum()),
        "chunks_raw": int((m == MODE_RAW).sum()), "plane_bytes": dict(sec.plane_bytes),
        "metadata_bytes": sec.planes_offset,
    } | known


def decode_section(sec: QLCSection, section: torch.Tensor, header: Header,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """Decode the planes of a parsed section; `section` is the whole stream as a uint8
    tensor on the target device (plane offsets are absolute).  Returns the flat tensor
    (`out` viewed flat when given: contiguous, the stream's dtype and element count)."""
    flat = _decode_planes(sec, section, header)
    return flat if out is None else out.view(-1).copy_(flat)


def _decode_planes(sec: QLCSection, section: torch.Tensor, header: Header) -> torch.Tensor:
    dtype = header.dtype
    dev = section.device
    lay = sec.layout
    n, chunk, nchunks = lay.numel, lay.chunk, lay.nchunks
    tables = sec.codebook.device_tables(dev)
    off = sec.planes_offset
    views = {}
    for name in ("prefix", "symbol", "suffix", "raw"):
        views[name] = section[off : off + sec.plane_bytes[name]]
        off += sec.plane_bytes[name]

    modes = lay.modes
    elems = lay.elems()
    coded_rows, raw_rows, nz_rows = (_rows(modes, MODE_CODED).to(dev), _rows(modes, MODE_RAW).to(dev),
                                     _rows(modes, MODE_CODED, MODE_RAW).to(dev))
    n_coded = int(elems[modes == MODE_CODED].sum())
    n_raw = int(elems[modes == MODE_RAW].sum())
    sym2 = _scatter_rows(nchunks, chunk, [
        (coded_rows, lambda: _decode_coded(views, n_coded, lay.suffix_len[modes == MODE_CODED].to(dev),
                                           chunk, tables, sec.plan)),
        (raw_rows, lambda: _pad_rows(unpack_bits(views["symbol"], sec.plan.symbol_bits, n_raw), chunk)),
    ], dev)
    raw = None
    if sec.plan.raw_bits:
        raw2 = _scatter_rows(nchunks, chunk, [
            (nz_rows, lambda: _pad_rows(unpack_bits(views["raw"], sec.plan.raw_bits, n_coded + n_raw), chunk)),
        ], dev)
        raw = raw2.view(-1)[:n]
    return sec.plan.merge(sym2.view(-1)[:n], raw, dtype)


def _scatter_rows(nchunks: int, chunk: int, parts: list, dev) -> torch.Tensor:
    """Assemble [nchunks, chunk] from row sets [(rows, make_rows)]; absent rows are zero.

    When one part covers every row its tensor is used as it is (no copy).
    """
    made = [(rows, make()) for rows, make in parts if rows.numel()]
    if len(made) == 1 and made[0][0].numel() == nchunks:
        return made[0][1]
    dtype = torch.promote_types(*[m.dtype for _, m in made]) if len(made) > 1 else \
        (made[0][1].dtype if made else torch.uint8)
    out = torch.zeros(nchunks, chunk, dtype=dtype, device=dev)
    for rows, m in made:
        out.index_copy_(0, rows, m.to(dtype))
    return out


def _decode_coded(views, n_coded: int, chunk_bytes: torch.Tensor, chunk: int, tables, plan) -> torch.Tensor:
    """Symbols (uint8 [coded chunks, C]) from the prefix and suffix planes."""
    area = _pad_rows(unpack_bits(views["prefix"], PREFIX_BITS, n_coded), chunk)   # uint8
    area_idx = area.view(-1).to(torch.int32)                                      # reused as the key below
    width = tables["widths_u8"].index_select(0, area_idx).view(area.shape)         # uint8
    if n_coded % chunk:
        width[-1, n_coded % chunk :] = 0                                          # padding: zero-width codes
    bits = width.sum(dim=1, dtype=torch.float32).to(torch.int64)                  # exact: < 2^24
    if bool(((bits + 7) // 8 != chunk_bytes).any()):
        raise decode_error(ERR_MISMATCH, plan)
    # exclusive prefix sum inside each chunk; int16 is exact for chunks up to 4096 codes (< 2^15 bits
    # before the last code; the inclusive sum may wrap, the difference does not)
    local = torch.cumsum(width, dim=1, dtype=torch.int16 if chunk <= 4096 else torch.int32)
    local -= width
    start = torch.cumsum(chunk_bytes, 0) - chunk_bytes
    idx_dtype = torch.int32 if int(chunk_bytes.sum()) < (1 << 31) - 8 else torch.int64
    byte_at = (local >> 3).to(idx_dtype)
    byte_at += start.to(idx_dtype).unsqueeze(1)
    plane = torch.cat([views["suffix"], views["suffix"].new_zeros(2)]).to(torch.int32)
    pairs = plane[:-1] | (plane[1:] << 8)                                         # 16 bits from each byte offset
    value = pairs.index_select(0, byte_at.view(-1)).view(area.shape)
    value >>= local.bitwise_and_(7)
    value &= tables["masks"].index_select(0, area_idx).view(area.shape)
    # key = area * 256 + suffix -> symbol; keys past the rank table map to -1
    value += area_idx.view(area.shape).bitwise_left_shift_(8)
    sym = tables["decode"].index_select(0, value.view(-1)).view(area.shape)
    if bool((sym < 0).any()):
        raise decode_error(ERR_RANK, plan)
    if plan.symbol_bits < 8 and bool((sym >> plan.symbol_bits).any()):
        raise decode_error(ERR_SYMBOL, plan)
    return sym                                                                    # int16
