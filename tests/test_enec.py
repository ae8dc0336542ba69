"""ENEC codec: round trips, parameter search optimality, stream validation."""
from __future__ import annotations

import math
import struct

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qlccomm
from qlccomm import enec
from qlccomm.errors import EncoderError
from qlccomm.format import CODEC_ENEC, Header

DTYPES = [torch.bfloat16, torch.float16, torch.float32]
INT_OF = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}
EXP_BITS = {torch.bfloat16: 8, torch.float16: 5, torch.float32: 8}
RAW_BITS = {torch.bfloat16: 8, torch.float16: 11, torch.float32: 24}
B = enec.BLOCK_ELEMS


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(INT_OF[t.dtype])


def assert_same(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.dtype == b.dtype and a.shape == b.shape
    assert torch.equal(bits(a), bits(b))


def weights(n: int, dtype: torch.dtype, seed: int = 0, scale: float = 0.02) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) / torch.rand(n, generator=g).clamp_min(1e-3).sqrt()  # heavy tail
    return (x * scale).to(dtype)


def specials(dtype: torch.dtype) -> torch.Tensor:
    ib = INT_OF[dtype]
    if dtype == torch.float32:
        pats = [0x7FC00001, 0x7F800001, 0xFFC12345, 0x7F800000, 0xFF800000, 0x80000000, 0x00000001, 0x807FFFFF,
                0x00400000]
    elif dtype == torch.bfloat16:
        pats = [0x7FC1, 0x7F81, 0xFFC5, 0x7F80, 0xFF80, 0x8000, 0x0001, 0x807F, 0x0040]
    else:
        pats = [0x7E01, 0x7C01, 0xFE05, 0x7C00, 0xFC00, 0x8000, 0x0001, 0x83FF, 0x0200]
    bits_ = 32 if dtype == torch.float32 else 16
    vals = [p - (1 << bits_) if p >> (bits_ - 1) else p for p in pats]
    return torch.tensor(vals, dtype=ib).view(dtype)


def enec_blob(t: torch.Tensor, **kw) -> tuple[torch.Tensor, dict]:
    """An ENEC stream even where api.compress would fall back to raw."""
    sec, info = enec._encode(t.contiguous().reshape(-1), **kw)
    head = torch.frombuffer(bytearray(Header(CODEC_ENEC, t.dtype, tuple(t.shape)).encode()), dtype=torch.uint8)
    return torch.cat([head, sec]), info


# ------------------------------------------------------------------------------------------------
# bit planes
# ------------------------------------------------------------------------------------------------

# ------------------------------------------------------------------------------------------------
# round trips through the public API
# ------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [0, 1, 2, 17, B - 1, B, B + 1, 3 * B + 123])
def test_round_trip_sizes(dtype, n):
    t = weights(n, dtype, seed=n)
    blob = qlccomm.compress(t, codec="enec")
    assert_same(qlccomm.decompress(blob), t)
    assert blob.numel() <= t.numel() * t.element_size() + Header(0, dtype, (n,)).nbytes
    if n >= B:
        info = qlccomm.inspect(blob)
        assert info["codec"] == "enec" and info["ratio"] > 1.05
    blob2, _ = enec_blob(t) if n else (blob, None)
    assert_same(qlccomm.decompress(blob2), t)


@pytest.mark.parametrize("dtype", DTYPES)
def test_special_values(dtype):
    t = weights(2 * B + 77, dtype, seed=3)
    sp = specials(dtype)
    g = torch.Generator().manual_seed(4)
    idx = torch.randint(0, t.numel(), (3000,), generator=g)
    t[idx] = sp.repeat(1000)[: idx.numel()]
    t[B - 5 : B + 5] = 0.0
    t[-3:] = -0.0
    blob = qlccomm.compress(t, codec="enec")
    assert qlccomm.inspect(blob)["codec"] == "enec"
    assert_same(qlccomm.decompress(blob), t)
    for force in [(0, 0, 0), (5, 2, 1), ((1 << EXP_BITS[dtype]) - 1, 3, 0)]:
        blob, _ = enec_blob(t, force=force)
        assert_same(qlccomm.decompress(blob), t)


