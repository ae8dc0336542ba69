"""On-the-wire framing of the compressed collectives (docs/distributed.md, "Wire protocol").

Two pieces keep ranks in agreement without ever risking a mismatched collective:

* The **handshake**: before any payload moves, every rank contributes one row of
  fixed-size int64 metadata to an ``all_gather`` (equal sizes on every rank, so
  it is safe on gloo, NCCL and HCCL).  A row carries the wire and stream format
  versions, which collective is running, dtype, element count, reduce op, codec,
  codebook tag, whether this rank failed locally, and the payload sizes this rank
  will send.  Every rank checks every row, so a disagreement (another codebook,
  another format version, a rank whose encoder raised) raises the same error on
  every rank and the group stays usable.
* The **frame**: a 16-byte header in front of each coded payload, repeating the
  versions, codec, dtype and codebook tag; the receiver checks it before decoding.

Payload sizes travel in the handshake, so uneven payloads go through
``all_to_all_single`` with split sizes, or are padded to the largest for
``all_gather_into_tensor`` (which needs equal sizes; a mismatch aborts gloo).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .errors import CodebookError, FormatError
from .format import DTYPE_CODES, DTYPES_BY_CODE, FORMAT_VERSION, dtype_name

WIRE_VERSION = 1
HANDSHAKE_MAGIC = 0x514C4357  # "QLCW"
FRAME_MAGIC = b"QW"
FRAME_BYTES = 16
ADAPTIVE_TAG = b"ADAPTIVE"     # codebook tag of streams that embed their own code
NO_TAG = bytes(8)              # raw payloads and ENEC (no codebook)

# collective ids in the handshake
KINDS = {"all_reduce": 1, "all_gather_into_tensor": 2, "reduce_scatter_tensor": 3, "broadcast": 4,
         "all_to_all_single": 5}
KIND_NAMES = {v: k for k, v in KINDS.items()}
CODEC_WIRE_IDS = {"raw": 0, "qlc": 1, "enec": 2}
CODEC_WIRE_NAMES = {v: k for k, v in CODEC_WIRE_IDS.items()}

# handshake row layout: fixed fields, then per-collective extra values
(F_MAGIC, F_WIRE, F_PHASE, F_STATUS, F_ERROR, F_FORMAT, F_KIND, F_DTYPE, F_NUMEL, F_OP, F_CODEC,
 F_TAG, F_PATH, F_ARG) = range(14)
N_FIXED = 14
MAX_EXTRA = 3  # per-collective values per rank of the group (all_to_all_single: 3 x world)
PATH_PLAIN, PATH_CODED = 0, 1

# error classes carried by a failing rank's row, so that its peers raise the same kind
_ERROR_CLASSES = [CodebookError, FormatError, ImportError, TypeError, ValueError]


def error_code(exc: BaseException) -> int:
    for i, cls in enumerate(_ERROR_CLASSES):
        if isinstance(exc, cls):
            return i + 1
    return len(_ERROR_CLASSES) + 1


def error_class(code: int) -> type:
    return _ERROR_CLASSES[code - 1] if 1 <= code <= len(_ERROR_CLASSES) else RuntimeError


def tag_to_int(tag: bytes) -> int:
    return int.from_bytes(tag, "little", signed=True)


def tag_to_str(value: int) -> str:
    tag = int(value).to_bytes(8, "little", signed=True)
    if tag == ADAPTIVE_TAG:
        return "adaptive"
    if tag == NO_TAG:
        return "none"
    return tag.hex()


def digest_tag(digest: str) -> bytes:
    """The 8-byte tag of a codebook digest (16 hex digits)."""
    return bytes.fromhex(digest)


# -- frames -------------------------------------------------------------------------------------
def frame(codec: str, dtype: torch.dtype, tag: bytes) -> bytes:
    """The 16-byte frame header: magic, wire version, format version, codec, dtype, flags, 0, tag."""
    return FRAME_MAGIC + struct.pack("<BBBBBB", WIRE_VERSION, FORMAT_VERSION, CODEC_WIRE_IDS[codec],
                                     DTYPE_CODES[dtype], 0, 0) + tag


def check_frame(head: bytes, codec: str, dtype: torch.dtype, tag: bytes, source: int) -> None:
    """Raise FormatError / CodebookError unless `head` is the frame this receiver expects."""
    if len(head) < FRAME_BYTES or head[:2] != FRAME_MAGIC:
        raise FormatError(f"payload from rank {source} has no qlccomm frame")
    wire, fmt, cid, dcode, flags, _ = struct.unpack_from("<BBBBBB", head, 2)
    if wire != WIRE_VERSION or fmt != FORMAT_VERSION:
        raise FormatError(f"payload from rank {source} has wire/format version {wire}/{fmt}; "
                          f"this rank speaks {WIRE_VERSION}/{FORMAT_VERSION}")
    if cid != CODEC_WIRE_IDS[codec] or DTYPES_BY_CODE.get(dcode) != dtype or flags:
        raise FormatError(f"payload from rank {source} is codec {CODEC_WIRE_NAMES.get(cid, cid)} dtype "
                          f"{DTYPES_BY_CODE.get(dcode, dcode)}; expected {codec} {dtype}")
    got = bytes(head[8:16])
    if got != tag:
        raise CodebookError(f"payload from rank {source} was coded with codebook "
                            f"{tag_to_str(tag_to_int(got))}; this rank expects {tag_to_str(tag_to_int(tag))}")


# -- handshake ----------------------------------------------------------------------------------
def all_gather_fixed(out: torch.Tensor, inp: torch.Tensor, group, async_op: bool = False):
    """Equal-size all-gather (`all_gather_single` where torch has it, else `all_gather_into_tensor`)."""
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return fn(out, inp, group=group, async_op=async_op)


@dataclass
class Handshake:
    """One rank's row: what it is about to do, or the exception it met while preparing."""

    kind: str
    phase: int = 1
    dtype: torch.dtype | None = None
    numel: int = 0
    op: int = 0
    codec: str = "raw"
    tag: bytes = NO_TAG
    path: int = PATH_PLAIN
    arg: int = 0                          # a collective-specific value all ranks must share (e.g. src)
    extra: list[int] = field(default_factory=list)
    error: BaseException | None = None

    def row(self, world: int) -> list[int]:
        failed = self.error is not None
        r = [0] * row_length(world)
        r[F_MAGIC], r[F_WIRE], r[F_PHASE] = HANDSHAKE_MAGIC, WIRE_VERSION, self.phase
        r[F_STATUS] = 1 if failed else 0
        r[F_ERROR] = error_code(self.error) if failed else 0
        r[F_FORMAT], r[F_KIND] = FORMAT_VERSION, KINDS[self.kind]
        if not failed:
            r[F_DTYPE] = DTYPE_CODES.get(self.dtype, 0) if self.dtype is not None else 0
            r[F_NUMEL], r[F_OP] = self.numel, self.op
            r[F_CODEC], r[F_TAG], r[F_PATH] = CODEC_WIRE_IDS[self.codec], tag_to_int(self.tag), self.path
            r[F_ARG] = self.arg
            if len(self.extra) > MAX_EXTRA * world:
                raise AssertionError(f"{len(self.extra)} extra handshake values, at most {MAX_EXTRA * world}")
            r[N_FIXED:N_FIXED + len(self.extra)] = self.extra
        return r


