"""Compressed collectives over torch.distributed: lossless, pipelined, and only where coding pays.

    qlccomm.all_reduce(t, op=dist.ReduceOp.SUM, group=None, async_op=False, codec="qlc", codebook=None)
    qlccomm.all_gather_into_tensor(out, inp, group=None, async_op=False, codec="auto")
    qlccomm.reduce_scatter_tensor(out, inp, op=dist.ReduceOp.SUM, group=None, async_op=False, codec="qlc")
    qlccomm.broadcast(t, src, group=None, async_op=False, codec="auto")
    qlccomm.all_to_all_single(out, inp, output_split_sizes=None, input_split_sizes=None, group=None, codec="qlc")

Keyword-only on every call: codebook=, min_compress_bytes=, stats= (a WireStats),
compress= (None: the cost model decides; True / False force it; env
QLCCOMM_COMPRESS=auto|on|off), deterministic= (env QLCCOMM_DETERMINISTIC=1),
link_gbps= (env QLCCOMM_LINK_GBPS: the link speed the model assumes instead of
learning it), slice_bytes= (env QLCCOMM_SLICE_BYTES).

Every call begins with a fixed-size call header sent to every peer (wire.py): ranks
check each other's dtype, size, op, codec, codebook and routing arguments, and
agree on the route from each other's cost-model estimates, without a blocking
round trip before coding starts.  Then one of three routes:

  coded      the pipelined schedules (schedules.py) move coded slices point to point;
  pipelined  the same schedules with raw slices (deterministic=True when coding does
             not pay, or dtypes with no coded plan);
  dist       the torch.distributed collective itself (the fastest uncoded path).

Results: every rank always ends with identical bits.  The coded and pipelined
routes reduce each slice in rank order in float32 (reduction.py), equal to
`reference_all_reduce` computed from the uncompressed inputs; the dist route sums
in the backend's order.  `deterministic=True` never takes the dist route for
reductions, so its results never depend on the route, the link or the threshold.
"""
from __future__ import annotations

import math
import os
import threading
import time
import weakref
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from . import costmodel, schedules
from .api import pick_codec
from .codebook import check_codebook_arg, resolve_codebook
from .costmodel import CostModel
from .format import DTYPE_CODES
from .reduction import OP_AVG, Accumulator, accumulate_dtype, opcode, reference_all_reduce
from .transport import Coding, Exchange, Link, all_gather_fixed, reduce_scatter_fixed
from .wire import (ADAPTIVE_TAG, CHECKED, F_NUMEL, NO_TAG, N_FIXED, CallHeader, WireStats, agreed_route,
                   check_rows, digest_tag, row_length)
from .worker import CollectiveWork, GroupWorker, run

__all__ = ["all_reduce", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast", "all_to_all_single",
           "reference_all_reduce", "CollectiveWork", "WireStats", "DEFAULT_MIN_COMPRESS_BYTES",
           "DEFAULT_SLICE_BYTES"]

DEFAULT_MIN_COMPRESS_BYTES = 16 * 1024
"""Messages smaller than this (bytes of the tensor a rank contributes) are never coded."""
DEFAULT_SLICE_BYTES = 1 << 20
"""Raw bytes per pipelined slice."""
MIN_SLICE_ELEMS = 1024
MAX_CHUNK_BYTES = 64 << 20
"""Raw bytes a call moves through the pipeline at once; longer calls run chunk after chunk
(the persistent buffers of a group stay below ~3x this)."""
ENV_COMPRESS, ENV_DETERMINISTIC, ENV_SLICE = "QLCCOMM_COMPRESS", "QLCCOMM_DETERMINISTIC", "QLCCOMM_SLICE_BYTES"
_CODECS = ("auto", "qlc", "enec", "raw")


# -- per-group state ------------------------------------------------------------------------------
@dataclass
class _GroupState:
    link: Link
    model: CostModel
    worker: GroupWorker


_STATES: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()
_STATES_LOCK = threading.Lock()


