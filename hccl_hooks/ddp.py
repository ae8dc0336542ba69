"""DDP communication hooks: lossless compressed gradient averaging, and its uncompressed baseline.

Both hooks average each bucket by summing the ranks' gradients in rank order in
float32 (qlccomm.collectives.reference_all_reduce), so a model trained with
`qlc_allreduce_hook` ends bit-identical to one trained with
`ordered_allreduce_hook`.  PyTorch's own `allreduce_hook` sums in the order of
its ring, which no compressed scheme can reproduce.
"""
import logging
import os
import threading

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks import default_hooks

import qlccomm
from qlccomm.codebook import ADAPTIVE, DEFAULT, Codebook, check_codebook_arg, fit_codebook, resolve_codebook
from qlccomm.collectives import DEFAULT_MIN_COMPRESS_BYTES, WireStats, reference_all_reduce
from qlccomm.split import candidate_plans
from qlccomm.transport import all_gather_fixed

_COUNTERS = ("calls", "compressed_calls", "raw_bytes", "coded_bytes", "sent_bytes", "plain_bytes", "meta_bytes")


class QLCStats:
    """Bytes before and after coding, per bucket index and cumulative.

    `buckets[i]` and `total` hold: calls, compressed_calls, raw_bytes (bucket bytes
    before coding), coded_bytes (bytes after coding), sent_bytes / plain_bytes (bytes
    this rank put on the wire, and would have without coding), meta_bytes
    (handshakes).  Note that DDP renumbers buckets after its first iteration.
    """

    def __init__(self):
        self._lock = threading.Lock()
        self.buckets = {}
        self.total = dict.fromkeys(_COUNTERS, 0)
        self.last = None

    def record(self, index, ws):
        with self._lock:
            b = self.buckets.setdefault(index, dict.fromkeys(_COUNTERS, 0))
            for d in (b, self.total):
                d["calls"] += 1
                d["compressed_calls"] += int(ws.compressed)
                d["raw_bytes"] += ws.raw_bytes
                d["coded_bytes"] += ws.coded_bytes
                d["sent_bytes"] += ws.sent_bytes
                d["plain_bytes"] += ws.plain_bytes
                d["meta_bytes"] += ws.meta_bytes
            self.last = ws

    @property
    def saved_bytes(self):
        """Wire bytes saved so far (plain minus sent)."""
        return self.total["plain_bytes"] - self.total["sent_bytes"]

    @property
    def ratio(self):
        """Coding ratio so far: bytes before coding / bytes after."""
        return self.total["raw_bytes"] / self.total["coded_bytes"] if self.total["coded_bytes"] else 1.0

    def reset(self):
        with self._lock:
            self.buckets.clear()
            self.total = dict.fromkeys(_COUNTERS, 0)
            self.last = None

    def summary(self):
        t = self.total
        return (f"{t['calls']} calls ({t['compressed_calls']} coded): {t['raw_bytes']} B -> {t['coded_bytes']} B "
                f"coded (x{self.ratio:.3f}); on the wire {t['sent_bytes']} B vs {t['plain_bytes']} B plain, "
                f"saved {self.saved_bytes} B")


ENV_HOOK = "QLCCOMM_DDP_HOOK"       # "off": qlc_allreduce_hook behaves like torch's allreduce_hook
log = logging.getLogger("qlccomm.ddp")


class QLCState:
    """State of `qlc_allreduce_hook`.

    process_group: the group to reduce over (None: the default group).
    codebook: "adaptive" (each slice embeds a code fitted to it), "default" (the
        built-in per-dtype codebooks), a Codebook, a {dtype: Codebook-or-path} dict, or a
        codebook file (what qlccomm.codebook.resolve_codebook takes; TypeError here for
        anything else).  It applies to the buckets coded with QLC.  Every rank must use
        the same; a mismatch raises on every rank.
    min_compress_bytes: buckets smaller than this travel uncoded.
    refit_every: every that many hook calls, fit a codebook on the averaged gradient of
        the current bucket (identical on every rank, so the digests agree) and use it,
        referenced by digest, from then on (that call waits for its all-reduce).  0: never.
    codec: "qlc" (default), "enec" or "raw" (no coding; for measurements).
    enabled: False (or env QLCCOMM_DDP_HOOK=off) makes the hook torch's `allreduce_hook`.
    start_compress_iter: iterations run with torch's `allreduce_hook` first (like
        PowerSGD's `start_powerSGD_iter`; an iteration ends with the bucket `is_last()`).
    compress: None (qlccomm's cost model decides per bucket whether coding pays), True
        (always code) or False (never).
    deterministic: True reduces in rank order in float32 on every route, so training is
        bit-identical to `ordered_allreduce_hook` whatever the cost model picks; False
        lets uncoded buckets use `dist.all_reduce` (identical on every rank, the
        backend's summation order).
    log_every: log `stats.summary()` through the "qlccomm.ddp" logger every that many
        iterations (0: never).
    """

    def __init__(self, process_group=None, codebook="adaptive", min_compress_bytes=DEFAULT_MIN_COMPRESS_BYTES,
                 refit_every=0, codec="qlc", *, enabled=True, start_compress_iter=0, compress=None,
                 deterministic=False, log_every=0, link_gbps=None):
        if refit_every < 0 or start_compress_iter < 0 or log_every < 0:
            raise ValueError("refit_every, start_compress_iter and log_every must be >= 0")
        check_codebook_arg(codebook)
        self.process_group = process_group
        self.codebook = codebook
        self.min_compress_bytes = min_compress_bytes
        self.refit_every = int(refit_every)
        self.codec = codec
        self.enabled = bool(enabled) and os.environ.get(ENV_HOOK, "").strip().lower() not in ("off", "0")
        self.start_compress_iter = int(start_compress_iter)
        self.compress = compress
        self.deterministic = deterministic
        self.log_every = int(log_every)
        self.link_gbps = link_gbps
        self.stats = QLCStats()
        self.calls = 0
        self.iter = 0
        self.fitted = {}     # dtype -> Codebook from the latest refit
        self._loaded = {}    # dtype -> Codebook loaded from a file

    def codebook_for(self, dtype):
        """The codebook argument for a bucket of `dtype`."""
        if dtype in self.fitted:
            return self.fitted[dtype]
        cb = self.codebook
        if cb is None or isinstance(cb, (Codebook, dict)) or (isinstance(cb, str) and cb in (ADAPTIVE, DEFAULT)):
            return cb                 # the collective resolves it (and leaves it unused for ENEC or raw buckets)
        if dtype not in self._loaded:
            self._loaded[dtype] = resolve_codebook(cb, dtype)
        return self._loaded[dtype]

    def refit(self, tensor):
        """Fit the codebook for `tensor.dtype` on `tensor` (call with data identical on every rank)."""
        if candidate_plans(tensor.dtype) and tensor.numel():
            # transient: every rank passes its own to the all-reduce, so it need not be registered for
            # digest look-ups (refits would otherwise pile up there over a long job)
            self.fitted[tensor.dtype] = fit_codebook(tensor.detach().reshape(-1), transient=True)

    def end_of_bucket(self, bucket) -> None:
        """Count iterations (an iteration ends with the last bucket) and log every `log_every`."""
        if bucket.is_last():
            self.iter += 1
            if self.log_every and self.iter % self.log_every == 0:
                log.info("qlccomm DDP hook, iteration %d: %s", self.iter, self.stats.summary())