@pytest.mark.parametrize("dtype", DTYPES)
def test_full_exponent_range(dtype):
    """Exponents spread evenly over every value: the search must pick n = E."""
    E = EXP_BITS[dtype]
    n = B + 999
    e = torch.arange(n) % (1 << E)
    ib = INT_OF[dtype]
    shift = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23}[dtype]
    t = (e << shift).to(ib)
    t |= (torch.arange(n) % 3).to(ib)            # a little mantissa
    t = t.view(dtype)
    blob, info = enec_blob(t)
    assert info["n"] == E and info["X"] == 0
    assert_same(qlccomm.decompress(blob), t)
    assert_same(qlccomm.decompress(qlccomm.compress(t, codec="enec")), t)


@pytest.mark.parametrize("dtype", DTYPES)
def test_constant_and_zero_tensors(dtype):
    for value in (0.0, -0.0, 1.5, float("nan"), float("-inf")):
        t = torch.full((2 * B + 5,), value, dtype=dtype)
        blob = qlccomm.compress(t, codec="enec")
        assert_same(qlccomm.decompress(blob), t)
        info = qlccomm.inspect(blob)
        assert info["codec"] == "enec"
        if value == 0.0 and math.copysign(1, value) > 0:
            assert info["blocks_zero"] == 3 and info["compressed_bytes"] < 100
        else:
            assert info["n"] == 0 and info["exceptions"] == 0
    # zero blocks between coded ones, a zero tail
    t = weights(4 * B + 100, dtype, seed=5)
    t[B : 3 * B] = 0
    t[4 * B :] = 0
    blob = qlccomm.compress(t, codec="enec")
    info = qlccomm.inspect(blob)
    assert info["blocks_zero"] == 3 and info["blocks_coded"] == 2
    assert_same(qlccomm.decompress(blob), t)


def test_shapes_and_noncontiguous():
    t = weights(6 * 5000, torch.bfloat16).view(6, 5000)
    for x in (t, t.t(), t[:, ::3], t[2:4]):
        blob = qlccomm.compress(x, codec="enec")
        y = qlccomm.decompress(blob)
        assert y.shape == x.shape
        assert_same(y, x.contiguous())
    s = torch.tensor(0.25, dtype=torch.float32)
    assert_same(qlccomm.decompress(qlccomm.compress(s, codec="enec")), s)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.float64, torch.int32, torch.float8_e4m3fn])
def test_unsupported_dtype(dtype):
    t = torch.zeros(10, dtype=dtype)
    with pytest.raises(ValueError, match="bfloat16"):
        qlccomm.compress(t, codec="enec")


@pytest.mark.parametrize("dtype", DTYPES)
def test_never_larger_than_raw(dtype):
    g = torch.Generator().manual_seed(7)
    ib = INT_OF[dtype]
    lo, hi = (-(1 << 15), 1 << 15) if ib == torch.int16 else (-(1 << 31), 1 << 31)
    t = torch.randint(lo, hi, (B + 3,), generator=g, dtype=torch.int64).to(ib).view(dtype)
    blob = qlccomm.compress(t, codec="enec")
    assert blob.numel() <= t.numel() * t.element_size() + Header(0, dtype, (B + 3,)).nbytes
    assert_same(qlccomm.decompress(blob), t)


def test_weight_like_ratio():
    t = (torch.distributions.StudentT(3.0).sample((4 * B,)) * 0.02).to(torch.bfloat16)
    info = qlccomm.inspect(qlccomm.compress(t, codec="enec"))
    assert info["ratio"] >= 1.33


@pytest.mark.parametrize("force,dense", [((125, 6, 5), False), ((123, 4, 3), True), ((122, 4, 2), True), ((125, 8, 0), True)])
def test_flagged_group_paths(force, dense):
    """Few flagged groups move member by member, many through group-major rows."""
    t = weights(2 * B + 3000, torch.bfloat16, seed=21)
    blob, info = enec_blob(t, force=force)
    groups = qlccomm.inspect(blob)["groups"]
    assert info["F"] > 0 and (info["F"] * enec._DENSE > groups) == dense
    assert_same(qlccomm.decompress(blob), t)


