"""DDP with hccl_hooks.qlc_allreduce_hook: 20+ steps of a small transformer end bit-identical to
the same training with an uncompressed hook that reduces in the same order; the hook's stats
show the bytes saved.  Multi-rank runs: mpiexec -n 2 / -n 4 (marked mpi) and torchrun with 3
ranks (test_torchrun.py)."""
import argparse
import sys
from pathlib import Path

import pytest
import torch

import qlccomm
from hccl_hooks import QLCState, QLCStats, ordered_allreduce_hook, qlc_allreduce_hook
from qlccomm.collectives import WireStats

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "launch"))
import train_ddp  # noqa: E402


def run_demo(rank, world, *argv):
    """train_ddp's training and comparison on the live group."""
    from hccl_hooks import DistInfo

    args = train_ddp.parse_args(list(argv))
    info = DistInfo(rank, world, rank, "gloo", torch.device("cpu"), "test")
    threads = torch.get_num_threads()
    res = train_ddp.train_and_compare(args, info)
    # checked first: if coding changes torch's thread count, the two trainings compute differently
    from test_collectives import check_thread_count_unchanged

    check_thread_count_unchanged(threads)
    return res


def check_result(res, steps):
    assert res["start_same"], "broadcast_parameters left the ranks with different models"
    assert res["same_across_ranks"], "final parameters differ across ranks"
    assert res["identical"], "compressed DDP is not bit-identical to the ordered uncompressed baseline"
    assert len(res["losses"]) == steps and res["losses"][-1] < res["losses"][0]
    st = res["stats"]
    assert res["buckets"] >= 2  # several buckets (small bucket_cap_mb)
    assert st["compressed_calls"] > 0 and st["coded_bytes"] < st["raw_bytes"]
    assert res["saved_bytes"] > 0 and st["sent_bytes"] < st["plain_bytes"]


@pytest.mark.mpi(min_size=2)
def test_ddp_qlc_hook_bit_identical_to_ordered_plain_hook(mpi_group):
    res = run_demo(*mpi_group, "--steps", "20")
    check_result(res, 20)


@pytest.mark.mpi(min_size=2)
def test_ddp_bfloat16_with_codebook_refit(mpi_group):
    res = run_demo(*mpi_group, "--steps", "12", "--dtype", "bfloat16", "--refit-every", "4", "--bucket-cap-mb", "0.02")
    check_result(res, 12)
    assert res["refitted"] == ["torch.bfloat16"]


@pytest.mark.mpi(min_size=2)
def test_ddp_default_codebook_and_uncoded_threshold(mpi_group):
    res = run_demo(*mpi_group, "--steps", "6", "--codebook", "default", "--no-compare")
    assert res["same_across_ranks"] and res["stats"]["compressed_calls"] > 0
    # every bucket below the threshold: the uncoded (pipelined, deterministic) route, still identical to
    # the ordered baseline; it sends the raw bytes plus a 32-byte frame per slice
    res = run_demo(*mpi_group, "--steps", "6", "--min-compress-bytes", str(1 << 30))
    assert res["identical"] and res["stats"]["compressed_calls"] == 0
    assert -0.01 * res["stats"]["plain_bytes"] < res["saved_bytes"] <= 0


# -- without a process group ------------------------------------------------------------------------------
def test_state_defaults_and_codebook_policies(tmp_path):
    s = QLCState()
    assert s.process_group is None and s.codebook == "adaptive" and s.refit_every == 0
    assert s.codebook_for(torch.float32) == "adaptive"
    cb = qlccomm.fit_codebook((torch.randn(5000) * 0.01).to(torch.bfloat16))
    path = tmp_path / "bf16.json"
    cb.save(path)
    s = QLCState(codebook=str(path))
    assert s.codebook_for(torch.bfloat16).digest == cb.digest
    s.refit((torch.randn(3000) * 1e-3).to(torch.bfloat16))
    assert s.codebook_for(torch.bfloat16).digest != cb.digest
    s.refit(torch.ones(10, dtype=torch.float64))  # no coded plan: nothing to fit
    assert torch.float64 not in s.fitted
    with pytest.raises(ValueError):
        QLCState(refit_every=-1)


def test_stats_accumulate_per_bucket_and_total():
    st = QLCStats()
    st.record(0, WireStats("all_reduce", True, 1000, 600, 650, 1000, 100))
    st.record(1, WireStats("all_reduce", False, 10, 10, 10, 10, 100))
    st.record(0, WireStats("all_reduce", True, 1000, 500, 550, 1000, 100))
    assert st.buckets[0]["calls"] == 2 and st.buckets[0]["coded_bytes"] == 1100
    assert st.total["raw_bytes"] == 2010 and st.total["compressed_calls"] == 2
    assert st.saved_bytes == 2010 - 1210 and st.ratio == pytest.approx(2010 / 1110)
    assert "saved 800 B" in st.summary()
    st.reset()
    assert st.total["calls"] == 0 and not st.buckets