def qlc_allreduce_hook(state, bucket):
    """Average the bucket's gradients with a lossless compressed all-reduce, without blocking backward.

    The all-reduce runs on qlccomm's communication thread (coding, cost model and
    transfer overlap the rest of backward); the future's value is the averaged
    gradient, as with PyTorch's `allreduce_hook`, identical bits on every rank.
    Bytes before and after coding go to `state.stats` when the bucket is done.

    Example::
        >>> state = QLCState(process_group=None, codebook="adaptive")
        >>> ddp_model.register_comm_hook(state, qlc_allreduce_hook)
    """
    if not state.enabled or state.iter < state.start_compress_iter:
        fut = default_hooks.allreduce_hook(state.process_group, bucket)
        state.end_of_bucket(bucket)
        return fut
    buf = bucket.buffer()
    ws = WireStats()
    state.calls += 1
    refit = state.refit_every > 0 and state.calls % state.refit_every == 0
    index = bucket.index()
    work = qlccomm.all_reduce(buf, op=dist.ReduceOp.AVG, group=state.process_group, async_op=True,
                              codec=state.codec, codebook=state.codebook_for(buf.dtype),
                              min_compress_bytes=state.min_compress_bytes, stats=ws, compress=state.compress,
                              deterministic=state.deterministic, link_gbps=state.link_gbps)

    def done(fut):
        value = fut.value()           # re-raises the all-reduce's error
        state.stats.record(index, ws)
        return value

    fut = work.get_future().then(done)
    if refit:
        # waits, so that every rank switches codebooks before its next bucket
        fut.wait()
        state.refit(buf)
    state.end_of_bucket(bucket)
    return fut


def cast_wrapper(hook, dtype=torch.float16):
    """Run `hook` on a copy of the bucket cast to `dtype` (fp16 or bf16), then cast back.

    The cast is lossy, as with torch's `fp16_compress_hook`; the hook under it (e.g.
    `qlc_allreduce_hook`) then codes the cast gradient losslessly.  Use it where
    `fp16_compress_wrapper` / `bf16_compress_wrapper` would go::

        >>> ddp_model.register_comm_hook(QLCState(), cast_wrapper(qlc_allreduce_hook, torch.bfloat16))
    """
    if dtype not in (torch.float16, torch.bfloat16):
        raise ValueError(f"cast_wrapper casts to torch.float16 or torch.bfloat16, not {dtype}")

    def wrapped(state, bucket):
        full = bucket.buffer()
        bucket.set_buffer(full.to(dtype))
        fut = hook(state, bucket)

        def restore(f):
            full.copy_(f.value())
            return full

        return fut.then(restore)

    wrapped.__name__ = f"{getattr(hook, '__name__', 'hook')}_{str(dtype).removeprefix('torch.')}_cast"
    return wrapped


def ordered_allreduce_hook(process_group, bucket):
    """Uncompressed gradient averaging with the arithmetic of `qlc_allreduce_hook`.

    Gathers every rank's bucket and reduces in rank order in float32: the baseline a
    compressed run is bit-identical to.  The state is a process group (None: the
    default group) or a QLCState.

    Example::
        >>> ddp_model.register_comm_hook(None, ordered_allreduce_hook)
    """
    group = getattr(process_group, "process_group", process_group)
    buf = bucket.buffer()
    world = dist.get_world_size(group)
    gathered = torch.empty(world * buf.numel(), dtype=buf.dtype, device=buf.device)
    work = all_gather_fixed(gathered.view(torch.uint8), buf.reshape(-1).view(torch.uint8), group, async_op=True)

    def average(fut):
        fut.value()
        buf.copy_(reference_all_reduce(list(gathered.view(world, -1)), op=dist.ReduceOp.AVG).view_as(buf))
        return buf

    return work.get_future().then(average)
