"""Point-to-point slices over a process group: the data path of the pipelined collectives.

A `Link` is qlccomm's state for one process group: its call counter, its tags,
and its persistent send/receive buffers (arenas, reused by every call: a fresh
buffer costs first-touch page faults that rival the transfer on some machines).
An `Exchange` is one call's messages over the link.  A schedule (schedules.py)

  * registers every slice it will receive (`expect`: source, stream, index, size),
  * sends slices as their data becomes ready (`send`: codes the slice straight
    into a send slot behind its frame; one slot serves every destination),
  * and waits for receives in a fixed order (`decode`, `wait_key`).

Sends never wait for anything (a receiver posts every receive before it waits on
any), so waiting on receives in an order every rank derives from the same
schedule cannot deadlock: a receive only depends on sends that its sender makes
before waiting on a later receive.  (gloo's p2p `Work.is_completed()` does not
change until `wait()` is called, so waiting in order is also the only option.)

Two framings, picked per backend:

* **capacity** (gloo): one message per slice, received into a slot of the largest
  size a slice can take (raw slice + stream header + frame); the frame says how
  long the payload is.  gloo accepts a shorter message into a larger receive.
  All receives of a call are posted when the call's schedule starts.
* **sized** (NCCL, HCCL, others, and gloo with QLCCOMM_FRAMING=sized): the 32-byte
  frame travels as its own message, then the payload with its exact size; the
  messages of one schedule step go out as one `batch_isend_irecv` per phase on
  every rank (frames, then payloads), which NCCL needs to pair sends with receives.

Tags: qlccomm's messages use tags TAG_BASE .. TAG_BASE + 7 of the group
(gloo matches same-tag messages between two ranks in order; NCCL and HCCL have no
tags and match by order, which the schedules keep identical on every rank).
"""
from __future__ import annotations

import os
import threading
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from .api import compress, decompress, max_compressed_bytes
from .errors import FormatError
from .format import DTYPE_CODES
from .wire import CODEC_WIRE_IDS, FRAME_BYTES, RAW_CODEC, Frame, error_class, error_code, row_length

TAG_BASE = 0x51C00000                      # reserved: TAG_BASE .. TAG_BASE + 7
TAG_HEADER = TAG_BASE
STREAM_TAGS = {1: TAG_BASE + 1, 2: TAG_BASE + 2}   # stream 1: to owners / from src; 2: from owners
FRAMINGS = ("capacity", "sized")
ENV_FRAMING = "QLCCOMM_FRAMING"


def _framing_for(backend: str) -> str:
    forced = os.environ.get(ENV_FRAMING, "").strip().lower()
    if forced:
        if forced not in FRAMINGS:
            raise ValueError(f"{ENV_FRAMING}={forced!r}: choose {' or '.join(FRAMINGS)}")
        return forced
    return "capacity" if backend == "gloo" else "sized"


def slice_capacity(numel: int, dtype: torch.dtype) -> int:
    """Bytes of the largest message a slice of `numel` elements of `dtype` can take."""
    return FRAME_BYTES + max_compressed_bytes(torch.empty(numel, dtype=dtype, device="meta"))