def row_length(world: int) -> int:
    """int64 values per handshake row: the same for every collective and phase, so that ranks
    that disagree on which collective they are in still exchange equal sizes (and find out)."""
    return N_FIXED + MAX_EXTRA * world


def exchange(hs: Handshake, group, device: torch.device, rank: int, world: int,
             checks: tuple[int, ...] = (F_FORMAT, F_KIND, F_DTYPE, F_NUMEL, F_OP, F_ARG, F_CODEC,
                                        F_TAG, F_PATH)) -> list[list[int]]:
    """All-gather the handshake rows; raise the same error on every rank on any disagreement.

    Returns the rows (host ints), indexed by rank.  `checks` are the fixed fields that
    must be equal on every rank.
    """
    mine = torch.tensor(hs.row(world), dtype=torch.int64, device=device)
    rows_t = torch.empty(world * mine.numel(), dtype=torch.int64, device=device)
    all_gather_fixed(rows_t, mine, group)
    rows = rows_t.view(world, -1).tolist()
    name = f"qlccomm.{hs.kind}"
    for i, r in enumerate(rows):
        if r[F_MAGIC] != HANDSHAKE_MAGIC or r[F_WIRE] != WIRE_VERSION:
            raise FormatError(f"{name}: rank {i} speaks another qlccomm wire protocol "
                              f"(magic {r[F_MAGIC]:#x}, version {r[F_WIRE]}; this rank {WIRE_VERSION})")
        if r[F_KIND] != KINDS[hs.kind] or r[F_PHASE] != hs.phase:
            raise RuntimeError(f"{name}: rank {i} is in {KIND_NAMES.get(r[F_KIND], r[F_KIND])} phase "
                               f"{r[F_PHASE]}; ranks must call the same collectives in the same order")
    failed = [i for i, r in enumerate(rows) if r[F_STATUS]]
    if failed:
        if hs.error is not None:
            raise hs.error
        cls = error_class(rows[failed[0]][F_ERROR])
        raise cls(f"{name}: rank(s) {failed} failed while preparing their payloads "
                  f"({cls.__name__}; see that rank's error); no data was exchanged")
    _check_agreement(name, rows, checks)
    return rows


