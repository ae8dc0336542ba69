"""The pipelined transport and the cost model on real gloo groups (spawned ranks).

* both framings: "capacity" (gloo's default) and "sized" (what NCCL/HCCL use), every
  collective, bit-exact and bit-identical to the reference;
* the cost model: a forced slow link codes, a forced fast one steps aside to dist,
  the learned model calibrates on the dist route first, decisions agree on every
  rank and show in WireStats;
* memory stays bounded over many calls (buffers, codebook registry);
* calls run on the group thread for async_op, in submission order.
"""
from __future__ import annotations

import pytest
import torch
import torch.distributed as dist

import qlccomm
from qlccomm import collectives as C
from qlccomm import costmodel
from dist_util import check_ok, run_ranks
from test_collectives import assert_bits, make_input

CODE = dict(compress=True, min_compress_bytes=0, slice_bytes=4096)


def check_framing(rank, world):
    """Every collective on the framing the environment selected, bit-exact."""
    from qlccomm.collectives import _group_state
    framing = _group_state(None)[0].link.framing
    n = 20000
    xs = [make_input(torch.bfloat16, n, k, salt=20) for k in range(world)]
    t = xs[rank].clone()
    st = C.WireStats()
    qlccomm.all_reduce(t, stats=st, **CODE)
    assert_bits(t, C.reference_all_reduce(xs), f"all_reduce ({framing})")
    assert st.route == "coded" and st.sent_bytes < st.plain_bytes, st
    t = xs[rank].clone()
    qlccomm.all_reduce(t, deterministic=True, compress=False)          # pipelined, raw slices
    assert_bits(t, C.reference_all_reduce(xs), f"pipelined all_reduce ({framing})")
    m = n // world
    out = torch.empty(m, dtype=torch.bfloat16)
    qlccomm.reduce_scatter_tensor(out, xs[rank][:m * world].clone(), **CODE)
    assert_bits(out, C.reference_all_reduce([x[:m * world] for x in xs])[rank * m:(rank + 1) * m], "reduce_scatter")
    out = torch.empty(world * n, dtype=torch.bfloat16)
    qlccomm.all_gather_into_tensor(out, xs[rank], codec="qlc", **CODE)
    assert_bits(out, torch.cat(xs), "all_gather")
    for src in range(world):
        t = xs[rank].clone()
        qlccomm.broadcast(t, src, codec="qlc", **CODE)
        assert_bits(t, xs[src], f"broadcast from {src}")
    inp = make_input(torch.float16, world * 3000, rank, salt=21)
    out = torch.empty_like(inp)
    qlccomm.all_to_all_single(out, inp, **CODE)
    want = torch.cat([make_input(torch.float16, world * 3000, k, salt=21)[rank * 3000:(rank + 1) * 3000]
                      for k in range(world)])
    assert_bits(out, want, "all_to_all")
    return framing


@pytest.mark.parametrize("framing", ["capacity", "sized"])
def test_both_framings_every_collective(framing):
    results = check_ok(run_ranks("test_transport:check_framing", 3, timeout=90,
                                 env={"QLCCOMM_FRAMING": framing}))
    assert results == [framing] * 3


def check_cost_model(rank, world):
    """Routes the model picks, the same on every rank, visible in WireStats."""
    x = make_input(torch.bfloat16, 1 << 19, rank, salt=22)       # 1 MiB
    # learned: the first two calls of a group calibrate the link on the dist route (first, so
    # that the forced calls below, whose dist route is timed too, do not count among them)
    learned = []
    for _ in range(3):
        t = x.clone()
        st = C.WireStats()
        qlccomm.all_reduce(t, stats=st)
        learned.append(st.route)
    routes = {}
    for name, gbps in (("slow", 0.05), ("fast", 1000.0)):
        t = x.clone()
        st = C.WireStats()
        qlccomm.all_reduce(t, link_gbps=gbps, stats=st)
        routes[name] = st.route
        assert st.model["link_gbps"] == pytest.approx(gbps, rel=1e-3), st.model
        assert {"ratio", "encode_gbps", "decode_gbps", "t_plain_ms", "t_coded_ms"} <= set(st.model)
    # the same decisions on every rank, whatever each rank measured
    mine = learned + [routes["slow"], routes["fast"]]
    everyone = [None] * world
    dist.all_gather_object(everyone, mine)
    assert all(e == mine for e in everyone), everyone
    return {"routes": routes, "learned": learned}


def test_cost_model_routes_agree_on_every_rank():
    results = check_ok(run_ranks("test_transport:check_cost_model", 2, timeout=90))
    r = results[0]
    assert r["routes"] == {"slow": "coded", "fast": "dist"}
    assert r["learned"][:2] == ["dist", "dist"]          # calibration on the plain route