# -- per-group state ----------------------------------------------------------------------------
class Link:
    """qlccomm's state for one process group (or one group and device)."""

    def __init__(self, group, rank: int, world: int):
        self.group, self.rank, self.world = group, rank, world
        self.backend = str(dist.get_backend(group))
        self.framing = _framing_for(self.backend)
        self.seq = 0                              # calls so far in this group (identical on every rank)
        self._arenas: dict[tuple[str, str], torch.Tensor] = {}
        self.grown = 0                            # times an arena was (re)allocated: first-touch costs

    def global_rank(self, group_rank: int) -> int:
        return group_rank if self.group is None else dist.get_global_rank(self.group, group_rank)

    def arena(self, name: str, nbytes: int, device: torch.device) -> torch.Tensor:
        """A persistent uint8 buffer of at least `nbytes` on `device` (grown, never shrunk:
        bounded by the largest call chunk, collectives.MAX_CHUNK_BYTES)."""
        key = (name, str(device))
        buf = self._arenas.get(key)
        if buf is None or buf.numel() < nbytes:
            self._arenas.pop(key, None)
            if device.type == "cpu":
                from .kernels.common import empty_output
                buf = empty_output(nbytes, torch.uint8)
            else:
                buf = torch.empty(nbytes, dtype=torch.uint8, device=device)
            self._arenas[key] = buf
            self.grown += 1
        return buf

    def arena_bytes(self) -> int:
        return sum(b.numel() for b in self._arenas.values())

    # -- the call header ----------------------------------------------------------------------
    def post_headers(self, row: list[int], device: torch.device):
        """Send this rank's header row to every peer and post the receives of theirs; returns
        a handle for `wait_headers`.  Nothing waits here: the caller may code meanwhile."""
        n = row_length(self.world)
        mine = torch.tensor(row, dtype=torch.int64, device=device)
        rows = torch.empty(self.world, n, dtype=torch.int64, device=device)
        rows[self.rank] = mine
        peers = [j for j in range(self.world) if j != self.rank]
        if self.framing == "capacity":        # gloo: plain isend/irecv (half the cost of a batch here)
            works = [dist.irecv(rows[j], self.global_rank(j), self.group, TAG_HEADER) for j in peers]
            works += [dist.isend(mine, self.global_rank(j), self.group, TAG_HEADER) for j in peers]
        else:                                 # NCCL/HCCL pair sends with receives only inside a batch
            ops = [op for j in peers for op in (dist.P2POp(dist.isend, mine, self.global_rank(j), self.group, TAG_HEADER),
                                                 dist.P2POp(dist.irecv, rows[j], self.global_rank(j), self.group,
                                                            TAG_HEADER))]
            works = dist.batch_isend_irecv(ops) if ops else []
        return mine, rows, works

    @staticmethod
    def wait_headers(handle) -> list[list[int]]:
        mine, rows, works = handle
        for w in works:
            w.wait()
        return rows.tolist()


class BufferPool:
    """Reusable uint8 buffers for exchanges that run side by side (point-to-point messages):
    `take(nbytes, device)` returns a buffer of at least that many bytes (a free one when
    one fits, else a new one), `give(buf)` returns it.  At most `keep_bytes` are kept free;
    the largest free ones are dropped first."""

    def __init__(self, keep_bytes: int = 256 << 20):
        self.keep_bytes = keep_bytes
        self._free: list[torch.Tensor] = []
        self._lock = threading.Lock()

    def take(self, nbytes: int, device: torch.device) -> torch.Tensor:
        with self._lock:
            fits = [i for i, b in enumerate(self._free) if b.device == device and b.numel() >= nbytes]
            if fits:                        # the free list is sorted by size: the first fit is the smallest
                return self._free.pop(fits[0])
        if device.type == "cpu":
            from .kernels.common import empty_output
            return empty_output(max(nbytes, 1), torch.uint8)
        return torch.empty(max(nbytes, 1), dtype=torch.uint8, device=device)

    def give(self, buf: torch.Tensor) -> None:
        with self._lock:
            self._free.append(buf)
            self._free.sort(key=lambda b: b.numel())
            while sum(b.numel() for b in self._free) > self.keep_bytes:
                self._free.pop()

    def free_bytes(self) -> int:
        with self._lock:
            return sum(b.numel() for b in self._free)


# -- one call's messages ------------------------------------------------------------------------
@dataclass
class _Recv:
    key: tuple
    src: int
    stream: int
    index: int
    numel: int
    offset: int                   # of its slot in the receive arena
    work: object = None
    frame: Frame | None = None
    done: bool = False


@dataclass
class _Send:
    key: tuple
    dsts: list[int]
    stream: int
    slot: torch.Tensor            # its slot in the send arena
    nbytes: int                   # frame + payload
    works: list = field(default_factory=list)


@dataclass
class Coding:
    """How an Exchange codes its slices: codec "qlc"/"enec" with a codebook (None: each
    slice embeds its own code), or "raw" (frames + raw bytes)."""

    codec: str
    codebook: object = None

    @property
    def coded(self) -> bool:
        return self.codec != "raw"


def slot_bytes(slice_elems: int, dtype: torch.dtype) -> int:
    """Bytes of one slot of an Exchange: a slice's capacity, rounded up to 64-byte alignment."""
    cap = slice_capacity(slice_elems, dtype)
    return cap + (-cap % 64)


