"""Compressed point-to-point: send, recv, isend, irecv and batch_isend_irecv, shaped like torch's.

    qlccomm.send(t, dst, group=None, tag=0, *, codec="qlc", codebook=None, compress=None, ...)
    qlccomm.recv(t, src=None, group=None, tag=0, *, codebook=None)     # fills t; returns the sender's rank
    work = qlccomm.isend(t, dst) / qlccomm.irecv(t, src)               # wait(), is_completed(), get_future()
    works = qlccomm.batch_isend_irecv([qlccomm.P2POp(qlccomm.isend, t, peer), ...])   # or dist.P2POps

Every message has two headers (wire.MessageHeader), which cross: the sender's (dtype,
shape, route: its cost model's pick, codec, codebook, slice size) and the receiver's (what
its tensor holds; how the previous message on this (peer, tag) arrived, which is how the
sender's model learns the link).  Both ends check the pair: they agree, or both raise the
same typed error naming both sides (docs/distributed.md, "Point-to-point").

The data's layout (raw bytes, or coded slices of a size) is usually the previous message's
on the same (peer, tag): both ends know it (the *plan*), so on gloo the receiver posts
receives for it together with its header, when irecv is called, and the sender whose
message follows the plan sends at once, into those receives (PRE), without waiting for the
receiver.  gloo delivers a message only after the receiver's "ready" notice reaches the
sender, and that notice queues behind whatever the receiver is itself sending to that peer:
a receive posted late would wait for the other direction's traffic.  A message that does
not follow the plan fills the planned receives with empty messages, waits for the
receiver's header and goes on POST into receives posted after it; so does every message
coded with a codebook referenced by digest, after a second round in which the receiver
says whether it has that codebook.  Sizes therefore never surprise a receive (gloo aborts
a process that gets a larger message than it posted for), and a receiver's tensor is only
written by a message that matches it.

Messages on one (peer, tag, direction) are matched in call order, as torch's are; the
sends of a batch that starts at once post their data in call order, per peer.  gloo tags
0x52000000 + 4 * (tag mod 2**20) + {0: sender's header, 1: receiver's header, 2: PRE,
3: POST} carry them.  On gloo a batch posts what it can in the calling thread and runs the
rest on a thread of its own (idle threads are reused), after the earlier batches on its
keys.  With sized framing (NCCL, HCCL; gloo with QLCCOMM_FRAMING=sized) a group's batches
run one after another in call order: the headers as one batch_isend_irecv, then the data
on POST with its sizes (no plan, no pipelining).
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from . import costmodel
from .api import compress
from .codebook import lookup, resolve_codebook
from .collectives import MAX_CHUNK_BYTES, _group_state, _options, _resolve_coding, _slice_elems, _Totals
from .errors import CodebookError, FormatError
from .format import DTYPES_BY_CODE
from .transport import BufferPool, Coding, Exchange, slot_bytes, wait_keys
from .wire import (ADAPTIVE_TAG, CODEC_WIRE_NAMES, KIND_RECV, KIND_SEND, M_CB_TAG, M_CODEC, M_DTYPE, M_FB_BYTES,
                   M_FB_ROUTE, M_FB_US, M_MAGIC, M_NDIM, M_NUMEL, M_ROUTE, M_SHAPE, M_SLICE, M_STATUS, MAX_DIMS,
                   MESSAGE_MAGIC, NO_TAG, MessageHeader, WireStats, check_message, message_row_length, tag_to_int,
                   tag_to_str)
from .worker import CollectiveWork, submit_work

__all__ = ["send", "recv", "isend", "irecv", "batch_isend_irecv", "P2POp"]

P2P_TAG_BASE = 0x52000000
P2P_TAG_SLOTS = 1 << 20
ROUTE_RAW, ROUTE_CODED = 0, 1
DATA_STREAM = 3
PRE, POST = 2, 3          # _tags index: data into receives posted with the header / after the sender's header


def _tags(tag: int) -> tuple[int, int, int, int]:
    """gloo tags of a user tag: the sender's header, the receiver's header (and round 2), the
    data into receives posted early (PRE), the data into receives posted late (POST)."""
    if tag < 0:
        raise ValueError(f"p2p tags are >= 0, not {tag}")
    base = P2P_TAG_BASE + 4 * (tag % P2P_TAG_SLOTS)
    return base, base + 1, base + 2, base + 3


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
    key: tuple = ()                      # (peer, tag mod 2**20, sending)
    seq: int = 0
    peer_global: int | None = None
    error: BaseException | None = None
    route: int = ROUTE_RAW
    coding: Coding = field(default_factory=lambda: Coding("raw"))
    slice_elems: int = 0
    header: MessageHeader | None = None
    mine: torch.Tensor | None = None      # this side's header row
    theirs: torch.Tensor | None = None    # the other side's
    header_works: list = field(default_factory=list)   # [receive of theirs, send of mine (or a later one)]
    plan: tuple | None = None             # the layout both ends expect (the last good message's on this key)
    fast: bool = False                    # the data follows the plan: sent and received without waiting
    target: torch.Tensor | None = None    # a receiver's contiguous tensor to fill
    works: list = field(default_factory=list)       # raw data
    exchanges: list = field(default_factory=list)   # coded data: (Exchange, first element, end element)
    fillers: list = field(default_factory=list)     # a sender: the empty messages owed to planned receives
    discard: tuple = ((), ())             # a receiver: (works, exchanges) planned but not used
    staging: list = field(default_factory=list)     # pool buffers to give back
    t_data: float = 0.0
    after: tuple | None = None            # a sender: (ready, posted) of the previous send to the same peer
    ready: threading.Event | None = None  # a sender: set once it no longer waits for the peer
    posted: threading.Event | None = None  # ... and once its data is posted
    codebook_digest: str = ""             # coded with a codebook referenced by digest: round 2 asks
    cb_word: torch.Tensor | None = None   # round 2: the receiver's 1 (has it) or 0

    @property
    def tags(self) -> tuple[int, int, int, int]:
        return _tags(self.tag)


class _Engine:
    """A group's point-to-point state: per (peer, tag, direction) the messages so far, the last
    batch's completion (messages on one key run in call order) and the plan (the layout of its
    last good message); a buffer pool; what the receivers report back."""

    def __init__(self):
        self.lock = threading.Lock()
        self.seq: dict[tuple, int] = {}
        self.tail: dict[tuple, threading.Event] = {}
        self.plans: dict[tuple, tuple] = {}
        self.last_send: dict[int, tuple] = {}      # peer -> (ready, posted) of the last send that started at once
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
    """Run one batch after the earlier batches on its keys; one work per message.  On gloo a
    batch that can start at once posts its headers, planned receives and raw planned data here,
    in the caller's thread (so that they are posted in call order and before anything later)."""
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
            m.key = (m.peer, m.tag % P2P_TAG_SLOTS, m.send)
            m.seq = eng.seq.get(m.key, 0)
            eng.seq[m.key] = m.seq + 1
        before = [eng.tail.get(m.key) for m in msgs]
        for m in msgs:
            eng.tail[m.key] = done
        at_once = not any(before)
        if at_once:                  # its data goes to each peer after the earlier sends'
            for m in msgs:
                if m.send:
                    m.after, m.ready, m.posted = eng.last_send.get(m.peer), threading.Event(), threading.Event()
                    eng.last_send[m.peer] = (m.ready, m.posted)
    capacity = state.link.framing == "capacity"
    if at_once and capacity:
        try:
            _post(state, eng, msgs)
        except BaseException:
            done.set()
            raise

    def job():
        try:
            for ev in before:
                if ev is not None:
                    ev.wait()
            with torch.no_grad():
                if not at_once and capacity:
                    _post(state, eng, msgs)
                (_complete if capacity else _complete_sized)(state, eng, rank, msgs)
        finally:
            for m in msgs:
                if m.ready is not None:
                    m.ready.set()
                    m.posted.set()
            done.set()

    device = msgs[0].tensor.device
    batch = submit_work(_THREADS.submit if capacity else state.worker.submit, job, None, device)
    return [_MessageWork(torch.futures.Future(), m, batch) for m in msgs]