def meta_bytes(world: int) -> int:
    """Bytes one rank sends in one handshake (ring all-gather of rows)."""
    return row_length(world) * 8 * (world - 1)


def _describe(field_id: int, value: int) -> str:
    if field_id == F_TAG:
        return tag_to_str(value)
    if field_id == F_DTYPE:
        return dtype_name(DTYPES_BY_CODE[value]) if value in DTYPES_BY_CODE else str(value)
    if field_id == F_CODEC:
        return CODEC_WIRE_NAMES.get(value, str(value))
    if field_id == F_PATH:
        return {PATH_PLAIN: "plain", PATH_CODED: "coded"}.get(value, str(value))
    return str(value)


def _check_agreement(name: str, rows: list[list[int]], checks: tuple[int, ...]) -> None:
    labels = {F_FORMAT: "stream format version", F_DTYPE: "dtype", F_NUMEL: "element count",
              F_OP: "reduce op", F_ARG: "src/argument", F_CODEC: "codec", F_TAG: "codebook",
              F_PATH: "path (coded vs plain: min_compress_bytes differs?)"}
    for f in checks:
        values = [r[f] for r in rows]
        if len(set(values)) == 1:
            continue
        per_rank = ", ".join(f"rank {i}: {_describe(f, v)}" for i, v in enumerate(values))
        msg = f"{name}: ranks disagree on the {labels[f]} ({per_rank})"
        if f == F_TAG:
            raise CodebookError(msg + "; every rank must code with the same codebook")
        if f == F_FORMAT:
            raise FormatError(msg)
        raise ValueError(msg)


# -- statistics -----------------------------------------------------------------------------------
@dataclass
class WireStats:
    """Bytes of one collective call, as seen by this rank.

    raw_bytes      uncoded bytes of the data this rank sends: all of it for all_reduce (its
                   other ranks' shards, then its reduced shard), the shards of the other ranks
                   for reduce_scatter and all_to_all, its input for all_gather, the tensor
                   for broadcast.
    coded_bytes    the same data after coding (frames included); equal to raw_bytes when the
                   call took the uncoded route.
    sent_bytes     payload bytes this rank puts on the wire, in the per-rank convention of a ring
                   (an all-gather of blocks of B bytes costs (W-1)*B per rank), padding included.
    plain_bytes    sent_bytes of the same collective without compression.
    meta_bytes     handshake bytes (fixed-size metadata rows).
    """

    collective: str = ""
    compressed: bool = False
    raw_bytes: int = 0
    coded_bytes: int = 0
    sent_bytes: int = 0
    plain_bytes: int = 0
    meta_bytes: int = 0

    @property
    def saved_bytes(self) -> int:
        return self.plain_bytes - self.sent_bytes

    @property
    def ratio(self) -> float:
        return self.plain_bytes / self.sent_bytes if self.sent_bytes else 1.0

    def as_dict(self) -> dict:
        return {"collective": self.collective, "compressed": self.compressed, "raw_bytes": self.raw_bytes,
                "coded_bytes": self.coded_bytes, "sent_bytes": self.sent_bytes,
                "plain_bytes": self.plain_bytes, "meta_bytes": self.meta_bytes,
                "saved_bytes": self.saved_bytes}