class Exchange:
    """The slices of one call over `link`: sizes in elements of `dtype`, at most
    `slice_elems` per slice; `n_send` / `n_recv` slots are taken from the link's arenas
    (or from `buffers`: a (send, receive) pair of uint8 tensors of that many slots, for
    exchanges that run beside others); stream s travels with the gloo tag `tags[s]`."""

    def __init__(self, link: Link, seq: int, dtype: torch.dtype, coding: Coding, slice_elems: int,
                 n_send: int, n_recv: int, device: torch.device, buffers: tuple | None = None,
                 tags: dict | None = None):
        self.link, self.seq, self.dtype, self.coding, self.device = link, seq, dtype, coding, device
        self.cap = slot_bytes(slice_elems, dtype)
        if buffers is None:
            buffers = (link.arena("send", max(n_send, 1) * self.cap, device),
                       link.arena("recv", max(n_recv, 1) * self.cap, device))
        self.send_arena, self.recv_arena = buffers
        self.tags = STREAM_TAGS if tags is None else tags
        self._n_send, self._n_recv = n_send, n_recv
        self._recvs: list[_Recv] = []
        self._sends: list[_Send] = []
        self._pending: dict[tuple, list] = {}               # sized framing: sends waiting for their key's batch
        self._flushed: set[tuple] = set()
        self.errors: list[BaseException] = []               # first is raised by `finish`
        self.codec_id = CODEC_WIRE_IDS[coding.codec] if coding.coded else RAW_CODEC
        self.dtype_code = DTYPE_CODES[dtype]
        # bookkeeping for WireStats and the cost model (bytes; seconds of coding work)
        self.raw_bytes = self.coded_bytes = 0      # bytes before and after coding, per destination
        self.encoded_bytes = self.decoded_bytes = 0  # raw bytes through the encoder / decoder
        self.encode_s = self.decode_s = self.wait_s = 0.0    # seconds coding, decoding, waiting for data

    def scratch(self, numel: int) -> torch.Tensor:
        """A persistent buffer of `numel` elements of the exchange's dtype (decoded contributions)."""
        isz = torch.empty(0, dtype=self.dtype).element_size()
        return self.link.arena("scratch", numel * isz, self.device)[:numel * isz].view(self.dtype)

    # -- receives ------------------------------------------------------------------------------
    def expect(self, key: tuple, src: int, stream: int, index: int, numel: int) -> int:
        """Register a slice to receive; returns its handle.  Register in the order the source
        sends each stream (the schedule's order), before `start`."""
        if len(self._recvs) >= self._n_recv:
            raise RuntimeError("qlccomm: more receives than the exchange was sized for")
        self._recvs.append(_Recv(key, src, stream, index, numel, len(self._recvs) * self.cap))
        return len(self._recvs) - 1

    def start(self) -> None:
        """Capacity framing: post every registered receive now (sized framing posts per key)."""
        if self.link.framing != "capacity":
            return
        for r in self._recvs:
            slot = self.recv_arena[r.offset:r.offset + self.cap]
            r.work = dist.irecv(slot, self.link.global_rank(r.src), self.link.group, self.tags[r.stream])

    # -- sends ---------------------------------------------------------------------------------
    def send(self, key: tuple, dsts: list[int], stream: int, index: int, x: torch.Tensor) -> None:
        """Code the 1-D contiguous slice `x` into a send slot behind its frame and send it to
        every rank in `dsts` (group ranks).  A coding failure is recorded for `finish` and an
        error frame goes out instead, so that every receiver still gets its message."""
        if not dsts:
            return
        slot = self._slot()
        nbytes_raw = x.numel() * x.element_size()
        try:
            t0 = time.perf_counter()
            if self.coding.coded:
                length = compress(x, codec=self.coding.codec, codebook=self.coding.codebook,
                                  out=slot[FRAME_BYTES:]).numel()
                self.encoded_bytes += nbytes_raw
            else:
                length = nbytes_raw
                slot[FRAME_BYTES:FRAME_BYTES + length].copy_(x.view(torch.uint8))
            self.encode_s += time.perf_counter() - t0
        except Exception as e:          # noqa: BLE001 - re-raised by finish(), reported to the peers
            self.errors.append(e)
            self.send_error(key, dsts, stream, index, x.numel(), e, slot)
            return
        self.raw_bytes += nbytes_raw * len(dsts)
        self._post(key, dsts, stream, slot, Frame(self.codec_id, self.dtype_code, stream, self.seq, index, length,
                                                  x.numel()))

    def send_error(self, key: tuple, dsts: list[int], stream: int, index: int, numel: int, exc: BaseException,
                   slot: torch.Tensor | None = None) -> None:
        """Send an error frame (its payload: the exception's class and message) in place of
        slice `index`, for a rank that cannot produce it."""
        if not dsts:
            return
        slot = self._slot() if slot is None else slot
        msg = f"{type(exc).__name__}: {exc}".encode("utf-8", "replace")[:self.cap - FRAME_BYTES]
        slot[FRAME_BYTES:FRAME_BYTES + len(msg)].copy_(torch.frombuffer(bytearray(msg), dtype=torch.uint8)
                                                       if msg else slot[:0])
        self._post(key, dsts, stream, slot, Frame(self.codec_id, self.dtype_code, stream, self.seq, index,
                                                  len(msg), numel, error=error_code(exc)))

    def _slot(self) -> torch.Tensor:
        if len(self._sends) >= self._n_send:
            raise RuntimeError("qlccomm: more sends than the exchange was sized for")
        off = len(self._sends) * self.cap
        return self.send_arena[off:off + self.cap]

    def forward(self, h: int, key: tuple, dsts: list[int]) -> None:
        """Send receive `h` on to `dsts` as it arrived (frame and payload: no decoding or
        recoding), e.g. along a broadcast chain; a bad frame goes on as an error frame."""
        r = self._arrived(h)
        if r.frame is None:
            self.send_error(key, dsts, r.stream, r.index, r.numel, self.errors[-1])
            return
        slot = self.recv_arena[r.offset:r.offset + self.cap]
        self.raw_bytes += r.numel * self.dtype.itemsize * len(dsts)
        self._post_slot(key, dsts, r.stream, slot, FRAME_BYTES + r.frame.length)

    def _post(self, key: tuple, dsts: list[int], stream: int, slot: torch.Tensor, frame: Frame) -> None:
        slot[:FRAME_BYTES].copy_(torch.frombuffer(bytearray(frame.encode()), dtype=torch.uint8))
        self._post_slot(key, dsts, stream, slot, FRAME_BYTES + frame.length)

    def _post_slot(self, key: tuple, dsts: list[int], stream: int, slot: torch.Tensor, nbytes: int) -> None:
        s = _Send(key, list(dsts), stream, slot, nbytes)
        self._sends.append(s)
        self.coded_bytes += nbytes * len(dsts)
        if self.link.framing == "capacity":
            for d in dsts:
                s.works.append(dist.isend(slot[:s.nbytes], self.link.global_rank(d), self.link.group,
                                          self.tags[stream]))
        else:
            self._pending.setdefault(key, []).append(s)

    # -- waiting -------------------------------------------------------------------------------
    def wait_key(self, key: tuple) -> None:
        """Every rank calls this for every key of the schedule, in the schedule's order.
        Sized framing: run the key's batches of sends and receives (frames, then payloads).
        Capacity framing: nothing (receives are waited one by one in `decode`)."""
        wait_keys([(self, key)])

    def _take_key(self, key: tuple) -> tuple[list, list] | None:
        """The sends and receives of `key` not yet run (None: already run, or capacity framing)."""
        if self.link.framing != "sized" or key in self._flushed:
            return None
        self._flushed.add(key)
        return self._pending.pop(key, []), [r for r in self._recvs if r.key == key]

    def _checked_frame(self, r: _Recv, head: bytes) -> Frame | None:
        """The frame of receive `r`, checked; None (and the error recorded) when it is wrong."""
        want = Frame(self.codec_id, self.dtype_code, r.stream, self.seq, r.index, 0, r.numel)
        try:
            f = Frame.decode(head, r.src)
            f.check(want, r.src, self.cap)
        except FormatError as e:
            self.errors.append(e)
            return None
        return f

    def _arrived(self, h: int) -> _Recv:
        r = self._recvs[h]
        if not r.done:
            if self.link.framing == "capacity":
                t0 = time.perf_counter()
                r.work.wait()
                self.wait_s += time.perf_counter() - t0
                r.frame = self._checked_frame(r, self.recv_arena[r.offset:r.offset + FRAME_BYTES].cpu().numpy().tobytes())
                r.done = True
            else:
                self.wait_key(r.key)
        return r

    def decode(self, h: int, out: torch.Tensor) -> bool:
        """Wait for receive `h` and decode it into `out` (contiguous, its element count and
        dtype).  Returns False (the failure recorded for `finish`) for an error frame, a bad
        frame or a corrupt payload; `out` is then left as it was."""
        r = self._arrived(h)
        f = r.frame
        if f is None:
            return False
        payload = self.recv_arena[r.offset + FRAME_BYTES:r.offset + FRAME_BYTES + f.length]
        if f.error:
            text = payload.cpu().numpy().tobytes().decode("utf-8", "replace")
            self.errors.append(error_class(f.error)(f"rank {r.src} could not send its part: {text}"))
            return False
        try:
            t0 = time.perf_counter()
            if f.codec == RAW_CODEC:
                if f.length != out.numel() * out.element_size():
                    raise FormatError(f"raw slice from rank {r.src} has {f.length} bytes, expected "
                                      f"{out.numel() * out.element_size()}")
                out.view(-1).view(torch.uint8).copy_(payload)
            else:
                decompress(payload, codebook=self.coding.codebook, out=out)
                self.decoded_bytes += out.numel() * out.element_size()
            self.decode_s += time.perf_counter() - t0
        except FormatError as e:
            self.errors.append(type(e)(f"slice {r.index} from rank {r.src}: {e}"))
            return False
        return True

    def drop(self) -> None:
        """Capacity framing: wait for every send and receive without reading what arrived (the
        empty messages a point-to-point sender puts into receives it does not use)."""
        for r in self._recvs:
            if r.work is not None:
                r.work.wait()
        for s in self._sends:
            for w in s.works:
                w.wait()

    def finish(self) -> None:
        """Wait for every send and receive, then raise the first recorded error (if any)."""
        for r in range(len(self._recvs)):
            self._arrived(r)
        for s in self._sends:
            for w in s.works:
                w.wait()
        if self.errors:
            raise self.errors[0]


