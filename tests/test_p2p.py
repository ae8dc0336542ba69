"""Compressed point-to-point on real gloo groups (spawned ranks, and 2 ranks under mpiexec).

Every dtype, empty / odd / multi-slice sizes, coded and raw routes, views, many messages in
flight with mixed tags (matched per tag in posting order, as torch's are), batches in both
directions at once (qlccomm's P2POps and torch's), a receive from any rank, both framings;
mismatched receivers, codebooks a receiver lacks, a corrupt payload and a sender that dies
mid-message.
"""
from __future__ import annotations

import os
import time

import pytest
import torch
import torch.distributed as dist

import qlccomm
from qlccomm.collectives import WireStats
from dist_util import check_ok, run_ranks
from test_collectives import CODED, RAW, assert_bits, make_input

CODE = dict(compress=True, min_compress_bytes=0, slice_bytes=4096)
DTYPES = CODED + RAW + [torch.float64]


def exchange_every_dtype(rank, world):
    """Rank 0 sends, rank 1 receives, for every dtype and size, coded and raw; then the other
    way round with non-contiguous views on both ends."""
    count = 0
    for dtype in DTYPES:
        for n in (0, 1, 1001, 40000):
            x = make_input(dtype, n, 0, salt=40)
            for kw in (CODE, {"compress": False}, {}):
                st = WireStats()
                if rank == 0:
                    qlccomm.send(x, 1, stats=st, **kw)
                    if kw is CODE and n >= 1001 and dtype in CODED:
                        assert st.route == "coded" and st.compressed, (dtype, n, st)
                else:
                    y = torch.full_like(x, 7) if n else torch.empty_like(x)
                    assert qlccomm.recv(y, 0, stats=st) == 0
                    assert_bits(y, x, f"p2p {dtype} n={n} {kw}")
                count += 1
    # views: a transposed slice sent, received into a strided view
    base = make_input(torch.bfloat16, 200 * 300, 1, salt=41).view(200, 300)
    src = base.t()[::2]                                             # [150, 200], not contiguous
    if rank == 1:
        qlccomm.send(src, 0, **CODE)
    else:
        holder = torch.zeros(200, 150, dtype=torch.bfloat16)
        dst = holder.t()                                             # [150, 200], not contiguous
        qlccomm.recv(dst, 1)
        assert_bits(dst.contiguous(), src.contiguous(), "p2p into a view")
    dist.barrier()
    return count + 1


def many_in_flight(rank, world):
    """Twelve messages on three tags, receives posted in reverse: each tag's messages match in
    posting order; a batch in both directions at once; a receive from any rank."""
    peer = 1 - rank
    msgs = [make_input(torch.bfloat16, 5000 + 37 * i, 0, salt=50 + i) for i in range(12)]
    if rank == 0:
        works = [qlccomm.isend(m, 1, tag=i % 3, **CODE) for i, m in enumerate(msgs)]
    else:
        outs = {i: torch.empty_like(msgs[i]) for i in range(12)}
        # per tag, the k-th receive posted gets the k-th message sent with that tag; the sizes differ,
        # so post each tag's receives in its sending order, the tags themselves interleaved in reverse
        order = sorted(range(12), key=lambda i: (-(i % 3), i))
        works = [qlccomm.irecv(outs[i], 0, tag=i % 3) for i in order]
    for w in works:
        assert w.wait() and w.is_completed()
    if rank == 1:
        for i in range(12):
            assert_bits(outs[i], msgs[i], f"message {i}")
    # both directions in one batch, qlccomm's P2POps and torch's
    mine = make_input(torch.float16, 30000, rank, salt=60)
    theirs = make_input(torch.float16, 30000, peer, salt=60)
    for kind in ("qlccomm", "torch"):
        got = torch.empty_like(theirs)
        if kind == "qlccomm":
            ops = [qlccomm.P2POp(qlccomm.isend, mine, peer, **CODE), qlccomm.P2POp(qlccomm.irecv, got, peer)]
        else:
            ops = [dist.P2POp(dist.isend, mine, peer), dist.P2POp(dist.irecv, got, peer)]
        for w in qlccomm.batch_isend_irecv(ops):
            w.wait()
        assert_bits(got, theirs, f"batch both ways ({kind}'s P2POps)")
    # a receive from any rank (gloo)
    if rank == 0:
        qlccomm.send(mine, 1, tag=7, **CODE)
    else:
        got = torch.empty_like(theirs)
        work = qlccomm.irecv(got, tag=7)
        work.wait()
        assert work.source_rank == 0
        assert_bits(got, theirs, "any source")
    dist.barrier()
    return True


