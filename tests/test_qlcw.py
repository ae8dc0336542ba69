"""QLCW (codec 3, format version 2): bit-exact round trips of every split and dtype, the
escape area, the writer's split choice, version rules and typed errors for corrupt streams."""
import struct

import numpy as np
import pytest
import torch

import qlccomm
from qlccomm import datagen, qlcw
from qlccomm.format import CODEC_QLCW

DTYPES = [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2,
          torch.uint8, torch.int8]


def _special(dtype: torch.dtype, n: int) -> torch.Tensor:
    """Weights with NaN payloads, infinities, -0.0, subnormals and an all-zero chunk."""
    kind = "grad" if dtype.is_floating_point else "weight"
    x = datagen.synthetic(kind, dtype, n, seed=n).clone()
    if dtype.is_floating_point and dtype.itemsize > 1 and n > 9000:
        words = x.view(torch.int16 if dtype.itemsize == 2 else torch.int32)
        nan = 0x7FC1 if dtype == torch.bfloat16 else 0x7E01 if dtype == torch.float16 else 0x7FC00001
        words[5000:5004] = torch.tensor([nan, -nan - 2, 1, 3], dtype=words.dtype)   # NaN payloads, subnormals
        x[5004:5007] = torch.tensor([float("inf"), float("-inf"), -0.0]).to(dtype)
    if n > 12288:
        x[4096:8192] = 0
    return x


def _bits(t: torch.Tensor) -> torch.Tensor:
    return t.contiguous().view(-1).view(torch.uint8)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("n", [1, 7, 4095, 4097, 20001, 65536])
def test_round_trip_every_split(dtype, n):
    x = _special(dtype, n)
    from qlccomm.format import Header
    h = Header(CODEC_QLCW, x.dtype, (x.numel(),))
    for f in qlcw.candidates(dtype):
        blob = qlcw.encode_section(x, f, reserve=h.nbytes)
        h = Header(CODEC_QLCW, x.dtype, (x.numel(),), version=qlcw.section_version(int(blob[h.nbytes + 3])))
        blob[: h.nbytes] = torch.frombuffer(bytearray(h.encode()), dtype=torch.uint8)
        assert torch.equal(_bits(qlccomm.decompress(blob)), _bits(x)), f
    blob = qlccomm.compress(x, codec="qlcw")
    assert torch.equal(_bits(qlccomm.decompress(blob)), _bits(x))
    assert blob.numel() <= qlccomm.api.max_compressed_bytes(x)


@pytest.mark.parametrize("f", [qlcw.Fields(7, 8, 2), qlcw.Fields(7, 8, 1), qlcw.Fields(3, 5, 2)])
def test_section_round_trip_with_explicit_splits(f):
    """Any valid split decodes, not only the writer's candidates (the format names it)."""
    x = _special(torch.bfloat16, 20001)
    from qlccomm.format import Header, ByteSource
    h = Header(CODEC_QLCW, x.dtype, (x.numel(),))
    blob = qlcw.encode_section(x, f, reserve=h.nbytes)
    h = Header(CODEC_QLCW, x.dtype, (x.numel(),), version=qlcw.section_version(int(blob[h.nbytes + 3])))
    blob[: h.nbytes] = torch.frombuffer(bytearray(h.encode()), dtype=torch.uint8)
    assert torch.equal(_bits(qlccomm.decompress(blob)), _bits(x))
    assert qlccomm.inspect(blob)["fields"] == {"lo": f.lo, "w": f.w, "g": f.g}


def test_escape_area_codes_symbols_past_the_table():
    """More distinct pairs than TABLE_MAX: the table keeps the frequent ones, area 15 escapes the rest."""
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (300_000,), generator=g, dtype=torch.uint8)
    x[:200_000] = torch.randint(0, 4, (200_000,), generator=g, dtype=torch.uint8)   # frequent pairs
    blob = qlccomm.compress(x, codec="qlcw")
    info = qlccomm.inspect(blob)
    assert info["codec"] in ("qlcw", "raw")
    sec = qlcw.encode_section(x, qlcw.Fields(0, 8, 2))
    code_head = sec[:24].numpy()
    assert code_head[3] == 1 and code_head[4 + 15] == 16           # escape flag, b_15 = S
    assert torch.equal(qlccomm.decompress(blob), x)


def test_build_code_matches_the_dp_and_prefers_the_smaller_total():
    hist = np.zeros(1 << 16, np.int64)
    hist[[0, 1, 2, 3, 500]] = [1000, 500, 250, 125, 1]
    code = qlcw.build_code(hist, 16)
    assert set(code.table.tolist()) == {0, 1, 2, 3, 500} or code.escape
    assert qlcw.code_bits(hist, code) < 4 * hist.sum() + 16 * hist.sum()


def test_symbols_rank_by_count_then_symbol():
    """The rank order every code is fitted in: counts descending, ties by symbol ascending,
    unused symbols left out (the same order a two-key lexsort gives)."""
    rng = np.random.default_rng(4)
    for _ in range(50):
        hist = np.zeros(1 << 12, np.int64)
        used = rng.choice(hist.size, int(rng.integers(1, 3000)), replace=False)
        hist[used] = rng.integers(1, 6, used.size)          # many ties
        nz = np.flatnonzero(hist)
        assert np.array_equal(qlcw._sorted_symbols(hist), nz[np.lexsort((nz, -hist[nz]))])


