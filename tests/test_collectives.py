"""Compressed collectives: unit tests, and every collective x dtype x shard shape on real gloo groups.

World sizes 1 and 3 run here on spawned processes; 2 and 4 run the same checks
under mpiexec (test_collectives_mpi.py).  `check_*` functions run on every rank
of a live group: each rank can rebuild every rank's input from its seed, so it
computes the expected result itself, from uncompressed inputs.
"""
from __future__ import annotations

import zlib

import pytest
import torch
import torch.distributed as dist

import qlccomm
from qlccomm import collectives as C
from qlccomm import wire
from qlccomm.api import pick_codec
from dist_util import check_ok, run_ranks

CODED = [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2, torch.int8, torch.uint8]
RAW = [torch.int32]            # no coded plan: stored raw, goes the uncoded route
SIZES = [0, 3, 1001]           # empty; fewer elements than 4 ranks (empty shards); uneven shards
BIG = 6007                     # holds an all-zero chunk; bfloat16 and float32 only
MID = 1001                     # the size at which the extra ops and the default threshold are checked


def cases(dtypes=None):
    """(dtype, n) pairs of the matrix."""
    for dtype in dtypes or CODED + RAW:
        for n in SIZES + ([BIG] if dtype in (torch.bfloat16, torch.float32) else []):
            yield dtype, n


def name(dtype):
    return str(dtype).removeprefix("torch.")


def make_input(dtype, n, rank, salt=0):
    """Rank `rank`'s deterministic input: gradient-like values, a -0.0 and a run of zeros."""
    g = torch.Generator().manual_seed(zlib.crc32(f"{name(dtype)}/{n}/{rank}/{salt}".encode()))
    if dtype.is_floating_point:
        scale = 1.0 if dtype in (torch.float8_e4m3fn, torch.float8_e5m2) else 0.02
        x = (torch.randn(n, generator=g, dtype=torch.float64) * scale)
        if n > 4200:
            x[100:4200 + 100] = 0  # an all-zero chunk
        x = x.to(dtype)
        if n > 1:
            x[1] = -0.0
        return x
    if dtype == torch.uint8:
        return (128 + torch.randn(n, generator=g) * 6).round().clamp(0, 255).to(dtype)
    if dtype == torch.int8:
        return (torch.randn(n, generator=g) * 6).round().clamp(-128, 127).to(dtype)
    return torch.randint(-1000, 1000, (n,), generator=g).to(dtype)


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8),
                                                                      b.reshape(-1).view(torch.uint8))


def assert_bits(got, want, what):
    assert same_bits(got, want), f"{what}: result differs from the reference"


def ops_for(dtype):
    if dtype.is_floating_point:
        return [dist.ReduceOp.SUM, dist.ReduceOp.AVG, dist.ReduceOp.MAX]
    return [dist.ReduceOp.SUM, dist.ReduceOp.MIN]


def expect_coded(dtype, n, world, threshold=0):
    return world > 1 and n > 0 and dtype in CODED and n * torch.empty(0, dtype=dtype).element_size() >= threshold


# -- checks run on every rank of a live group ---------------------------------------------------------
def check_all_reduce(rank, world, dtypes=None):
    count = 0
    for dtype, n in cases(dtypes):
        xs = [make_input(dtype, n, k) for k in range(world)]
        for op in ops_for(dtype) if n == MID else [dist.ReduceOp.SUM]:
            t = xs[rank].clone()
            st = C.WireStats()
            assert qlccomm.all_reduce(t, op=op, min_compress_bytes=0, stats=st) is None
            assert_bits(t, C.reference_all_reduce(xs, op), f"all_reduce {name(dtype)} n={n} {op}")
            assert st.compressed == expect_coded(dtype, n, world), (name(dtype), n, st)
            count += 1
        if n == MID:
            # default threshold: small messages take the uncoded route, same result
            t = xs[rank].clone()
            st = C.WireStats()
            qlccomm.all_reduce(t, stats=st)
            assert_bits(t, C.reference_all_reduce(xs), f"all_reduce plain {name(dtype)} n={n}")
            assert not st.compressed
            count += 1
    # float64 accumulates in float64
    xs = [make_input(torch.float64, MID, k) for k in range(world)]
    t = xs[rank].clone()
    qlccomm.all_reduce(t, op=dist.ReduceOp.AVG, min_compress_bytes=0)
    assert_bits(t, C.reference_all_reduce(xs, dist.ReduceOp.AVG), "all_reduce float64")
    return count + 1