def test_hooks_follow_ddp_hook_conventions():
    import inspect

    for hook in (qlc_allreduce_hook, ordered_allreduce_hook):
        params = list(inspect.signature(hook).parameters.values())
        assert [p.name for p in params][1] == "bucket"
        assert all(p.annotation is inspect.Parameter.empty for p in params)
        assert "register_comm_hook" in hook.__doc__


def test_parse_args_defaults():
    args = train_ddp.parse_args([])
    assert isinstance(args, argparse.Namespace) and args.steps == 30 and args.compare


# -- the hook's options, on spawned ranks ---------------------------------------------------------------
def check_hook_options(rank, world):
    """Off switch, uncompressed warm-up, logging, the cast wrapper, and coding off the caller's
    thread: each a short DDP run of the tiny model."""
    import copy
    import logging
    import os
    import threading

    from torch.nn.parallel import DistributedDataParallel as DDP

    from hccl_hooks import cast_wrapper
    from qlccomm import collectives as C
    from tiny_model import build_model, param_digest, train

    threads_seen = set()
    real = C._execute

    def spy(call, plain, pipelined):
        threads_seen.add(threading.current_thread().name)
        return real(call, plain, pipelined)

    def run(hook, state, steps=4, model=None):
        m = copy.deepcopy(model or build_model(seed=1))
        ddp = DDP(m, bucket_cap_mb=0.05)
        ddp.register_comm_hook(state, hook)
        train(ddp, steps, rank, seed=3)
        return m

    out = {}
    code = dict(compress=True, min_compress_bytes=0, deterministic=True)
    C._execute = spy
    try:
        s = QLCState(**code)
        run(qlc_allreduce_hook, s)
        out["coded_calls"] = s.stats.total["compressed_calls"]
        out["off_thread"] = sorted(threads_seen) and all(n.startswith("qlccomm-") for n in threads_seen)
        # the off switch and the warm-up: torch's allreduce_hook, no qlccomm call
        threads_seen.clear()
        s = QLCState(enabled=False, **code)
        run(qlc_allreduce_hook, s)
        out["off"] = (s.stats.total["calls"], len(threads_seen))
        os.environ["QLCCOMM_DDP_HOOK"] = "off"
        try:
            s = QLCState(**code)
        finally:
            del os.environ["QLCCOMM_DDP_HOOK"]
        out["env_off"] = not s.enabled
        s = QLCState(start_compress_iter=2, **code)
        run(qlc_allreduce_hook, s, steps=4)
        buckets = len(s.stats.buckets) or 1
        out["warm_up"] = (s.iter, s.stats.total["calls"] // buckets)
    finally:
        C._execute = real
    # logging every 2 iterations
    records = []

    class Keep(logging.Handler):
        def emit(self, record):
            records.append(record.getMessage())

    log = logging.getLogger("qlccomm.ddp")
    handler = Keep()
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        run(qlc_allreduce_hook, QLCState(log_every=2, **code), steps=4)
    finally:
        log.removeHandler(handler)
    out["logged"] = [r.split(":")[0] for r in records]
    # the fp16 cast under QLC matches torch's fp16_compress_wrapper around the ordered baseline
    # (torch refuses its bf16 wrapper without CUDA)
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import fp16_compress_wrapper
    model = build_model(seed=2)
    a = run(cast_wrapper(qlc_allreduce_hook, torch.float16), QLCState(**code), model=model)
    b = run(fp16_compress_wrapper(ordered_allreduce_hook), None, model=model)
    out["bf16_runs"] = param_digest(run(cast_wrapper(qlc_allreduce_hook, torch.bfloat16), QLCState(**code),
                                        model=model)) != param_digest(a)
    out["cast_matches"] = param_digest(a) == param_digest(b)
    return out


def test_hook_options_off_warm_up_logging_cast():
    from dist_util import check_ok, run_ranks
    results = check_ok(run_ranks("test_ddp:check_hook_options", 2, timeout=120))
    r = results[0]
    assert r["coded_calls"] > 0 and r["off_thread"], r
    assert r["off"] == [0, 0] and r["env_off"], r
    assert r["warm_up"] == [4, 2], r          # 4 iterations, the last 2 through qlccomm
    assert r["logged"] == ["qlccomm DDP hook, iteration 2", "qlccomm DDP hook, iteration 4"], r
    assert r["cast_matches"] and r["bf16_runs"], r