def test_pair_bound_never_exceeds_the_fitted_code():
    """prefer_wide skips fitting a pair code whose bound already loses, so the bound (entropy,
    metadata and the smaller possible table) must never exceed what the fit then costs."""
    rng = np.random.default_rng(9)
    for trial in range(60):
        S = 14 if trial % 3 else 16
        hist = np.zeros(1 << S, np.int64)
        used = rng.choice(hist.size, int(rng.integers(1, 9000)), replace=False)
        hist[used] = (rng.pareto(0.8, used.size) * rng.integers(1, 50)).astype(np.int64) + 1
        if trial % 4 == 0:
            hist[used[: used.size // 2]] = 1                 # many symbols seen once: escapes
        code, bits = qlcw.fit_code(hist, S)
        assert qlcw.pair_bound_bits(hist, S) < bits + 8 * (qlcw.HEAD_BYTES + 2 * code.table.size)


def test_a_pair_code_that_ties_the_best_option_is_still_written():
    """16 equally frequent pairs (a dyadic histogram): the pair code reaches its bound exactly
    and ties the single-field code.  Pairs win ties, so the bound must not skip their fit."""
    hist = np.zeros(1 << 16, np.int64)
    hist[[lo | hi << 8 for lo in range(4, 8) for hi in range(4)]] = 2
    code, bits = qlcw.fit_code(hist, 16)
    assert qlcw.pair_bound_bits(hist, 16) < bits + 8 * (qlcw.HEAD_BYTES + 2 * code.table.size)
    f, _ = qlcw.prefer_wide(hist, qlcw.Fields(0, 8, 2), torch.uint8)
    assert f.g == 2


def test_pairs_beat_single_symbols_on_weights():
    """The point of the codec: on bf16 weights a pair code beats QLC's single-symbol code."""
    x = datagen.synthetic("weight", torch.bfloat16, 1 << 20, seed=3)
    wide = qlccomm.compress(x, codec="qlcw").numel()
    single = qlccomm.compress(x, codec="qlc", codebook=qlccomm.fit_codebook(x)).numel()   # a QLC stream
    assert wide < single, (wide, single)
    assert qlccomm.compress(x, codec="qlc").numel() == wide     # adaptive codec="qlc" writes the pair code


def test_best_split_is_one_of_the_candidates_and_is_smallest_on_fp16():
    x = datagen.synthetic("weight", torch.float16, 1 << 18, seed=1)
    f = qlcw.best_split(x)
    assert f in qlcw.candidates(torch.float16)
    sizes = {c: qlcw.encode_section(x, c).numel() for c in qlcw.candidates(torch.float16)}
    assert sizes[f] <= min(sizes.values()) * 1.01   # an estimate from a sample: within 1% of the best


def test_version_rules():
    x = datagen.synthetic("weight", torch.bfloat16, 5000, seed=0)
    blob = bytearray(qlccomm.compress(x, codec="qlcw").numpy().tobytes())
    assert blob[4] == 2 and blob[5] == CODEC_QLCW
    assert bytes(qlccomm.compress(x, codec="qlc").numpy().tobytes())[4] == 1   # v1 streams stay v1
    blob[4] = 1
    with pytest.raises(qlccomm.FormatError, match="version"):
        qlccomm.decompress(bytes(blob))
    for later in (3, 4):                       # a later version reads it too
        blob[4] = later
        assert torch.equal(qlccomm.decompress(bytes(blob)).view(torch.uint8), x.view(torch.uint8))
    blob[4] = 5
    with pytest.raises(qlccomm.FormatError, match="version"):
        qlccomm.decompress(bytes(blob))


def test_qlcw_refuses_a_codebook_and_dtypes_it_does_not_code():
    x = datagen.synthetic("weight", torch.bfloat16, 5000, seed=0)
    with pytest.raises(ValueError, match="codebook"):
        qlccomm.compress(x, codec="qlcw", codebook="default")
    assert not qlccomm.codecs.get("qlcw").codes(torch.int32)


def _section_start(blob: bytes) -> int:
    return 21 + 8 * blob[20]


@pytest.mark.parametrize("field, value, match", [
    (0, 200, "split"), (1, 0, "split"), (2, 3, "split"), (3, 32, "flags"), (3, 16, "version 4"), (3, 2, ""),
    (4, 17, "widths"), ("T", 0, "table"), ("T", 40000, "table"), ("C", 12, "chunk"), ("mode", 7, "mode"),
])
def test_corrupt_metadata_is_a_format_error(field, value, match):
    x = _special(torch.bfloat16, 20001)
    blob = bytearray(qlccomm.compress(x, codec="qlcw").numpy().tobytes())
    s = _section_start(blob)
    T = struct.unpack_from("<I", blob, s + 20)[0]
    if field == "T":
        struct.pack_into("<I", blob, s + 20, value)
    elif field == "C":
        struct.pack_into("<I", blob, s + 24 + 2 * T, value)
    elif field == "mode":
        blob[s + 24 + 2 * T + 8] = value
    else:
        blob[s + field] = value
    with pytest.raises(qlccomm.FormatError, match=match):
        qlccomm.decompress(bytes(blob))


def test_corrupt_planes_are_format_errors_or_decode():
    """Flipping bytes of the planes never crashes: a FormatError or some tensor of the right shape."""
    x = _special(torch.bfloat16, 20001)
    good = qlccomm.compress(x, codec="qlcw").numpy().tobytes()
    rng = np.random.default_rng(0)
    for _ in range(200):
        blob = bytearray(good)
        for pos in rng.integers(_section_start(blob), len(blob), 3):
            blob[pos] ^= int(rng.integers(1, 256))
        try:
            y = qlccomm.decompress(bytes(blob))
        except qlccomm.FormatError:
            continue
        assert y.shape == x.shape and y.dtype == x.dtype
    with pytest.raises(qlccomm.FormatError):
        qlccomm.decompress(good[:-1])
