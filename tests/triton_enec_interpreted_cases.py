"""Interpreted Triton ENEC kernels on CPU tensors against the torch path (run by
tests/test_kernels_triton.py in a subprocess with TRITON_INTERPRET=1): same section
bytes, same decoded bits, same FormatError on corrupt streams.

Small inputs (a few blocks): the interpreter pays per operation.  Every encode writes
into a poisoned buffer, so a byte no kernel writes shows up as a difference.
"""
from __future__ import annotations

import interpreted_triton  # noqa: F401  (first: sets TRITON_INTERPRET, or skips the module)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

import qlccomm  # noqa: E402
from qlccomm import enec, kernels  # noqa: E402
from qlccomm.api import _parse  # noqa: E402
from qlccomm.format import ByteSource  # noqa: E402

import kernel_cases as kc  # noqa: E402

from qlccomm.kernels import triton_enec as te  # noqa: E402

B = enec.BLOCK_ELEMS
DTYPES = kc.ENEC_DTYPES
ids = str


@pytest.fixture(autouse=True)
def poisoned_output(monkeypatch):
    """The encoder's output starts as 0xA5 bytes, not whatever torch.empty returns."""
    def empty(*a, **k):
        return torch.empty(*a, **k).fill_(0xA5)
    monkeypatch.setattr(te, "_empty", empty)


def assert_same(t: torch.Tensor, B_: int = B) -> dict:
    """Triton encode == torch encode (bytes); Triton decode of it == t (bits). Returns facts."""
    t = t.contiguous().reshape(-1)
    ref, info = enec._encode(t, B=B_)
    got = te.encode_section(t)
    assert got.dtype == torch.uint8 and got.device == t.device
    if not torch.equal(ref, got):
        m = min(ref.numel(), got.numel())
        diff = (ref[:m] != got[:m]).nonzero().flatten()[:8].tolist()
        raise AssertionError(f"{t.dtype} n={t.numel()}: sections differ (sizes {ref.numel()} vs {got.numel()}, "
                             f"first differing bytes {diff}, b n m F X = {[info[k] for k in 'bnmFX']})")
    status, out = kc.enec_decode_with(te, kc.enec_stream(ref, t))
    assert status == "ok" and out == t.view(torch.uint8).numpy().tobytes(), (t.dtype, t.numel(), status)
    return info


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
@pytest.mark.parametrize("n", [1, 17, B - 1, B, B + 1])
def test_sizes(dtype, n):
    assert_same(kc.weights(n, dtype, seed=n))


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
def test_zero_blocks_and_special_values(dtype):
    """All-zero blocks (first, middle, then also an all-zero tail), a coded tail, NaN
    payloads, +-inf, -0.0, subnormals (exceptions)."""
    t = kc.specials(kc.weights(4 * B + 321, dtype, seed=1), seed=2)
    t[:B] = 0
    t[2 * B:3 * B] = 0
    info = assert_same(t)
    assert info["X"] > 0 and info["coded"].Kc == 3
    t[4 * B:] = 0
    assert assert_same(t)["coded"].Kc == 2


def test_sampled_search():
    """More than 8 coded blocks: the search reads 8 sampled blocks (gathered on the device)."""
    t = kc.specials(kc.weights(9 * B + 7, torch.bfloat16, seed=3), seed=4)
    t[4 * B:5 * B] = 0
    info = assert_same(t)
    assert not info["search"].exact and info["coded"].Kc == 9


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
def test_full_exponent_range(dtype):
    """Every exponent: n = E, no exceptions."""
    E = kc.EXP_BITS[dtype]
    n = B + 999
    e = torch.arange(n) % (1 << E)
    t = ((e << kc.EXP_SHIFT[dtype]) | (torch.arange(n) % 3)).to(kc.INT_OF[dtype]).view(dtype)
    info = assert_same(t)
    assert info["n"] == E and info["X"] == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