def framings(rank, world):
    """The same messages on the framing the environment selected (sizes agreed in every one)."""
    from qlccomm.collectives import _group_state
    peer = 1 - rank
    x = make_input(torch.bfloat16, 30001, 0, salt=70)
    if rank == 0:
        qlccomm.send(x, 1, **CODE)
        qlccomm.send(x[:1000], 1, compress=False)
    else:
        y = torch.empty_like(x)
        qlccomm.recv(y, 0)
        assert_bits(y, x, "coded")
        z = torch.empty(1000, dtype=torch.bfloat16)
        qlccomm.recv(z, 0)
        assert_bits(z, x[:1000], "raw")
    a, b = make_input(torch.float32, 20000, rank, salt=71), torch.empty(20000)
    for w in qlccomm.batch_isend_irecv([qlccomm.P2POp(qlccomm.isend, a, peer, **CODE),
                                        qlccomm.P2POp(qlccomm.irecv, b, peer)]):
        w.wait()
    assert_bits(b, make_input(torch.float32, 20000, peer, salt=71), "batch")
    return _group_state(None)[0].link.framing


def mismatches(rank, world):
    """A receiver with another dtype, shape or element count: the same ValueError on both ranks,
    naming both sides; a codebook the receiver lacks: CodebookError on both; then the pair works."""
    out = {}
    x = make_input(torch.bfloat16, 6000, 0, salt=80).view(60, 100)
    cases = {"numel": torch.empty(6001, dtype=torch.bfloat16), "dtype": torch.empty(60, 100, dtype=torch.float16),
             "shape": torch.empty(100, 60, dtype=torch.bfloat16)}
    for route, kw in (("coded", CODE), ("raw", {"compress": False})):
        for name, wrong in cases.items():
            with pytest.raises(ValueError) as info:
                if rank == 0:
                    qlccomm.send(x, 1, **kw)
                else:
                    qlccomm.recv(wrong, 0)
            out[name if route == "coded" else f"{name} ({route})"] = str(info.value)
        # the sender's data went out with its header and the receiver drained it: the tag is clean
        if rank == 0:
            qlccomm.send(x, 1, **kw)
        else:
            y = torch.empty_like(x)
            qlccomm.recv(y, 0)
            assert_bits(y, x, f"after the {route} mismatches")
    cb = qlccomm.fit_codebook(x.reshape(-1) * (1 + rank))          # every rank its own
    with pytest.raises(qlccomm.CodebookError):
        if rank == 0:
            qlccomm.send(x, 1, codebook=cb, **CODE)
        else:
            qlccomm.recv(torch.empty_like(x), 0)
    shared = qlccomm.fit_codebook(make_input(torch.bfloat16, 6000, 5, salt=81))   # the same on every rank
    if rank == 0:
        qlccomm.send(x, 1, codebook=shared, **CODE)
    else:
        y = torch.empty_like(x)
        qlccomm.recv(y, 0, codebook=shared)
        assert_bits(y, x, "shared codebook")
    return out


def corrupt_payload(rank, world):
    """A payload that does not parse raises FormatError on the receiver; the pair still works."""
    import qlccomm.transport as T
    x = make_input(torch.bfloat16, 20000, 0, salt=90)
    real = T.compress
    if rank == 0:
        def corrupt(t, **kw):
            blob = real(t, **kw)
            blob[0] ^= 0xFF
            return blob
        T.compress = corrupt
        try:
            qlccomm.send(x, 1, **CODE)
        finally:
            T.compress = real
        qlccomm.send(x, 1, **CODE)
        return "sent"
    with pytest.raises(qlccomm.FormatError):
        qlccomm.recv(torch.empty_like(x), 0)
    y = torch.empty_like(x)
    qlccomm.recv(y, 0)
    assert_bits(y, x, "after the corrupt payload")
    return "raised"


def dies_mid_message(rank, world):
    """The sender exits after its header; the receiver sees the backend's error, not a hang."""
    import qlccomm.transport as T
    x = make_input(torch.bfloat16, 200000, 0, salt=95)
    if rank == 0:
        def die(*a, **k):
            os._exit(17)
        T.Exchange.send = die
        qlccomm.send(x, 1, **CODE)
        return None
    start = time.monotonic()
    try:
        qlccomm.recv(torch.empty_like(x), 0)
    except Exception as e:   # noqa: BLE001 - what the survivor sees
        return {"error": f"{type(e).__name__}: {e}", "seconds": time.monotonic() - start}
    return {"error": None}