def check_all_reduce_variants(rank, world):
    """2-D tensors, non-contiguous input, async handles, shared and default codebooks, byte savings."""
    xs = [make_input(torch.bfloat16, 6000, k).view(60, 100) for k in range(world)]
    ref = C.reference_all_reduce(xs)
    # async: wait() and get_future()
    t = xs[rank].clone()
    work = qlccomm.all_reduce(t, async_op=True, min_compress_bytes=0)
    assert work.get_future().wait() is t
    assert work.wait() and work.is_completed()
    assert_bits(t, ref, "async all_reduce")
    # a non-contiguous tensor, reduced in place
    base = torch.zeros(100, 60, dtype=torch.bfloat16)
    view = base.t()
    view.copy_(xs[rank])
    qlccomm.all_reduce(view, min_compress_bytes=0)
    assert_bits(view.contiguous(), ref, "non-contiguous all_reduce")
    # every rank fits the same codebook: streams reference it by digest
    cb = qlccomm.fit_codebook([make_input(torch.bfloat16, 6000, k, salt=9) for k in range(2)])
    for codebook in (cb, "default", {torch.bfloat16: cb}):
        t = xs[rank].clone()
        st = C.WireStats()
        qlccomm.all_reduce(t, codebook=codebook, min_compress_bytes=0, stats=st)
        assert_bits(t, ref, f"all_reduce codebook={codebook!r}")
        if world > 1:
            assert st.compressed and st.sent_bytes < st.plain_bytes, st
    # compressible data: fewer bytes on the wire, 2(W-1)/W of the coded size
    t = xs[rank].clone()
    st = C.WireStats()
    qlccomm.all_reduce(t, min_compress_bytes=0, stats=st)
    if world > 1:
        assert st.sent_bytes < 0.85 * st.plain_bytes, st
        assert st.coded_bytes < 0.85 * st.raw_bytes, st
    # async in the uncoded route
    t = make_input(torch.float64, 100, rank)
    work = qlccomm.all_reduce(t, async_op=True)
    work.wait()
    assert_bits(t, C.reference_all_reduce([make_input(torch.float64, 100, k) for k in range(world)]), "async f64")
    return 8


def check_reduce_scatter(rank, world, dtypes=None):
    count = 0
    for dtype, n in cases(dtypes):
        n //= 3  # per-rank output
        xs = [make_input(dtype, n * world, k) for k in range(world)]
        for op in ops_for(dtype)[:2] if n == MID // 3 else [dist.ReduceOp.SUM]:
            out = torch.empty(n, dtype=dtype)
            qlccomm.reduce_scatter_tensor(out, xs[rank].clone(), op=op, min_compress_bytes=0)
            want = C.reference_all_reduce(xs, op)[rank * n:(rank + 1) * n]
            assert_bits(out, want, f"reduce_scatter {name(dtype)} n={n} {op}")
            count += 1
    xs = [make_input(torch.float16, 800 * world, k) for k in range(world)]
    out = torch.empty(800, dtype=torch.float16)
    work = qlccomm.reduce_scatter_tensor(out, xs[rank], async_op=True, min_compress_bytes=0)
    work.wait()
    assert_bits(out, C.reference_all_reduce(xs)[rank * 800:(rank + 1) * 800], "async reduce_scatter")
    return count + 1


def check_all_gather(rank, world, dtypes=None):
    count = 0
    for dtype, n in cases(dtypes):
        xs = [make_input(dtype, n, k, salt=1) for k in range(world)]
        # the default codec "auto" (ENEC for the wide floats), QLC, and the uncoded route
        variants = [(0, "auto"), (0, "qlc")] + ([(None, "auto")] if n == MID else [])
        for threshold, codec in variants:
            out = torch.empty(world * n, dtype=dtype)
            st = C.WireStats()
            qlccomm.all_gather_into_tensor(out, xs[rank], codec=codec, min_compress_bytes=threshold, stats=st)
            assert_bits(out, torch.cat(xs), f"all_gather {name(dtype)} n={n} {codec} threshold={threshold}")
            assert st.compressed == (threshold == 0 and expect_coded(dtype, n, world))
            count += 1
    # 2-D output of shape [world, n], async, and an input that is a view into the output (as FSDP2 passes)
    n = 3000
    xs = [make_input(torch.bfloat16, n, k, salt=2) for k in range(world)]
    out = torch.empty(world, n, dtype=torch.bfloat16)
    work = qlccomm.all_gather_into_tensor(out, xs[rank], async_op=True, min_compress_bytes=0)
    assert work.get_future().wait() is out
    assert_bits(out, torch.stack(xs), "async all_gather")
    out = torch.empty(world * n, dtype=torch.bfloat16)
    inp = out.narrow(0, rank * n, n)
    inp.copy_(xs[rank])
    qlccomm.all_gather_into_tensor(out, inp, min_compress_bytes=0)
    assert_bits(out, torch.cat(xs), "all_gather with aliased input")
    return count + 2