def test_constant_tensors(dtype):
    for value in (0.0, -0.0, 1.5, float("nan"), float("-inf")):
        info = assert_same(torch.full((B + 5,), value, dtype=dtype))
        assert info["coded"].Kc == (0 if str(value) == "0.0" else 2)


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
def test_few_flagged_groups(dtype):
    """Exponents in an 8-value window, every 20th group's members just outside it."""
    n = 2 * B + 40
    g = torch.Generator().manual_seed(6)
    E = kc.EXP_BITS[dtype]
    base = (1 << (E - 1)) - 4
    e = base + torch.randint(0, 8, (n,), generator=g)
    far = (torch.arange(n) % B % (B // enec.GROUP_ELEMS)) % 20 == 0
    e[far] = base - 2
    sh = kc.EXP_SHIFT[dtype]
    t = ((e << sh) | torch.randint(0, 1 << sh, (n,), generator=g)).to(kc.INT_OF[dtype]).view(dtype)
    info = assert_same(t)
    assert 0 < info["F"] * 8 < info["coded"].Gc


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
def test_small_steps_and_blocks(dtype, monkeypatch):
    """Blocks of 1024 (64 groups) walked in steps of 128 elements (tiles of 8 groups): every
    offset carried between steps, several blocks, zero blocks, a short tail."""
    monkeypatch.setattr(te, "SUB_MAX", 128)
    monkeypatch.setattr(enec, "BLOCK_ELEMS", 1024)
    t = kc.weights(4 * 1024 + 77, dtype, seed=21, tail=1.0)
    t[1024:2048] = 0
    t[3000::700] = float("nan")
    info = assert_same(t, B_=1024)
    assert info["F"] > 0 and info["X"] > 0 and info["coded"].Kc == 4


FORCED = [(0, 0, 0), (5, 2, 1), ("max", 3, 0), ("mode", "E", "E"), ("mode", "E", 0), ("mode", 4, 1),
          ("mode", 2, 2)]


@pytest.mark.parametrize("dtype", DTYPES, ids=ids)
def test_decoder_any_parameters(dtype):
    """Streams with parameters the search would not pick (n = 0, m = 0, m = n = E, nearly
    every group flagged, most elements exceptions) decode bit-exactly."""
    E = kc.EXP_BITS[dtype]
    t = kc.specials(kc.weights(B + 77, dtype, seed=7), seed=8)
    mode = int(torch.bincount(enec._split(t.reshape(-1))[0], minlength=1 << E).argmax())
    for b, n, m in FORCED:
        b = {"max": (1 << E) - 1, "mode": mode}.get(b, b)
        n = E if n == "E" else n
        m = E if m == "E" else m
        ref, _ = enec._encode(t, force=(b, n, m))
        status, out = kc.enec_decode_with(te, kc.enec_stream(ref, t))
        assert status == "ok" and out == t.view(torch.uint8).numpy().tobytes(), (b, n, m, status)


@pytest.mark.parametrize("geometry", [(24, 3), (40, 5), (16, 16), (1000, 8), (255 * 3, 255)])
def test_decoder_other_geometries(geometry):
    """Any valid block / group size decodes (unaligned plane offsets, tiles of
    next_power_of_2(L) rows)."""
    Bx, L = geometry
    for dtype in DTYPES:
        t = kc.specials(kc.weights(3 * Bx + Bx // 2 + 1, dtype, seed=Bx), seed=L)
        t[Bx:2 * Bx] = 0
        for force in (None, (int(enec._split(t)[0][0]), min(4, kc.EXP_BITS[dtype]), 1)):
            ref, _ = enec._encode(t, B=Bx, L=L, force=force)
            ref_out = kc.enec_decode_with(enec, kc.enec_stream(ref, t))
            assert ref_out[0] == "ok"
            assert kc.enec_decode_with(te, kc.enec_stream(ref, t)) == ref_out, (dtype, geometry, force)


def test_public_api_with_forced_triton():
    x = kc.specials(kc.weights(2 * B + 100, torch.bfloat16, seed=17), seed=18).reshape(4, -1)
    with kc.kernels_env("torch"):
        ref = qlccomm.compress(x, codec="enec", checksum=True)
    with kc.kernels_env("triton"):
        assert kernels.backend_for("cpu", "enec") == "triton"
        assert kernels.implementation("enec", "cpu") is te
        blob = qlccomm.compress(x, codec="enec", checksum=True)
        assert torch.equal(blob, ref)
        y = qlccomm.decompress(blob)
    assert torch.equal(y.view(torch.int16), x.view(torch.int16)) and y.shape == x.shape


def test_crafted_errors():
    """Flag count differs from F; exception past a short tail; past B = 24: the torch
    path's FormatError, same message."""
    for blob, msg in kc.enec_crafted_errors():
        ref = kc.enec_decode_with(enec, blob)
        assert ref[0] == "error" and ref[1].startswith(msg), ref
        assert kc.enec_decode_with(te, blob) == ref


def test_fuzzed_streams_fail_like_torch_path():
    """Bit flips, byte overwrites and truncations: the Triton decoder gives exactly the
    torch path's outcome (the same FormatError message, or the same tensor)."""
    rng = np.random.default_rng(12)
    for dtype in DTYPES:
        t = kc.specials(kc.weights(2 * B + 300, dtype, seed=13), seed=14)
        t[B:2 * B] = 0
        for force in (None, (int(enec._split(t)[0][0]), 4, 1)):
            ref, _ = enec._encode(t, force=force)
            blob = kc.enec_stream(ref, t)
            _, sec = _parse(ByteSource(blob))
            for bad in kc.corruptions(blob, sec, rng, 8):
                assert kc.enec_decode_with(te, bad) == kc.enec_decode_with(enec, bad), dtype
