"""The native (numba) QLC kernels against the torch path: same bytes, same decode, same errors.

Large inputs (several MiB) for every plan and chunk mode; random small shapes; fuzzed
and crafted corrupt streams.  The first run compiles the kernels (cached afterwards in
kernels/__pycache__).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qlccomm
from qlccomm import qlc

import kernel_cases as kc

nq = pytest.importorskip("qlccomm.kernels.native_qlc", reason="numba is not installed")

MIB = 1 << 20


@pytest.mark.parametrize("case", kc.PLAN_CASES, ids=kc.case_id)
def test_large_mixed_chunks_match_torch_path(case):
    """~4 MiB with coded, all-zero and raw chunks and a short last chunk: adaptive and
    digest-referenced codebooks give the torch path's bytes and decode bit-exactly."""
    dtype, plan = case
    chunk = qlc.CHUNK_ELEMS
    nchunks = 4 * MIB // (chunk * dtype.itemsize)
    pattern = ("czrc" * nchunks)[:nchunks]
    x = kc.mixed(dtype, chunk, pattern, tail=1234, seed=3)
    sec = kc.assert_same_encoding(nq, x, plan, None)                       # adaptive, embedded
    assert all(v > 0 for v in kc.modes_of(sec, dtype, x.numel()).values()), "every chunk mode occurs"
    cb = kc.plan_codebook(x, plan)
    kc.assert_same_encoding(nq, x, plan, cb)                               # referenced by digest
    kc.assert_same_encoding(nq, x, plan, cb, embed=True)


@pytest.mark.parametrize("dtype", kc.BYTE_DTYPES, ids=str)
def test_other_byte_dtypes(dtype):
    x = kc.mixed(dtype, 4096, "czr", tail=77, seed=4)
    kc.assert_same_encoding(nq, x, "byte", None)


@pytest.mark.parametrize("tail", [0, 1, 7, 8, 9, 4095])
@pytest.mark.parametrize("last", ["c", "z", "r"])
def test_short_last_chunk_every_mode(tail, last):
    """The last chunk in each mode, at every alignment of its length."""
    x = kc.mixed(torch.float16, 4096, "cr" + last, tail=0, seed=tail)
    if tail:
        x = x[: 2 * 4096 + tail]
    for plan in ("fp16_exp", "fp16_hi"):
        kc.assert_same_encoding(nq, x, plan, None)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(kc.PLAN_CASES), n=st.integers(1, 20000),
       chunk=st.sampled_from([8, 24, 64, 1000, 4096]), pattern=st.text("czr", min_size=0, max_size=6),
       seed=st.integers(0, 2**16), adaptive=st.booleans())
def test_random_small_inputs(case, n, chunk, pattern, seed, adaptive):
    dtype, plan = case
    x = kc.mixed(dtype, chunk, pattern, tail=n % chunk or 1, seed=seed)
    cb = None if adaptive else kc.plan_codebook(x, plan)
    kc.assert_same_encoding(nq, x, plan, cb, chunk=chunk)


def test_public_api_dispatches_to_native():
    """compress/decompress on CPU go through the native kernels (auto and forced) and
    give the torch path's stream."""
    from qlccomm import kernels
    x = kc.mixed(torch.bfloat16, 4096, "czrcc", tail=100, seed=5).reshape(3, -1)
    assert kernels.backend_for("cpu") == "native"
    with kc.kernels_env("torch"):
        ref = qlccomm.compress(x, checksum=True)
    for backend in ("auto", "native"):
        with kc.kernels_env(backend):
            assert kernels.implementation("qlc", x.device) is nq
            blob = qlccomm.compress(x, checksum=True)
            assert torch.equal(blob, ref)
            y = qlccomm.decompress(blob)
            assert torch.equal(y.view(torch.int16), x.view(torch.int16)) and y.shape == x.shape


def test_fuzzed_streams_fail_like_torch_path():
    """Bit flips, byte overwrites and truncations: the native decoder gives exactly the
    torch path's outcome (the same FormatError message, or the same tensor)."""
    rng = np.random.default_rng(7)
    for dtype, plan in kc.PLAN_CASES[:5]:
        x = kc.mixed(dtype, 256, "czrcc", tail=100, seed=8)
        cb = kc.plan_codebook(x, plan)
        for codebook, embed in ((cb, True), (cb, False)):
            section = qlc.encode_section(x, kc.PLANS[plan], codebook, embed=embed, chunk=256)
            blob = kc.with_header(dtype, x.numel(), section)
            _, sec = kc.parse(blob, dtype, x.numel(), cb)
            for bad in kc.corruptions(blob, sec, rng, 60):
                ref = kc.outcome(bad, "torch", cb)
                got = kc.outcome(bad, "native", cb)
                assert got == ref, (dtype, plan, ref[1] if ref[0] == "error" else "decoded", got[0])


@pytest.mark.parametrize("name", ["mismatch", "rank", "symbol", "padding"])
def test_crafted_decode_errors(name):
    """Each error only decoding reveals: raised by the native decoder as by the torch path."""
    cases = {c[0]: c for c in kc.crafted_errors()}
    _, blob, cb, msg = cases[name]
    ref = kc.outcome(blob, "torch", cb)
    assert ref[0] == "error" and ref[1].startswith(msg)
    assert kc.outcome(blob, "native", cb) == ref


