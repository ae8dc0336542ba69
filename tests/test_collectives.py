"""Compressed collectives: unit tests, and every collective x dtype x shard shape on real gloo groups.

World sizes 1 and 3 run here on spawned processes; 2 and 4 run the same checks
under mpiexec (test_collectives_mpi.py).  `check_*` functions run on every rank
of a live group: each rank can rebuild every rank's input from its seed, so it
computes the expected result itself, from uncompressed inputs.  CODE forces the
coded route (the cost model would rightly step aside on loopback for most of
these sizes) and DET the rank-order arithmetic on every route.
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
CODE = dict(compress=True, min_compress_bytes=0, slice_bytes=2048)   # coded; small slices: several per call
DET = dict(deterministic=True)


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
            assert qlccomm.all_reduce(t, op=op, stats=st, **CODE, **DET) is None
            assert_bits(t, C.reference_all_reduce(xs, op), f"all_reduce {name(dtype)} n={n} {op}")
            assert st.compressed == expect_coded(dtype, n, world), (name(dtype), n, st)
            count += 1
        if n == MID:
            # default threshold: small messages take the uncoded pipelined route, same result
            t = xs[rank].clone()
            st = C.WireStats()
            qlccomm.all_reduce(t, stats=st, **DET)
            assert_bits(t, C.reference_all_reduce(xs), f"all_reduce plain {name(dtype)} n={n}")
            assert not st.compressed and st.route == ("pipelined" if world > 1 else "local"), st
            count += 1
    # float64 accumulates in float64
    xs = [make_input(torch.float64, MID, k) for k in range(world)]
    t = xs[rank].clone()
    qlccomm.all_reduce(t, op=dist.ReduceOp.AVG, **CODE, **DET)
    assert_bits(t, C.reference_all_reduce(xs, dist.ReduceOp.AVG), "all_reduce float64")
    return count + 1


def check_all_reduce_variants(rank, world):
    """2-D tensors, non-contiguous input, tensors that require grad, async handles, shared and
    default codebooks, byte savings, the dist route, several calls in flight."""
    xs = [make_input(torch.bfloat16, 60000, k).view(60, 1000) for k in range(world)]   # 15 slices of CODE
    ref = C.reference_all_reduce(xs)
    # async: wait() and get_future()
    t = xs[rank].clone()
    work = qlccomm.all_reduce(t, async_op=True, **CODE)
    assert work.get_future().wait() is t
    assert work.wait() and work.is_completed()
    assert_bits(t, ref, "async all_reduce")
    # a non-contiguous tensor, reduced in place; a leaf that requires grad (torch reduces those too)
    base = torch.zeros(1000, 60, dtype=torch.bfloat16)
    view = base.t()
    view.copy_(xs[rank])
    qlccomm.all_reduce(view, **CODE)
    assert_bits(view.contiguous(), ref, "non-contiguous all_reduce")
    leaf = xs[rank].clone().float().requires_grad_()
    qlccomm.all_reduce(leaf, **CODE)
    assert_bits(leaf.detach(), C.reference_all_reduce([x.float() for x in xs]), "requires_grad all_reduce")
    # every rank fits the same codebook: streams reference it by digest
    cb = qlccomm.fit_codebook([make_input(torch.bfloat16, 6000, k, salt=9) for k in range(2)])
    for codebook in (cb, "default", {torch.bfloat16: cb}):
        t = xs[rank].clone()
        st = C.WireStats()
        qlccomm.all_reduce(t, codebook=codebook, stats=st, **CODE)
        assert_bits(t, ref, f"all_reduce codebook={codebook!r}")
        if world > 1:
            assert st.compressed and st.sent_bytes < st.plain_bytes, st
    # compressible data: fewer bytes on the wire than a ring moves
    t = xs[rank].clone()
    st = C.WireStats()
    qlccomm.all_reduce(t, stats=st, **CODE)
    if world > 1:
        assert st.route == "coded" and st.sent_bytes < 0.85 * st.plain_bytes, st
        assert st.coded_bytes < 0.85 * st.raw_bytes, st
    # the dist route: torch's own all_reduce, identical bits on every rank
    t = xs[rank].clone()
    st = C.WireStats()
    qlccomm.all_reduce(t, stats=st, compress=False)
    want = xs[rank].clone()
    dist.all_reduce(want)
    assert_bits(t, want, "dist-route all_reduce")
    assert st.route == ("dist" if world > 1 else "local"), st
    # async in the uncoded route, and several calls in flight at once (one group thread, in order)
    t = make_input(torch.float64, 100, rank)
    work = qlccomm.all_reduce(t, async_op=True, **DET)
    work.wait()
    assert_bits(t, C.reference_all_reduce([make_input(torch.float64, 100, k) for k in range(world)]), "async f64")
    ts = [xs[rank].clone() for _ in range(4)]
    works = [qlccomm.all_reduce(x, async_op=True, **CODE) for x in ts]
    t = xs[rank].clone()
    qlccomm.all_reduce(t, **CODE)            # a synchronous call queued behind them
    for w in works:
        w.wait()
    for x in ts + [t]:
        assert_bits(x, ref, "all_reduce in flight")
    return 11


def check_reduce_scatter(rank, world, dtypes=None):
    count = 0
    for dtype, n in cases(dtypes):
        n //= 3  # per-rank output
        xs = [make_input(dtype, n * world, k) for k in range(world)]
        for op in ops_for(dtype)[:2] if n == MID // 3 else [dist.ReduceOp.SUM]:
            out = torch.empty(n, dtype=dtype)
            qlccomm.reduce_scatter_tensor(out, xs[rank].clone(), op=op, **CODE, **DET)
            want = C.reference_all_reduce(xs, op)[rank * n:(rank + 1) * n]
            assert_bits(out, want, f"reduce_scatter {name(dtype)} n={n} {op}")
            count += 1
    xs = [make_input(torch.float16, 800 * world, k) for k in range(world)]
    out = torch.empty(800, dtype=torch.float16)
    work = qlccomm.reduce_scatter_tensor(out, xs[rank], async_op=True, **CODE)
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
            kw = CODE if threshold == 0 else {}
            qlccomm.all_gather_into_tensor(out, xs[rank], codec=codec, stats=st, **kw)
            assert_bits(out, torch.cat(xs), f"all_gather {name(dtype)} n={n} {codec} threshold={threshold}")
            assert st.compressed == (threshold == 0 and expect_coded(dtype, n, world))
            count += 1
    # 2-D output of shape [world, n], async, and an input that is a view into the output (as FSDP2 passes)
    n = 3000
    xs = [make_input(torch.bfloat16, n, k, salt=2) for k in range(world)]
    out = torch.empty(world, n, dtype=torch.bfloat16)
    work = qlccomm.all_gather_into_tensor(out, xs[rank], async_op=True, **CODE)
    assert work.get_future().wait() is out
    assert_bits(out, torch.stack(xs), "async all_gather")
    out = torch.empty(world * n, dtype=torch.bfloat16)
    inp = out.narrow(0, rank * n, n)
    inp.copy_(xs[rank])
    qlccomm.all_gather_into_tensor(out, inp, **CODE)
    assert_bits(out, torch.cat(xs), "all_gather with aliased input")
    return count + 2


def check_broadcast(rank, world, dtypes=None):
    count = 0
    for dtype, n in cases(dtypes):
        for src in [n % world]:
            t = make_input(dtype, n, rank, salt=3)
            want = make_input(dtype, n, src, salt=3)
            st = C.WireStats()
            qlccomm.broadcast(t, src, codec="qlc", stats=st, **CODE)
            assert_bits(t, want, f"broadcast {name(dtype)} n={n} src={src}")
            assert st.compressed == expect_coded(dtype, n, world)
            count += 1
    t = make_input(torch.float32, 5000, rank, salt=4).view(50, 100)
    work = qlccomm.broadcast(t, world - 1, async_op=True, codec="qlc", **CODE)
    work.wait()
    assert_bits(t, make_input(torch.float32, 5000, world - 1, salt=4).view(50, 100), "async broadcast")
    # a leaf that requires grad, on every rank (torch broadcasts into those; a rank must not fail alone)
    t = make_input(torch.float32, 5000, rank, salt=4).requires_grad_()
    qlccomm.broadcast(t, 0, codec="qlc", **CODE)
    assert_bits(t.detach(), make_input(torch.float32, 5000, 0, salt=4), "broadcast into a leaf")
    return count + 2


def enec_available():
    try:
        qlccomm.compress(torch.zeros(4, dtype=torch.bfloat16), codec="enec")
        return True
    except (ImportError, ModuleNotFoundError):
        return False


def check_broadcast_enec(rank, world):
    """codec="enec": ENEC when installed; until then an ImportError on every rank, group intact."""
    t = make_input(torch.bfloat16, 5000, rank, salt=5)
    want = make_input(torch.bfloat16, 5000, 0, salt=5)
    if enec_available():
        for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.int8):
            t = make_input(dtype, 5000, rank, salt=5)
            qlccomm.broadcast(t, 0, codec="enec", **CODE)
            assert_bits(t, make_input(dtype, 5000, 0, salt=5), f"enec broadcast {name(dtype)}")
        return "enec"
    if world > 1:
        with pytest.raises(ImportError):
            qlccomm.broadcast(t, 0, codec="enec", **CODE)
    qlccomm.broadcast(t, 0, codec="qlc", **CODE)  # the group still works
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
                kw = CODE if threshold == 0 else {}
                qlccomm.all_to_all_single(out, inputs[rank], out_split, in_split, **kw)
                assert_bits(out, want, f"all_to_all {name(dtype)} n={n} threshold={threshold}")
                count += 1
    # equal splits (None)
    xs = [make_input(torch.bfloat16, 1000 * world, k, salt=7) for k in range(world)]
    out = torch.empty(1000 * world, dtype=torch.bfloat16)
    qlccomm.all_to_all_single(out, xs[rank], **CODE)
    assert_bits(out, torch.cat([x[rank * 1000:(rank + 1) * 1000] for x in xs]), "all_to_all equal splits")
    work = qlccomm.all_to_all_single(out, xs[rank], async_op=True, **CODE)
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
        st = broadcast_parameters(model, src=src, codec=codec, **CODE)
        state = {k: v.clone() for k, v in model.state_dict().items()}
        gathered = [None] * world
        dist.all_gather_object(gathered, {k: v.reshape(-1).view(torch.uint8).tolist() for k, v in state.items()})
        assert all(g == gathered[src] for g in gathered), f"parameters differ after broadcast_parameters ({codec})"
        assert state["3.num_batches_tracked"].item() == world - 1 + 3
        if world > 1:
            assert st.compressed and st.sent_bytes < st.plain_bytes, st
        out[codec] = st.compressed
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
def test_all_reduce_slices_interleave_owners_and_sizes_add_up():
    from qlccomm import schedules
    for n, s_, w in ((0, 4, 2), (10, 4, 2), (100, 7, 3), (4096 * 9 + 5, 4096, 4)):
        K = schedules.nslices(n, s_)
        owners = [k % w for k in range(K)]
        # every rank owns slices spread over the whole tensor (not a contiguous region)
        for r in range(w):
            mine = [k for k in range(K) if owners[k] == r]
            assert all(b - a == w for a, b in zip(mine, mine[1:]))
        sends = [schedules.exchange_sizes("all_reduce", w, r, n, s_)[0] for r in range(w)]
        recvs = [schedules.exchange_sizes("all_reduce", w, r, n, s_)[1] for r in range(w)]
        # each slice goes once to its owner from every other rank, and back once to every other rank
        assert sum(recvs) == K * (w - 1) * 2 - 0 or K == 0
        assert all(x == K for x in sends)


def test_slice_size_is_agreed_and_bounded():
    opts = C._options(None, None, None, None, 1 << 20)
    assert C._slice_elems(opts, 100, 4, 2) == C.MIN_SLICE_ELEMS            # tiny messages: one small slice
    assert C._slice_elems(opts, 1 << 30, 4, 2) == (1 << 20) // 2           # large: the option's bytes
    assert C._slice_elems(opts, 1 << 20, 4, 2) == (1 << 20) // 4           # medium: one slice per rank
    assert C._slice_elems(opts, 5 << 19, 4, 2) == -(-(5 << 19) // 8)       # two equal rounds, not 1.25
    with pytest.raises(ValueError, match="slice_bytes"):
        C._options(None, None, None, None, 10)
    with pytest.raises(TypeError, match="compress"):
        C._options("yes", None, None, None, None)


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
    f = wire.Frame(wire.CODEC_WIRE_IDS["qlc"], 2, 1, seq=7, index=3, length=100, numel=50)
    head = f.encode()
    assert len(head) == wire.FRAME_BYTES and wire.Frame.decode(head, 1) == f
    f.check(f, source=1, capacity=wire.FRAME_BYTES + 100)
    with pytest.raises(qlccomm.FormatError, match="slot holds"):
        f.check(f, source=1, capacity=wire.FRAME_BYTES + 99)
    for other in (wire.Frame(f.codec, f.dtype_code, 1, 8, 3, 0, 50),       # another call
                  wire.Frame(f.codec, f.dtype_code, 1, 7, 4, 0, 50),       # another slice
                  wire.Frame(f.codec, f.dtype_code, 2, 7, 3, 0, 50),       # another stream
                  wire.Frame(f.codec, 3, 1, 7, 3, 0, 50),                  # another dtype
                  wire.Frame(f.codec, f.dtype_code, 1, 7, 3, 0, 49)):      # another size
        with pytest.raises(qlccomm.FormatError, match="expected"):
            f.check(other, source=1, capacity=1000)
    raw = wire.Frame(wire.RAW_CODEC, 2, 1, 7, 3, 100, 50)                  # a raw slice is always acceptable
    raw.check(f, source=1, capacity=1000)
    with pytest.raises(qlccomm.FormatError, match="no qlccomm frame"):
        wire.Frame.decode(b"xx" + head[2:], 1)
    with pytest.raises(qlccomm.FormatError, match="shorter"):
        wire.Frame.decode(head[:10], 1)


def test_agreed_route_is_a_function_of_every_rank_row():
    def row(mode="auto", plain=100, coded=50, probe=False):
        return wire.CallHeader("all_reduce", mode=mode, t_plain_us=plain, t_coded_us=coded, probe=probe).row(2)
    assert wire.agreed_route([row(), row()])
    assert not wire.agreed_route([row(), row(coded=99)])          # the slowest rank's estimate counts
    assert not wire.agreed_route([row(), row(plain=0, coded=0)])  # a rank without estimates votes plain
    assert not wire.agreed_route([row(), row(probe=True)])        # a probe takes the other route
    assert wire.agreed_route([row(mode="on", coded=1000)] * 2)
    assert not wire.agreed_route([row(mode="off")] * 2)


def test_coding_resolution_per_dtype():
    def coding(dtype, codec, codebook=None):
        return C._resolve_coding(dtype, codec, codebook)

    for dtype in CODED:
        assert coding(dtype, "qlc")[0].codec == "qlc" and coding(dtype, "qlc")[1] == wire.ADAPTIVE_TAG
        # "auto": QLC on CPU tensors, qlccomm's own per-dtype choice on accelerators
        assert coding(dtype, "auto")[0].codec == "qlc"
        assert C._resolve_coding(dtype, "auto", None, torch.device("meta"))[0].codec == pick_codec(dtype, "auto")
    for dtype in RAW + [torch.int64, torch.complex64]:
        assert not coding(dtype, "qlc")[0].coded
    assert not coding(torch.bfloat16, "raw")[0].coded
    cb = qlccomm.default_codebook(torch.bfloat16)
    assert coding(torch.bfloat16, "qlc", "default")[1] == bytes.fromhex(cb.digest)
    with pytest.raises(ValueError, match="unknown codec"):
        coding(torch.bfloat16, "zstd")
    with pytest.raises(ValueError, match="is for"):
        coding(torch.float16, "qlc", cb)
    if enec_available():
        assert coding(torch.bfloat16, "enec")[0].codec == "enec"
        # dtypes ENEC does not code fall back to QLC (1-byte) or go uncoded
        assert coding(torch.int8, "enec")[0].codec == "qlc"
        assert not coding(torch.int32, "enec")[0].coded
    else:
        with pytest.raises(ImportError):
            coding(torch.bfloat16, "enec")


def test_header_rows_describe_disagreements():
    rows = [wire.CallHeader("all_reduce", dtype=torch.bfloat16, numel=10, codec="qlc", tag=wire.digest_tag(d),
                            min_bytes=m).row(2)
            for d, m in (("00000000000000aa", 0), ("00000000000000bb", 16384))]
    mine = wire.CallHeader("all_reduce")
    with pytest.raises(qlccomm.CodebookError, match="rank 0: 00000000000000aa, rank 1: 00000000000000bb"):
        wire.check_rows(mine, rows, (wire.F_DTYPE, wire.F_TAG))
    # what the user passed is named
    with pytest.raises(ValueError, match=r"min_compress_bytes \(rank 0: 0, rank 1: 16384\)"):
        wire.check_rows(mine, rows, (wire.F_MIN_BYTES,))
    with pytest.raises(RuntimeError, match="same collectives"):
        wire.check_rows(wire.CallHeader("broadcast"), rows)
    with pytest.raises(RuntimeError, match="call 3"):
        wire.check_rows(wire.CallHeader("all_reduce", seq=3), rows)
    failed = wire.CallHeader("all_reduce", error=KeyError("x")).row(2)
    assert failed[wire.F_STATUS] == 1 and wire.error_class(failed[wire.F_ERROR]) is RuntimeError
    assert wire.error_class(wire.error_code(qlccomm.CodebookError("x"))) is qlccomm.CodebookError
    assert wire.tag_to_str(wire.tag_to_int(wire.ADAPTIVE_TAG)) == "adaptive"
    assert len(set(len(wire.CallHeader(k).row(4)) for k in wire.KINDS)) == 1   # one row size for every collective


def test_collectives_need_a_process_group():
    if dist.is_initialized():
        pytest.skip("a process group is initialised in this process")
    with pytest.raises(RuntimeError, match="init_process_group"):
        qlccomm.all_reduce(torch.ones(4))


@pytest.mark.parametrize("dtype", [torch.float16, torch.float32, torch.float64, torch.int8, torch.uint8, torch.int32])
def test_two_rank_sum_in_the_dtype_equals_the_accumulator(dtype):
    """The two-rank fast path of the owners' reduce (an add in the dtype itself) gives the
    rank-order float32/int64 accumulator's bits, specials and every float16 pattern included."""
    from qlccomm.reduction import OP_SUM, sum_of_two_in_dtype
    assert sum_of_two_in_dtype(OP_SUM, dtype, 2) and not sum_of_two_in_dtype(OP_SUM, dtype, 3)
    assert not sum_of_two_in_dtype(OP_SUM, torch.bfloat16, 2)
    g = torch.Generator().manual_seed(3)
    if dtype == torch.float16:
        a = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype).repeat(2)
    elif dtype.is_floating_point:
        a = (torch.randn(50000, generator=g, dtype=torch.float64) * torch.logspace(-30, 30, 50000)).to(dtype)
    else:
        a = make_input(dtype, 50000, 0)
    b = a[torch.randperm(a.numel(), generator=g)]
    if dtype.is_floating_point:
        s = torch.tensor([float("nan"), float("inf"), -float("inf"), -0.0, 0.0, 1e-40, 3e38], dtype=dtype)
        a, b = torch.cat([a, s.repeat_interleave(len(s))]), torch.cat([b, s.repeat(len(s))])
    assert_bits(torch.add(a, b), C.reference_all_reduce([a, b]), f"two-rank sum {dtype}")
