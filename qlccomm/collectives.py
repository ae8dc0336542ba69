"""Compressed collectives over torch.distributed: lossless, deterministic, any backend and device.

    qlccomm.all_reduce(t, op=dist.ReduceOp.SUM, group=None, async_op=False, codec="qlc", codebook=None)
    qlccomm.all_gather_into_tensor(out, inp, group=None, async_op=False, codec="auto")
    qlccomm.reduce_scatter_tensor(out, inp, op=dist.ReduceOp.SUM, group=None, async_op=False, codec="qlc")
    qlccomm.broadcast(t, src, group=None, async_op=False, codec="enec")
    qlccomm.all_to_all_single(out, inp, output_split_sizes=None, input_split_sizes=None, group=None, codec="qlc")

Every call starts with a fixed-size handshake (qlccomm/wire.py) so that ranks agree
on dtype, size, op, codec, codebook and payload sizes before any payload moves;
a disagreement, or a rank whose encoder failed, raises the same error on every
rank and leaves the process group usable.

all_reduce is a reduce-scatter then an all-gather:
  1. each rank splits the flat tensor into `world` shards (sizes differ by at most
     one element), encodes the shards owned by the other ranks and sends them with
     `all_to_all_single` (uneven split sizes taken from the handshake);
  2. the owner of each shard reduces the `world` contributions in rank order, in
     float32 (float64 for float64, int64 for integer dtypes), and casts back;
  3. the reduced shards are encoded, padded to the largest payload and
     all-gathered.
Every rank therefore ends with identical bits, equal to
`reference_all_reduce([x_0, ..., x_{W-1}], op)` computed from the uncompressed
inputs.  Messages below `min_compress_bytes` and dtypes with no coded plan take
the same route uncompressed, so the result never depends on the threshold.

async_op=True returns a `CollectiveWork` (`wait()`, `get_future()`, value: the
output tensor).  The handshakes and the first data phase run before the call
returns (their sizes are needed on the host); the last data collective and its
decoding run asynchronously.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .api import compress, decompress, pick_codec
from .codebook import Codebook, default_codebook
from .errors import FormatError
from .format import DTYPE_CODES
from .wire import (ADAPTIVE_TAG, F_CODEC, F_DTYPE, F_FORMAT, F_KIND, F_PATH, F_TAG, FRAME_BYTES, N_FIXED, NO_TAG,
                   PATH_CODED, PATH_PLAIN, Handshake, WireStats, all_gather_fixed, check_frame, digest_tag,
                   exchange, frame, meta_bytes)

__all__ = ["all_reduce", "all_gather_into_tensor", "reduce_scatter_tensor", "broadcast", "all_to_all_single",
           "reference_all_reduce", "CollectiveWork", "WireStats", "DEFAULT_MIN_COMPRESS_BYTES"]

DEFAULT_MIN_COMPRESS_BYTES = 16 * 1024
"""Messages smaller than this (bytes of the tensor a rank contributes) are not coded."""

OP_SUM, OP_AVG, OP_MIN, OP_MAX = 1, 2, 3, 4
_OP_NAMES = {OP_SUM: "SUM", OP_AVG: "AVG", OP_MIN: "MIN", OP_MAX: "MAX"}


# -- reduction ----------------------------------------------------------------------------------
def _opcode(op) -> int:
    for code, ref in ((OP_SUM, dist.ReduceOp.SUM), (OP_AVG, dist.ReduceOp.AVG),
                      (OP_MIN, dist.ReduceOp.MIN), (OP_MAX, dist.ReduceOp.MAX)):
        try:
            if op == ref:
                return code
        except TypeError:
            pass
    raise ValueError(f"qlccomm reduces with ReduceOp SUM, AVG, MIN or MAX, not {op}")


def _accumulate_dtype(dtype: torch.dtype, opcode: int) -> torch.dtype:
    if dtype == torch.bool or dtype.is_complex:
        raise TypeError(f"qlccomm does not reduce {dtype}")
    if dtype.is_floating_point:
        return torch.float64 if dtype == torch.float64 else torch.float32
    if opcode == OP_AVG:
        raise TypeError(f"ReduceOp.AVG needs a floating dtype, not {dtype}")
    return torch.int64


def _reduce(parts: list[torch.Tensor], opcode: int, dtype: torch.dtype) -> torch.Tensor:
    """Reduce equal-length 1-D tensors in list order; the one definition of the result."""
    acc_dtype = _accumulate_dtype(dtype, opcode)
    acc = parts[0].to(acc_dtype, copy=True)
    for p in parts[1:]:
        x = p.to(acc_dtype)
        if opcode in (OP_SUM, OP_AVG):
            acc.add_(x)
        elif opcode == OP_MIN:
            acc = torch.minimum(acc, x)
        else:
            acc = torch.maximum(acc, x)
    if opcode == OP_AVG:
        acc.div_(len(parts))
    return acc.to(dtype)


def reference_all_reduce(tensors, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """What `all_reduce` returns on every rank when rank i holds `tensors[i]`.

    The contributions are reduced in list (rank) order in float32 (float64 for
    float64, int64 for integer dtypes) and cast back: the same arithmetic as the
    compressed collective, without any communication.
    """
    tensors = list(tensors)
    if not tensors:
        raise ValueError("reference_all_reduce needs at least one tensor")
    shape, dtype = tensors[0].shape, tensors[0].dtype
    for x in tensors:
        if x.shape != shape or x.dtype != dtype:
            raise ValueError("reference_all_reduce needs tensors of one shape and dtype")
    return _reduce([x.reshape(-1) for x in tensors], _opcode(op), dtype).reshape(shape)


# -- coding of payloads ---------------------------------------------------------------------------
@dataclass(frozen=True)
class _Coding:
    codec: str                   # "qlc", "enec" or "raw" (not coded)
    codebook: Codebook | None    # None: adaptive (embedded) or no codebook
    tag: bytes

    @property
    def coded(self) -> bool:
        return self.codec != "raw"


_RAW = _Coding("raw", None, NO_TAG)
_CODECS = ("auto", "qlc", "enec", "raw")


def _resolve_codebook(codebook, dtype: torch.dtype) -> Codebook | None:
    if codebook is None or (isinstance(codebook, str) and codebook == "adaptive"):
        return None
    if isinstance(codebook, str) and codebook == "default":
        return default_codebook(dtype)
    if isinstance(codebook, dict):
        return _resolve_codebook(codebook.get(dtype), dtype)
    if isinstance(codebook, Codebook):
        if codebook.dtype != dtype:
            raise ValueError(f"codebook {codebook.digest} is for {codebook.dtype}, the tensor is {dtype}")
        return codebook
    if isinstance(codebook, (str, os.PathLike)):
        return Codebook.load(codebook, dtype=dtype)
    raise TypeError(f"codebook must be None, 'adaptive', 'default', a Codebook, a dict or a path, "
                    f"not {type(codebook).__name__}")


def _resolve_coding(dtype: torch.dtype, codec: str, codebook) -> _Coding:
    """The coding every rank must agree on for `dtype` (raises before any communication)."""
    if codec not in _CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {', '.join(_CODECS)}")
    if dtype not in DTYPE_CODES or codec == "raw":
        return _RAW
    if codec == "enec":
        try:
            name = pick_codec(dtype, "enec")        # ImportError while ENEC is not installed
        except ValueError:                          # a dtype ENEC does not code: QLC or plain
            name = pick_codec(dtype, "auto")
    else:
        name = pick_codec(dtype, codec)
    if name == "raw":
        return _RAW
    if name == "enec":
        return _Coding("enec", None, NO_TAG)
    cb = _resolve_codebook(codebook, dtype)
    return _Coding("qlc", cb, ADAPTIVE_TAG if cb is None else digest_tag(cb.digest))


def _encode(x: torch.Tensor, coding: _Coding) -> torch.Tensor:
    """Frame + stream of a 1-D tensor; empty tensors travel as 0 bytes."""
    if x.numel() == 0:
        return torch.empty(0, dtype=torch.uint8, device=x.device)
    blob = compress(x, codec=coding.codec, codebook=coding.codebook)
    head = torch.frombuffer(bytearray(frame(coding.codec, x.dtype, coding.tag)), dtype=torch.uint8)
    return torch.cat([head.to(blob.device), blob])


def _decode(buf: torch.Tensor, coding: _Coding, dtype: torch.dtype, numel: int, source: int) -> torch.Tensor:
    """Inverse of `_encode`, checking the frame and that the stream holds `numel` elements of `dtype`."""
    if numel == 0:
        if buf.numel():
            raise FormatError(f"rank {source} sent {buf.numel()} bytes for an empty shard")
        return torch.empty(0, dtype=dtype, device=buf.device)
    check_frame(buf[:FRAME_BYTES].cpu().numpy().tobytes(), coding.codec, dtype, coding.tag, source)
    out = decompress(buf[FRAME_BYTES:], codebook=coding.codebook)
    if out.dtype != dtype or out.numel() != numel:
        raise FormatError(f"rank {source} sent {out.numel()} elements of {out.dtype}; "
                          f"expected {numel} of {dtype}")
    return out.reshape(-1)


def _bytes(x: torch.Tensor) -> torch.Tensor:
    """A 1-D uint8 view of a contiguous tensor (every backend moves uint8)."""
    return x.reshape(-1).view(torch.uint8)


def _from_bytes(buf: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """View uint8 bytes as `dtype` (copied first when they do not start on an element boundary)."""
    if buf.storage_offset() % torch.empty(0, dtype=dtype).element_size():
        buf = buf.clone()
    return buf.view(dtype)


def _shard_bounds(n: int, world: int) -> list[tuple[int, int]]:
    """Shard i of n elements: sizes differ by at most one, the larger ones first."""
    base, extra = divmod(n, world)
    bounds, start = [], 0
    for i in range(world):
        size = base + (1 if i < extra else 0)
        bounds.append((start, start + size))
        start += size
    return bounds


# -- process groups and handles ---------------------------------------------------------------------
def _group_info(group) -> tuple[int, int] | None:
    """(rank, world) in `group`, or None when this process is not a member."""
    if not dist.is_available() or not dist.is_initialized():
        raise RuntimeError("qlccomm collectives need torch.distributed.init_process_group first")
    rank = dist.get_rank(group)
    if rank < 0:
        return None
    return rank, dist.get_world_size(group)


def _worth_coding(nbytes: int, min_compress_bytes) -> bool:
    """Code messages of at least `min_compress_bytes` (default DEFAULT_MIN_COMPRESS_BYTES); never empty ones."""
    threshold = DEFAULT_MIN_COMPRESS_BYTES if min_compress_bytes is None else int(min_compress_bytes)
    return nbytes > 0 and nbytes >= threshold


def _choose_coding(hs: Handshake, dtype: torch.dtype, codec: str, codebook, nbytes: int,
                   min_compress_bytes) -> _Coding:
    """The coding of a message of `nbytes` (codec and codebook validated whatever the
    size; small messages go uncoded), recorded in the handshake for the peers to check."""
    coding = _resolve_coding(dtype, codec, codebook)
    if not _worth_coding(nbytes, min_compress_bytes):
        coding = _RAW
    hs.codec, hs.tag, hs.path = coding.codec, coding.tag, PATH_CODED if coding.coded else PATH_PLAIN
    return coding


def _encode_shards(flat: torch.Tensor, bounds, rank: int, coding: _Coding) -> list[torch.Tensor]:
    """Payloads of the shards [s, e) that the other ranks own; an empty one for our own."""
    return [_encode(flat[s:e], coding) if j != rank else torch.empty(0, dtype=torch.uint8, device=flat.device)
            for j, (s, e) in enumerate(bounds)]


class CollectiveWork:
    """The handle of an `async_op=True` call: `wait()`, `get_future()`, `is_completed()`.

    The future's value is the output tensor (the collective's in-place argument).
    """

    def __init__(self, work, finish, value: torch.Tensor):
        if work is None:
            finish()
            fut = torch.futures.Future()
            fut.set_result(value)
        else:
            def _then(f):
                f.value()  # re-raises a communication error
                finish()
                return value
            fut = work.get_future().then(_then)
        self._future = fut

    def wait(self, timeout=None) -> bool:
        self._future.wait()
        return True

    def get_future(self) -> torch.futures.Future:
        return self._future

    def is_completed(self) -> bool:
        return self._future.done()


def _complete(work, finish, async_op: bool, value: torch.Tensor):
    if async_op:
        return CollectiveWork(work, finish, value)
    if work is not None:
        work.wait()
    finish()
    return None


def _done(async_op: bool, value: torch.Tensor):
    return CollectiveWork(None, lambda: None, value) if async_op else None


def _stats(stats: WireStats | None, collective: str) -> WireStats:
    st = stats if stats is not None else WireStats()
    st.collective, st.compressed = collective, False
    st.raw_bytes = st.coded_bytes = st.sent_bytes = st.plain_bytes = st.meta_bytes = 0
    return st


# -- all_reduce -------------------------------------------------------------------------------------
def all_reduce(t, op=dist.ReduceOp.SUM, group=None, async_op=False, codec="qlc", codebook=None, *,
               min_compress_bytes=None, stats=None):
    """Lossless compressed all-reduce of `t`, in place; bit-identical on every rank.

    op: SUM, AVG, MIN or MAX.  codec: "qlc" (default), "enec", "auto" or "raw"
    (no coding).  codebook: None/"adaptive" (each payload embeds a fitted code),
    "default", a Codebook, a {dtype: Codebook} dict or a codebook file; every rank
    must pass the same one (checked).  min_compress_bytes: smaller tensors go
    uncoded (same arithmetic).  stats: a `WireStats` to fill with this call's bytes.
    """
    info = _group_info(group)
    if info is None:
        return None
    rank, world = info
    st = _stats(stats, "all_reduce")
    n, dtype, isz = t.numel(), t.dtype, t.element_size()
    st.raw_bytes = st.coded_bytes = n * isz
    flat = t.reshape(-1)
    bounds = _shard_bounds(n, world)
    hs = Handshake("all_reduce", dtype=dtype, numel=n, extra=[0] * world)
    payloads = None
    try:
        hs.op = opcode = _opcode(op)
        _accumulate_dtype(dtype, opcode)
        coding = _choose_coding(hs, dtype, codec, codebook, n * isz, min_compress_bytes)
        if world > 1 and coding.coded:
            payloads = _encode_shards(flat, bounds, rank, coding)
            hs.extra = [p.numel() for p in payloads]
    except Exception as e:
        if world == 1:
            raise
        hs.error = e
    if world == 1:
        t.copy_(_reduce([flat], opcode, dtype).view(t.shape))
        st.sent_bytes = st.plain_bytes = 0
        return _done(async_op, t)

    rows = exchange(hs, group, t.device, rank, world)
    st.meta_bytes = meta_bytes(world)
    own_s, own_e = bounds[rank]
    big = bounds[0][1] - bounds[0][0]  # the largest shard
    st.plain_bytes = (n - (own_e - own_s)) * isz + (world - 1) * big * isz

    # phase 1: reduce-scatter
    recv, recv_sizes, send_sizes, _ = _scatter_shards(flat, bounds, payloads, rows, rank, world, group, False)
    st.sent_bytes = sum(send_sizes) - send_sizes[rank]
    err, p2 = None, None
    try:
        reduced = _reduce_shards(recv.split(recv_sizes), flat[own_s:own_e], coding, dtype, opcode, rank)
        if coding.coded:
            p2 = _encode(reduced, coding)
    except Exception as e:
        err = e

    # phase 2: all-gather of the reduced shards
    if coding.coded:
        rows2 = exchange(Handshake("all_reduce", phase=2, extra=[0 if p2 is None else p2.numel()], error=err),
                         group, t.device, rank, world, checks=())
        st.meta_bytes += meta_bytes(world)
        sizes2 = [r[N_FIXED] for r in rows2]
        st.coded_bytes = sum(send_sizes) + sizes2[rank]
        st.compressed = True
    else:
        if err is not None:
            raise err  # plain path: cannot fail on one rank only
        p2 = _bytes(reduced)
        sizes2 = [(e - s) * isz for s, e in bounds]
    block = max(sizes2)
    st.sent_bytes += (world - 1) * block
    gathered = torch.empty(world * block, dtype=torch.uint8, device=t.device)
    work = None
    if block:
        mine = p2 if p2.numel() == block else torch.cat([p2, p2.new_zeros(block - p2.numel())])
        work = all_gather_fixed(gathered, mine, group, async_op=async_op)

    def finish():
        out = torch.empty(n, dtype=dtype, device=t.device)
        for i, (s, e) in enumerate(bounds):
            if i == rank:
                out[s:e] = reduced
            elif coding.coded:
                out[s:e] = _decode(gathered[i * block : i * block + sizes2[i]], coding, dtype, e - s, i)
            else:
                out[s:e] = _from_bytes(gathered[i * block : i * block + sizes2[i]], dtype)
        t.copy_(out.view(t.shape))

    return _complete(work, finish, async_op, t)


def _scatter_shards(flat: torch.Tensor, bounds, payloads, rows, rank: int, world: int, group, async_op: bool):
    """The exchange of a reduce-scatter: rank j gets shard j (elements bounds[j]) of every
    rank's `flat`, coded (payloads[j], sizes from the handshake rows) or as plain bytes.
    Returns (recv, recv_sizes, send_sizes, work); sizes in bytes, recv in rank order."""
    if payloads is not None:
        send, send_sizes = torch.cat(payloads), [p.numel() for p in payloads]
        recv_sizes = [rows[i][N_FIXED + rank] for i in range(world)]
    else:
        isz = flat.element_size()
        send = _bytes(flat.contiguous())
        send_sizes = [(e - s) * isz for s, e in bounds]
        recv_sizes = [send_sizes[rank]] * world
    recv = torch.empty(sum(recv_sizes), dtype=torch.uint8, device=flat.device)
    work = None
    if sum(recv_sizes) or sum(send_sizes):          # both zero on every rank, or on none
        work = dist.all_to_all_single(recv, send, output_split_sizes=recv_sizes, input_split_sizes=send_sizes,
                                      group=group, async_op=async_op)
    return recv, recv_sizes, send_sizes, work


def _reduce_shards(chunks, own: torch.Tensor, coding: _Coding, dtype: torch.dtype, opcode: int,
                   rank: int) -> torch.Tensor:
    """Reduce the received shards (own in place of chunks[rank]) in rank order."""
    n = own.numel()
    parts = [own if i == rank else _decode(c, coding, dtype, n, i) if coding.coded else _from_bytes(c, dtype)
             for i, c in enumerate(chunks)]
    return _reduce(parts, opcode, dtype)


# -- reduce_scatter_tensor -----------------------------------------------------------------------------
def reduce_scatter_tensor(out, inp, op=dist.ReduceOp.SUM, group=None, async_op=False, codec="qlc", *,
                          codebook=None, min_compress_bytes=None, stats=None):
    """Lossless compressed reduce-scatter: `out` (n elements) gets shard `rank` of `inp` (world*n
    elements) reduced over the ranks in rank order, as `all_reduce` would compute it."""
    info = _group_info(group)
    if info is None:
        return None
    rank, world = info
    st = _stats(stats, "reduce_scatter_tensor")
    dtype, isz = inp.dtype, inp.element_size()
    n = out.numel()
    st.raw_bytes = st.coded_bytes = (inp.numel() - n) * isz if world > 1 else 0
    hs = Handshake("reduce_scatter_tensor", dtype=dtype, numel=inp.numel(), extra=[0] * world)
    payloads = None
    try:
        if out.dtype != dtype or inp.numel() != world * n:
            raise ValueError(f"reduce_scatter_tensor needs inp of world*out.numel() = {world * n} elements "
                             f"of out's dtype; got {inp.numel()} of {dtype} for out {out.dtype}")
        hs.op = opcode = _opcode(op)
        _accumulate_dtype(dtype, opcode)
        flat = inp.reshape(-1)
        coding = _choose_coding(hs, dtype, codec, codebook, n * isz * world, min_compress_bytes)
        if world > 1 and coding.coded:
            payloads = _encode_shards(flat, [(j * n, (j + 1) * n) for j in range(world)], rank, coding)
            hs.extra = [p.numel() for p in payloads]
    except Exception as e:
        if world == 1:
            raise
        hs.error = e
    if world == 1:
        out.copy_(_reduce([flat], opcode, dtype).view(out.shape))
        return _done(async_op, out)

    rows = exchange(hs, group, inp.device, rank, world)
    st.meta_bytes = meta_bytes(world)
    st.plain_bytes = (world - 1) * n * isz
    own = flat[rank * n:(rank + 1) * n].clone()          # inp may change before an async finish
    recv, recv_sizes, send_sizes, work = _scatter_shards(flat, [(j * n, (j + 1) * n) for j in range(world)],
                                                         payloads, rows, rank, world, group, async_op)
    st.sent_bytes = sum(send_sizes) - send_sizes[rank]
    if coding.coded:
        st.coded_bytes, st.compressed = sum(send_sizes), True

    def finish():
        out.copy_(_reduce_shards(recv.split(recv_sizes), own, coding, dtype, opcode, rank).view(out.shape))

    return _complete(work, finish, async_op, out)


# -- all_gather_into_tensor ------------------------------------------------------------------------------
def all_gather_into_tensor(out, inp, group=None, async_op=False, codec="auto", *, codebook=None,
                           min_compress_bytes=None, stats=None):
    """Lossless compressed all-gather: `out` (world * inp.numel() elements, rank order) gets every
    rank's `inp`.  Payloads are padded to the largest (equal sizes on the wire)."""
    info = _group_info(group)
    if info is None:
        return None
    rank, world = info
    st = _stats(stats, "all_gather_into_tensor")
    dtype, isz, n = inp.dtype, inp.element_size(), inp.numel()
    st.raw_bytes = st.coded_bytes = n * isz
    hs = Handshake("all_gather_into_tensor", dtype=dtype, numel=n, extra=[0])
    payload = None
    try:
        if out.dtype != dtype or out.numel() != world * n:
            raise ValueError(f"all_gather_into_tensor needs out of world*inp.numel() = {world * n} elements of "
                             f"inp's dtype; got {out.numel()} of {out.dtype}")
        if not out.is_contiguous():
            raise ValueError("all_gather_into_tensor needs a contiguous out")
        coding = _choose_coding(hs, dtype, codec, codebook, n * isz, min_compress_bytes)
        if world > 1 and coding.coded:
            payload = _encode(inp.reshape(-1), coding)
            hs.extra = [payload.numel()]
    except Exception as e:
        if world == 1:
            raise
        hs.error = e
    if world == 1:
        out.view(-1).copy_(inp.reshape(-1))
        return _done(async_op, out)

    rows = exchange(hs, group, inp.device, rank, world)
    st.meta_bytes = meta_bytes(world)
    st.plain_bytes = (world - 1) * n * isz
    out_flat = out.view(-1)
    if not coding.coded:
        st.sent_bytes = st.plain_bytes
        if n == 0:
            return _done(async_op, out)
        work = all_gather_fixed(_bytes(out_flat), _bytes(inp.contiguous()), group, async_op=async_op)
        return _complete(work, lambda: None, async_op, out)
    sizes = [r[N_FIXED] for r in rows]
    block = max(sizes)
    st.coded_bytes, st.compressed = sizes[rank], True
    st.sent_bytes = (world - 1) * block
    gathered = torch.empty(world * block, dtype=torch.uint8, device=inp.device)
    own = inp.reshape(-1).clone()
    work = None
    if block:
        mine = payload if payload.numel() == block else torch.cat([payload, payload.new_zeros(block - payload.numel())])
        work = all_gather_fixed(gathered, mine, group, async_op=async_op)

    def finish():
        for i in range(world):
            dst = out_flat[i * n:(i + 1) * n]
            if i == rank:
                dst.copy_(own)
            else:
                dst.copy_(_decode(gathered[i * block:i * block + sizes[i]], coding, dtype, n, i))

    return _complete(work, finish, async_op, out)