def check_broadcast(rank, world, dtypes=None):
    count = 0
    for dtype, n in cases(dtypes):
        for src in [n % world]:
            t = make_input(dtype, n, rank, salt=3)
            want = make_input(dtype, n, src, salt=3)
            st = C.WireStats()
            qlccomm.broadcast(t, src, codec="qlc", min_compress_bytes=0, stats=st)
            assert_bits(t, want, f"broadcast {name(dtype)} n={n} src={src}")
            assert st.compressed == expect_coded(dtype, n, world)
            count += 1
    t = make_input(torch.float32, 5000, rank, salt=4).view(50, 100)
    work = qlccomm.broadcast(t, world - 1, async_op=True, codec="qlc", min_compress_bytes=0)
    work.wait()
    assert_bits(t, make_input(torch.float32, 5000, world - 1, salt=4).view(50, 100), "async broadcast")
    return count + 1


def enec_available():
    try:
        qlccomm.compress(torch.zeros(4, dtype=torch.bfloat16), codec="enec")
        return True
    except (ImportError, ModuleNotFoundError):
        return False


def check_broadcast_enec(rank, world):
    """The default codec: ENEC when installed; until then an ImportError on every rank, group intact."""
    t = make_input(torch.bfloat16, 5000, rank, salt=5)
    want = make_input(torch.bfloat16, 5000, 0, salt=5)
    if enec_available():
        for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.int8):
            t = make_input(dtype, 5000, rank, salt=5)
            qlccomm.broadcast(t, 0, min_compress_bytes=0)
            assert_bits(t, make_input(dtype, 5000, 0, salt=5), f"enec broadcast {name(dtype)}")
        return "enec"
    if world > 1:
        with pytest.raises(ImportError):
            qlccomm.broadcast(t, 0, min_compress_bytes=0)
    qlccomm.broadcast(t, 0, codec="qlc", min_compress_bytes=0)  # the group still works
    assert_bits(t, want, "broadcast after the ImportError")
    return "no-enec"


def a2a_split(i, j, n):
    """Rows rank i sends to rank j (zero for some pairs)."""
    return (i + 2 * j + n) % 4 * n


def check_all_to_all(rank, world, dtypes=None):
    count = 0
    for dtype in dtypes or CODED + RAW:
        for n in (0, 1, 250):
            inputs = [make_input(dtype, 2 * sum(a2a_split(k, j, n) for j in range(world)), k, salt=6).view(-1, 2)
                      for k in range(world)]
            in_split = [a2a_split(rank, j, n) for j in range(world)]
            out_split = [a2a_split(i, rank, n) for i in range(world)]
            want = []
            for i in range(world):
                start = sum(a2a_split(i, j, n) for j in range(rank))
                want.append(inputs[i][start:start + a2a_split(i, rank, n)])
            want = torch.cat(want)
            for threshold in (0, None) if n == 250 else (0,):
                out = torch.empty(sum(out_split), 2, dtype=dtype)
                qlccomm.all_to_all_single(out, inputs[rank], out_split, in_split, min_compress_bytes=threshold)
                assert_bits(out, want, f"all_to_all {name(dtype)} n={n} threshold={threshold}")
                count += 1
    # equal splits (None), and ranks that disagree on coding (thresholds differ): per-sender choice
    xs = [make_input(torch.bfloat16, 1000 * world, k, salt=7) for k in range(world)]
    out = torch.empty(1000 * world, dtype=torch.bfloat16)
    qlccomm.all_to_all_single(out, xs[rank], min_compress_bytes=0 if rank % 2 else None)
    assert_bits(out, torch.cat([x[rank * 1000:(rank + 1) * 1000] for x in xs]), "all_to_all equal splits")
    work = qlccomm.all_to_all_single(out, xs[rank], async_op=True, min_compress_bytes=0)
    work.wait()
    assert_bits(out, torch.cat([x[rank * 1000:(rank + 1) * 1000] for x in xs]), "async all_to_all")
    return count + 2


