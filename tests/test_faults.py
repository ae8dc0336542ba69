"""Faults: disagreements raise the same clear error on every rank (and the group stays usable);
a rank that dies mid-collective surfaces as an error on the others within the group's timeout.

Ranks run as spawned processes with a 5 s process-group timeout; the parent kills
anything still running after its wall-clock limit, so a hang fails the test instead
of stalling the suite.  The disagreement checks also run under mpiexec -n 2 / -n 4.
"""
import os
import time

import pytest
import torch
import torch.distributed as dist

import qlccomm
from qlccomm import collectives as C
from qlccomm import wire
from dist_util import check_ok, run_ranks

PG_TIMEOUT = 5.0


def expect_error(cls, match, fn):
    with pytest.raises(cls, match=match) as info:
        fn()
    return str(info.value)


def grads(rank, n=6000, dtype=torch.bfloat16, salt=0):
    g = torch.Generator().manual_seed(1000 * salt + rank)
    return (torch.randn(n, generator=g) * 0.01 * (1 + rank)).to(dtype)


def check_all_ranks_agree(rank, world):
    """Every disagreement raises on every rank; after each, the group still computes correctly."""
    messages = {}
    xs = [grads(k) for k in range(world)]

    def healthy():
        t = xs[rank].clone()
        qlccomm.all_reduce(t, compress=True, min_compress_bytes=0, slice_bytes=4096)
        assert torch.equal(t.view(torch.int16), C.reference_all_reduce(xs).view(torch.int16))

    # 1. every rank fitted its own codebook (different data -> different digests)
    own = qlccomm.fit_codebook(grads(rank, salt=1) * (rank + 1))
    messages["codebook"] = expect_error(qlccomm.CodebookError, "disagree on the codebook", lambda: qlccomm.all_reduce(
        xs[rank].clone(), codebook=own, min_compress_bytes=0))
    healthy()
    # 2. one rank adaptive, the others the shipped default codebook
    cb = "adaptive" if rank == 0 else "default"
    expect_error(qlccomm.CodebookError, "adaptive", lambda: qlccomm.all_reduce(
        xs[rank].clone(), codebook=cb, min_compress_bytes=0))
    # the other collectives check too
    expect_error(qlccomm.CodebookError, "codebook", lambda: qlccomm.broadcast(
        xs[rank].clone(), 0, codec="qlc", codebook=own, min_compress_bytes=0))
    expect_error(qlccomm.CodebookError, "codebook", lambda: qlccomm.all_gather_into_tensor(
        torch.empty(world * 6000, dtype=torch.bfloat16), xs[rank], codec="qlc", codebook=own, min_compress_bytes=0))
    expect_error(qlccomm.CodebookError, "codebook", lambda: qlccomm.reduce_scatter_tensor(
        torch.empty(2000, dtype=torch.bfloat16), grads(rank, 2000 * world), codebook=own, min_compress_bytes=0))
    expect_error(qlccomm.CodebookError, "codebook", lambda: qlccomm.all_to_all_single(  # 6000 % world == 0
        torch.empty(6000, dtype=torch.bfloat16), xs[rank], codebook=own, min_compress_bytes=0))
    healthy()
    # 3. another stream format version on the last rank
    saved = wire.FORMAT_VERSION
    if rank == world - 1:
        wire.FORMAT_VERSION = saved + 1
    try:
        messages["format"] = expect_error(qlccomm.FormatError, "format version", lambda: qlccomm.all_reduce(
            xs[rank].clone(), min_compress_bytes=0))
    finally:
        wire.FORMAT_VERSION = saved
    # 4. a rank whose encoder fails before sending: its own error there, the same kind elsewhere
    codec = "no-such-codec" if rank == 1 else "qlc"
    messages["local"] = expect_error(ValueError, "no-such-codec" if rank == 1 else r"rank\(s\) \[1\] failed",
                                     lambda: qlccomm.all_reduce(xs[rank].clone(), codec=codec))
    # 5. sizes that differ (gloo would abort on all_gather_into_tensor) and ops that differ
    expect_error(ValueError, "element count", lambda: qlccomm.all_reduce(grads(rank, 100 + (rank == 0))))
    expect_error(ValueError, "element count", lambda: qlccomm.all_gather_into_tensor(
        torch.empty(world * (50 + rank)), torch.ones(50 + rank)))
    op = dist.ReduceOp.MAX if rank == 0 else dist.ReduceOp.SUM
    expect_error(ValueError, "reduce op", lambda: qlccomm.all_reduce(xs[rank].clone(), op=op))
    # 6. ranks in different collectives: equal-size handshakes, so every rank finds out
    if rank == 0:
        messages["order"] = expect_error(RuntimeError, "same collectives", lambda: qlccomm.broadcast(
            xs[rank].clone(), 0, codec="qlc"))
    else:
        messages["order"] = expect_error(RuntimeError, "same collectives", lambda: qlccomm.all_reduce(
            xs[rank].clone()))
    # 7. uneven all_to_all splits that do not match
    bad = [1] * world
    bad[0] += rank == 0
    expect_error(ValueError, "split sizes disagree", lambda: qlccomm.all_to_all_single(
        torch.empty(world, 3), torch.ones(sum(bad), 3), [1] * world, bad))
    healthy()
    # 8. routing arguments that differ are named as the user passed them
    messages["min_bytes"] = expect_error(ValueError, "min_compress_bytes", lambda: qlccomm.all_reduce(
        xs[rank].clone(), min_compress_bytes=0 if rank == 0 else None))
    expect_error(ValueError, "compress=", lambda: qlccomm.all_reduce(
        xs[rank].clone(), compress=True if rank == 0 else None))
    expect_error(ValueError, "deterministic=", lambda: qlccomm.all_reduce(
        xs[rank].clone(), deterministic=rank == 0))
    # 9. a rank whose encoder fails in the middle of the data: error frames keep every rank in step,
    # every rank raises the same class (the failing rank its own exception), the group stays usable
    import qlccomm.transport as T
    real = T.compress
    calls = [0]

    def flaky(x, **kw):
        calls[0] += 1
        if calls[0] == 2:
            raise ValueError("simulated encoder failure")
        return real(x, **kw)

    def corrupt(x, **kw):
        blob = real(x, **kw)
        blob[0] ^= 0xFF           # the stream's magic: a payload the receiver cannot take
        return blob

    for fault, cls in ((flaky, ValueError), (corrupt, qlccomm.FormatError)):
        if rank == 1:
            T.compress = fault
        try:
            messages[f"mid_{cls.__name__}"] = expect_error(cls, None, lambda: qlccomm.all_reduce(
                xs[rank].clone(), compress=True, min_compress_bytes=0, slice_bytes=4096, codebook="default"))
        finally:
            T.compress = real
        healthy()
    dist.barrier()
    return messages