# ------------------------------------------------------------------------------------------------
# small geometries, forced parameters (every code path: flags, high plane, exceptions, tails)
# ------------------------------------------------------------------------------------------------

GEOMS = [(16, 16), (32, 4), (64, 4), (48, 3), (8, 1), (64, 64)]


@st.composite
def small_cases(draw):
    dtype = draw(st.sampled_from(DTYPES))
    Bs, L = draw(st.sampled_from(GEOMS))
    n = draw(st.integers(1, 6 * Bs + 5))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    kind = draw(st.sampled_from(["weights", "wide", "bits", "sparse"]))
    if kind == "bits":
        ib = INT_OF[dtype]
        t = torch.randint(-(1 << 15), 1 << 15, (n,), generator=g).to(ib).view(dtype)
    else:
        scale = 1e3 if kind == "wide" else 0.02
        x = torch.randn(n, generator=g) * scale
        if kind == "wide":
            x = x * torch.exp2(torch.randint(-30, 30, (n,), generator=g).float())
        if kind == "sparse":
            x = x * (torch.rand(n, generator=g) < 0.1)
        t = x.to(dtype)
    if draw(st.booleans()) and n > Bs:
        t[:Bs] = 0
    E = EXP_BITS[dtype]
    force = None
    if draw(st.booleans()):
        nn = draw(st.integers(0, E))
        force = (draw(st.integers(0, (1 << E) - 1)), nn, draw(st.integers(0, nn)))
    return t, Bs, L, force


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(small_cases())
def test_round_trip_small_geometries(case):
    t, Bs, L, force = case
    blob, info = enec_blob(t, B=Bs, L=L, force=force)
    assert_same(qlccomm.decompress(blob), t)
    facts = qlccomm.inspect(blob)
    assert (facts["b"], facts["n"], facts["m"], facts["exceptions"], facts["flagged_groups"]) == \
        (info["b"], info["n"], info["m"], info["X"], info["F"])


# ------------------------------------------------------------------------------------------------
# the parameter search is exact on small inputs
# ------------------------------------------------------------------------------------------------