# -- broadcast ---------------------------------------------------------------------------------------------
def broadcast(t, src, group=None, async_op=False, codec="enec", *, codebook=None, min_compress_bytes=None,
              stats=None):
    """Lossless compressed broadcast of `t` from global rank `src`, in place.

    codec "enec" (default) codes bfloat16/float16/float32 with ENEC; other dtypes
    fall back to QLC ("auto") or go uncoded.  Raises ImportError on every rank
    while ENEC is not installed.
    """
    info = _group_info(group)
    if info is None:
        return None
    rank, world = info
    st = _stats(stats, "broadcast")
    dtype, isz, n = t.dtype, t.element_size(), t.numel()
    st.raw_bytes = st.coded_bytes = n * isz
    src_g = src if group is None else dist.get_group_rank(group, src)
    hs = Handshake("broadcast", dtype=dtype, numel=n, arg=src_g, extra=[0])
    payload = None
    try:
        if not 0 <= src_g < world:
            raise ValueError(f"broadcast src {src} is not in the group")
        coding = _choose_coding(hs, dtype, codec, codebook, n * isz, min_compress_bytes)
        if world > 1 and coding.coded and rank == src_g:
            payload = _encode(t.reshape(-1), coding)
            hs.extra = [payload.numel()]
    except Exception as e:
        if world == 1:
            raise
        hs.error = e
    if world == 1:
        return _done(async_op, t)

    rows = exchange(hs, group, t.device, rank, world)
    st.meta_bytes = meta_bytes(world)
    st.plain_bytes = n * isz
    if not coding.coded:
        st.sent_bytes = st.plain_bytes
        if n == 0:
            return _done(async_op, t)
        buf = t if t.is_contiguous() else t.contiguous()
        work = dist.broadcast(_bytes(buf), src=src, group=group, async_op=async_op)
        finish = (lambda: None) if buf is t else (lambda: t.copy_(buf))
        return _complete(work, finish, async_op, t)
    size = rows[src_g][N_FIXED]
    st.sent_bytes, st.compressed = size, True
    st.coded_bytes = size
    buf = payload if rank == src_g else torch.empty(size, dtype=torch.uint8, device=t.device)
    work = dist.broadcast(buf, src=src, group=group, async_op=async_op) if size else None

    def finish():
        if rank != src_g:
            t.copy_(_decode(buf, coding, dtype, n, src_g).view(t.shape))

    return _complete(work, finish, async_op, t)