def _group_state(group) -> tuple[_GroupState | None, int, int]:
    """(state, rank, world) of `group`; state None when this process is not a member."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("qlccomm collectives need torch.distributed.init_process_group first")
    pg = group if group is not None else dist.group.WORLD
    rank = dist.get_rank(pg)
    if rank < 0:
        return None, -1, 0
    world = dist.get_world_size(pg)
    with _STATES_LOCK:
        st = _STATES.get(pg)
        if st is None:
            st = _GroupState(Link(group, rank, world), CostModel(), GroupWorker(f"qlccomm-{id(pg):x}"))
            _STATES[pg] = st
    return st, rank, world


# -- options and coding ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Options:
    mode: str                  # "auto", "on", "off"
    min_bytes: int
    deterministic: bool
    slice_bytes: int
    link_Bps: float | None     # forced link speed (bytes/s), None: learned

    @property
    def link_mbps(self) -> int:
        return round(self.link_Bps * 8e-6) if self.link_Bps else 0


def _env_bool(name: str) -> bool:
    v = os.environ.get(name, "").strip().lower()
    if v in ("", "0", "false", "no", "off"):
        return False
    if v in ("1", "true", "yes", "on"):
        return True
    raise ValueError(f"{name}={v!r}: use 1 or 0")


def _options(compress, min_compress_bytes, deterministic, link_gbps, slice_bytes) -> _Options:
    if compress is None:
        mode = os.environ.get(ENV_COMPRESS, "auto").strip().lower() or "auto"
        if mode not in ("auto", "on", "off"):
            raise ValueError(f"{ENV_COMPRESS}={mode!r}: choose auto, on or off")
    elif isinstance(compress, bool):
        mode = "on" if compress else "off"
    else:
        raise TypeError(f"compress= takes None (the cost model decides), True or False, not {compress!r}")
    min_bytes = DEFAULT_MIN_COMPRESS_BYTES if min_compress_bytes is None else int(min_compress_bytes)
    if min_bytes < 0:
        raise ValueError(f"min_compress_bytes must be >= 0, not {min_bytes}")
    det = _env_bool(ENV_DETERMINISTIC) if deterministic is None else bool(deterministic)
    if slice_bytes is None:
        slice_bytes = int(os.environ.get(ENV_SLICE, DEFAULT_SLICE_BYTES))
    if int(slice_bytes) < 1024:
        raise ValueError(f"slice_bytes must be >= 1024, not {slice_bytes}")
    return _Options(mode, min_bytes, det, int(slice_bytes), costmodel.forced_link_Bps(link_gbps))


def _resolve_coding(dtype: torch.dtype, codec: str, codebook, device: torch.device | None = None
                    ) -> tuple[Coding, bytes]:
    """The coding every rank must agree on for `dtype` on `device`, and its codebook tag.

    "auto" is QLC on CPU tensors (there ENEC's per-call parameter search makes a slice
    slower to code than QLC's; docs/benchmarks.md) and qlccomm's per-dtype choice (ENEC
    for the wide floats) on accelerators.  `codebook` is read by
    qlccomm.codebook.resolve_codebook (TypeError for what it does not take, whatever the
    codec); it applies where the coding is QLC and is unused where it is ENEC or raw (the
    hooks pass theirs for every bucket; only `compress(codec="enec")` refuses one)."""
    if codec not in _CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(_CODECS)}")
    check_codebook_arg(codebook)            # TypeError whatever the codec (codebook.resolve_codebook)
    raw = Coding("raw"), NO_TAG
    if dtype not in DTYPE_CODES or codec == "raw":
        return raw
    if codec == "auto" and (device is None or device.type == "cpu"):
        codec = "qlc"
    if codec == "enec":
        try:
            name = pick_codec(dtype, "enec")
        except ValueError:                          # a dtype ENEC does not code: QLC or raw
            name = pick_codec(dtype, "auto")
    else:
        name = pick_codec(dtype, codec)
    if name == "raw":
        return raw
    if name == "enec":
        return Coding("enec"), NO_TAG
    cb = resolve_codebook(codebook, dtype)
    return Coding("qlc", cb), ADAPTIVE_TAG if cb is None else digest_tag(cb.digest)


def _dist_reduces(dtype: torch.dtype, backend: str) -> bool:
    """Whether the backend's own reductions take `dtype` (gloo: no float8; HCCL: no uint8/float64)."""
    if dtype in (torch.float16, torch.bfloat16, torch.float32, torch.int8, torch.int32, torch.int64):
        return True
    return dtype in (torch.uint8, torch.float64) and backend != "hccl"


def _slice_elems(opts: _Options, n: int, world: int, isz: int) -> int:
    """Elements per slice of an n-element message cut among `world` owners: at most the
    option's bytes, with the slice count a multiple of `world` (every owner gets as many
    slices of nearly equal size), and never below MIN_SLICE_ELEMS."""
    s_max = max(MIN_SLICE_ELEMS, opts.slice_bytes // isz)
    rounds = max(1, -(-n // (world * s_max)))
    return max(MIN_SLICE_ELEMS, -(-n // (world * rounds)))


# -- one call ---------------------------------------------------------------------------------------
@dataclass
class _Call:
    """One collective call on this rank: validated arguments, header, route, statistics."""

    kind: str
    state: _GroupState
    rank: int
    world: int
    device: torch.device
    dtype: torch.dtype
    numel: int                          # elements of the main tensor (this rank's input for all_to_all)
    opts: _Options
    stats: WireStats
    header: CallHeader
    coding: Coding = field(default_factory=lambda: Coding("raw"))
    reduces: bool = False               # a reduction: `deterministic` keeps it off the dist route
    checks: tuple = CHECKED
    check_more: object = None           # (rows) -> None: collective-specific checks of the rows
    flat: torch.Tensor | None = None    # the input, 1-D (samples for the cost model)

    @property
    def nbytes(self) -> int:
        """The main tensor's bytes: the cost model's M."""
        return self.numel * torch.empty(0, dtype=self.dtype).element_size()

    def codable(self, rows: list[list[int]] | None = None) -> bool:
        """Whether coding may run: a coded codec, more than one rank, and the largest rank's
        message not empty and not below min_compress_bytes (in every mode: compress=True
        skips the cost model, not the threshold).  With the rows, the same on every rank."""
        if not self.coding.coded or self.world == 1 or self.opts.mode == "off":
            return False
        numel = max(r[F_NUMEL] for r in rows) if rows is not None else self.numel
        nbytes = numel * torch.empty(0, dtype=self.dtype).element_size()
        return nbytes > 0 and nbytes >= self.opts.min_bytes

    def estimate(self) -> costmodel.Estimate | None:
        """Fill the header's cost-model fields (only in auto mode, for codable calls)."""
        if self.opts.mode != "auto" or not self.codable():
            return None
        model, dev, coding = self.state.model, self.device, self.coding
        stream = model.stream((self.kind, self.dtype, self.numel))
        sample = None

        def get_sample():
            nonlocal sample
            if sample is None:
                sample = costmodel.sample_of(self.flat)
            return sample
        speed = costmodel.codec_speed(coding.codec, coding.codebook, self.dtype, dev, get_sample)
        if stream.ratio is None:             # sampled once per stream, then learned from its coded calls
            from .api import compress
            x = get_sample()
            stream.ratio = x.numel() * x.element_size() / compress(x, codec=coding.codec,
                                                                    codebook=coding.codebook).numel()
        ratio = stream.ratio
        isz = torch.empty(0, dtype=self.dtype).element_size()
        s = _slice_elems(self.opts, self.numel, self.world, isz) * isz
        est = model.estimate(self.kind, self.nbytes, self.world, speed, ratio, s, dev.type, self.opts.link_Bps,
                             stream)
        self.header.t_plain_us = int(est.t_plain * 1e6)
        self.header.t_coded_us = int(est.t_coded * 1e6)
        self.header.probe = est.probe
        return est


_FALLBACK = _Options("auto", DEFAULT_MIN_COMPRESS_BYTES, False, DEFAULT_SLICE_BYTES, None)   # a failing rank's


def _begin(kind: str, group, stats, x: torch.Tensor, numel: int, codec: str, codebook, options: tuple,
           check=lambda header: None) -> "_Call | None":
    """Validate one call's arguments on this rank into its `_Call` (None: not a member of the group).

    `options`: the user's (compress, min_compress_bytes, deterministic, link_gbps, slice_bytes);
    `check(header)`: the collective's own validation (it may fill op, arg, extra).  Whatever
    fails is carried in the header for every rank to raise (a group of one raises at once)."""
    state, rank, world = _group_state(group)
    if state is None:
        return None
    header = CallHeader(kind, dtype=x.dtype, numel=numel)
    opts, coding = _FALLBACK, Coding("raw")
    try:
        opts = _options(*options)
        header.mode, header.min_bytes, header.deterministic = opts.mode, opts.min_bytes, opts.deterministic
        header.slice_elems, header.link_mbps = opts.slice_bytes, opts.link_mbps
        check(header)
        coding, header.tag = _resolve_coding(x.dtype, codec, codebook, x.device)
        header.codec = coding.codec
    except Exception as e:
        if world == 1:
            raise
        header.error = e
    return _Call(kind, state, rank, world, x.device, x.dtype, numel, opts, (stats or WireStats()).reset(kind),
                 header, coding)


def _execute(call: _Call, plain, pipelined) -> None:
    """Exchange headers, agree on the route, run it, learn from it (worker thread or caller)."""
    link, model, st = call.state.link, call.state.model, call.stats
    t0 = time.perf_counter()
    with torch.no_grad():
        est = None
        if call.header.error is None:
            try:
                est = call.estimate()
            except Exception as e:        # noqa: BLE001 - a failing sample is a failing rank
                call.header.error = e
        call.header.seq = link.seq
        link.seq += 1
        t_header = time.perf_counter()
        rows = link.wait_headers(link.post_headers(call.header.row(call.world), call.device))
        t_header = time.perf_counter() - t_header
        st.meta_bytes = (call.world - 1) * row_length(call.world) * 8
        check_rows(call.header, rows, call.checks)
        if call.check_more is not None:
            call.check_more(rows)
        coded = call.codable(rows) and agreed_route(rows)
        t_route = time.perf_counter()
        grown = link.grown
        if coded:
            st.route, st.compressed = "coded", True
            ex_stats = pipelined(call.coding)
        elif call.reduces and (call.opts.deterministic or not _dist_reduces(call.dtype, link.backend)):
            st.route = "pipelined"
            ex_stats = pipelined(Coding("raw"))
        else:
            st.route = "dist"
            ex_stats = None
            plain()
    done = time.perf_counter()
    st.seconds = done - t0
    seconds = done - t_route                    # the route alone: what the model predicts
    plain_bytes = int(costmodel.wire_factor(call.kind, call.world) * call.nbytes)
    st.plain_bytes = plain_bytes
    if ex_stats is None:
        st.raw_bytes = st.coded_bytes = st.sent_bytes = plain_bytes
        model.observe_plain(call.kind, call.nbytes, call.world, seconds)
    else:
        st.raw_bytes, st.coded_bytes, encoded, encode_s, decoded, decode_s, wait_s = ex_stats
        st.sent_bytes = st.coded_bytes
        st.model.update(encode_ms=round(encode_s * 1e3, 3), decode_ms=round(decode_s * 1e3, 3),
                        wait_ms=round(wait_s * 1e3, 3))
        if coded and link.grown == grown:       # a call that allocated buffers is not typical: not learned
            stream = model.stream((call.kind, call.dtype, call.numel))
            ratio = st.raw_bytes / st.coded_bytes if st.coded_bytes else 1.0
            model.observe_coded(call.kind, call.nbytes, call.world, seconds, est.t_coded if est else 0.0, stream,
                                ratio, st.sent_bytes, encode_s + decode_s)
            model.observe_codec(call.coding.codec, call.dtype, call.device.type, encoded, encode_s, decoded,
                                decode_s)
    if est is not None:
        model.called(model.stream((call.kind, call.dtype, call.numel)))
        st.model.update(est.inputs, probe=est.probe)
    st.model.update(header_ms=round(t_header * 1e3, 3), route_ms=round(seconds * 1e3, 3))


class _Totals:
    """Byte and time counters summed over the chunks of one call (for WireStats and the model)."""

    def __init__(self):
        self.raw = self.coded = self.encoded = self.decoded = 0
        self.encode_s = self.decode_s = self.wait_s = 0.0

    def add(self, ex: Exchange) -> None:
        self.raw += ex.raw_bytes
        self.coded += ex.coded_bytes
        self.encoded += ex.encoded_bytes
        self.decoded += ex.decoded_bytes
        self.encode_s += ex.encode_s
        self.decode_s += ex.decode_s
        self.wait_s += ex.wait_s

    def values(self) -> tuple:
        return self.raw, self.coded, self.encoded, self.encode_s, self.decoded, self.decode_s, self.wait_s


def _chunks(n: int, unit: int, isz: int) -> list[tuple[int, int]]:
    """[a, b) pieces of n elements, each at most MAX_CHUNK_BYTES and a multiple of `unit`."""
    step = max(unit, (MAX_CHUNK_BYTES // isz) // unit * unit)
    return [(a, min(n, a + step)) for a in range(0, n, step)] or [(0, 0)]


def _contiguous_target(t: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """A contiguous tensor to work in for the in-place `t`, and whether it must be copied back."""
    return (t, False) if t.is_contiguous() else (t.contiguous(), True)


def _launch(call: _Call, plain, pipelined, value: torch.Tensor, async_op: bool, finish=lambda: None):
    def fn():
        _execute(call, plain, pipelined)
        finish()
    return run(call.state.worker, fn, value, async_op, call.device)


def _in_chunks(call: _Call, coding: Coding, s: int, chunks: list[tuple[int, int]], body, **kw) -> tuple:
    """Run `body(ex, a, b)` for every chunk [a, b) on an Exchange sized for it; the totals of all."""
    totals = _Totals()
    for a, b in chunks:
        n_send, n_recv = schedules.exchange_sizes(call.kind, call.world, call.rank, b - a, s, **kw)
        ex = Exchange(call.state.link, call.header.seq, call.dtype, coding, s, n_send, n_recv, call.device)
        body(ex, a, b)
        totals.add(ex)
    return totals.values()


def _local(call: _Call, fn, value: torch.Tensor, async_op: bool):
    """A group of one: no communication."""
    call.stats.route = "local"
    with torch.no_grad():
        fn()
    if not async_op:
        return None
    fut = torch.futures.Future()
    fut.set_result(value)
    return CollectiveWork(fut)


# -- all_reduce -------------------------------------------------------------------------------------
def all_reduce(t, op=dist.ReduceOp.SUM, group=None, async_op=False, codec="qlc", codebook=None, *,
               min_compress_bytes=None, stats=None, compress=None, deterministic=None, link_gbps=None,
               slice_bytes=None):
    """Lossless compressed all-reduce of `t`, in place; bit-identical on every rank.

    op: SUM, AVG, MIN or MAX.  codec: "qlc" (default), "enec", "auto" or "raw".
    codebook: None/"adaptive" (each slice embeds a fitted code), "default", a
    Codebook, a {dtype: Codebook} dict or a codebook file; every rank must pass the
    same one (checked).  The coded route's result is `reference_all_reduce` of the
    inputs; so is the uncoded one with deterministic=True (otherwise it is
    `dist.all_reduce`'s).  See the module docstring for the other keywords.
    """
    def check(h):
        h.op = opcode(op)
        accumulate_dtype(t.dtype, h.op)

    call = _begin("all_reduce", group, stats, t, t.numel(), codec, codebook,
                  (compress, min_compress_bytes, deterministic, link_gbps, slice_bytes), check)
    if call is None:
        return None
    if call.world == 1:
        return _local(call, lambda: t.copy_(reference_all_reduce([t.detach()], op)), t, async_op)
    work, copy_back = _contiguous_target(t)
    flat = call.flat = work.view(-1)
    call.reduces = True
    n, world = t.numel(), call.world

    def plain():
        if call.header.op == OP_AVG:
            dist.all_reduce(flat, op=dist.ReduceOp.SUM, group=group)
            flat.div_(world)
        else:
            dist.all_reduce(flat, op=op, group=group)

    def pipelined(coding: Coding):
        s = _slice_elems(call.opts, n, world, t.element_size())
        acc = Accumulator(call.header.op, t.dtype, s, t.device)
        return _in_chunks(call, coding, s, _chunks(n, world * s, t.element_size()),
                          lambda ex, a, b: schedules.all_reduce(ex, flat[a:b], acc, s))

    return _launch(call, plain, pipelined, t, async_op, lambda: copy_back and t.copy_(work))


# -- reduce_scatter_tensor --------------------------------------------------------------------------
def reduce_scatter_tensor(out, inp, op=dist.ReduceOp.SUM, group=None, async_op=False, codec="qlc", *,
                          codebook=None, min_compress_bytes=None, stats=None, compress=None, deterministic=None,
                          link_gbps=None, slice_bytes=None):
    """Lossless compressed reduce-scatter: `out` (m elements) gets shard `rank` of `inp` (world*m
    elements) reduced over the ranks; coded (or deterministic=True), in rank order in
    float32 exactly as `all_reduce` computes it."""
    m = out.numel()

    def check(h):
        world = dist.get_world_size(group)
        if out.dtype != inp.dtype or inp.numel() != world * m:
            raise ValueError(f"reduce_scatter_tensor needs inp of world*out.numel() = {world * m} elements "
                             f"of out's dtype; got {inp.numel()} of {inp.dtype} for out {out.dtype}")
        h.op = opcode(op)
        accumulate_dtype(inp.dtype, h.op)

    call = _begin("reduce_scatter_tensor", group, stats, inp, inp.numel(), codec, codebook,
                  (compress, min_compress_bytes, deterministic, link_gbps, slice_bytes), check)
    if call is None:
        return None
    if call.world == 1:
        return _local(call, lambda: out.copy_(reference_all_reduce([inp.detach().reshape(out.shape)], op)), out,
                      async_op)
    work, copy_back = _contiguous_target(out)
    flat_in = call.flat = inp.reshape(-1) if inp.is_contiguous() else inp.contiguous().view(-1)
    call.reduces = True
    out_flat, world = work.view(-1), call.world

    def plain():
        reduce_scatter_fixed(out_flat, flat_in, dist.ReduceOp.SUM if call.header.op == OP_AVG else op, group)
        if call.header.op == OP_AVG:
            out_flat.div_(world)

    def pipelined(coding: Coding):
        s = _slice_elems(call.opts, m, 1, inp.element_size())
        acc = Accumulator(call.header.op, inp.dtype, s, inp.device)
        return _in_chunks(call, coding, s, _chunks(m, s, inp.element_size()), lambda ex, a, b: schedules.reduce_scatter(
            ex, [flat_in[j * m + a:j * m + b] for j in range(world)], out_flat[a:b], acc, s))

    return _launch(call, plain, pipelined, out, async_op, lambda: copy_back and out.copy_(work))


# -- all_gather_into_tensor -------------------------------------------------------------------------
def all_gather_into_tensor(out, inp, group=None, async_op=False, codec="auto", *, codebook=None,
                           min_compress_bytes=None, stats=None, compress=None, deterministic=None, link_gbps=None,
                           slice_bytes=None):
    """Lossless compressed all-gather: `out` (world * inp.numel() elements, contiguous, rank
    order) gets every rank's `inp`, which may be a view of this rank's block of `out`."""
    n = inp.numel()

    def check(h):
        world = dist.get_world_size(group)
        if out.dtype != inp.dtype or out.numel() != world * n:
            raise ValueError(f"all_gather_into_tensor needs out of world*inp.numel() = {world * n} elements of "
                             f"inp's dtype; got {out.numel()} of {out.dtype}")
        if not out.is_contiguous():
            raise ValueError("all_gather_into_tensor needs a contiguous out")

    call = _begin("all_gather_into_tensor", group, stats, inp, n, codec, codebook,
                  (compress, min_compress_bytes, deterministic, link_gbps, slice_bytes), check)
    if call is None:
        return None
    if call.world == 1:
        return _local(call, lambda: out.view(-1).copy_(inp.reshape(-1)), out, async_op)
    flat_in = call.flat = inp.reshape(-1) if inp.is_contiguous() else inp.contiguous().view(-1)
    out_flat, world = out.view(-1), call.world

    def plain():
        if n:     # as bytes: every backend gathers uint8, not every one float8
            all_gather_fixed(out_flat.view(torch.uint8), flat_in.view(torch.uint8), group)

    def pipelined(coding: Coding):
        s = _slice_elems(call.opts, n, 1, inp.element_size())
        return _in_chunks(call, coding, s, _chunks(n, s, inp.element_size()), lambda ex, a, b: schedules.all_gather(
            ex, flat_in[a:b], [out_flat[j * n + a:j * n + b] for j in range(world)], s))

    return _launch(call, plain, pipelined, out, async_op)


# -- broadcast ----------------------------------------------------------------------------------------
def broadcast(t, src, group=None, async_op=False, codec="auto", *, codebook=None, min_compress_bytes=None,
              stats=None, compress=None, deterministic=None, link_gbps=None, slice_bytes=None):
    """Lossless compressed broadcast of `t` from global rank `src`, in place.

    codec "auto" (default): QLC on CPU tensors, ENEC for the wide floats on accelerators;
    "enec" codes bfloat16/float16/float32 with ENEC (other dtypes fall back to "auto") and
    raises ImportError on every rank while ENEC is not installed.
    """
    def check(h):
        h.arg = src if group is None else dist.get_group_rank(group, src)
        if not 0 <= h.arg < dist.get_world_size(group):
            raise ValueError(f"broadcast src {src} is not in the group")

    call = _begin("broadcast", group, stats, t, t.numel(), codec, codebook,
                  (compress, min_compress_bytes, deterministic, link_gbps, slice_bytes), check)
    if call is None:
        return None
    if call.world == 1:
        return _local(call, lambda: None, t, async_op)
    work, copy_back = _contiguous_target(t)
    flat = call.flat = work.view(-1)
    n, src_g = t.numel(), call.header.arg

    def plain():
        if n:
            dist.broadcast(flat.view(torch.uint8), src=src, group=group)

    def pipelined(coding: Coding):
        s = _slice_elems(call.opts, n, 1, t.element_size())
        return _in_chunks(call, coding, s, _chunks(n, s, t.element_size()),
                          lambda ex, a, b: schedules.broadcast(ex, flat[a:b], src_g, s), src=src_g)

    return _launch(call, plain, pipelined, t, async_op, lambda: copy_back and call.rank != src_g and t.copy_(work))


# -- all_to_all_single ----------------------------------------------------------------------------------
def _splits(sizes, rows: int, world: int, what: str) -> list[int]:
    if sizes is None:
        if rows % world:
            raise ValueError(f"all_to_all_single: {what} has {rows} rows, not divisible by world size {world}; "
                             f"pass {what}_split_sizes")
        return [rows // world] * world
    sizes = [int(s) for s in sizes]
    if len(sizes) != world or sum(sizes) != rows or min(sizes) < 0:
        raise ValueError(f"all_to_all_single: {what}_split_sizes {sizes} must be {world} sizes summing to {rows}")
    return sizes


def _bounds(counts: list[int]) -> list[tuple[int, int]]:
    out, s = [], 0
    for c in counts:
        out.append((s, s + c))
        s += c
    return out


def all_to_all_single(out, inp, output_split_sizes=None, input_split_sizes=None, group=None, codec="qlc", *,
                      async_op=False, codebook=None, min_compress_bytes=None, stats=None, compress=None,
                      deterministic=None, link_gbps=None, slice_bytes=None):
    """Lossless compressed all-to-all along dim 0, with torch's split-size semantics.

    The chunk a rank sends itself is copied locally; every rank checks that every
    pair of ranks agrees on the elements between them (ValueError on every rank)."""
    counts = {}

    def check(h):
        world = dist.get_world_size(group)
        if out.dtype != inp.dtype:
            raise ValueError(f"all_to_all_single: out is {out.dtype}, inp is {inp.dtype}")
        if not out.is_contiguous():
            raise ValueError("all_to_all_single needs a contiguous out")
        in_row = math.prod(inp.shape[1:]) if inp.dim() else 1
        out_row = math.prod(out.shape[1:]) if out.dim() else 1
        counts["send"] = [k * in_row for k in _splits(input_split_sizes, inp.shape[0] if inp.dim() else 1, world,
                                                      "input")]
        counts["recv"] = [k * out_row for k in _splits(output_split_sizes, out.shape[0] if out.dim() else 1, world,
                                                       "output")]
        h.extra = counts["send"] + counts["recv"]

    # the element count differs between ranks: not one of the fields that must agree
    call = _begin("all_to_all_single", group, stats, inp, inp.numel(), codec, codebook,
                  (compress, min_compress_bytes, deterministic, link_gbps, slice_bytes), check)
    if call is None:
        return None
    if call.world == 1:
        if out.numel() != inp.numel():
            raise ValueError(f"all_to_all_single: out holds {out.numel()} elements, inp {inp.numel()}")
        return _local(call, lambda: out.view(-1).copy_(inp.reshape(-1)), out, async_op)
    world, isz = call.world, inp.element_size()
    send_counts, recv_counts = counts.get("send", [0] * world), counts.get("recv", [0] * world)
    flat_in = call.flat = inp.reshape(-1) if inp.is_contiguous() else inp.contiguous().view(-1)
    out_flat = out.view(-1)
    call.checks = tuple(f for f in CHECKED if f != F_NUMEL)
    s = max(MIN_SLICE_ELEMS, call.opts.slice_bytes // isz)   # the same on every rank: both ends cut a chunk alike
    rounds = [0]

    def check_pairs(rows):
        sends = [r[N_FIXED:N_FIXED + world] for r in rows]
        wants = [r[N_FIXED + world:N_FIXED + 2 * world] for r in rows]
        for i in range(world):
            for j in range(world):
                if sends[i][j] != wants[j][i]:
                    raise ValueError(f"qlccomm.all_to_all_single: split sizes disagree: rank {i} sends "
                                     f"{sends[i][j]} elements to rank {j}, which expects {wants[j][i]}")
        rounds[0] = max(schedules.nslices(c, s) for row in sends for c in row)

    call.check_more = check_pairs

    def plain():
        dist.all_to_all_single(out_flat.view(torch.uint8), flat_in.view(torch.uint8),
                               output_split_sizes=[c * isz for c in recv_counts],
                               input_split_sizes=[c * isz for c in send_counts], group=group)

    def pipelined(coding: Coding):
        return _in_chunks(call, coding, s, [(0, 0)], lambda ex, a, b: schedules.all_to_all(
            ex, flat_in, out_flat, _bounds(send_counts), _bounds(recv_counts), rounds[0], s),
            send_counts=send_counts, recv_counts=recv_counts)

    return _launch(call, plain, pipelined, out, async_op)