def long_job(rank, world):
    """300 messages each way on 3 tags, coded and raw: afterwards no message, tensor or
    buffer of them is still held, however long the job ran."""
    import gc

    from qlccomm import p2p
    peer = 1 - rank
    x = make_input(torch.bfloat16, 20000, rank, salt=7)
    y = torch.empty_like(x)
    for i in range(300):
        kw = CODE if i % 2 else {"compress": False}
        works = qlccomm.batch_isend_irecv([qlccomm.P2POp(qlccomm.isend, x, peer, tag=i % 3, **kw),
                                           qlccomm.P2POp(qlccomm.irecv, y, peer, tag=i % 3)])
        for w in works:
            w.wait()
        del works
    assert_bits(y, make_input(torch.bfloat16, 20000, peer, salt=7), "long job")
    gc.collect()
    alive = sum(isinstance(o, p2p._Message) for o in gc.get_objects())
    (eng,) = p2p._ENGINES.values()
    return {"messages_alive": alive, "keys": len(eng.plans), "pool_MiB": eng.pool.free_bytes() / 2**20}


# -- tests ------------------------------------------------------------------------------------------------
def test_every_dtype_size_route_and_views():
    results = check_ok(run_ranks("test_p2p:exchange_every_dtype", 2, timeout=180))
    assert results[0] == results[1] == len(DTYPES) * 4 * 3 + 1


def test_many_messages_tags_batches_and_any_source():
    check_ok(run_ranks("test_p2p:many_in_flight", 2, timeout=120))


@pytest.mark.parametrize("framing", ["capacity", "sized"])
def test_both_framings(framing):
    assert check_ok(run_ranks("test_p2p:framings", 2, timeout=90, env={"QLCCOMM_FRAMING": framing})) == [framing] * 2


@pytest.mark.parametrize("framing", ["capacity", "sized"])
def test_mismatched_receivers_raise_on_both_ranks(framing):
    """gloo's senders send at once and a receiver that disagrees drains; sized framing waits for the answer."""
    results = check_ok(run_ranks("test_p2p:mismatches", 2, timeout=90, env={"QLCCOMM_FRAMING": framing}))
    assert results[0] == results[1]                             # the same text on both ranks
    assert "6000 elements of bfloat16 [60, 100]" in results[0]["numel"] and "6001" in results[0]["numel"]
    assert "float16" in results[0]["dtype"] and "[100, 60]" in results[0]["shape"]


def test_corrupt_payload_raises_format_error_on_the_receiver():
    assert check_ok(run_ranks("test_p2p:corrupt_payload", 2, timeout=60)) == ["sent", "raised"]


def test_sender_dying_mid_message_surfaces_on_the_receiver():
    out = run_ranks("test_p2p:dies_mid_message", 2, timeout=60, pg_timeout=5.0)
    assert out[0].returncode == 17
    assert out[1].ok and out[1].result["error"], out[1].output[-2000:]
    assert out[1].result["seconds"] < 15


def test_memory_stays_bounded_over_a_long_job():
    for r in check_ok(run_ranks("test_p2p:long_job", 2, timeout=120)):
        assert r["messages_alive"] <= 2 and r["keys"] == 6 and r["pool_MiB"] < 64, r


@pytest.mark.mpi(min_size=2)
def test_p2p_under_mpiexec(mpi_group):
    rank, world = mpi_group
    if world == 2:
        exchange_every_dtype(rank, world)
        many_in_flight(rank, world)
        framings(rank, world)
    else:                                   # pairs (0, 1), (2, 3): a message each way in every pair
        peer = rank ^ 1
        if peer < world:
            a = make_input(torch.bfloat16, 9000, rank, salt=99)
            b = torch.empty_like(a)
            for w in qlccomm.batch_isend_irecv([qlccomm.P2POp(qlccomm.isend, a, peer, **CODE),
                                                qlccomm.P2POp(qlccomm.irecv, b, peer)]):
                w.wait()
            assert_bits(b, make_input(torch.bfloat16, 9000, peer, salt=99), "pairs")
        dist.barrier()


def test_tags_are_checked_and_spread():
    from qlccomm.p2p import P2P_TAG_SLOTS, _tags
    assert len({t for tag in range(50) for t in _tags(tag)}) == 200
    assert _tags(3) == _tags(3 + P2P_TAG_SLOTS)
    assert max(_tags(P2P_TAG_SLOTS - 1)) < 2**31
    with pytest.raises(ValueError):
        _tags(-1)
    with pytest.raises(ValueError, match="P2POp"):
        qlccomm.P2POp(print, torch.zeros(1), 0)