def test_threads_give_the_same_bytes():
    """Chunks are independent: 1 thread (the serial kernels) and all threads (numba's pool)
    write the same stream and decode it to the same tensor, for both codecs."""
    x = kc.mixed(torch.float32, 4096, "crzc" * 8, tail=5, seed=9)
    old = torch.get_num_threads()
    outs = []
    try:
        for n in (1, max(2, old)):
            torch.set_num_threads(n)
            q = nq.encode_section(x, kc.PLANS["fp32_exp"], None)
            e = qlccomm.compress(x, codec="enec")
            outs.append((q, e, qlccomm.decompress(qlccomm.compress(x)), qlccomm.decompress(e)))
    finally:
        torch.set_num_threads(old)
    (q1, e1, d1, f1), (q2, e2, d2, f2) = outs
    assert torch.equal(q1, q2) and torch.equal(e1, e2)
    assert torch.equal(d1.view(torch.int32), x.view(torch.int32)) and torch.equal(d2.view(torch.int32), x.view(torch.int32))
    assert torch.equal(f1.view(torch.int32), x.view(torch.int32)) and torch.equal(f2.view(torch.int32), x.view(torch.int32))


def test_torch_thread_count_left_alone():
    """The kernels take torch's thread count and never change it (numba's OpenMP layer
    would: it shares libgomp with torch)."""
    import numba
    x = kc.mixed(torch.bfloat16, 4096, "cc", tail=3, seed=10)
    old = torch.get_num_threads()
    try:
        for n in (1, 2):
            torch.set_num_threads(n)
            nq.encode_section(x, kc.PLANS["bf16_exp"], None)
            assert torch.get_num_threads() == n
            assert numba.get_num_threads() == min(n, numba.config.NUMBA_NUM_THREADS)
    finally:
        torch.set_num_threads(old)


@pytest.mark.parametrize("reserve", [0, 1, 29])
def test_reserve_leaves_room_for_the_header(reserve):
    """encode_section(..., reserve=r): r free bytes, then the very section (both codecs, native
    and torch paths); compress writes its header there instead of copying the stream."""
    from qlccomm import enec
    from qlccomm.kernels import native_enec as ne
    x = kc.mixed(torch.bfloat16, qlc.CHUNK_ELEMS, "czr", tail=1001, seed=3)
    for impl in (nq, qlc):
        ref = qlc.encode_section(x, kc.PLANS["bf16_exp"], None)
        got = impl.encode_section(x, kc.PLANS["bf16_exp"], None, reserve=reserve)
        assert got.numel() == reserve + ref.numel() and torch.equal(got[reserve:], ref)
    for impl in (ne, enec):
        ref = enec.encode_section(x)
        got = impl.encode_section(x, reserve=reserve)
        assert got.numel() == reserve + ref.numel() and torch.equal(got[reserve:], ref)
    blob = qlccomm.compress(x, codec="enec")
    assert torch.equal(qlccomm.decompress(blob).view(torch.int16), x.view(torch.int16))


def test_compiled_widths_programme_matches_numpy():
    """The numba DP that adaptive coding uses gives optimal_widths' widths, ties included."""
    import numpy as np

    from qlccomm.codebook import optimal_widths
    rng = np.random.default_rng(5)
    cases = [rng.integers(0, 1000, 256), (rng.pareto(1.0, 256) * 100).astype(np.int64), np.zeros(256, np.int64),
             rng.integers(0, 3, 256) * rng.integers(0, 10**9, 256), np.ones(256, np.int64)]
    sparse = np.zeros(256, np.int64)
    sparse[[3, 9, 200]] = [10**6, 5, 5]
    cases.append(sparse)
    for _ in range(300):
        cases.append(rng.integers(0, 2, 256) * rng.integers(0, 10**rng.integers(1, 9), 256))
    for h in cases:
        c = np.sort(h)[::-1]
        assert nq.optimal_widths_native(c) == optimal_widths(c)
    for A, na, mw in ((7, 4, 5), (33, 3, 6), (100, 8, 8), (1, 16, 16), (2, 16, 16), (5, 16, 16), (248, 16, 16),
                      (452, 16, 16), (1000, 15, 16)):      # the last rows: QLCW's 16 areas up to 16 bits
        c = np.sort(rng.integers(0, 50, A))[::-1]
        assert nq.optimal_widths_native(c, na, mw) == optimal_widths(c, na, mw)


def test_one_programme_gives_both_qlcw_codes():
    """QLCW's fitter weighs every symbol in 16 areas, or the first `prefix` ranks in 15 areas
    and an escape: the native programme that gives both at once gives exactly the widths of
    the two separate numpy programmes (ties, ranks seen once, prefixes of 1 and A - 1), and
    refuses what they refuse."""
    from qlccomm.codebook import optimal_widths, optimal_widths_and_prefix
    rng = np.random.default_rng(8)
    for trial in range(400):
        A = int(rng.integers(2, 300 if trial % 10 else 3000))
        c = [rng.integers(1, 1000, A), np.full(A, 3), (rng.pareto(1.0, A) * 10 + 1).astype(np.int64),
             rng.integers(1, 4, A), np.concatenate([rng.integers(2, 100, A // 2), np.ones(A - A // 2, np.int64)])][trial % 5]
        c = np.sort(c)[::-1].astype(np.int64)
        for na, mw in ((16, 16), (8, 8), (3, 4)):
            if (1 << mw) * na < A:
                continue
            for prefix in {1, A - 1, int(rng.integers(1, A))}:
                if (1 << mw) * (na - 1) < prefix:
                    with pytest.raises(ValueError):
                        nq.optimal_widths_and_prefix_native(c, na, mw, prefix)
                    with pytest.raises(ValueError):
                        optimal_widths(c[:prefix], na - 1, mw)
                    continue
                want = (optimal_widths(c, na, mw), optimal_widths(c[:prefix], na - 1, mw))
                assert nq.optimal_widths_and_prefix_native(c, na, mw, prefix) == want
                assert optimal_widths_and_prefix(c, na, mw, prefix) == want