def check_broadcast_parameters(rank, world):
    """hccl_hooks.broadcast_parameters: every rank bit-identical to src's parameters and buffers."""
    from hccl_hooks import broadcast_parameters

    torch.manual_seed(100 + rank)  # a different model on every rank
    model = torch.nn.Sequential(torch.nn.Linear(40, 64), torch.nn.LayerNorm(64), torch.nn.Linear(64, 8),
                                torch.nn.BatchNorm1d(8))
    model[3].running_mean.normal_()
    model[3].num_batches_tracked.fill_(rank + 3)  # an int64 buffer (uncoded)
    out = {}
    for codec, src in (("qlc", world - 1), ("enec", 0)):
        if codec == "enec" and not enec_available():
            continue
        st = broadcast_parameters(model, src=src, codec=codec, min_compress_bytes=0)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        gathered = [None] * world
        dist.all_gather_object(gathered, {k: v.reshape(-1).view(torch.uint8).tolist() for k, v in state.items()})
        assert all(g == gathered[src] for g in gathered), f"parameters differ after broadcast_parameters ({codec})"
        assert state["3.num_batches_tracked"].item() == world - 1 + 3
        if world > 1:
            assert st.compressed and st.sent_bytes < st.plain_bytes, st
        out[codec] = st.as_dict()
    return out


def check_thread_count_unchanged(before):
    after = torch.get_num_threads()
    assert after == before, (
        f"a qlccomm call changed torch's intra-op thread count from {before} to {after}: results of "
        "later torch ops (training math) change with it, so runs stop being reproducible")


def check_everything(rank, world):
    threads = torch.get_num_threads()
    result = check_everything_inner(rank, world)
    check_thread_count_unchanged(threads)
    return result


def check_everything_inner(rank, world):
    return {
        "all_reduce": check_all_reduce(rank, world),
        "all_reduce_variants": check_all_reduce_variants(rank, world),
        "reduce_scatter": check_reduce_scatter(rank, world),
        "all_gather": check_all_gather(rank, world),
        "broadcast": check_broadcast(rank, world),
        "broadcast_enec": check_broadcast_enec(rank, world),
        "all_to_all": check_all_to_all(rank, world),
        "broadcast_parameters": check_broadcast_parameters(rank, world),
    }


# -- multi-rank tests on spawned processes ----------------------------------------------------------------
@pytest.mark.parametrize("world", [1, 3])
def test_every_collective_every_dtype(world):
    results = check_ok(run_ranks("test_collectives:check_everything", world, timeout=150))
    assert results[0]["all_reduce"] == sum(len(ops_for(d)) + 1 + len(SIZES) - 1 for d in CODED + RAW) + 2 + 1
    assert all(r == results[0] for r in results[1:])  # same checks, same byte counts on every rank


# -- local unit tests (no process group) -------------------------------------------------------------------------
def test_shard_bounds_cover_and_are_balanced():
    for n in (0, 1, 3, 7, 100, 101):
        for w in (1, 2, 3, 4):
            b = C._shard_bounds(n, w)
            assert b[0][0] == 0 and b[-1][1] == n
            assert all(b[i][1] == b[i + 1][0] for i in range(w - 1))
            sizes = [e - s for s, e in b]
            assert max(sizes) - min(sizes) <= 1 and sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.float64])
def test_reference_all_reduce_is_float32_sum_in_rank_order(dtype):
    xs = [make_input(dtype, 500, k) for k in range(3)]
    acc_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    acc = (xs[0].to(acc_dtype) + xs[1].to(acc_dtype)) + xs[2].to(acc_dtype)
    assert_bits(C.reference_all_reduce(xs), acc.to(dtype), "SUM")
    assert_bits(C.reference_all_reduce(xs, dist.ReduceOp.AVG), (acc / 3).to(dtype), "AVG")
    assert_bits(C.reference_all_reduce(xs, dist.ReduceOp.MAX),
                torch.maximum(torch.maximum(xs[0].to(acc_dtype), xs[1].to(acc_dtype)), xs[2].to(acc_dtype)).to(dtype),
                "MAX")
    # the inputs are not modified (the float32 accumulator is a copy)
    assert_bits(xs[0], make_input(dtype, 500, 0), "input untouched")


def test_reference_all_reduce_integers_wrap_like_torch():
    xs = [torch.tensor([100, -100, 7], dtype=torch.int8)] * 3
    assert C.reference_all_reduce(xs).tolist() == [44, -44, 21]
    with pytest.raises(TypeError, match="AVG"):
        C.reference_all_reduce(xs, dist.ReduceOp.AVG)
    with pytest.raises(ValueError, match="SUM, AVG, MIN or MAX"):
        C.reference_all_reduce(xs, dist.ReduceOp.PRODUCT)
    with pytest.raises(TypeError):
        C.reference_all_reduce([torch.ones(2, dtype=torch.bool)])