class _Threads:
    """Runs every job on a thread of its own: an idle one when there is one, else a new one.
    Not a bounded pool: batches wait for each other and for the peer, and a batch that
    waits for a thread behind blocked ones could deadlock.  Threads idle for IDLE_S exit."""

    IDLE_S = 60.0

    def __init__(self):
        self._lock = threading.Lock()
        self._idle: list[queue.SimpleQueue] = []

    def submit(self, job) -> torch.futures.Future:
        fut = torch.futures.Future()
        with self._lock:
            inbox = self._idle.pop() if self._idle else None
        if inbox is None:
            inbox = queue.SimpleQueue()
            threading.Thread(target=self._loop, args=(inbox,), name="qlccomm-p2p", daemon=True).start()
        inbox.put((job, fut))
        return fut

    def _loop(self, inbox: queue.SimpleQueue) -> None:
        while True:
            try:
                job, fut = inbox.get(timeout=self.IDLE_S)
            except queue.Empty:
                with self._lock:
                    if inbox in self._idle:       # nobody took this thread meanwhile: leave
                        self._idle.remove(inbox)
                        return
                continue                          # a job is on its way
            try:
                fut.set_result(job())
            except BaseException as e:  # noqa: BLE001 - handed to the works
                fut.set_exception(e)
            del job, fut
            with self._lock:
                self._idle.append(inbox)


