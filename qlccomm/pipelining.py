"""Compressed stage-to-stage traffic for `torch.distributed.pipelining`, in one line.

    from qlccomm.pipelining import compressed_p2p
    with compressed_p2p() as stats:          # keywords as for qlccomm.isend: compress=, codec=, ...
        schedule.step(x, target=y, losses=losses)
    print(stats.summary())

Every schedule of torch.distributed.pipelining (GPipe, 1F1B, interleaved, ...) sends its
activations forward and their gradients backward as lists of `dist.P2POp` through one
function, `torch.distributed.pipelining.schedules._batch_p2p` (also behind
`_sorted_batch_p2p`).  torch has no public hook there, so inside the block that function
is replaced by one that posts the same ops through `qlccomm.batch_isend_irecv`, and
restored on exit; nothing else of torch is touched (the schedules' small set-up messages
keep their own path).  Tested with torch 2.13.0; on a torch without that function the
block raises RuntimeError rather than run uncompressed.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch.distributed as dist

from .p2p import P2POp, batch_isend_irecv, irecv, isend
from .wire import WireStats

TESTED_TORCH = ("2.13",)


@dataclass
class P2PStats:
    """Bytes of the messages this rank sent inside the block (WireStats of each, summed)."""

    messages: int = 0
    coded_messages: int = 0
    raw_bytes: int = 0              # bytes of the tensors sent
    sent_bytes: int = 0             # bytes put on the wire for them (frames included)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    def record(self, ws: WireStats) -> None:
        with self._lock:
            self.messages += 1
            self.coded_messages += int(ws.compressed)
            self.raw_bytes += ws.raw_bytes
            self.sent_bytes += ws.sent_bytes

    @property
    def saved_bytes(self) -> int:
        return self.raw_bytes - self.sent_bytes

    def summary(self) -> str:
        return (f"{self.messages} messages sent ({self.coded_messages} coded): {self.raw_bytes} B of tensors, "
                f"{self.sent_bytes} B on the wire, saved {self.saved_bytes} B")


def _schedules():
    try:
        from torch.distributed.pipelining import schedules
    except ImportError as e:
        raise RuntimeError(f"qlccomm.pipelining needs torch.distributed.pipelining ({e})") from e
    if not callable(getattr(schedules, "_batch_p2p", None)):
        import torch
        raise RuntimeError(f"torch {torch.__version__}'s pipelining schedules have no _batch_p2p to route through "
                           f"qlccomm (tested with torch {', '.join(TESTED_TORCH)})")
    return schedules


@contextmanager
def compressed_p2p(**options):
    """Route the pipelining schedules' point-to-point ops through qlccomm inside the block;
    yields a P2PStats of what this rank sent.  `options` go to every qlccomm.isend."""
    schedules = _schedules()
    original = schedules._batch_p2p
    stats = P2PStats()

    def batch_p2p(p2p_ops, desc=None):
        if not p2p_ops:
            return []
        ops, sent = [], []
        for p in p2p_ops:
            if p.op is dist.isend:
                ws = WireStats()
                sent.append(ws)
                ops.append(P2POp(isend, p.tensor, group=p.group, tag=p.tag, group_peer=p.group_peer, stats=ws,
                                 **options))
            else:
                ops.append(P2POp(irecv, p.tensor, group=p.group, tag=p.tag, group_peer=p.group_peer))
        works = batch_isend_irecv(ops)
        for ws, w in zip(sent, [w for w, p in zip(works, p2p_ops) if p.op is dist.isend]):
            w.get_future().add_done_callback(lambda f, ws=ws: stats.record(ws))
        return works

    schedules._batch_p2p = batch_p2p
    try:
        yield stats
    finally:
        schedules._batch_p2p = original
