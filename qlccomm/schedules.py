"""The pipelined collectives: which slice goes where, in which order.

Each function runs one collective (or one chunk of it) over an `Exchange`
(transport.py).  A tensor is cut into slices of `s` elements; slices move in
*rounds*, and every rank walks the same rounds in the same order, so that
waiting on receives in that order never deadlocks (see transport.py) and the
sized framing's batches pair up on every rank.  Sends run LEAD rounds ahead of
the receives they feed, so a slice is coded while the previous one is on the
wire, and decoded while the next one is.

all_reduce (interleaved ownership; the direct schedule of a reduce-scatter then an
all-gather, which codes each slice once per hop and needs no forwarding):
  slice k is owned by rank k % W (round k // W), so sparse and dense regions spread
  evenly over the owners and over both directions of every link;
  round r: every rank codes its slices of round r + LEAD for their owners (stream
  1); the owner of a round-r slice decodes the W - 1 contributions, reduces them
  with its own in rank order (reduction.py) into the output, codes the result once
  and sends it to every peer (stream 2); the round r - LAG results of the other
  owners are decoded straight into the output.
reduce_scatter_tensor: round q carries slice q of every rank's shard to its owner.
all_gather_into_tensor: round q carries slice q of every rank's input, coded once and
  sent to every other rank.
broadcast: a chain from the source; round q carries slice q, which every rank passes
  on to the next as it arrived, then decodes.
all_to_all_single: round q carries slice q of every pair's chunk.
"""
from __future__ import annotations

from collections.abc import Iterator

import torch

from .reduction import Accumulator, sum_of_two_in_dtype
from .transport import Exchange

LEAD = 1          # rounds that sends run ahead of the receives they feed
LAG = 1           # rounds that all_reduce decodes other owners' results behind its own reduce


