"""Compressed point-to-point: send, recv, isend, irecv and batch_isend_irecv, shaped like torch's.

    qlccomm.send(t, dst, group=None, tag=0, *, codec="qlc", codebook=None, compress=None, ...)
    qlccomm.recv(t, src=None, group=None, tag=0, *, codebook=None)     # fills t; returns the sender's rank
    work = qlccomm.isend(t, dst) / qlccomm.irecv(t, src)               # wait(), is_completed(), get_future()
    works = qlccomm.batch_isend_irecv([qlccomm.P2POp(qlccomm.isend, t, peer), ...])   # or dist.P2POps

A batch of messages (one isend/irecv is a batch of one) runs in rounds
(docs/distributed.md, "Point-to-point"):

  1. every sender sends its message header (dtype, shape, route, codec, codebook, slice
     size: wire.MessageHeader); its cost model picked the route;
  2. every receiver checks the header against the tensor it was given and, when they
     agree, posts the receives of the data; it answers with its own header: the verdict,
     and how the previous message on this (peer, tag) arrived (how the sender's model
     learns the link);
  3. the data: on "ok" coded slices (transport.Exchange: capacity framing on gloo, coded
     while the previous slice is on the wire, decoded into the receiver's tensor as they
     arrive) or the raw bytes straight into the receiver's tensor; on a disagreement both
     ranks raise the same typed error naming both sides, and nothing else moves.

Sizes are agreed before any payload moves (gloo aborts a process that gets a larger
message than it posted for).  Messages on one (peer, tag, direction) are matched in call
order, as torch's are; gloo tags 0x52000000 + 4 * (tag mod 2**20) + {0, 1, 2} carry them.
On gloo every batch runs on a thread of its own, after the earlier batches on its keys, so
sends and receives in both directions progress together.  With sized framing (NCCL, HCCL;
gloo with QLCCOMM_FRAMING=sized) a group's batches run one after another in call order,
every round as one batch_isend_irecv, and the data of a coded message goes out after its
slices are coded, with their sizes (no pipelining there).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from . import costmodel
from .api import compress
from .codebook import lookup
from .collectives import MAX_CHUNK_BYTES, _group_state, _options, _resolve_coding, _slice_elems, _Totals
from .errors import CodebookError
from .transport import BufferPool, Coding, Exchange, slot_bytes, wait_keys
from .wire import (ADAPTIVE_TAG, KIND_RECV, KIND_SEND, M_CB_TAG, M_FB_BYTES, M_FB_ROUTE, M_FB_US, M_ROUTE, M_SLICE, NO_TAG,
                   MessageHeader, WireStats, check_message, message_row_length, tag_to_int, tag_to_str)
from .worker import CollectiveWork, submit_work

__all__ = ["send", "recv", "isend", "irecv", "batch_isend_irecv", "P2POp"]

P2P_TAG_BASE = 0x52000000
P2P_TAG_SLOTS = 1 << 20
ROUTE_RAW, ROUTE_CODED = 0, 1
DATA_STREAM = 3


def _tags(tag: int) -> tuple[int, int, int]:
    """gloo tags of a user tag: the sender's header, the receiver's header, the data."""
    if tag < 0:
        raise ValueError(f"p2p tags are >= 0, not {tag}")
    base = P2P_TAG_BASE + 4 * (tag % P2P_TAG_SLOTS)
    return base, base + 1, base + 2


class P2POp:
    """A point-to-point operation for `batch_isend_irecv`: `torch.distributed.P2POp`'s
    arguments (op: qlccomm.isend / qlccomm.irecv, or torch's), plus isend's keywords."""

    def __init__(self, op, tensor: torch.Tensor, peer: int | None = None, group=None, tag: int = 0,
                 group_peer: int | None = None, **options):
        if op not in (isend, irecv, dist.isend, dist.irecv):
            raise ValueError("P2POp's op is qlccomm.isend or qlccomm.irecv (or torch's)")
        self.op, self.tensor, self.peer, self.group, self.tag = op, tensor, peer, group, tag
        self.group_peer, self.options = group_peer, options


@dataclass
class _Message:
    """One message as this rank sees it, while its batch runs."""

    send: bool
    tensor: torch.Tensor
    peer: int | None                     # group rank; None: a receive from any rank
    group: object
    tag: int
    options: dict
    stats: WireStats
    key: tuple = ()
    seq: int = 0
    peer_global: int | None = None
    error: BaseException | None = None
    route: int = ROUTE_RAW
    coding: Coding = field(default_factory=lambda: Coding("raw"))
    slice_elems: int = 0
    header: MessageHeader | None = None
    mine: torch.Tensor | None = None      # this side's header row
    theirs: torch.Tensor | None = None    # the other side's
    works: list = field(default_factory=list)
    exchanges: list = field(default_factory=list)   # (Exchange, first element, end element)
    target: torch.Tensor | None = None     # a receiver's contiguous tensor to fill
    t_data: float = 0.0

    @property
    def tags(self) -> tuple[int, int, int]:
        return _tags(self.tag)


class _Engine:
    """A group's point-to-point state: per (peer, tag, direction) the messages so far and the
    last batch's completion (messages on one key run in call order), a buffer pool, and what
    the receivers report back."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seq: dict[tuple, int] = {}
        self.tail: dict[tuple, threading.Event] = {}
        self.pool = BufferPool()
        self.arrived: dict[tuple, tuple] = {}       # receiver: key -> (wire bytes, µs, route) of its last message
        self.reported: dict[tuple, tuple] = {}      # sender: key -> what the receiver last reported


_ENGINES: dict[int, _Engine] = {}
_ENGINES_LOCK = threading.Lock()


def _engine(state) -> _Engine:
    with _ENGINES_LOCK:
        return _ENGINES.setdefault(id(state), _Engine())


# -- the public calls -----------------------------------------------------------------------------------
def isend(tensor: torch.Tensor, dst: int | None = None, group=None, tag: int = 0, *, group_dst: int | None = None,
          stats: WireStats | None = None, **options) -> CollectiveWork:
    """Send `tensor` to global rank `dst` (or group rank `group_dst`), losslessly compressed where
    it pays; returns a work (wait(), is_completed(), get_future(): value the tensor).
    Keywords as for the collectives: codec ("qlc"), codebook, compress, min_compress_bytes,
    link_gbps, slice_bytes; stats: a WireStats for the message's bytes and route."""
    return _submit([_message(True, tensor, group, dst, group_dst, tag, options, stats)])[0]


def irecv(tensor: torch.Tensor, src: int | None = None, group=None, tag: int = 0, *, group_src: int | None = None,
          stats: WireStats | None = None, codebook=None) -> CollectiveWork:
    """Receive into `tensor` (dtype, shape and element count must be the sender's) from global
    rank `src` (group rank `group_src`; neither: any rank, capacity framing only); returns a
    work; once done its `source_rank` is the sender's global rank.  codebook: needed only
    for messages coded with a codebook this process has not created or loaded."""
    return _submit([_message(False, tensor, group, src, group_src, tag, {"codebook": codebook}, stats)])[0]


def send(tensor: torch.Tensor, dst: int | None = None, group=None, tag: int = 0, **kw) -> None:
    """Blocking isend."""
    isend(tensor, dst, group, tag, **kw).wait()


def recv(tensor: torch.Tensor, src: int | None = None, group=None, tag: int = 0, **kw) -> int:
    """Blocking irecv; returns the sender's global rank (as torch.distributed.recv does)."""
    work = irecv(tensor, src, group, tag, **kw)
    work.wait()
    return work.source_rank


def batch_isend_irecv(p2p_op_list: list) -> list[CollectiveWork]:
    """Post a list of P2POps (qlccomm's or torch's) at once; returns one work per op, in order."""
    msgs = []
    for p in p2p_op_list:
        sending = p.op in (isend, dist.isend)
        options = dict(getattr(p, "options", None) or {})
        stats = options.pop("stats", None)
        if not sending:
            options = {"codebook": options.get("codebook")}
        group_peer = getattr(p, "group_peer", None)          # torch's P2POp sets both; the group rank wins
        msgs.append(_message(sending, p.tensor, p.group, None if group_peer is not None else p.peer, group_peer,
                             p.tag, options, stats))
    return _submit(msgs)


def _message(sending: bool, tensor, group, rank, group_rank, tag, options, stats) -> _Message:
    if not isinstance(tensor, torch.Tensor):
        raise TypeError(f"qlccomm p2p sends and receives tensors, not {type(tensor).__name__}")
    if rank is not None and group_rank is not None:
        raise ValueError("pass a global rank or a group rank, not both")
    peer = group_rank if group_rank is not None else (
        rank if rank is None or group is None else dist.get_group_rank(group, rank))
    if peer is None and sending:
        raise ValueError("isend needs a destination rank")
    _tags(tag)
    st = (stats if stats is not None else WireStats()).reset("isend" if sending else "irecv")
    return _Message(sending, tensor, peer, group, tag, options, st)


# -- running batches --------------------------------------------------------------------------------------
def _submit(msgs: list[_Message]) -> list[CollectiveWork]:
    """Run one batch after the earlier batches on its keys; one work per message."""
    if not msgs:
        return []
    group = msgs[0].group
    if any(m.group is not group for m in msgs):
        raise ValueError("all ops of a batch use the same group")
    state, rank, world = _group_state(group)
    if state is None:
        raise ValueError("this rank is not a member of the group")
    for m in msgs:
        if m.peer is not None and not (0 <= m.peer < world and m.peer != rank):
            raise ValueError(f"qlccomm p2p: peer {m.peer} is not another rank of the group (this rank {rank}, "
                             f"{world} ranks)")
        if m.peer is None and state.link.framing != "capacity":
            raise ValueError("qlccomm p2p: a receive from any rank needs gloo (capacity framing)")
    eng = _engine(state)
    done = threading.Event()
    with eng.lock:
        for m in msgs:
            m.key = (m.peer, m.tag, m.send)
            m.seq = eng.seq.get(m.key, 0)
            eng.seq[m.key] = m.seq + 1
        before = [eng.tail.get(m.key) for m in msgs]
        for m in msgs:
            eng.tail[m.key] = done

    def job():
        try:
            for ev in before:
                if ev is not None:
                    ev.wait()
            _run_batch(state, eng, rank, msgs)
        finally:
            done.set()

    device = msgs[0].tensor.device
    if state.link.framing == "capacity":
        batch = submit_work(_on_thread, job, None, device)
    else:
        batch = submit_work(state.worker.submit, job, None, device)
    works = []
    for m in msgs:
        fut = torch.futures.Future()
        works.append(_MessageWork(fut, m, batch))
    return works


def _on_thread(job) -> torch.futures.Future:
    """Run `job()` on a new daemon thread; its future."""
    fut = torch.futures.Future()

    def body():
        try:
            fut.set_result(job())
        except BaseException as e:  # noqa: BLE001 - handed to the works
            fut.set_exception(e)

    threading.Thread(target=body, name="qlccomm-p2p", daemon=True).start()
    return fut


class _MessageWork(CollectiveWork):
    """The work of one message of a batch: done when the batch is, raising the message's own
    error (a batch's messages succeed or fail one by one)."""

    def __init__(self, fut, msg: _Message, batch: CollectiveWork):
        super().__init__(fut)
        self._msg, self._batch = msg, batch

        def settle(f):
            try:
                f.wait()
                if msg.error is not None:
                    raise msg.error
            except BaseException as e:  # noqa: BLE001
                fut.set_exception(e)
                return
            fut.set_result(msg.tensor)

        batch.get_future().add_done_callback(settle)

    def wait(self, timeout=None) -> bool:
        self._batch.wait()
        self._future.wait()
        return True

    @property
    def source_rank(self) -> int | None:
        """The peer's global rank (for a receive from any rank: known once done)."""
        return self._msg.peer_global


def _run_batch(state, eng: _Engine, rank: int, msgs: list[_Message]) -> None:
    link = state.link
    senders = [m for m in msgs if m.send]
    receivers = [m for m in msgs if not m.send]
    with torch.no_grad():
        for m in msgs:
            _describe(state, eng, m)
        # round 1: the senders' headers
        _round(link, [(m.mine, m, 0) for m in senders], [(m.theirs, m, 0) for m in receivers])
        for m in receivers:
            _judge(link, eng, rank, m)
        # round 2: the receivers' answers
        _round(link, [(m.mine, m, 1) for m in receivers], [(m.theirs, m, 1) for m in senders])
        for m in senders:
            verdict = check_message(m.mine.tolist(), m.theirs.tolist(), sender_rank=rank, receiver_rank=m.peer)
            m.error = m.error or verdict
            fb = m.theirs.tolist()
            if fb[M_FB_BYTES] > 0:
                eng.reported[m.key] = (fb[M_FB_BYTES], fb[M_FB_US], fb[M_FB_ROUTE])
        # round 3: the data
        live = [m for m in msgs if m.error is None]
        if link.framing == "capacity":
            for m in live:
                if m.send:
                    _send_data(link, eng, m)
            for m in live:
                _finish(state, eng, m)
        else:
            _sized_data(link, eng, live)
            for m in live:
                _finish(state, eng, m)


def _round(link, sends: list, recvs: list) -> None:
    """Post header sends and receives (tensor, message, which tag) and wait for them all:
    separately on gloo, as one batch_isend_irecv with sized framing."""
    if link.framing == "capacity":
        works = [dist.irecv(t, None if m.peer is None else link.global_rank(m.peer), m.group, m.tags[i])
                 for t, m, i in recvs]
        works += [dist.isend(t, link.global_rank(m.peer), m.group, m.tags[i]) for t, m, i in sends]
        for (t, m, i), w in zip(recvs, works):
            w.wait()
            if m.peer is None:                      # any source: now known (gloo reports the group rank)
                m.peer = w.source_rank()
        for w in works[len(recvs):]:
            w.wait()
        return
    ops = [dist.P2POp(dist.isend, t, link.global_rank(m.peer), m.group, m.tags[i]) for t, m, i in sends]
    ops += [dist.P2POp(dist.irecv, t, link.global_rank(m.peer), m.group, m.tags[i]) for t, m, i in recvs]
    for w in dist.batch_isend_irecv(ops) if ops else []:
        w.wait()


def _describe(state, eng: _Engine, m: _Message) -> None:
    """This side's header: what it holds, and (sender) the route its cost model picks."""
    t = m.tensor
    h = MessageHeader(KIND_SEND if m.send else KIND_RECV, seq=m.seq, tag=m.tag, dtype=t.dtype, numel=t.numel(),
                      shape=tuple(t.shape))
    try:
        opts = _options(m.options.get("compress"), m.options.get("min_compress_bytes"), None,
                        m.options.get("link_gbps"), m.options.get("slice_bytes"))
        m.slice_elems = h.slice_elems = _slice_elems(opts, t.numel(), 1, t.element_size())
        m.coding, h.cb_tag = _resolve_coding(t.dtype, m.options.get("codec", "qlc"), m.options.get("codebook"),
                                             t.device)
        h.codec = m.coding.codec
        if m.send:
            m.route = h.route = _decide(state, eng, m, opts)
        else:
            h.feedback = eng.arrived.get(m.key, (0, 0, 0))
    except Exception as e:   # noqa: BLE001 - told to the peer; raised here after
        m.error = h.error = e
    m.header = h
    m.mine = torch.tensor(h.row(), dtype=torch.int64, device=t.device)
    m.theirs = torch.empty(message_row_length(), dtype=torch.int64, device=t.device)
    if m.peer is not None:
        m.peer_global = state.link.global_rank(m.peer)


def _decide(state, eng: _Engine, m: _Message, opts) -> int:
    """The sender's route: coded where compress=True, or where the cost model says it pays."""
    t = m.tensor
    nbytes = t.numel() * t.element_size()
    if not m.coding.coded or nbytes == 0 or nbytes < opts.min_bytes or opts.mode == "off":
        return ROUTE_RAW
    if opts.mode == "on":
        return ROUTE_CODED
    model = state.model
    reported = eng.reported.pop(m.key, None)
    if reported is not None and reported[2] == ROUTE_RAW:
        model.observe_plain("p2p", reported[0], 2, reported[1] * 1e-6)
    stream = model.stream(("p2p", t.dtype, t.numel(), m.key))
    flat = t.reshape(-1)
    speed = costmodel.codec_speed(m.coding.codec, m.coding.codebook, t.dtype, t.device,
                                  lambda: costmodel.sample_of(flat))
    if stream.ratio is None:
        x = costmodel.sample_of(flat)
        stream.ratio = x.numel() * x.element_size() / compress(x, codec=m.coding.codec,
                                                               codebook=m.coding.codebook).numel()
    est = model.estimate("p2p", nbytes, 2, speed, stream.ratio, m.slice_elems * t.element_size(), t.device.type,
                         opts.link_Bps, stream)
    model.called(stream)
    m.stats.model.update(est.inputs, probe=est.probe)
    code = 0 < est.t_coded < 0.95 * est.t_plain
    return ROUTE_CODED if code != est.probe else ROUTE_RAW


def _judge(link, eng: _Engine, rank: int, m: _Message) -> None:
    """Receiver, after the sender's header: the verdict, and on "ok" the data's receives posted
    (so that the data can flow the moment the sender hears the answer)."""
    sender_row = m.theirs.tolist()
    m.peer_global = link.global_rank(m.peer)
    verdict = check_message(sender_row, m.mine.tolist(), sender_rank=m.peer, receiver_rank=rank)
    if verdict is None and m.error is None and sender_row[M_ROUTE] == ROUTE_CODED:
        verdict = _codebook_verdict(sender_row, m, rank)
    if verdict is not None and m.error is None:
        m.error = m.header.error = verdict
        m.mine.copy_(torch.tensor(m.header.row(), dtype=torch.int64))
    if m.error is not None:
        return
    m.route, m.slice_elems = sender_row[M_ROUTE], sender_row[M_SLICE]      # the sender's slicing
    if m.route == ROUTE_CODED:
        from .wire import CODEC_WIRE_NAMES, M_CODEC
        m.coding = Coding(CODEC_WIRE_NAMES[sender_row[M_CODEC]], m.options.get("codebook"))
    t = m.tensor
    m.target = t if t.is_contiguous() else torch.empty_like(t, memory_format=torch.contiguous_format)
    m.t_data = time.perf_counter()
    if m.route == ROUTE_RAW:
        if t.numel():
            m.works = [dist.irecv(m.target.reshape(-1).view(torch.uint8), m.peer_global, m.group, m.tags[2])] \
                if link.framing == "capacity" else []
        return
    m.exchanges = _exchanges(link, eng, m)
    if link.framing == "capacity":
        for ex, _, _ in m.exchanges:
            ex.start()


def _codebook_verdict(sender_row: list[int], m: _Message, rank: int) -> BaseException | None:
    """A CodebookError when the sender codes with a codebook this receiver cannot decode with."""
    tag = sender_row[M_CB_TAG]
    if tag in (tag_to_int(ADAPTIVE_TAG), tag_to_int(NO_TAG)):
        return None
    digest = tag_to_str(tag)
    if getattr(m.options.get("codebook"), "digest", None) == digest:
        return None
    try:
        lookup(digest)
    except CodebookError:
        return CodebookError(f"qlccomm p2p (rank {m.peer} -> rank {rank}, tag {m.tag}): the sender codes with "
                             f"codebook {digest}, which the receiver does not have (pass codebook= to irecv)")
    return None


def _chunks(m: _Message) -> list[tuple[int, int]]:
    """The message's chunks (element bounds): whole slices, at most MAX_CHUNK_BYTES each."""
    n, s = m.tensor.numel(), m.slice_elems
    step = max(s, (MAX_CHUNK_BYTES // m.tensor.element_size()) // s * s)
    return [(a, min(n, a + step)) for a in range(0, n, step)]


def _exchanges(link, eng: _Engine, m: _Message) -> list:
    """One Exchange per chunk on pool buffers; a receiver's receives registered."""
    t, s = m.tensor, m.slice_elems
    out = []
    for a, b in _chunks(m):
        k = -(-(b - a) // s)
        buf = eng.pool.take(k * slot_bytes(s, t.dtype), t.device)
        none = t.new_empty(0, dtype=torch.uint8)
        ex = Exchange(link, m.seq, t.dtype, m.coding, s, k if m.send else 0, 0 if m.send else k, t.device,
                      buffers=(buf, none) if m.send else (none, buf), tags={DATA_STREAM: m.tags[2]})
        ex.pool_buffer = buf
        if not m.send:
            flat = m.target.reshape(-1)
            ex.handles = [(ex.expect(("m", q), m.peer, DATA_STREAM, q, min(s, b - a - q * s)),
                           flat[a + q * s:min(b, a + (q + 1) * s)]) for q in range(k)]
        out.append((ex, a, b))
    return out


def _send_data(link, eng: _Engine, m: _Message) -> None:
    """Sender: the raw bytes, or every slice coded as it goes (fire and forget)."""
    t = m.tensor
    m.t_data = time.perf_counter()
    src = (t if t.is_contiguous() else t.contiguous()).reshape(-1)
    if m.route == ROUTE_RAW:
        if t.numel() and link.framing == "capacity":
            m.works = [dist.isend(src.view(torch.uint8), m.peer_global, m.group, m.tags[2])]
        m.target = src
        return
    m.exchanges = _exchanges(link, eng, m)
    s = m.slice_elems
    for ex, a, b in m.exchanges:
        for q in range(-(-(b - a) // s)):
            ex.send(("m", q), [m.peer], DATA_STREAM, q, src[a + q * s:min(b, a + (q + 1) * s)])


def _sized_data(link, eng: _Engine, msgs: list[_Message]) -> None:
    """Sized framing: the data of every message of the batch, slice round by slice round, each
    round's frames and payloads as batch_isend_irecv calls (raw messages in the first)."""
    raw = [m for m in msgs if m.route == ROUTE_RAW and m.tensor.numel()]
    ops = []
    for m in raw:
        if m.send:
            m.target = (m.tensor if m.tensor.is_contiguous() else m.tensor.contiguous()).reshape(-1)
            ops.append(dist.P2POp(dist.isend, m.target.view(torch.uint8), m.peer_global, m.group, m.tags[2]))
        else:
            ops.append(dist.P2POp(dist.irecv, m.target.reshape(-1).view(torch.uint8), m.peer_global, m.group,
                                  m.tags[2]))
    for w in dist.batch_isend_irecv(ops) if ops else []:
        w.wait()
    coded = [m for m in msgs if m.route == ROUTE_CODED]
    for m in coded:
        if m.send:
            _send_data(link, eng, m)            # codes every slice; queued under its key
    rounds = max((len(m.exchanges) and max(-(-(b - a) // m.slice_elems) for _, a, b in m.exchanges)
                  for m in coded), default=0)
    for q in range(rounds):
        wait_keys([(ex, ("m", q)) for m in coded for ex, _, _ in m.exchanges])


def _finish(state, eng: _Engine, m: _Message) -> None:
    """Wait for the data (a receiver: decode it), return the buffers, record the message."""
    t = m.tensor
    totals = _Totals()
    try:
        for w in m.works if m.route == ROUTE_RAW else []:
            w.wait()
        for ex, a, b in m.exchanges:
            try:
                if not m.send:
                    for h, out in ex.handles:
                        ex.decode(h, out)
                ex.finish()
            finally:
                totals.add(ex)
                eng.pool.give(ex.pool_buffer)
        if not m.send and m.target is not t:
            t.copy_(m.target)
    except BaseException as e:  # noqa: BLE001 - the message's error, raised by its work
        m.error = e
        return
    seconds = time.perf_counter() - m.t_data
    nbytes = t.numel() * t.element_size()
    wire = totals.coded if m.route == ROUTE_CODED else nbytes
    st = m.stats
    st.seconds, st.compressed = seconds, m.route == ROUTE_CODED
    st.route = "coded" if m.route == ROUTE_CODED else "plain"
    if m.send:
        st.raw_bytes, st.plain_bytes = nbytes, nbytes
        st.coded_bytes = st.sent_bytes = wire
        if m.route == ROUTE_CODED and wire:
            stream = state.model.stream(("p2p", t.dtype, t.numel(), m.key))
            stream.ratio = costmodel._ewma(stream.ratio, nbytes / wire)
    else:
        eng.arrived[m.key] = (wire, int(seconds * 1e6), m.route)
