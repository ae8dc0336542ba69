"""On-the-wire framing of the compressed collectives (docs/distributed.md, "Wire protocol").

Two pieces keep ranks in agreement without a blocking round trip per call:

* The **call header**: every call starts by sending one fixed-size row of int64
  to every peer (point-to-point, posted before this rank starts coding) and
  receiving theirs.  The row is the same length for every collective, so ranks
  that disagree even on *which* collective they are in exchange equal sizes.  It
  carries the versions, the call's sequence number in its group, the collective,
  dtype, element count, op, codec, codebook tag, the user's routing arguments,
  this rank's cost-model estimate, a failure flag and per-collective values.
  Every rank holds every row, checks them all and computes the same route and
  the same error from them.
* The **slice frame**: 32 bytes in front of every slice payload (a qlccomm stream,
  raw bytes, or an error message) repeating the call's sequence number, the
  slice's stream and index, codec, dtype, element count and payload length; the
  receiver checks it before decoding.  Receives are posted with a fixed capacity
  (raw slice + headers), so a frame's length never has to be agreed in advance.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

import torch

from .errors import CodebookError, FormatError
from .format import DTYPE_CODES, DTYPES_BY_CODE, FORMAT_VERSION, dtype_name

WIRE_VERSION = 2
HEADER_MAGIC = 0x514C4357  # "QLCW"
ADAPTIVE_TAG = b"ADAPTIVE"     # codebook tag of streams that embed their own code
NO_TAG = bytes(8)              # raw payloads and ENEC (no codebook)

# collective ids in the header
KINDS = {"all_reduce": 1, "all_gather_into_tensor": 2, "reduce_scatter_tensor": 3, "broadcast": 4,
         "all_to_all_single": 5}
KIND_NAMES = {v: k for k, v in KINDS.items()}
CODEC_WIRE_IDS = {"raw": 0, "qlc": 1, "enec": 2}
CODEC_WIRE_NAMES = {v: k for k, v in CODEC_WIRE_IDS.items()}
MODES = {"auto": 0, "on": 1, "off": 2}          # the user's `compress` argument
MODE_NAMES = {v: k for k, v in MODES.items()}

# call header row: fixed fields, then per-collective values (2 per rank of the group)
(F_MAGIC, F_WIRE, F_SEQ, F_STATUS, F_ERROR, F_FORMAT, F_KIND, F_DTYPE, F_NUMEL, F_OP, F_CODEC, F_TAG,
 F_ARG, F_MODE, F_MIN_BYTES, F_DETERMINISTIC, F_SLICE, F_LINK, F_T_PLAIN, F_T_CODED, F_PROBE) = range(21)
N_FIXED = 21
PER_RANK = 2      # all_to_all_single: elements this rank sends to and expects from each rank

# error classes carried by a failing rank's row or error frame, so that its peers raise the same kind
_ERROR_CLASSES = [CodebookError, FormatError, ImportError, TypeError, ValueError, MemoryError]


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


# -- call header ---------------------------------------------------------------------------------
def row_length(world: int) -> int:
    """int64 values per header row: the same for every collective, so that ranks that
    disagree on which collective they are in still exchange equal sizes (and find out)."""
    return N_FIXED + PER_RANK * world


@dataclass
class CallHeader:
    """One rank's row: what it is about to do, or the exception it met while preparing.

    Routing fields: `mode` (the user's compress argument), `min_bytes`,
    `deterministic`, `slice_elems` and `link_mbps` (a forced link speed in Mbit/s,
    0: learned) must agree on every rank; `t_plain_us`/`t_coded_us` are this rank's
    cost-model estimates (microseconds) and `probe` its request to take the other
    route this once (to refresh a stale estimate), combined by `agreed_route`.
    """

    kind: str
    seq: int = 0
    dtype: torch.dtype | None = None
    numel: int = 0
    op: int = 0
    codec: str = "raw"
    tag: bytes = NO_TAG
    arg: int = 0                          # a collective-specific value all ranks must share (e.g. src)
    mode: str = "auto"
    min_bytes: int = 0
    deterministic: bool = False
    slice_elems: int = 0
    link_mbps: int = 0
    t_plain_us: int = 0
    t_coded_us: int = 0
    probe: bool = False
    extra: list[int] = field(default_factory=list)
    error: BaseException | None = None

    def row(self, world: int) -> list[int]:
        failed = self.error is not None
        r = [0] * row_length(world)
        r[F_MAGIC], r[F_WIRE], r[F_SEQ] = HEADER_MAGIC, WIRE_VERSION, self.seq
        r[F_STATUS] = 1 if failed else 0
        r[F_ERROR] = error_code(self.error) if failed else 0
        r[F_FORMAT], r[F_KIND] = FORMAT_VERSION, KINDS[self.kind]
        if not failed:
            r[F_DTYPE] = DTYPE_CODES.get(self.dtype, 0) if self.dtype is not None else 0
            r[F_NUMEL], r[F_OP] = self.numel, self.op
            r[F_CODEC], r[F_TAG] = CODEC_WIRE_IDS[self.codec], tag_to_int(self.tag)
            r[F_ARG], r[F_MODE], r[F_MIN_BYTES] = self.arg, MODES[self.mode], self.min_bytes
            r[F_DETERMINISTIC], r[F_SLICE], r[F_LINK] = int(self.deterministic), self.slice_elems, self.link_mbps
            r[F_T_PLAIN], r[F_T_CODED], r[F_PROBE] = self.t_plain_us, self.t_coded_us, int(self.probe)
            if len(self.extra) > PER_RANK * world:
                raise ValueError(f"{len(self.extra)} per-collective header values, at most {PER_RANK * world}")
            r[N_FIXED:N_FIXED + len(self.extra)] = self.extra
        return r


# the fields every rank must agree on, with what the user passed them as
_LABELS = {F_FORMAT: "stream format version", F_DTYPE: "dtype", F_NUMEL: "element count", F_OP: "reduce op",
           F_ARG: "src", F_CODEC: "codec", F_TAG: "codebook", F_MODE: "compress= (QLCCOMM_COMPRESS)",
           F_MIN_BYTES: "min_compress_bytes", F_DETERMINISTIC: "deterministic=",
           F_SLICE: "slice size (slice_bytes= / QLCCOMM_SLICE_BYTES)",
           F_LINK: "link_gbps= (QLCCOMM_LINK_GBPS), in Mbit/s"}
CHECKED = (F_FORMAT, F_DTYPE, F_NUMEL, F_OP, F_ARG, F_CODEC, F_TAG, F_MODE, F_MIN_BYTES, F_DETERMINISTIC,
           F_SLICE, F_LINK)


def check_rows(mine: CallHeader, rows: list[list[int]], checks: tuple[int, ...] = CHECKED) -> None:
    """Raise the same error on every rank unless the rows (indexed by rank) agree.

    Order of the checks: protocol, then sequence and collective, then a rank that
    failed while preparing (it re-raises its own exception), then `checks`.
    """
    name = f"qlccomm.{mine.kind}"
    for i, r in enumerate(rows):
        if r[F_MAGIC] != HEADER_MAGIC or r[F_WIRE] != WIRE_VERSION:
            raise FormatError(f"{name}: rank {i} speaks another qlccomm wire protocol "
                              f"(magic {r[F_MAGIC]:#x}, version {r[F_WIRE]}; this rank {WIRE_VERSION})")
    for i, r in enumerate(rows):
        if r[F_KIND] != KINDS[mine.kind] or r[F_SEQ] != mine.seq:
            raise RuntimeError(f"{name}: rank {i} is in {KIND_NAMES.get(r[F_KIND], r[F_KIND])} (call {r[F_SEQ]} "
                               f"in this group), this rank in {mine.kind} (call {mine.seq}); ranks must call "
                               f"the same collectives in the same order")
    failed = [i for i, r in enumerate(rows) if r[F_STATUS]]
    if failed:
        if mine.error is not None:
            raise mine.error
        cls = error_class(rows[failed[0]][F_ERROR])
        raise cls(f"{name}: rank(s) {failed} failed before sending ({cls.__name__}; see that rank's error); "
                  f"no data was exchanged")
    for f in checks:
        values = [r[f] for r in rows]
        if len(set(values)) == 1:
            continue
        per_rank = ", ".join(f"rank {i}: {_describe(f, v)}" for i, v in enumerate(values))
        msg = f"{name}: ranks disagree on the {_LABELS[f]} ({per_rank})"
        if f == F_TAG:
            raise CodebookError(msg + "; every rank must code with the same codebook")
        if f == F_FORMAT:
            raise FormatError(msg)
        raise ValueError(msg)


def _describe(field_id: int, value: int) -> str:
    if field_id == F_TAG:
        return tag_to_str(value)
    if field_id == F_DTYPE:
        return dtype_name(DTYPES_BY_CODE[value]) if value in DTYPES_BY_CODE else str(value)
    if field_id == F_CODEC:
        return CODEC_WIRE_NAMES.get(value, str(value))
    if field_id == F_MODE:
        return MODE_NAMES.get(value, str(value))
    if field_id == F_DETERMINISTIC:
        return str(bool(value))
    return str(value)


def agreed_route(rows: list[list[int]], margin: float = 0.05) -> bool:
    """Whether the call codes: identical on every rank, from every rank's row.

    `compress` on/off decides alone; otherwise the call codes when the slowest
    rank's estimate of the coded time is below (1 - margin) times the slowest
    rank's estimate of the plain time, and the other way round when any rank asks
    for a probe.  A rank with no estimate (0) votes plain.
    """
    mode = rows[0][F_MODE]
    if mode != MODES["auto"]:
        return mode == MODES["on"]
    coded = [r[F_T_CODED] for r in rows]
    plain = [r[F_T_PLAIN] for r in rows]
    code = min(coded) > 0 and min(plain) > 0 and max(coded) < (1.0 - margin) * max(plain)
    return code != any(r[F_PROBE] for r in rows)


# -- slice frames ---------------------------------------------------------------------------------
FRAME_MAGIC = b"QS"
FRAME_BYTES = 32
_FRAME = struct.Struct("<2sBBBBBBIIQQ")   # magic, version, codec, dtype, stream, error, 0, seq, index, length, numel
assert _FRAME.size == FRAME_BYTES
RAW_CODEC = 0xFF                          # frame codec of an uncoded payload (raw bytes, no stream header)


@dataclass(frozen=True)
class Frame:
    """The 32-byte header of one slice on the wire.

    codec: CODEC_WIRE_IDS of the payload's stream, or RAW_CODEC for raw bytes.
    error: 0, or the error class code of an error frame (payload: a UTF-8 message).
    seq: the call's sequence number in its group (low 32 bits); index: the slice's
    index in its stream; length: payload bytes after the frame; numel: elements.
    """

    codec: int
    dtype_code: int
    stream: int
    seq: int
    index: int
    length: int
    numel: int
    error: int = 0

    def encode(self) -> bytes:
        return _FRAME.pack(FRAME_MAGIC, WIRE_VERSION, self.codec, self.dtype_code, self.stream, self.error, 0,
                           self.seq & 0xFFFFFFFF, self.index, self.length, self.numel)

    @staticmethod
    def decode(head: bytes, source: int) -> "Frame":
        if len(head) < FRAME_BYTES:
            raise FormatError(f"slice from rank {source} is {len(head)} bytes, shorter than its frame")
        magic, ver, codec, dcode, stream, err, _, seq, index, length, numel = _FRAME.unpack_from(head)
        if magic != FRAME_MAGIC or ver != WIRE_VERSION:
            raise FormatError(f"slice from rank {source} has no qlccomm frame (magic {magic!r}, version {ver})")
        return Frame(codec, dcode, stream, seq, index, length, numel, err)

    def check(self, expected: "Frame", source: int, capacity: int) -> None:
        """Raise FormatError unless this frame is the slice the receiver posted for."""
        if self.length > capacity - FRAME_BYTES:
            raise FormatError(f"slice from rank {source} declares {self.length} payload bytes; "
                              f"the slot holds {capacity - FRAME_BYTES}")
        if self.error:
            return
        got = (self.seq, self.stream, self.index, self.numel, self.dtype_code)
        want = (expected.seq & 0xFFFFFFFF, expected.stream, expected.index, expected.numel, expected.dtype_code)
        if got != want or self.codec not in (expected.codec, RAW_CODEC):
            raise FormatError(f"slice from rank {source} is (call {self.seq}, stream {self.stream}, slice "
                              f"{self.index}, {self.numel} elements of dtype code {self.dtype_code}, codec "
                              f"{self.codec}); expected ({want[0]}, {want[1]}, {want[2]}, {want[3]}, {want[4]}, "
                              f"{expected.codec})")


# -- statistics -----------------------------------------------------------------------------------
@dataclass
class WireStats:
    """Bytes, route and timing of one collective call, as seen by this rank.

    raw_bytes      uncoded bytes of the data this rank sends (the slices it codes).
    coded_bytes    the same data after coding (frames and stream headers included);
                   equal to raw_bytes when the call was not coded.
    sent_bytes     payload bytes this rank puts on the wire, headers and frames included
                   (for the "dist" route: what a ring sends per rank, in the same convention).
    plain_bytes    sent_bytes of the same collective without compression.
    meta_bytes     call-header bytes.
    route          "coded" (pipelined, coded slices), "pipelined" (the same without coding:
                   deterministic=True), "dist" (the torch.distributed collective itself) or
                   "local" (a group of one).
    seconds        wall time of the call on this rank (s).
    model          the cost model's inputs and estimates for this call (see costmodel.py).
    """

    collective: str = ""
    compressed: bool = False
    raw_bytes: int = 0
    coded_bytes: int = 0
    sent_bytes: int = 0
    plain_bytes: int = 0
    meta_bytes: int = 0
    route: str = ""
    seconds: float = 0.0
    model: dict = field(default_factory=dict)

    @property
    def saved_bytes(self) -> int:
        return self.plain_bytes - self.sent_bytes

    @property
    def ratio(self) -> float:
        return self.plain_bytes / self.sent_bytes if self.sent_bytes else 1.0

    def reset(self, collective: str) -> "WireStats":
        self.collective, self.compressed, self.route, self.seconds, self.model = collective, False, "", 0.0, {}
        self.raw_bytes = self.coded_bytes = self.sent_bytes = self.plain_bytes = self.meta_bytes = 0
        return self

    def as_dict(self) -> dict:
        return {"collective": self.collective, "compressed": self.compressed, "route": self.route,
                "raw_bytes": self.raw_bytes, "coded_bytes": self.coded_bytes, "sent_bytes": self.sent_bytes,
                "plain_bytes": self.plain_bytes, "meta_bytes": self.meta_bytes, "saved_bytes": self.saved_bytes,
                "seconds": self.seconds, "model": dict(self.model)}


# -- point-to-point message headers ----------------------------------------------------------------
KIND_SEND, KIND_RECV = 1, 2
MAX_DIMS = 8
(M_MAGIC, M_WIRE, M_KIND, M_SEQ, M_TAG, M_STATUS, M_ERROR, M_FORMAT, M_DTYPE, M_NUMEL, M_NDIM, M_ROUTE, M_CODEC,
 M_CB_TAG, M_SLICE, M_FB_BYTES, M_FB_US, M_FB_ROUTE) = range(18)
M_SHAPE = 18                      # MAX_DIMS values (dims past MAX_DIMS: compared through the element count)
MESSAGE_MAGIC = 0x514C4350        # "QLCP"


def message_row_length() -> int:
    return M_SHAPE + MAX_DIMS


@dataclass
class MessageHeader:
    """One side's description of a point-to-point message (docs/distributed.md, "Point-to-point").

    The sender's carries its route, codec, codebook tag and slice size; the receiver's its
    verdict (an exception, or None) and how the previous message on the same (peer, tag)
    arrived (feedback: wire bytes, microseconds, route), which is how the sender's cost
    model learns the link."""

    kind: int
    seq: int = 0
    tag: int = 0
    dtype: torch.dtype | None = None
    numel: int = 0
    shape: tuple = ()
    route: int = 0
    codec: str = "raw"
    cb_tag: bytes = NO_TAG
    slice_elems: int = 0
    feedback: tuple = (0, 0, 0)
    error: BaseException | None = None     # this side cannot take part (receiver: or its verdict)

    def row(self) -> list[int]:
        r = [0] * message_row_length()
        r[M_MAGIC], r[M_WIRE], r[M_KIND], r[M_SEQ], r[M_TAG] = MESSAGE_MAGIC, WIRE_VERSION, self.kind, self.seq, self.tag
        r[M_FORMAT] = FORMAT_VERSION
        if self.error is not None:
            r[M_STATUS], r[M_ERROR] = 1, error_code(self.error)
        r[M_DTYPE] = DTYPE_CODES.get(self.dtype, 0) if self.dtype is not None else 0
        r[M_NUMEL], r[M_NDIM] = self.numel, len(self.shape)
        r[M_SHAPE:M_SHAPE + min(len(self.shape), MAX_DIMS)] = list(self.shape)[:MAX_DIMS]
        r[M_ROUTE], r[M_CODEC], r[M_CB_TAG] = self.route, CODEC_WIRE_IDS[self.codec], tag_to_int(self.cb_tag)
        r[M_SLICE] = self.slice_elems
        r[M_FB_BYTES], r[M_FB_US], r[M_FB_ROUTE] = self.feedback
        return r


def _message_side(r: list[int]) -> str:
    dt = DTYPES_BY_CODE.get(r[M_DTYPE])
    ndim = r[M_NDIM]
    shape = list(r[M_SHAPE:M_SHAPE + min(ndim, MAX_DIMS)]) + (["..."] if ndim > MAX_DIMS else [])
    return f"{r[M_NUMEL]} elements of {dtype_name(dt) if dt is not None else r[M_DTYPE]} {shape}"


def check_message(sender: list[int], receiver: list[int], *, sender_rank, receiver_rank) -> BaseException | None:
    """The error both ends of a message raise (None: they agree), from both headers; the same
    text on both ranks."""
    for who, r in (("sender", sender), ("receiver", receiver)):
        if r[M_MAGIC] != MESSAGE_MAGIC or r[M_WIRE] != WIRE_VERSION:
            return FormatError(f"qlccomm p2p: the {who} speaks another qlccomm wire protocol (magic "
                               f"{r[M_MAGIC]:#x}, version {r[M_WIRE]}; this rank {WIRE_VERSION})")
    where = f"rank {sender_rank} -> rank {receiver_rank}, tag {receiver[M_TAG]}"
    if sender[M_SEQ] != receiver[M_SEQ] or sender[M_TAG] != receiver[M_TAG]:
        return RuntimeError(f"qlccomm p2p ({where}): message {sender[M_SEQ]} with tag {sender[M_TAG]} met receive "
                            f"{receiver[M_SEQ]} with tag {receiver[M_TAG]}: tags {sender[M_TAG]} and "
                            f"{receiver[M_TAG]} share a slot (tags are taken modulo 2**20) and were posted in "
                            f"different orders")
    # what the two sides hold first: both ranks can state it (a receiver marks its own header
    # failed when they disagree, and the sender must still find this message)
    same_shape = sender[M_NDIM] == receiver[M_NDIM] and sender[M_SHAPE:] == receiver[M_SHAPE:]
    if sender[M_DTYPE] != receiver[M_DTYPE] or sender[M_NUMEL] != receiver[M_NUMEL] or not same_shape:
        return ValueError(f"qlccomm p2p ({where}): the sender sends {_message_side(sender)}, the receiver's tensor "
                          f"holds {_message_side(receiver)}")
    for who, r in (("sender", sender), ("receiver", receiver)):
        if r[M_STATUS]:
            cls = error_class(r[M_ERROR])
            return cls(f"qlccomm p2p ({where}): the {who} failed before sending ({cls.__name__}; see that rank's "
                       f"error); no data was sent")
    if sender[M_FORMAT] != receiver[M_FORMAT]:
        return FormatError(f"qlccomm p2p ({where}): stream format versions differ (sender {sender[M_FORMAT]}, "
                           f"receiver {receiver[M_FORMAT]})")
    return None