_THREADS = _Threads()


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


# -- gloo (capacity framing) ----------------------------------------------------------------------------
def _post(state, eng: _Engine, msgs: list[_Message]) -> None:
    """Everything a batch can post before hearing from its peers: both headers, a receiver's
    planned receives, a sender's planned data (raw now; coded slices on the batch's thread)
    or the empty messages it owes the planned receives.  Never waits."""
    link = state.link
    with torch.no_grad():
        for m in msgs:
            _describe(state, eng, m)
        for m in msgs:
            peer = None if m.peer is None else link.global_rank(m.peer)
            their, mine = (1, 0) if m.send else (0, 1)
            m.header_works = [dist.irecv(m.theirs, peer, m.group, m.tags[their]),
                              dist.isend(m.mine, peer, m.group, m.tags[mine]) if peer is not None else None]
            if m.peer is None:
                continue                        # a receive from any rank: the rest once the sender is known
            m.plan = eng.plans.get(m.key)
            if not m.send:
                _post_planned(link, eng, m)
                continue
            m.fast = _follows_plan(m.mine.tolist(), m.plan)
            if m.plan is not None and not m.fast:
                empty = m.tensor.new_empty(0, dtype=torch.uint8)
                m.fillers = [dist.isend(empty, m.peer_global, m.group, m.tags[PRE])
                             for _ in range(_planned_receives(m.plan))]
            elif m.fast and m.route == ROUTE_RAW:
                _send_data(link, eng, m, m.tags[PRE])
                _set(m.posted)


def _complete(state, eng: _Engine, rank: int, msgs: list[_Message]) -> None:
    """The rest of a gloo batch, in an order that cannot deadlock: the planned coded data,
    the headers (a receiver's first), the late receives and data they call for, the waits."""
    link = state.link
    receivers = [m for m in msgs if not m.send]
    senders = [m for m in msgs if m.send]
    for m in senders:
        if m.fast:
            if m.ready is not None:
                m.ready.set()
            if m.route == ROUTE_CODED:
                _wait_turn(m)
                _send_data(link, eng, m, m.tags[PRE])
                _set(m.posted)
    for m in receivers:
        m.header_works[0].wait()
        if m.peer is None:                      # any source: now known (gloo reports the group rank)
            m.peer = m.header_works[0].source_rank()
            m.peer_global, m.key = link.global_rank(m.peer), (m.peer, m.key[1], False)
            m.header_works[1] = dist.isend(m.mine, m.peer_global, m.group, m.tags[1])
            m.plan = eng.plans.get(m.key)
            _post_planned(link, eng, m)
        _agree(eng, rank, m)
    for m in senders:
        m.header_works[0].wait()
        _agree(eng, rank, m)
    _round_two(link, rank, [m for m in msgs if m.codebook_digest and m.error is None])
    for m in msgs:
        if m.error is None:
            eng.plans[m.key] = _layout((m.mine if m.send else m.theirs).tolist())
    for m in receivers:
        if m.error is None and not m.fast:
            _post_receives(link, eng, m, m.tags[POST])
    for m in senders:
        if m.ready is not None:
            m.ready.set()
        if not m.fast:
            _wait_turn(m)
            if m.error is None:
                _send_data(link, eng, m, m.tags[POST])
            _set(m.posted)
    for m in msgs:
        m.header_works[1].wait()
        _finish(state, eng, m)


def _wait_turn(m: _Message) -> None:
    """A sender: let the previous send to the same peer post its data first (messages then
    arrive in call order, as torch's do), unless that one still waits for its receiver."""
    if m.after is not None:
        ready, posted = m.after
        if ready.is_set():
            posted.wait()