def check_bounded(rank, world):
    """Many calls of changing shapes: the group's buffers stop at the largest chunk, the
    codebook registry does not grow with adaptive slices."""
    from qlccomm import codebook as cbmod
    from qlccomm.collectives import _group_state
    link = _group_state(None)[0].link
    sizes = []
    before = None
    for i in range(60):
        n = 5000 + (i % 7) * 3001
        t = make_input(torch.float32, n, rank, salt=i)
        qlccomm.all_reduce(t, **CODE)
        if i == 20:
            before = (link.arena_bytes(), len(cbmod._REGISTRY))
        sizes.append(link.arena_bytes())
    after = (link.arena_bytes(), len(cbmod._REGISTRY))
    assert after == before, (before, after)
    return after


def test_memory_stays_bounded_over_many_calls():
    check_ok(run_ranks("test_transport:check_bounded", 2, timeout=90))


def check_group_thread(rank, world):
    """async calls run on the group's thread, in order; a sync call queues behind them."""
    import threading
    seen = []
    real = C._execute

    def spy(call, plain, pipelined):
        seen.append((threading.current_thread().name, call.header.seq))
        return real(call, plain, pipelined)

    C._execute = spy
    try:
        ts = [make_input(torch.bfloat16, 30000, rank, salt=30).clone() for _ in range(3)]
        works = [qlccomm.all_reduce(t, async_op=True, **CODE) for t in ts]
        last = ts[0].clone()
        qlccomm.all_reduce(last, **CODE)
        for w in works:
            w.wait()
    finally:
        C._execute = real
    names = [n for n, _ in seen]
    assert all(n.startswith("qlccomm-") for n in names[:3]), names
    seqs = [s for _, s in seen]
    assert seqs == sorted(seqs), seqs
    return names


def test_async_calls_run_on_the_group_thread_in_order():
    check_ok(run_ranks("test_transport:check_group_thread", 2, timeout=60))


# -- without a process group -------------------------------------------------------------------------
def test_model_prefers_coding_only_where_the_wire_dominates():
    model = costmodel.CostModel()
    stream = model.stream(("all_reduce", torch.bfloat16, 1))
    speed = costmodel.CodecSpeed(encode=1 / 0.6e9, decode=1 / 1.0e9)      # s per byte
    m = 32 << 20
    slow = model.estimate("all_reduce", m, 2, speed, 1.43, 1 << 20, "cpu", 1e9 / 8, stream)
    fast = model.estimate("all_reduce", m, 2, speed, 1.43, 1 << 20, "cpu", 10e9 / 8, stream)
    assert slow.t_coded < 0.8 * slow.t_plain
    assert fast.t_coded > fast.t_plain
    unknown = model.estimate("all_reduce", m, 2, speed, 1.43, 1 << 20, "cpu", None, stream)
    assert unknown.t_plain == 0 and unknown.t_coded == 0           # no link estimate: vote plain


def test_link_is_learned_from_the_best_calibration_call():
    model = costmodel.CostModel()
    m = 8 << 20
    model.observe_plain("all_reduce", m, 2, 1.0)            # a slow first call (warm-up)
    model.observe_plain("all_reduce", m, 2, 0.1)
    assert model.link_Bps == pytest.approx(m / (0.1 - model.latency_s), rel=1e-6)
    # a collective the backend runs less efficiently keeps its own plain rate; the link stays
    model.observe_plain("reduce_scatter_tensor", 2 * m, 2, 0.2)
    model.observe_plain("reduce_scatter_tensor", 2 * m, 2, 0.2)
    assert model.plain_Bps["reduce_scatter_tensor"] < 0.6 * model.link_Bps


def test_probes_come_at_growing_gaps():
    model = costmodel.CostModel()
    stream = model.stream(("x",))
    probes = []
    for i in range(400):
        if stream.calls == stream.next_probe:
            probes.append(stream.calls)
        model.called(stream)
    assert probes == [20, 60, 140, 300]


def test_streams_are_bounded_and_kept_while_used():
    model = costmodel.CostModel()
    kept = model.stream(("bucket", 0))
    kept.ratio = 1.4
    for n in range(costmodel.MAX_STREAMS * 2):            # e.g. messages of ever new shapes
        model.stream(("p2p", n))
        assert model.stream(("bucket", 0)) is kept         # in use: never forgotten
    assert len(model._streams) == costmodel.MAX_STREAMS
    assert model.stream(("p2p", 0)).ratio is None          # forgotten, then started afresh