def wait_keys(pairs: list[tuple["Exchange", tuple]]) -> None:
    """Sized framing: run the sends and receives of every (exchange, key) as one batch of frames,
    then one batch of payloads (exchanges that run side by side, e.g. a point-to-point batch
    in both directions, must pair up inside one batch_isend_irecv on NCCL)."""
    work = [(ex, ex._take_key(key)) for ex, key in pairs]
    work = [(ex, sr) for ex, sr in work if sr is not None]
    if not work:
        return
    frames, heads = [], []
    for ex, (sends, recvs) in work:
        link = ex.link
        h = torch.empty(max(len(recvs), 1), FRAME_BYTES, dtype=torch.uint8, device=ex.device)
        heads.append(h)
        frames += [dist.P2POp(dist.isend, s.slot[:FRAME_BYTES], link.global_rank(d), link.group, ex.tags[s.stream])
                   for s in sends for d in s.dsts]
        frames += [dist.P2POp(dist.irecv, h[i], link.global_rank(r.src), link.group, ex.tags[r.stream])
                   for i, r in enumerate(recvs)]
    _run_batch(frames)
    payloads = []
    for (ex, (sends, recvs)), h in zip(work, heads):
        link = ex.link
        host = h.cpu().numpy()          # sizes on the host: this thread waits, not the caller's stream
        payloads += [dist.P2POp(dist.isend, s.slot[FRAME_BYTES:s.nbytes], link.global_rank(d), link.group,
                                ex.tags[s.stream])
                     for s in sends if s.nbytes > FRAME_BYTES for d in s.dsts]
        for i, r in enumerate(recvs):
            slot = ex.recv_arena[r.offset:r.offset + ex.cap]
            slot[:FRAME_BYTES].copy_(h[i])
            length = _frame_length(host[i].tobytes(), ex.cap, r.src)
            if length:
                payloads.append(dist.P2POp(dist.irecv, slot[FRAME_BYTES:FRAME_BYTES + length],
                                           link.global_rank(r.src), link.group, ex.tags[r.stream]))
            r.frame = ex._checked_frame(r, host[i].tobytes())
    _run_batch(payloads)
    for ex, (sends, recvs) in work:
        for r in recvs:
            r.done = True