def test_disagreements_raise_on_every_rank():
    results = check_ok(run_ranks("test_faults:check_all_ranks_agree", 3, timeout=90, pg_timeout=PG_TIMEOUT))
    for r in results:
        assert "rank 0:" in r["codebook"] and "rank 2:" in r["codebook"]
        assert "rank 0: 0, rank 1: 16384" in r["min_bytes"]
    assert f"rank 2: {qlccomm.FORMAT_VERSION + 1}" in results[0]["format"]
    assert "simulated encoder failure" in results[1]["mid_ValueError"]
    assert "rank 1" in results[0]["mid_ValueError"] and "rank 1" in results[2]["mid_FormatError"]


@pytest.mark.mpi(min_size=2)
def test_disagreements_raise_on_every_rank_mpi(mpi_group):
    check_all_ranks_agree(*mpi_group)


def die_mid_collective(rank, world, where):
    """The last rank exits inside a compressed all_reduce; the others report what they saw."""
    victim = world - 1
    if rank == victim:
        def die(*args, **kwargs):
            os._exit(17)

        import qlccomm.transport as T
        send = T.Exchange.send

        def die_in(self, key, dsts, stream, index, x):
            if where == "payload" or stream == 2:
                os._exit(17)
            return send(self, key, dsts, stream, index, x)

        # "payload": after the call headers, instead of its first slice; "gather": instead of
        # its first reduced slice (after the other ranks' contributions arrived)
        T.Exchange.send = die_in
    t = grads(rank, 20000)
    start = time.monotonic()
    try:
        qlccomm.all_reduce(t, compress=True, min_compress_bytes=0, slice_bytes=4096)
    except Exception as e:  # what a survivor sees
        return {"error": f"{type(e).__name__}: {e}", "seconds": time.monotonic() - start}
    return {"error": None, "seconds": time.monotonic() - start}


@pytest.mark.parametrize("where", ["payload", "gather"])
def test_rank_exit_mid_collective_surfaces_on_the_others(where):
    start = time.monotonic()
    out = run_ranks("test_faults:die_mid_collective", 3, where, timeout=60, pg_timeout=PG_TIMEOUT)
    wall = time.monotonic() - start
    assert out[2].returncode == 17, out[2].output[-2000:]
    for o in out[:2]:
        assert o.returncode == 0 and o.ok, f"rank {o.rank}: {o.error}\n{o.output[-2000:]}"
        assert o.result["error"], f"rank {o.rank} finished an all_reduce whose peer died"
        # within the group's timeout (plus start-up slack), not a hang
        assert o.result["seconds"] < PG_TIMEOUT + 10, o.result
    assert wall < 60