# -- all_to_all_single ---------------------------------------------------------------------------------------
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


def all_to_all_single(out, inp, output_split_sizes=None, input_split_sizes=None, group=None, codec="qlc", *,
                      async_op=False, codebook=None, min_compress_bytes=None, stats=None):
    """Lossless compressed all-to-all along dim 0, with torch's split-size semantics.

    Each rank codes its chunks if its input reaches `min_compress_bytes` (each
    sender's choice travels in the handshake, so ranks may differ); the chunk sent
    to itself is copied locally.
    """
    info = _group_info(group)
    if info is None:
        return None
    rank, world = info
    st = _stats(stats, "all_to_all_single")
    dtype, isz = inp.dtype, inp.element_size()
    hs = Handshake("all_to_all_single", dtype=dtype, numel=0, extra=[0] * (3 * world))
    payloads = None
    try:
        if out.dtype != dtype:
            raise ValueError(f"all_to_all_single: out is {out.dtype}, inp is {dtype}")
        if not out.is_contiguous():
            raise ValueError("all_to_all_single needs a contiguous out")
        in_rows = inp.shape[0] if inp.dim() else 1
        out_rows = out.shape[0] if out.dim() else 1
        in_row = math.prod(inp.shape[1:]) if inp.dim() else 1
        out_row = math.prod(out.shape[1:]) if out.dim() else 1
        in_split = _splits(input_split_sizes, in_rows, world, "input")
        out_split = _splits(output_split_sizes, out_rows, world, "output")
        flat = inp.reshape(-1)
        in_bounds, s = [], 0
        for k in in_split:
            in_bounds.append((s, s + k * in_row))
            s += k * in_row
        out_bounds, s = [], 0
        for k in out_split:
            out_bounds.append((s, s + k * out_row))
            s += k * out_row
        coding = _resolve_coding(dtype, codec, codebook)
        coded = coding.coded and _worth_coding(inp.numel() * isz, min_compress_bytes)
        hs.codec, hs.tag, hs.path = coding.codec, coding.tag, PATH_CODED if coded else PATH_PLAIN
        if coded:
            payloads = [_encode(flat[a:b], coding) if j != rank else flat.new_empty(0, dtype=torch.uint8)
                        for j, (a, b) in enumerate(in_bounds)]
        else:
            payloads = [_bytes(flat[a:b]) if j != rank else flat.new_empty(0, dtype=torch.uint8)
                        for j, (a, b) in enumerate(in_bounds)]
        hs.extra = ([p.numel() for p in payloads] + [b - a for a, b in in_bounds]
                    + [b - a for a, b in out_bounds])
    except Exception as e:
        if world == 1:
            raise
        hs.error = e
    if world == 1:
        if out.numel() != inp.numel():
            raise ValueError(f"all_to_all_single: out holds {out.numel()} elements, inp {inp.numel()}")
        out.view(-1).copy_(flat)
        return _done(async_op, out)

    rows = exchange(hs, group, inp.device, rank, world,
                    checks=(F_FORMAT, F_KIND, F_DTYPE, F_CODEC, F_TAG))
    st.meta_bytes = meta_bytes(world)
    sent_elems = [[r[N_FIXED + world + j] for j in range(world)] for r in rows]
    want_elems = [[r[N_FIXED + 2 * world + j] for j in range(world)] for r in rows]
    bad = [(i, j) for i in range(world) for j in range(world) if sent_elems[i][j] != want_elems[j][i]]
    if bad:
        i, j = bad[0]
        raise ValueError(f"qlccomm.all_to_all_single: split sizes disagree: rank {i} sends {sent_elems[i][j]} "
                         f"elements to rank {j}, which expects {want_elems[j][i]}")
    paths = [r[F_PATH] for r in rows]
    send_sizes = [p.numel() for p in payloads]
    recv_sizes = [rows[i][N_FIXED + rank] for i in range(world)]
    st.sent_bytes = sum(send_sizes)
    st.plain_bytes = st.raw_bytes = sum(b - a for j, (a, b) in enumerate(in_bounds) if j != rank) * isz
    st.compressed = hs.path == PATH_CODED
    st.coded_bytes = st.sent_bytes
    out_flat = out.view(-1)
    a, b = out_bounds[rank]
    out_flat[a:b] = flat[in_bounds[rank][0]:in_bounds[rank][1]]
    recv = torch.empty(sum(recv_sizes), dtype=torch.uint8, device=inp.device)
    work = None
    if any(sum(r[N_FIXED:N_FIXED + world]) for r in rows):
        work = dist.all_to_all_single(recv, torch.cat(payloads), output_split_sizes=recv_sizes,
                                      input_split_sizes=send_sizes, group=group, async_op=async_op)

    def finish():
        chunks = recv.split(recv_sizes)
        for i, (a, b) in enumerate(out_bounds):
            if i == rank or a == b:
                continue
            if paths[i] == PATH_CODED:
                out_flat[a:b] = _decode(chunks[i], coding, dtype, b - a, i)
            else:
                out_flat[a:b] = _from_bytes(chunks[i], dtype)

    return _complete(work, finish, async_op, out)
