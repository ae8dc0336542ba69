"""Interpreted Triton QLC kernels on CPU tensors against the torch path (run by
tests/test_kernels_triton.py in a subprocess with TRITON_INTERPRET=1).

TRITON_INTERPRET must be set before triton.language is imported (its own tl.sum,
tl.cumsum, ... are @jit functions decorated at import), hence the subprocess: the
rest of the suite keeps the normal JIT.  Small sizes: the interpreter pays per
operation, not per element.
"""
from __future__ import annotations

import interpreted_triton  # noqa: F401  (first: sets TRITON_INTERPRET, or skips the module)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import qlccomm  # noqa: E402
from qlccomm import kernels, qlc  # noqa: E402

import kernel_cases as kc  # noqa: E402

from qlccomm.kernels import triton_qlc  # noqa: E402


@pytest.fixture(scope="module")
def tq():
    return triton_qlc


@pytest.fixture
def small_steps(tq):
    """Steps of 16 elements: chunks of 64 take 4 steps (offsets carried between them)."""
    old = tq.SUB_MAX
    tq.SUB_MAX = 16
    yield
    tq.SUB_MAX = old


@pytest.mark.parametrize("case", kc.PLAN_CASES[:5], ids=kc.case_id)
def test_default_chunks_match_torch_path(tq, case):
    """Chunks of 4096: coded, all-zero, raw and a short coded last chunk; adaptive and
    referenced codebooks."""
    dtype, plan = case
    x = kc.mixed(dtype, qlc.CHUNK_ELEMS, "czr", tail=1001, seed=11)
    sec = kc.assert_same_encoding(tq, x, plan, None)
    assert all(v > 0 for v in kc.modes_of(sec, dtype, x.numel()).values()), "every chunk mode occurs"
    kc.assert_same_encoding(tq, x, plan, kc.plan_codebook(x, plan))


# one case per distinct kernel path: 8/8-bit, 5/11-bit and 8/24-bit symbol/raw splits, bytes
CARRY_CASES = [kc.PLAN_CASES[i] for i in (0, 1, 3, 4)]


@pytest.mark.parametrize("case", CARRY_CASES, ids=kc.case_id)
def test_carried_offsets_small_chunks(tq, small_steps, case):
    """Chunks of 64 in steps of 16: bit offsets, byte sums and plane positions carried
    between steps and across chunks of every mode; a short last chunk."""
    dtype, plan = case
    x = kc.mixed(dtype, 64, "crzc", tail=13, seed=12)
    kc.assert_same_encoding(tq, x, plan, None, chunk=64)


def test_other_byte_dtypes(tq):
    for dtype in [torch.uint8, torch.int8, torch.float8_e5m2] + kc.BYTE_DTYPES:
        x = kc.mixed(dtype, 64, "cr", tail=5, seed=13)
        kc.assert_same_encoding(tq, x, "byte", None, chunk=64)


def test_odd_chunk_sizes(tq):
    """Chunk sizes that are not a power of two (any multiple of 8 is valid)."""
    for chunk in (8, 200):
        x = kc.mixed(torch.float16, chunk, "crzc", tail=chunk // 2 + 1, seed=chunk)
        kc.assert_same_encoding(tq, x, "fp16_exp", None, chunk=chunk)


def test_public_api_with_forced_triton(tq):
    x = kc.mixed(torch.bfloat16, 4096, "cz", tail=300, seed=14).reshape(-1, 4)
    with kc.kernels_env("torch"):
        ref = qlccomm.compress(x)
    with kc.kernels_env("triton"):
        assert kernels.backend_for("cpu") == "triton"
        assert kernels.implementation("qlc", "cpu") is tq
        blob = qlccomm.compress(x)
        assert torch.equal(blob, ref)
        y = qlccomm.decompress(blob)
    assert torch.equal(y.view(torch.int16), x.view(torch.int16)) and y.shape == x.shape


@pytest.mark.parametrize("name", ["mismatch", "rank", "symbol", "padding"])
def test_crafted_decode_errors(tq, name):
    cases = {c[0]: c for c in kc.crafted_errors()}
    _, blob, cb, msg = cases[name]
    ref = kc.outcome(blob, "torch", cb)
    assert ref[0] == "error" and ref[1].startswith(msg)
    assert kc.outcome(blob, "triton", cb) == ref


def test_fuzzed_streams_fail_like_torch_path(tq):
    rng = np.random.default_rng(15)
    for dtype, plan in (kc.PLAN_CASES[0], kc.PLAN_CASES[1]):
        x = kc.mixed(dtype, 64, "czrc", tail=20, seed=16)
        cb = kc.plan_codebook(x, plan)
        blob = kc.with_header(dtype, x.numel(), qlc.encode_section(x, kc.PLANS[plan], cb, embed=True, chunk=64))
        _, sec = kc.parse(blob, dtype, x.numel(), cb)
        for bad in kc.corruptions(blob, sec, rng, 12):
            assert kc.outcome(bad, "triton", cb) == kc.outcome(bad, "torch", cb)