def nslices(n: int, s: int) -> int:
    return -(-n // s) if n else 0


def _piece(flat: torch.Tensor, k: int, s: int) -> torch.Tensor:
    """Slice k (elements [k*s, (k+1)*s) clipped to the tensor) of a 1-D tensor."""
    return flat[k * s:min(flat.numel(), (k + 1) * s)]


def _led(rounds: int, contribute) -> Iterator[int]:
    """The rounds 0 .. rounds-1, each yielded once `contribute(q)` has run for every round q up
    to LEAD ahead of it: sends run ahead of the receives they feed."""
    for q in range(min(LEAD, rounds)):
        contribute(q)
    for r in range(rounds):
        if r + LEAD < rounds:
            contribute(r + LEAD)
        yield r


def _ring(rank: int, world: int) -> list[int]:
    """The peers of `rank` starting with its successor (spreads the first sends over the links)."""
    return [(rank + d) % world for d in range(1, world)]


def all_reduce(ex: Exchange, flat: torch.Tensor, acc: Accumulator, s: int) -> None:
    """Reduce the 1-D contiguous `flat` over the group, in place (see the module doc)."""
    me, W = ex.link.rank, ex.link.world
    peers = _ring(me, W)
    K = nslices(flat.numel(), s)
    R = -(-K // W)
    mine, theirs = {}, {}
    for r in range(R):
        k = r * W + me
        if k < K:
            for j in range(W):
                if j != me:
                    mine[r, j] = ex.expect(("p1", r), j, 1, k, _piece(flat, k, s).numel())
        for o in range(W):
            if o != me and r * W + o < K:
                theirs[r, o] = ex.expect(("p2", r), o, 2, r * W + o, _piece(flat, r * W + o, s).numel())
    ex.start()

    def contribute(r: int) -> None:
        for o in peers:
            k = r * W + o
            if k < K:
                ex.send(("p1", r), [o], 1, k, _piece(flat, k, s))

    def collect(r: int) -> None:
        ex.wait_key(("p2", r))
        for o in range(W):
            if (r, o) in theirs:
                ex.decode(theirs[r, o], _piece(flat, r * W + o, s))

    for r in _led(R, contribute):
        ex.wait_key(("p1", r))
        k = r * W + me
        if k < K:
            own = _piece(flat, k, s)
            if _reduce_slice(ex, acc, own, [mine.get((r, j)) for j in range(W)], me, own):
                ex.send(("p2", r), peers, 2, k, own)
            else:
                ex.send_error(("p2", r), peers, 2, k, own.numel(), ex.errors[-1])
        if r >= LAG:
            collect(r - LAG)
    for r in range(max(R - LAG, 0), R):
        collect(r)
    ex.finish()


def _reduce_slice(ex: Exchange, acc: Accumulator, own: torch.Tensor, handles: list, me: int,
                  out: torch.Tensor) -> bool:
    """Reduce one slice in rank order: `own` in place of rank `me`, the others decoded
    from `handles` into a scratch buffer; the result goes to `out`.  False (nothing
    written) when a contribution could not be decoded."""
    scratch = ex.scratch(own.numel())
    if sum_of_two_in_dtype(acc.code, acc.dtype, len(handles)):      # two ranks: one pass, same bits
        if not ex.decode(handles[1 - me], scratch):
            return False
        torch.add(own, scratch, out=out)
        return True
    ok = True
    for i, h in enumerate(handles):
        if i == me:
            x = own
        else:
            ok = ex.decode(h, scratch) and ok
            x = scratch
        if ok:
            acc.add(x, first=i == 0)
    if ok:
        acc.result(len(handles), out)
    return ok


def reduce_scatter(ex: Exchange, shard: list[torch.Tensor], out: torch.Tensor, acc: Accumulator, s: int) -> None:
    """`out` (m elements) = the reduction over ranks of their `shard[rank]` (shard j: the 1-D
    contiguous m elements destined for rank j); round q moves slice q of every shard to its owner."""
    me, W = ex.link.rank, ex.link.world
    peers = _ring(me, W)
    m = out.numel()
    Q = nslices(m, s)
    got = {(q, j): ex.expect(("rs", q), j, 1, q, _piece(out, q, s).numel())
           for q in range(Q) for j in range(W) if j != me}
    ex.start()

    def contribute(q: int) -> None:
        for o in peers:
            ex.send(("rs", q), [o], 1, q, _piece(shard[o], q, s))

    for q in _led(Q, contribute):
        ex.wait_key(("rs", q))
        _reduce_slice(ex, acc, _piece(shard[me], q, s), [got.get((q, j)) for j in range(W)], me, _piece(out, q, s))
    ex.finish()


def all_gather(ex: Exchange, inp: torch.Tensor, block: list[torch.Tensor], s: int) -> None:
    """`block[j]` (1-D contiguous, m elements) = rank j's 1-D contiguous `inp` (m elements);
    `inp` may be this rank's own block (FSDP2 passes a view of it)."""
    me, W = ex.link.rank, ex.link.world
    m = inp.numel()
    Q = nslices(m, s)
    got = {(q, j): ex.expect(("ag", q), j, 2, q, _piece(inp, q, s).numel())
           for q in range(Q) for j in range(W) if j != me}
    ex.start()
    peers = _ring(me, W)
    own_copied = block[me].data_ptr() == inp.data_ptr()
    for q in _led(Q, lambda q: ex.send(("ag", q), peers, 2, q, _piece(inp, q, s))):
        if not own_copied:                  # after the first sends: they need not wait for the copy
            block[me].copy_(inp)
            own_copied = True
        ex.wait_key(("ag", q))
        for j in range(W):
            if j != me:
                ex.decode(got[q, j], _piece(block[j], q, s))
    ex.finish()


def broadcast(ex: Exchange, flat: torch.Tensor, src: int, s: int) -> None:
    """Every rank's 1-D contiguous `flat` = rank `src`'s (group rank), along the chain
    src, src + 1, ...: each rank passes every slice on to its successor as it arrived
    (no recoding) before decoding it, so every link carries the coded tensor once."""
    me, W = ex.link.rank, ex.link.world
    hop = (me - src) % W                                  # position in the chain
    prev, nxt = (me - 1) % W, [(me + 1) % W] if hop < W - 1 else []
    Q = nslices(flat.numel(), s)
    got = {q: ex.expect(("bc", q, hop - 1), prev, 1, q, _piece(flat, q, s).numel()) for q in range(Q)} if hop else {}
    ex.start()
    for q in range(Q):
        if hop == 0:
            ex.send(("bc", q, 0), nxt, 1, q, _piece(flat, q, s))
        for h in range(W - 1):                            # sized framing: one batch per link of the chain
            if h == hop and hop:
                ex.forward(got[q], ("bc", q, h), nxt)
            ex.wait_key(("bc", q, h))
        if hop:
            ex.decode(got[q], _piece(flat, q, s))
    ex.finish()


def all_to_all(ex: Exchange, inp: torch.Tensor, out: torch.Tensor, send_bounds: list, recv_bounds: list,
               rounds: int, s: int) -> None:
    """Rank i's chunk `inp[send_bounds[j]]` goes to `out[recv_bounds[i]]` of rank j (element
    bounds of the 1-D contiguous tensors); `rounds`: the most slices of any pair's chunk
    (the same on every rank)."""
    me, W = ex.link.rank, ex.link.world
    send = [inp[a:b] for a, b in send_bounds]
    recv = [out[a:b] for a, b in recv_bounds]
    got = {(q, i): ex.expect(("a2a", q), i, 1, q, _piece(recv[i], q, s).numel())
           for i in range(W) if i != me for q in range(nslices(recv[i].numel(), s))}
    ex.start()
    peers = _ring(me, W)

    def contribute(q: int) -> None:
        for j in peers:
            if q < nslices(send[j].numel(), s):
                ex.send(("a2a", q), [j], 1, q, _piece(send[j], q, s))

    recv[me].copy_(send[me])
    for q in _led(rounds, contribute):
        ex.wait_key(("a2a", q))
        for i in range(W):
            if (q, i) in got:
                ex.decode(got[q, i], _piece(recv[i], q, s))
    ex.finish()


def exchange_sizes(kind: str, world: int, rank: int, n: int, s: int, **kw) -> tuple[int, int]:
    """(send slots, receive slots) the schedule of `kind` needs on `rank` (n: elements of the
    collective's main tensor, see each schedule)."""
    if kind == "all_reduce":
        K = nslices(n, s)
        own = len(range(rank, K, world))
        return K, own * (world - 1) + (K - own)
    if kind == "reduce_scatter_tensor":          # n: out.numel()
        Q = nslices(n, s)
        return Q * (world - 1), Q * (world - 1)
    if kind == "all_gather_into_tensor":         # n: inp.numel()
        Q = nslices(n, s)
        return Q, Q * (world - 1)
    if kind == "broadcast":
        Q = nslices(n, s)
        return (Q, 0) if rank == kw["src"] else (0, Q)
    if kind == "all_to_all_single":
        return (sum(nslices(c, s) for j, c in enumerate(kw["send_counts"]) if j != rank),
                sum(nslices(c, s) for i, c in enumerate(kw["recv_counts"]) if i != rank))
    raise ValueError(kind)