def _nb(n, w):
    return (w // 8) * n + (n * (w % 8) + 7) // 8


def reference_sizes(t: torch.Tensor, Bs: int, L: int) -> dict:
    """Section size for every (b, n, m), computed directly (numpy, per block)."""
    dtype = t.dtype
    E, R = EXP_BITS[dtype], RAW_BITS[dtype]
    A = 1 << E
    x = bits(t).numpy().astype(np.int64)
    shift = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23}[dtype]
    N = x.size
    K = -(-N // Bs)
    blocks = [x[i * Bs : (i + 1) * Bs] for i in range(K)]
    coded = [blk for blk in blocks if blk.any()]
    Nr = sum(blk.size for blk in coded)
    Gc = sum(-(-blk.size // L) for blk in coded)
    e = np.concatenate([(blk >> shift) & (A - 1) for blk in coded]) if coded else np.zeros(0, np.int64)
    s = (np.arange(A)[:, None] - e[None, :]) % A
    s = np.where(s >= A // 2, s - A, s)
    const = enec.HEAD_BYTES + K + _nb(Nr, R)
    P = (Bs - 1).bit_length()
    out = {}
    for n in range(E + 1):
        inwin = (s == 0) if n == 0 else (s >= -(1 << (n - 1))) & (s < (1 << (n - 1)))
        X = (~inwin).sum(1)
        y = np.where(inwin, s % (1 << n), 0)
        for m in range(n + 1):
            F = np.zeros(A, np.int64)
            if m < n:
                big = y >= (1 << m)
                off = 0
                for blk in coded:
                    G = -(-blk.size // L)
                    part = np.zeros((A, G * L), bool)
                    part[:, : blk.size] = big[:, off : off + blk.size]
                    F += part.reshape(A, L, G).any(1).sum(1)
                    off += blk.size
            for b in range(A):
                xb = int(X[b])
                size = const + ((Gc + 7) // 8 if m < n else 0) + _nb(Gc * L, m) + _nb(int(F[b]) * L, n - m)
                if xb:
                    size += 4 * K + _nb(xb, P) + _nb(xb, E)
                out[(b, n, m)] = size
    return out


@st.composite
def search_cases(draw):
    dtype = draw(st.sampled_from(DTYPES))
    Bs, L = draw(st.sampled_from([(64, 4), (32, 16), (48, 3), (16, 16)]))
    n = draw(st.integers(1, enec.SAMPLE_BLOCKS * Bs))
    seed = draw(st.integers(0, 2**31 - 1))
    g = torch.Generator().manual_seed(seed)
    kind = draw(st.sampled_from(["weights", "outliers", "two_modes", "sparse"]))
    x = torch.randn(n, generator=g) * 0.02
    if kind == "outliers":
        x = torch.where(torch.rand(n, generator=g) < 0.05, x * 2.0 ** 20, x)
    elif kind == "two_modes":
        x = torch.where(torch.rand(n, generator=g) < 0.3, x * 2.0 ** -9, x)
    elif kind == "sparse":
        x = x * (torch.rand(n, generator=g) < 0.3)
    return x.to(dtype), Bs, L


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(search_cases())
def test_search_is_exact_on_small_inputs(case):
    t, Bs, L = case
    sec, info = enec._encode(t, B=Bs, L=L)
    ref = reference_sizes(t, Bs, L)
    assert sec.numel() == min(ref.values())
    assert sec.numel() == ref[(info["b"], info["n"], info["m"])]
    # the reference model is the encoder's true size
    g = np.random.default_rng(int(sec.numel()))
    keys = list(ref)
    for i in g.choice(len(keys), 4, replace=False):
        assert enec._encode(t, B=Bs, L=L, force=keys[i])[0].numel() == ref[keys[i]]


def test_search_exhaustive_by_encoding():
    """fp16 (E = 5): every (b, n, m) actually encoded; the search finds the smallest."""
    g = torch.Generator().manual_seed(11)
    x = torch.randn(300, generator=g) * 0.05
    x[::17] *= 2.0 ** 8
    x[::23] = 0
    t = x.to(torch.float16)
    sizes = {(b, n, m): enec._encode(t, B=64, L=4, force=(b, n, m))[0].numel()
             for n in range(6) for m in range(n + 1) for b in range(32)}
    assert enec._encode(t, B=64, L=4)[0].numel() == min(sizes.values())


def test_sampled_search_round_trip_and_quality():
    """More than SAMPLE_BLOCKS coded blocks: F is estimated; the choice stays near the best."""
    t = weights((enec.SAMPLE_BLOCKS + 4) * B + 11, torch.bfloat16, seed=9)
    sec, info = enec._encode(t)
    assert not info["search"].exact
    blob, _ = enec_blob(t)
    assert_same(qlccomm.decompress(blob), t)
    b, n, m = info["b"], info["n"], info["m"]
    for alt in [(b, n, m + 1), (b, n, m - 1), (b + 1, n, m), (b - 1, n, m), (b, n + 1, m)]:
        if 0 <= alt[2] <= alt[1] <= 8:
            assert sec.numel() <= enec._encode(t, force=alt)[0].numel() * 1.01


def test_encode_plan_checks_the_backends_counts():
    """The plan every backend shares: the counts a backend hands it must agree with its code
    table, else EncoderError (no stream); the torch path's facts are the plan's."""
    t = weights(B + 100, torch.bfloat16, seed=31)
    t[[5, B + 7]] = float("inf")
    ep = enec.plan_encode(t)
    ep.set_modes(np.ones(ep.geo.K, np.uint8))
    e = enec._split(t)[0].numpy()
    per_block = np.stack([np.bincount(e[:B], minlength=256), np.bincount(e[B:], minlength=256)])
    ep.force(120, 4, 4, per_block.sum(0))
    exc = ep.exceptions_of(per_block)
    assert ep.X == int(exc.sum()) >= 2
    with pytest.raises(EncoderError):
        ep.count()                               # no exceptions counted
    with pytest.raises(EncoderError):
        ep.count(exc, flagged=1)                 # flagged groups with m == n
    ep.count(exc)
    assert list(ep.exc_block) == list(exc) and ep.F == 0
    sec, info = enec._encode(t, force=(120, 4, 4))
    assert (info["X"], info["F"]) == (ep.X, 0) and bytes(sec.numpy()[: len(ep.layout().head)]) == ep.layout().head
    with pytest.raises(ValueError):
        enec.plan_encode(t.view(torch.int16))
    with pytest.raises(ValueError):
        enec.plan_encode(t, B=100, L=3)


# ------------------------------------------------------------------------------------------------
# corrupt, truncated and hostile streams
# ------------------------------------------------------------------------------------------------

def _decode_or_format_error(blob) -> None:
    try:
        out = qlccomm.decompress(blob)
    except qlccomm.FormatError:
        return
    assert isinstance(out, torch.Tensor)


def _small_stream():
    t = weights(300, torch.bfloat16, seed=13)
    t[:64] = 0
    t[100] = float("inf")
    t[200] = 1e-30
    blob, info = enec_blob(t, B=64, L=4, force=(121, 4, 1))
    assert info["F"] > 0 and info["X"] > 1
    return t, blob


def test_truncated_streams():
    t, blob = _small_stream()
    assert_same(qlccomm.decompress(blob), t)
    data = bytes(blob.numpy())
    for cut in range(len(data)):
        with pytest.raises(qlccomm.FormatError):
            qlccomm.decompress(data[:cut])
    with pytest.raises(qlccomm.FormatError):
        qlccomm.decompress(data + b"\0")


def test_bit_flips_never_crash():
    """Every bit of the metadata, one bit of each plane byte."""
    _, blob = _small_stream()
    data = bytearray(blob.numpy().tobytes())
    info = qlccomm.inspect(blob)
    meta = info["header_bytes"] + info["metadata_bytes"]
    for i in range(len(data)):
        for bit in range(8) if i < meta else [i % 8]:
            data[i] ^= 1 << bit
            _decode_or_format_error(bytes(data))
            data[i] ^= 1 << bit


def test_random_sections():
    rng = np.random.default_rng(0)
    head = Header(CODEC_ENEC, torch.bfloat16, (500,)).encode()
    for _ in range(300):
        body = rng.integers(0, 256, rng.integers(0, 400), dtype=np.uint8).tobytes()
        _decode_or_format_error(head + body)
        # a plausible metadata prefix with random planes
        sec = struct.pack("<BBBBBIIQQ", 1, 120, 4, 2, 4, 64, 8, int(rng.integers(0, 4)), 0) + bytes([1] * 8)
        _decode_or_format_error(head + sec + body)


def _patched(blob: torch.Tensor, offset: int, fmt: str, value) -> bytes:
    data = bytearray(blob.numpy().tobytes())
    struct.pack_into(fmt, data, offset, value)
    return bytes(data)


@pytest.mark.parametrize("field,fmt,value", [
    (0, "<B", 3),          # plan id of another dtype
    (0, "<B", 99),
    (1, "<B", 255),        # b ok for E = 8 (valid), see below for fp16
    (2, "<B", 9),          # n > E
    (3, "<B", 5),          # m > n
    (4, "<B", 0),          # L = 0
    (4, "<B", 5),          # B % L != 0
    (5, "<I", 0),          # B = 0
    (5, "<I", 1 << 21),    # B too large
    (9, "<I", 4),          # block count
    (13, "<Q", 1 << 40),   # F
    (13, "<Q", 0),         # F disagrees with the flag plane
    (21, "<Q", 1),         # X disagrees with the table
    (21, "<Q", 1 << 50),
    (29, "<B", 2),         # unknown block mode
    (29, "<B", 1),         # an all-zero block turned coded
])
def test_corrupt_metadata(field, fmt, value):
    _, blob = _small_stream()
    hb = Header(CODEC_ENEC, torch.bfloat16, (300,)).nbytes
    data = _patched(blob, hb + field, fmt, value)
    if field == 1:
        _decode_or_format_error(data)
        return
    with pytest.raises(qlccomm.FormatError):
        qlccomm.decompress(data)


def test_exception_position_outside_tail():
    t = torch.full((70,), 0.5, dtype=torch.float16)
    t[69] = 0
    blob, info = enec_blob(t, B=64, L=4, force=(14, 0, 0))
    assert info["X"] == 1
    data = bytearray(blob.numpy().tobytes())
    hb = Header(CODEC_ENEC, torch.float16, (70,)).nbytes
    # planes: exc_pos (6 bits -> 1 byte), exc_exp (5 bits -> 1 byte), raw
    pos_at = hb + enec.HEAD_BYTES + 2 + 8
    assert data[pos_at] == 69 - 64
    data[pos_at] = 63                 # the tail holds 6 elements
    with pytest.raises(qlccomm.FormatError, match="outside"):
        qlccomm.decompress(bytes(data))


def test_hostile_sizes_do_not_allocate():
    # a header declaring 2^40 elements with a tiny ENEC section
    head = Header(CODEC_ENEC, torch.bfloat16, (1 << 40,)).encode()
    sec = struct.pack("<BBBBBIIQQ", 1, 0, 0, 0, 16, 16384, (1 << 40) // 16384, 0, 0)
    with pytest.raises(qlccomm.FormatError):
        qlccomm.decompress(head + sec + b"\0" * 64)
    with pytest.raises(qlccomm.FormatError):
        qlccomm.decompress(head + sec)
    # a dtype ENEC does not code
    head = Header(CODEC_ENEC, torch.int8, (10,)).encode()
    with pytest.raises(qlccomm.FormatError):
        qlccomm.decompress(head + b"\0" * 40)
    head = Header(CODEC_ENEC, torch.bfloat16, (0,)).encode()
    with pytest.raises(qlccomm.FormatError):
        qlccomm.decompress(head)


def test_inspect_facts():
    t = weights(3 * B, torch.bfloat16, seed=2)
    info = qlccomm.inspect(qlccomm.compress(t, codec="enec"))
    for k in ("b", "n", "m", "group_elems", "block_elems", "blocks", "exceptions", "flagged_groups",
              "plane_bytes", "metadata_bytes"):
        assert k in info
    assert info["group_elems"] == 16 and info["block_elems"] == B and info["blocks"] == 3
    assert sum(info["plane_bytes"].values()) + info["metadata_bytes"] + info["header_bytes"] == info["compressed_bytes"]


@pytest.mark.parametrize("E", [5, 8])
@pytest.mark.parametrize("exact", [True, False])
def test_device_flagged_counts_match_host_search(E, exact):
    """flagged_counts (torch ops, for accelerators) equals the host computation for every b,
    and _search picks the same (b, n, m) from it as from the sample itself."""
    rng = np.random.default_rng(E + 10 * exact)
    A, L, Bs = 1 << E, 16, 1024
    geo = enec.Geometry(6 * Bs + 100, Bs, L)
    cod = enec.Coded(geo, list(range(geo.KA)), True)
    T = enec._tables(E)
    for trial in range(4):
        centre = int(rng.integers(A))
        spread = [1, 3, 12, A][trial]
        sample = ((centre + np.round(rng.standard_t(3, size=(L, 700)) * spread)) % A).astype(np.uint8)
        P = np.bitwise_or.reduce(T["pbit"][:, sample], axis=1).astype(np.int64)       # [A, G]
        Q = T["qval"][:, sample].min(axis=1).astype(np.int64)
        ref = T["flag"][P + A * Q].sum(axis=1)                                         # [A, pairs]
        got = enec.flagged_counts(torch.from_numpy(sample), E)
        assert np.array_equal(got, ref)
        assert np.array_equal(enec.flagged_counts(torch.from_numpy(sample), E, g_step=256), ref)
        hist = np.bincount(sample.reshape(-1), minlength=A).astype(np.int64) * 9
        scale = 1.0 if exact else 7.25
        a = enec._search(hist, sample, scale, exact, geo, cod, E)
        b = enec._search(hist, None, scale, exact, geo, cod, E, flagged=got)
        assert (a.b, a.n, a.m, a.X, a.cost, a.evaluated_b) == (b.b, b.n, b.m, b.X, b.cost, b.evaluated_b)