def _layout(sender_row: list[int]) -> tuple:
    """What a receive must look like for this message: dtype, shape, route, codec, slice."""
    return (sender_row[M_DTYPE], sender_row[M_NUMEL], (sender_row[M_NDIM], *sender_row[M_SHAPE:M_SHAPE + MAX_DIMS]),
            sender_row[M_ROUTE], sender_row[M_CODEC], sender_row[M_SLICE])


def _follows_plan(sender_row: list[int], plan: tuple | None) -> bool:
    """Whether the sender of this header sends at once into the planned receives: it has a plan,
    did not fail, and neither changes the layout nor codes with a codebook referenced by digest."""
    return (plan is not None and sender_row[M_MAGIC] == MESSAGE_MAGIC and not sender_row[M_STATUS]
            and not _digest_coded(sender_row) and _layout(sender_row) == plan)


def _planned_receives(plan: tuple) -> int:
    """Receives a plan posts: one for raw data, one per slice for coded data (none when empty)."""
    _, numel, _, route, _, s = plan
    if numel <= 0:
        return 0
    return 1 if route == ROUTE_RAW else -(-numel // s)


def _post_planned(link, eng: _Engine, m: _Message) -> None:
    """Receiver: the receives of its plan, on PRE: into its tensor when the tensor is what the
    plan describes, else into pool buffers (whatever arrives there is dropped)."""
    plan = m.plan
    if plan is None:
        return
    dcode, numel, dims, route, codec, s = plan
    dtype = DTYPES_BY_CODE.get(dcode)
    if dtype is None or (route == ROUTE_CODED and (codec not in CODEC_WIRE_NAMES or not 0 < s <= MAX_CHUNK_BYTES)):
        raise FormatError(f"qlccomm p2p: the plan {plan} is not a layout")         # a broken state, never a peer's
    mine = _layout(m.mine.tolist())
    fits = m.error is None and (mine[0], mine[1], mine[2]) == (dcode, numel, dims)
    if fits:
        m.target = m.tensor if m.tensor.is_contiguous() else torch.empty_like(m.tensor,
                                                                              memory_format=torch.contiguous_format)
    if route == ROUTE_RAW:
        if numel:
            buf = m.target.reshape(-1).view(torch.uint8) if fits else _staging(eng, m, numel * dtype.itemsize)
            m.works = [dist.irecv(buf, m.peer_global, m.group, m.tags[PRE])]
        return
    m.exchanges = _exchanges(link, eng, m, m.tags[PRE], dtype, numel, s, Coding(CODEC_WIRE_NAMES[codec],
                                                                                 m.options.get("codebook")),
                             m.target if fits else None)
    for ex, _, _ in m.exchanges:
        ex.start()


def _staging(eng: _Engine, m: _Message, nbytes: int) -> torch.Tensor:
    buf = eng.pool.take(nbytes, m.tensor.device)
    m.staging.append(buf)
    return buf[:nbytes]


def _round_two(link, rank: int, asked: list[_Message]) -> None:
    """Messages coded with a codebook referenced by digest: the receiver tells whether it has it;
    when it does not, both ends raise the same CodebookError."""
    if not asked:
        return
    if link.framing == "capacity":
        works = [dist.isend(m.cb_word, m.peer_global, m.group, m.tags[1]) if not m.send else
                 dist.irecv(m.cb_word, m.peer_global, m.group, m.tags[1]) for m in asked]
    else:
        works = dist.batch_isend_irecv([dist.P2POp(dist.irecv if m.send else dist.isend, m.cb_word, m.peer_global,
                                                   m.group, m.tags[1]) for m in asked])
    for w in works:
        w.wait()
    for m in asked:
        if int(m.cb_word.item()) == 0:
            src, dst = (rank, m.peer) if m.send else (m.peer, rank)
            m.error = CodebookError(f"qlccomm p2p (rank {src} -> rank {dst}, tag {m.tag}): the sender codes with "
                                    f"codebook {m.codebook_digest}, which the receiver does not have (pass "
                                    f"codebook= to irecv); no data was sent")


# -- both framings ----------------------------------------------------------------------------------------
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



def _agree(eng: _Engine, rank: int, m: _Message) -> None:
    """After the headers, on both ends: the verdict on the pair (the same text on both), whether
    the data follows the plan, the sender's slicing and coding, whether round 2 must ask."""
    sender_row, receiver_row = (m.mine, m.theirs) if m.send else (m.theirs, m.mine)
    sender_row, receiver_row = sender_row.tolist(), receiver_row.tolist()
    src, dst = (rank, m.peer) if m.send else (m.peer, rank)
    m.error = check_message(sender_row, receiver_row, sender_rank=src, receiver_rank=dst) or m.error
    if m.send and receiver_row[M_FB_BYTES] > 0:
        eng.reported[m.key] = (receiver_row[M_FB_BYTES], receiver_row[M_FB_US], receiver_row[M_FB_ROUTE])
    if not m.send:
        m.t_data = time.perf_counter()         # the data follows the sender's header
        m.fast = _follows_plan(sender_row, m.plan)
        if not m.fast or m.error is not None:  # the planned receives get empty messages, or data to drop
            m.discard, m.works, m.exchanges = (m.works, m.exchanges), [], []
    if m.error is not None:
        return
    m.route, m.slice_elems = sender_row[M_ROUTE], sender_row[M_SLICE]      # the sender's slicing
    if m.route == ROUTE_CODED:
        if not m.send:
            m.coding = Coding(CODEC_WIRE_NAMES[sender_row[M_CODEC]], m.options.get("codebook"))
        if _digest_coded(sender_row):
            m.codebook_digest = tag_to_str(sender_row[M_CB_TAG])
            m.cb_word = (torch.tensor([_has_codebook(m)], dtype=torch.int64) if not m.send
                         else torch.empty(1, dtype=torch.int64))


def _digest_coded(sender_row: list[int]) -> bool:
    return sender_row[M_ROUTE] == ROUTE_CODED and sender_row[M_CB_TAG] not in (tag_to_int(ADAPTIVE_TAG),
                                                                               tag_to_int(NO_TAG))


def _has_codebook(m: _Message) -> int:
    """Receiver: 1 when it can decode with the sender's codebook (given to irecv, or known)."""
    given = resolve_codebook(m.options.get("codebook"), m.tensor.dtype, strict=False)
    if given is not None and given.digest == m.codebook_digest:
        return 1
    try:
        lookup(m.codebook_digest)
    except CodebookError:
        return 0
    return 1



def _post_receives(link, eng: _Engine, m: _Message, tag: int) -> None:
    """Receiver, once the sender's header is in: the data's receives on gloo tag `tag`, raw
    straight into its tensor (or a contiguous stand-in), coded slices into pool buffers."""
    t = m.tensor
    if m.target is None:
        m.target = t if t.is_contiguous() else torch.empty_like(t, memory_format=torch.contiguous_format)
    if m.route == ROUTE_RAW:
        if t.numel() and link.framing == "capacity":
            m.works = [dist.irecv(m.target.reshape(-1).view(torch.uint8), m.peer_global, m.group, tag)]
        return
    m.exchanges = _exchanges(link, eng, m, tag, t.dtype, t.numel(), m.slice_elems, m.coding, m.target)
    if link.framing == "capacity":
        for ex, _, _ in m.exchanges:
            ex.start()


def _exchanges(link, eng: _Engine, m: _Message, tag: int, dtype: torch.dtype, numel: int, s: int, coding: Coding,
               out: torch.Tensor | None) -> list:
    """The Exchanges of `numel` elements in slices of `s`, one per chunk of at most
    MAX_CHUNK_BYTES, on pool buffers, their data on gloo tag `tag`; a receiver's receives
    registered, to be decoded into `out` (None: dropped)."""
    isz = dtype.itemsize
    step = max(s, (MAX_CHUNK_BYTES // isz) // s * s)
    flat = out.reshape(-1) if out is not None else None
    exchanges = []
    for a in range(0, numel, step):
        b = min(numel, a + step)
        k = -(-(b - a) // s)
        buf = eng.pool.take(k * slot_bytes(s, dtype), m.tensor.device)
        none = m.tensor.new_empty(0, dtype=torch.uint8)
        ex = Exchange(link, m.seq, dtype, coding, s, k if m.send else 0, 0 if m.send else k, m.tensor.device,
                      buffers=(buf, none) if m.send else (none, buf), tags={DATA_STREAM: tag})
        ex.pool_buffer = buf
        if not m.send:
            ex.handles = [(ex.expect(("m", q), m.peer, DATA_STREAM, q, min(s, b - a - q * s)),
                           None if flat is None else flat[a + q * s:min(b, a + (q + 1) * s)]) for q in range(k)]
        exchanges.append((ex, a, b))
    return exchanges


def _send_data(link, eng: _Engine, m: _Message, tag: int) -> None:
    """Sender: the raw bytes, or every slice coded as it goes, on gloo tag `tag` (capacity
    framing: posted as it goes; sized framing: queued for _sized_data)."""
    t = m.tensor
    m.t_data = time.perf_counter()
    src = (t if t.is_contiguous() else t.contiguous()).reshape(-1)
    m.target = src                              # alive until the sends complete
    if m.route == ROUTE_RAW:
        if t.numel() and link.framing == "capacity":
            m.works = [dist.isend(src.view(torch.uint8), m.peer_global, m.group, tag)]
        return
    m.exchanges = _exchanges(link, eng, m, tag, t.dtype, t.numel(), m.slice_elems, m.coding, None)
    s = m.slice_elems
    for ex, a, b in m.exchanges:
        for q in range(-(-(b - a) // s)):
            ex.send(("m", q), [m.peer], DATA_STREAM, q, src[a + q * s:min(b, a + (q + 1) * s)])


def _set(ev: threading.Event | None) -> None:
    if ev is not None:
        ev.set()


# -- sized framing (NCCL, HCCL) ---------------------------------------------------------------------------
def _complete_sized(state, eng: _Engine, rank: int, msgs: list[_Message]) -> None:
    """A batch with sized framing, on the group's worker (batches in call order): the headers
    as one batch_isend_irecv, round 2, then the data on POST with its sizes."""
    link = state.link
    for m in msgs:
        _describe(state, eng, m)
    ops = [dist.P2POp(dist.isend, m.mine, m.peer_global, m.group, m.tags[0 if m.send else 1]) for m in msgs]
    ops += [dist.P2POp(dist.irecv, m.theirs, m.peer_global, m.group, m.tags[1 if m.send else 0]) for m in msgs]
    for w in dist.batch_isend_irecv(ops):
        w.wait()
    for m in msgs:
        _agree(eng, rank, m)
    _round_two(link, rank, [m for m in msgs if m.codebook_digest and m.error is None])
    live = [m for m in msgs if m.error is None]
    for m in live:
        if not m.send:
            _post_receives(link, eng, m, m.tags[POST])
    raw = [m for m in live if m.route == ROUTE_RAW and m.tensor.numel()]
    ops = []
    for m in raw:
        if m.send:
            m.target = (m.tensor if m.tensor.is_contiguous() else m.tensor.contiguous()).reshape(-1)
        op = dist.isend if m.send else dist.irecv
        ops.append(dist.P2POp(op, m.target.reshape(-1).view(torch.uint8), m.peer_global, m.group, m.tags[POST]))
    for w in dist.batch_isend_irecv(ops) if ops else []:
        w.wait()
    coded = [m for m in live if m.route == ROUTE_CODED]
    for m in coded:
        if m.send:
            _send_data(link, eng, m, m.tags[POST])     # codes every slice; queued under its key
    rounds = max((max(-(-(b - a) // m.slice_elems) for _, a, b in m.exchanges) for m in coded if m.exchanges),
                 default=0)
    for q in range(rounds):
        wait_keys([(ex, ("m", q)) for m in coded for ex, _, _ in m.exchanges])
    for m in msgs:
        _finish(state, eng, m)


# -- the end of a message ---------------------------------------------------------------------------------
def _finish(state, eng: _Engine, m: _Message) -> None:
    """Wait for the data (a receiver: decode it; drop what planned receives got that this
    message did not use), return the buffers, record the message (unless it failed)."""
    t = m.tensor
    totals = _Totals()
    try:
        for w in m.fillers:
            w.wait()
        works, exchanges = m.discard
        for w in works:
            w.wait()
        for ex, _, _ in exchanges:
            try:
                ex.drop()
            finally:
                eng.pool.give(ex.pool_buffer)
        for w in m.works:
            w.wait()
        for ex, _, _ in m.exchanges:
            try:
                if not m.send:
                    for h, out in ex.handles:
                        ex.decode(h, out)
                ex.finish()
            finally:
                totals.add(ex)
                eng.pool.give(ex.pool_buffer)
        if m.error is None and not m.send and m.target is not None and m.target is not t:
            t.copy_(m.target)
    except BaseException as e:  # noqa: BLE001 - the message's error, raised by its work
        m.error = m.error or e
    finally:
        for buf in m.staging:
            eng.pool.give(buf)
    if m.error is not None:
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