def all_gather_fixed(out: torch.Tensor, inp: torch.Tensor, group, async_op: bool = False):
    """Equal-size all-gather (`all_gather_single` where torch has it, else `all_gather_into_tensor`)."""
    fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
    return fn(out, inp, group=group, async_op=async_op)


def reduce_scatter_fixed(out: torch.Tensor, inp: torch.Tensor, op, group, async_op: bool = False):
    """Equal-size reduce-scatter (`reduce_scatter_single` where torch has it, else `reduce_scatter_tensor`)."""
    fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
    return fn(out, inp, op=op, group=group, async_op=async_op)


def _run_batch(ops: list) -> None:
    for w in dist.batch_isend_irecv(ops) if ops else []:
        w.wait()


def _frame_length(head: bytes, capacity: int, source: int) -> int:
    """The payload length a (sized-framing) frame announces: the receive to post for it.
    One that cannot fit a slot means the peer's stream of messages can no longer be
    followed: FormatError at once (the group is then out of step)."""
    length = int.from_bytes(head[16:24], "little") if len(head) >= 24 else 0
    if length > capacity - FRAME_BYTES:
        raise FormatError(f"slice frame from rank {source} announces {length} payload bytes, more than a slot "
                          f"holds ({capacity - FRAME_BYTES}); the process group is out of step")
    return length