def test_frame_round_trip_and_mismatches():
    tag = wire.digest_tag("0123456789abcdef")
    head = wire.frame("qlc", torch.bfloat16, tag)
    assert len(head) == wire.FRAME_BYTES
    wire.check_frame(head, "qlc", torch.bfloat16, tag, source=1)
    with pytest.raises(qlccomm.CodebookError, match="codebook"):
        wire.check_frame(head, "qlc", torch.bfloat16, wire.ADAPTIVE_TAG, source=1)
    with pytest.raises(qlccomm.FormatError, match="expected"):
        wire.check_frame(head, "qlc", torch.float16, tag, source=1)
    bad = bytearray(head)
    bad[3] = qlccomm.FORMAT_VERSION + 1
    with pytest.raises(qlccomm.FormatError, match="version"):
        wire.check_frame(bytes(bad), "qlc", torch.bfloat16, tag, source=1)
    with pytest.raises(qlccomm.FormatError, match="no qlccomm frame"):
        wire.check_frame(b"xx" + head[2:], "qlc", torch.bfloat16, tag, source=1)


def test_payload_encode_decode_and_checks():
    coding = C._resolve_coding(torch.float16, "qlc", None)
    x = make_input(torch.float16, 3000, 0)
    p = C._encode(x, coding)
    assert_bits(C._decode(p, coding, torch.float16, 3000, 0), x, "payload")
    assert C._encode(x[:0], coding).numel() == 0
    with pytest.raises(qlccomm.FormatError, match="elements"):
        C._decode(p, coding, torch.float16, 2999, 0)
    cb = qlccomm.fit_codebook(x)
    with pytest.raises(qlccomm.CodebookError):
        C._decode(p, C._resolve_coding(torch.float16, "qlc", cb), torch.float16, 3000, 0)


def test_coding_resolution_per_dtype():
    for dtype in CODED:
        assert C._resolve_coding(dtype, "qlc", None).codec == "qlc"
        assert C._resolve_coding(dtype, "qlc", None).tag == wire.ADAPTIVE_TAG
        # "auto" follows qlccomm's own per-dtype choice
        assert C._resolve_coding(dtype, "auto", None).codec == pick_codec(dtype, "auto")
    for dtype in RAW + [torch.int64, torch.complex64]:
        assert not C._resolve_coding(dtype, "qlc", None).coded
    assert not C._resolve_coding(torch.bfloat16, "raw", None).coded
    cb = qlccomm.default_codebook(torch.bfloat16)
    assert C._resolve_coding(torch.bfloat16, "qlc", "default").tag == bytes.fromhex(cb.digest)
    with pytest.raises(ValueError, match="unknown codec"):
        C._resolve_coding(torch.bfloat16, "zstd", None)
    with pytest.raises(ValueError, match="is for"):
        C._resolve_coding(torch.float16, "qlc", cb)
    if enec_available():
        assert C._resolve_coding(torch.bfloat16, "enec", None).codec == "enec"
        # dtypes ENEC does not code fall back to QLC (1-byte) or go uncoded
        assert C._resolve_coding(torch.int8, "enec", None).codec == "qlc"
        assert C._resolve_coding(torch.int32, "enec", None) == C._RAW
    else:
        with pytest.raises(ImportError):
            C._resolve_coding(torch.bfloat16, "enec", None)


def test_handshake_rows_describe_disagreements():
    rows = []
    for digest in ("00000000000000aa", "00000000000000bb"):
        hs = wire.Handshake("all_reduce", dtype=torch.bfloat16, numel=10, codec="qlc", tag=wire.digest_tag(digest),
                            path=wire.PATH_CODED, extra=[1, 2])
        rows.append(hs.row(2))
    with pytest.raises(qlccomm.CodebookError, match="rank 0: 00000000000000aa, rank 1: 00000000000000bb"):
        wire._check_agreement("qlccomm.all_reduce", rows, (wire.F_DTYPE, wire.F_TAG))
    failed = wire.Handshake("all_reduce", error=KeyError("x")).row(2)
    assert failed[wire.F_STATUS] == 1 and wire.error_class(failed[wire.F_ERROR]) is RuntimeError
    assert wire.error_class(wire.error_code(qlccomm.CodebookError("x"))) is qlccomm.CodebookError
    assert wire.tag_to_str(wire.tag_to_int(wire.ADAPTIVE_TAG)) == "adaptive"


def test_collectives_need_a_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        qlccomm.all_reduce(torch.ones(4))
