"""The native (numba) ENEC kernels against the torch path (qlccomm.enec): same section
bytes, same decoded bits, same errors on corrupt streams.

The first run compiles the kernels (cached afterwards in kernels/__pycache__).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import qlccomm
from qlccomm import enec
from qlccomm.api import _parse
from qlccomm.format import ByteSource

import kernel_cases as kc

ne = pytest.importorskip("qlccomm.kernels.native_enec", reason="numba is not installed")

DTYPES = kc.ENEC_DTYPES
INT_OF, EXP_BITS, SHIFT = kc.INT_OF, kc.EXP_BITS, kc.EXP_SHIFT
B = enec.BLOCK_ELEMS
weights, specials, stream, decode_with = kc.weights, kc.specials, kc.enec_stream, kc.enec_decode_with


def assert_same(t: torch.Tensor) -> dict:
    """Native encode == torch encode (bytes); native decode of it == t (bits). Returns facts."""
    t = t.contiguous().reshape(-1)
    ref, info = enec._encode(t)
    got = ne.encode_section(t)
    if not torch.equal(ref, got):
        m = min(ref.numel(), got.numel())
        diff = (ref[:m] != got[:m]).nonzero().flatten()[:8].tolist()
        raise AssertionError(f"{t.dtype} n={t.numel()}: sections differ (sizes {ref.numel()} vs {got.numel()}, "
                             f"first differing bytes {diff})")
    blob = stream(ref, t)
    status, out = decode_with(ne, blob)
    assert status == "ok" and out == t.view(torch.uint8).numpy().tobytes(), f"{t.dtype} n={t.numel()}: decode differs"
    return info


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("n", [1, 17, B - 1, B, B + 1])
def test_sizes(dtype, n):
    assert_same(weights(n, dtype, seed=n))


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_blocks_zero_blocks_and_exceptions(dtype):
    """Several blocks, all-zero blocks (first, middle, an all-zero tail), special values."""
    t = specials(weights(6 * B + 321, dtype, seed=1), seed=2)
    t[:B] = 0
    t[3 * B:4 * B] = 0
    info = assert_same(t)
    assert info["X"] > 0 and info["coded"].Kc == 5
    t[6 * B:] = 0
    assert assert_same(t)["coded"].Kc == 4
    t = specials(weights(3 * B + 5, dtype, seed=3), seed=4)   # exact search (<= 8 blocks), coded tail
    assert assert_same(t)["X"] > 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_full_exponent_range(dtype):
    E = EXP_BITS[dtype]
    n = 2 * B + 999
    e = torch.arange(n) % (1 << E)
    ib = INT_OF[dtype]
    t = ((e << SHIFT[dtype]) | (torch.arange(n) % 3)).to(ib).view(dtype)
    info = assert_same(t)
    assert info["n"] == E and info["X"] == 0


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_constant_tensors(dtype):
    for value in (0.0, -0.0, 1.5, float("nan"), float("-inf")):
        info = assert_same(torch.full((2 * B + 5,), value, dtype=dtype))
        assert info["coded"].Kc == (0 if str(value) == "0.0" else 3)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_many_and_few_flagged_groups(dtype):
    """Encoder: a weight mix with many flagged groups (> 1/8: the torch path's dense moves)
    and one with few (sparse moves)."""
    info = assert_same(weights(3 * B + 40, dtype, seed=5, tail=0.5))
    many = info["F"] * 8 > info["coded"].Gc
    # few: exponents in an 8-value window, and every 20th group's members just outside it
    n = 3 * B + 40
    g = torch.Generator().manual_seed(6)
    E = EXP_BITS[dtype]
    base = (1 << (E - 1)) - 4
    e = base + torch.randint(0, 8, (n,), generator=g)
    far = (torch.arange(n) % B % (B // enec.GROUP_ELEMS)) % 20 == 0
    e[far] = base - 2
    ib = INT_OF[dtype]
    t = ((e << SHIFT[dtype]) | torch.randint(0, 1 << SHIFT[dtype], (n,), generator=g)).to(ib).view(dtype)
    info2 = assert_same(t)
    few = 0 < info2["F"] * 8 < info2["coded"].Gc
    assert (many or dtype == torch.float16) and few, (info["F"], info2["F"], info["coded"].Gc)


FORCED = [(0, 0, 0), (5, 2, 1), ("max", 3, 0), ("mode", "E", "E"), ("mode", "E", 0), ("mode", 4, 1),
          ("mode", 2, 2)]


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_decoder_any_parameters(dtype):
    """Streams with parameters the search would not pick (n = 0, m = 0, m = n = E, nearly
    every group flagged, most elements exceptions) decode through the native path."""
    E = EXP_BITS[dtype]
    t = specials(weights(2 * B + 77, dtype, seed=7), seed=8)
    t[B:B + 100] = 0
    mode = int(torch.bincount(enec._split(t.reshape(-1))[0], minlength=1 << E).argmax())
    for b, n, m in FORCED:
        b = {"max": (1 << E) - 1, "mode": mode}.get(b, b)
        n = E if n == "E" else n
        m = E if m == "E" else m
        ref, info = enec._encode(t, force=(b, n, m))
        status, out = decode_with(ne, stream(ref, t))
        assert status == "ok" and out == t.view(torch.uint8).numpy().tobytes(), (b, n, m, status)


@pytest.mark.parametrize("geometry", [(24, 3), (40, 5), (16, 16), (1000, 8), (255 * 3, 255)])
def test_decoder_other_geometries(geometry):
    """Any valid block / group size decodes (unaligned plane offsets inside the stream)."""
    Bx, L = geometry
    for dtype in DTYPES:
        t = specials(weights(3 * Bx + Bx // 2 + 1, dtype, seed=Bx), seed=L)
        t[Bx:2 * Bx] = 0
        for force in (None, (int(enec._split(t)[0][0]), min(4, EXP_BITS[dtype]), 1)):
            ref, _ = enec._encode(t, B=Bx, L=L, force=force)
            ref_out = decode_with(enec, stream(ref, t))
            assert ref_out[0] == "ok"
            assert decode_with(ne, stream(ref, t)) == ref_out, (dtype, geometry, force)


def test_crafted_errors():
    """Flag count differs from F; exception position past a short tail; past B (not a
    power of two): the torch path's FormatError from the native decoder."""
    for blob_, msg in kc.enec_crafted_errors():
        ref_out = decode_with(enec, blob_)
        assert ref_out[0] == "error" and ref_out[1].startswith(msg), ref_out
        assert decode_with(ne, blob_) == ref_out


def test_fuzzed_streams_fail_like_torch_path():
    """Bit flips, byte overwrites and truncations: the native decoder gives exactly the
    torch path's outcome (the same FormatError message, or the same tensor)."""
    rng = np.random.default_rng(12)
    for dtype in DTYPES:
        t = specials(weights(2 * B + 300, dtype, seed=13), seed=14)
        t[B:2 * B] = 0
        for force in (None, (int(enec._split(t)[0][0]), 4, 1)):
            ref, _ = enec._encode(t, force=force)
            blob = stream(ref, t)
            _, sec = _parse(ByteSource(blob))
            for bad in kc.corruptions(blob, sec, rng, 40):
                assert decode_with(ne, bad) == decode_with(enec, bad), dtype


def test_threads_give_the_same_bytes():
    x = specials(weights(9 * B + 5, torch.float32, seed=15), seed=16)
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        one = ne.encode_section(x)
        torch.set_num_threads(max(2, old))
        many = ne.encode_section(x)
    finally:
        torch.set_num_threads(old)
    assert torch.equal(one, many)


def test_public_api_dispatches_to_native():
    from qlccomm import kernels
    x = specials(weights(3 * B + 100, torch.bfloat16, seed=17), seed=18).reshape(4, -1)
    with kc.kernels_env("torch"):
        assert kernels.implementation("enec", "cpu") is None
        ref = qlccomm.compress(x, codec="enec", checksum=True)
    for backend in ("auto", "native"):
        with kc.kernels_env(backend):
            assert kernels.implementation("enec", x.device) is ne
            blob = qlccomm.compress(x, codec="enec", checksum=True)
            assert torch.equal(blob, ref)
            y = qlccomm.decompress(blob)
            assert torch.equal(y.view(torch.int16), x.view(torch.int16)) and y.shape == x.shape


@pytest.mark.parametrize("width", range(9))
def test_every_low_width(width):
    """Exponents uniform over 2^width values: the search picks m = n = width (a bf16 decode
    reads two exponents per lookup for 1 <= m <= 6, element by element above); block tails
    of 77 elements and a 1000-element tensor take the element-by-element tails."""
    g = torch.Generator().manual_seed(width)
    for numel in (3 * B + 77, 1000):
        e = 120 - torch.randint(0, 1 << width, (numel,), generator=g)
        mant = torch.randint(0, 256, (numel,), generator=g)
        t = (((mant & 0x80) << 8) | (e << 7) | (mant & 0x7F)).to(torch.int16).view(torch.bfloat16)
        info = assert_same(t)
        if width < 8:
            assert info["m"] == info["n"] == width, info
