"""The native QLCW kernels (kernels/native_qlcw.py) against the torch path (qlccomm.qlcw):
the same section bytes for every dtype, split and chunk mode, the same decoded bits, the same
FormatError for corrupt streams; and adaptive codec="qlc" writing QLCW where it is smaller."""
from types import SimpleNamespace

import numpy as np
import pytest
import torch

import qlccomm
from qlccomm import datagen, qlcw
from qlccomm.format import CODEC_QLCW, Header
from qlccomm.kernels import native_qlcw

import kernel_cases as kc


def _mixed(dtype: torch.dtype, chunk: int, tail: int, seed: int = 1) -> torch.Tensor:
    """Coded chunks (gradient-like values with NaN, inf, -0.0 and subnormals), an all-zero
    chunk, an incompressible chunk, then a short tail."""
    g = torch.Generator().manual_seed(seed)
    body = datagen.synthetic("grad", dtype, 3 * chunk, seed=seed).clone()
    if dtype.itemsize > 1:
        words = body.view(torch.int16 if dtype.itemsize == 2 else torch.int32)
        nan = 0x7FC1 if dtype == torch.bfloat16 else 0x7E01 if dtype == torch.float16 else 0x7FC00001
        words[5:9] = torch.tensor([nan, -nan - 2, 1, 3], dtype=words.dtype)
        body[9:12] = torch.tensor([float("inf"), float("-inf"), -0.0]).to(dtype)
    noise = torch.randint(0, 256, (chunk * dtype.itemsize,), generator=g, dtype=torch.int32).to(torch.uint8)
    return torch.cat([body, torch.zeros(chunk, dtype=dtype), noise.view(dtype), body[:tail]])


SPLITS = [(torch.bfloat16, qlcw.Fields(7, 8, 2)), (torch.bfloat16, qlcw.Fields(7, 8, 1)),
          (torch.float16, qlcw.Fields(10, 5, 2)), (torch.float16, qlcw.Fields(8, 7, 2)),
          (torch.float32, qlcw.Fields(23, 8, 2)), (torch.float8_e4m3fn, qlcw.Fields(0, 8, 2)),
          (torch.uint8, qlcw.Fields(0, 8, 1)), (torch.bfloat16, qlcw.Fields(3, 5, 2))]


@pytest.mark.parametrize("dtype,f", SPLITS, ids=lambda v: str(v))
@pytest.mark.parametrize("chunk,tail", [(4096, 1001), (64, 33)])
def test_native_writes_the_torch_paths_bytes_and_decodes_them(dtype, f, chunk, tail):
    x = _mixed(dtype, chunk, tail)
    ref = qlcw.encode_section(x, f, chunk=chunk)
    got = native_qlcw.encode_section(x, f, chunk=chunk, reserve=3)
    assert torch.equal(got[3:], ref)
    blob = _stream(dtype, ref, x.numel())
    modes = qlccomm.inspect(blob)
    assert modes["chunks_zero"] >= 1 and modes["chunks_coded"] >= 1
    assert modes["chunks_raw"] >= 1 or f.w < 8     # noise in 8-bit fields is stored raw
    assert kc.outcome(blob, "native") == kc.outcome(blob, "torch") == ("ok", x.view(torch.uint8).numpy().tobytes())


def test_escape_codes_and_a_given_code_match():
    """A tensor with many symbols seen once: the code escapes them (area 15); and a code
    fitted to another tensor, passed in, gives the same bytes on both paths."""
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 256, (40000,), generator=g, dtype=torch.int32).to(torch.uint8)
    x[:30000] = (x[:30000] % 7).to(torch.uint8)
    f = qlcw.Fields(0, 8, 2)
    code = qlcw.build_code(qlcw.histogram(x, f), f.symbol_bits)
    assert code.escape
    assert torch.equal(native_qlcw.encode_section(x, f), qlcw.encode_section(x, f))
    assert np.array_equal(native_qlcw.histogram(x, f), qlcw.histogram(x, f))
    y = x.flip(0).contiguous()
    assert torch.equal(native_qlcw.encode_section(y, f, code), qlcw.encode_section(y, f, code))


def test_corrupt_streams_fail_alike():
    rng = np.random.default_rng(5)
    for dtype in (torch.bfloat16, torch.float32):
        x = _mixed(dtype, 256, 77)
        blob = native_qlcw.encode_section(x, qlcw.Fields(7 if dtype == torch.bfloat16 else 23, 8, 2), chunk=256)
        blob = _stream(dtype, blob, x.numel())
        planes = SimpleNamespace(planes_offset=qlccomm.inspect(blob)["metadata_bytes"])
        seen = set()
        for bad in kc.corruptions(blob, planes, rng, 80):
            ref = kc.outcome(bad, "torch")
            assert kc.outcome(bad, "native") == ref
            seen.add(ref[0] if ref[0] == "ok" else "".join(c for c in ref[1] if not c.isdigit())[:30])
        assert "suffix plane does not match th" in seen and len(seen) > 3, seen


def test_rank_past_the_table_fails_alike():
    """A code whose area holds more ranks than its table: a suffix naming one is corrupt."""
    x = (torch.arange(5000) % 3).to(torch.uint8)
    f = qlcw.Fields(0, 8, 1)
    code = qlcw.WideCode(8, (2,) + (0,) * 15, np.array([0, 1, 2]), False)
    section = qlcw.encode_section(x, f, code)
    assert torch.equal(native_qlcw.encode_section(x, f, code), section)
    blob = _stream(x.dtype, section, x.numel())
    info = qlccomm.inspect(blob)
    suffix_at = info["metadata_bytes"] + info["plane_bytes"]["prefix"] + info["plane_bytes"]["field"]
    bad = bytearray(blob.numpy().tobytes())
    bad[suffix_at] |= 0x03                      # the first code's suffix: rank 3 of a 3-entry table
    ref = kc.outcome(bytes(bad), "torch")
    assert ref == ("error", "code names a rank past the table (corrupt stream)")
    assert kc.outcome(bytes(bad), "native") == ref


@pytest.mark.parametrize("numel", [5001, 8192 + 8])
def test_packed_pair_decoding_matches_and_fails_alike(numel):
    """bfloat16 exponent pairs, the decoder's packed path (one 32-bit store per pair code):
    an odd or short last chunk decodes alike, and a suffix naming a rank past the table is
    caught, in the first chunk and in the last one."""
    g = torch.Generator().manual_seed(numel)
    exps = torch.tensor([127, 128])[torch.randint(0, 2, (numel,), generator=g)]
    exps[1::2][exps[0::2][: exps[1::2].numel()] == 128] = 127            # pairs (128, 128) never occur
    words = (exps << 7) | torch.randint(0, 128, (numel,), generator=g) | (torch.randint(0, 2, (numel,), generator=g) << 15)
    x = words.to(torch.int16).view(torch.bfloat16)
    f = qlcw.Fields(7, 8, 2)
    pairs = np.array([127 | 127 << 8, 128 | 127 << 8, 127 | 128 << 8, 127])   # the last: a lone 127 with field 0
    code = qlcw.WideCode(16, (2,) + (0,) * 15, pairs[:3] if numel % 2 == 0 else pairs, False)
    section = qlcw.encode_section(x, f, code)
    assert torch.equal(native_qlcw.encode_section(x, f, code), section)
    blob = _stream(x.dtype, section, numel)
    assert kc.outcome(blob, "native") == kc.outcome(blob, "torch") == ("ok", x.view(torch.uint8).numpy().tobytes())
    if numel % 2:
        return                                                  # a 4-entry table has no rank past it
    info = qlccomm.inspect(blob)
    suffix_at = info["metadata_bytes"] + info["plane_bytes"]["prefix"] + info["plane_bytes"]["field"]
    for at in (suffix_at, len(blob) - info["plane_bytes"]["raw"] - 1):   # the first code of each chunk
        bad = bytearray(blob.numpy().tobytes())
        bad[at] |= 0x03                                         # its suffix: rank 3 of a 3-entry table
        ref = kc.outcome(bytes(bad), "torch")
        assert ref[0] == "error"
        assert kc.outcome(bytes(bad), "native") == ref


@pytest.mark.parametrize("wide", [2, 7, 9])
def test_float16_byte_pair_decoding_matches_and_fails_alike(wide):
    """float16 single fields, the decoder's byte-pair path (both codes of a prefix byte in one
    look-up of 6 suffix bits): pairs whose suffixes take more than 6 bits fall back to the
    single-code table; same bytes and the same errors as the torch path, an odd tail too."""
    g = torch.Generator().manual_seed(wide)
    n = 20003
    perm = torch.randperm(128, generator=g)
    rank = torch.randint(0, 128, (n,), generator=g)
    short = torch.rand(n, generator=g) < 0.75
    rank[short] %= 9                                         # mostly the short codes
    words = (perm[rank] << 8) | torch.randint(0, 256, (n,), generator=g) | (torch.randint(0, 2, (n,), generator=g) << 15)
    x = words.to(torch.int16).view(torch.float16)
    f = qlcw.Fields(8, 7, 1)
    code = qlcw.WideCode(7, (0,) * 5 + (1, 1, 2, 2, 3, 3, 4, 4, 5, 6, wide), perm.numpy().astype(np.int64), False)
    section = qlcw.encode_section(x, f, code)
    assert torch.equal(native_qlcw.encode_section(x, f, code), section)
    blob = _stream(x.dtype, section, n)
    assert qlccomm.inspect(blob)["chunks_coded"] == 5
    assert kc.outcome(blob, "native") == kc.outcome(blob, "torch") == ("ok", x.view(torch.uint8).numpy().tobytes())
    planes = SimpleNamespace(planes_offset=qlccomm.inspect(blob)["metadata_bytes"])
    rng = np.random.default_rng(wide)
    seen = set()
    for bad in kc.corruptions(blob, planes, rng, 60):
        ref = kc.outcome(bad, "torch")
        assert kc.outcome(bad, "native") == ref
        seen.add(ref[0] if ref[0] == "ok" else ref[1][:20])
    assert len(seen) > 2, seen
    info = qlccomm.inspect(blob)
    at = info["metadata_bytes"] + info["plane_bytes"]["prefix"] + info["plane_bytes"]["field"]
    bad = bytearray(blob.numpy().tobytes())
    bad[at:at + info["plane_bytes"]["suffix"]] = b"\xff" * info["plane_bytes"]["suffix"]   # area 14: rank 160
    ref = kc.outcome(bytes(bad), "torch")
    assert ref == ("error", "code names a rank past the table (corrupt stream)")
    assert kc.outcome(bytes(bad), "native") == ref


@pytest.mark.parametrize("wide", [9, 10, 12])
def test_codes_with_a_wide_last_area_match_and_fail_alike(wide):
    """A code whose last area is 9..12 bits wide (bfloat16 weights' fitted codes have a 9-bit
    one): the native decoder looks 9 or 10 suffix bits up at once (wider areas take its
    code-by-code path); same bytes, same bits and the same errors as the torch path."""
    g = torch.Generator().manual_seed(wide)
    x = torch.randint(0, 256, (20000,), generator=g, dtype=torch.int32).to(torch.uint8)
    x[:15000] = (x[:15000] % 5).to(torch.uint8)             # mostly the short codes
    f = qlcw.Fields(0, 8, 1)
    perm = torch.randperm(256, generator=g).numpy().astype(np.int64)
    code = qlcw.WideCode(8, (0,) * 5 + (1, 1, 2, 2, 3, 3, 4, 4, 5, 6, wide), perm, False)
    section = qlcw.encode_section(x, f, code)
    assert torch.equal(native_qlcw.encode_section(x, f, code), section)
    blob = _stream(x.dtype, section, x.numel())
    assert kc.outcome(blob, "native") == kc.outcome(blob, "torch") == ("ok", x.numpy().tobytes())
    planes = SimpleNamespace(planes_offset=qlccomm.inspect(blob)["metadata_bytes"])
    rng = np.random.default_rng(wide)
    for bad in kc.corruptions(blob, planes, rng, 40):
        assert kc.outcome(bad, "native") == kc.outcome(bad, "torch")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32, torch.float16, torch.float8_e4m3fn])
def test_adaptive_qlc_writes_qlcw_where_smaller_same_bytes_on_both_paths(dtype):
    x = datagen.synthetic("weight", dtype, 60000, seed=2)
    with kc.kernels_env("torch"):
        ref = qlccomm.compress(x)
    with kc.kernels_env("native"):
        got = qlccomm.compress(x)
    assert torch.equal(got, ref)
    f = qlcw.adaptive_fields(x)
    wide = qlcw.prefer_wide(qlcw.histogram(x, f), f, dtype)
    info = qlccomm.inspect(got)
    assert info["codec"] == ("qlcw" if wide is not None else "qlc")
    if wide is not None:
        assert info["fields"] == {"lo": wide[0].lo, "w": wide[0].w, "g": wide[0].g}
    assert torch.equal(qlccomm.decompress(got).view(torch.uint8), x.view(torch.uint8))
    if dtype in (torch.bfloat16, torch.float16):    # QLCW beats QLC on weights (bf16: with pairs)
        assert wide is not None and (wide[0].g == 2 or dtype == torch.float16)
        assert got.numel() < qlccomm.compress(x, codebook=qlccomm.fit_codebook(x)).numel()
    if dtype == torch.float8_e4m3fn:                # high-entropy bytes: 16 areas of single bytes
        assert wide is not None and wide[0].g == 1


def test_adaptive_float16_weighs_a_second_pair_split():
    """Sparse float16 gradients: pairs of exponent + 3 mantissa bits, the split the writer also
    weighs there (qlcw.more_pair_splits); the same bytes on both paths."""
    x = datagen.synthetic("grad", torch.float16, 1 << 18, seed=4).view(-1, 4096).clone()
    x[1::2] = 0
    x = x.view(-1)
    with kc.kernels_env("torch"):
        ref = qlccomm.compress(x)
    got = qlccomm.compress(x)
    assert torch.equal(got, ref)
    sizes = {f: qlcw.encode_section(x, f).numel() for f in (qlcw.Fields(8, 7, 2), qlcw.Fields(7, 8, 2))}
    fields = qlccomm.inspect(got)["fields"]
    assert got.numel() <= min(sizes.values()) * 1.005 + 64, (fields, got.numel(), sizes)


def test_adaptive_qlc_keeps_qlc_for_small_tensors_and_codebooks():
    small = datagen.synthetic("weight", torch.bfloat16, qlcw.MIN_WIDE_ELEMS - 1, seed=2)
    assert qlccomm.inspect(qlccomm.compress(small))["codec"] == "qlc"
    half = datagen.synthetic("weight", torch.float16, 60000, seed=2)
    info = qlccomm.inspect(qlccomm.compress(half))
    assert info["codec"] == "qlcw" and (info["fields"]["lo"], info["fields"]["w"]) == (8, 7)
    big = datagen.synthetic("weight", torch.bfloat16, 60000, seed=2)
    assert qlccomm.inspect(qlccomm.compress(big, codebook=qlccomm.fit_codebook(big)))["codec"] == "qlc"


# -- several codes per section ---------------------------------------------------------------------
def _layered(dtype: torch.dtype, n: int) -> torch.Tensor:
    """Parts of one tensor scaled apart (as a model's layers are), then an all-zero chunk and
    an incompressible one: chunk groups with different statistics."""
    g = torch.Generator().manual_seed(7)
    parts = [torch.randn(n // 16384 * 4096, generator=g) * s for s in (1.0, 0.03, 300.0, 1e-4)]
    x = torch.cat(parts)
    if dtype == torch.float8_e4m3fn:
        x = x / x.abs().max() * 448
    x = x.to(dtype)
    noise = torch.randint(0, 256, (4096 * dtype.itemsize,), generator=g, dtype=torch.int32).to(torch.uint8)
    return torch.cat([x, torch.zeros(4096, dtype=dtype), noise.view(dtype), x[:777]])


def _stream(dtype, section: torch.Tensor, numel: int) -> torch.Tensor:
    """A QLCW stream of `section` (its header records the version the section needs)."""
    h = Header(CODEC_QLCW, dtype, (numel,), version=qlcw.section_version(int(section[3])))
    return torch.cat([torch.frombuffer(bytearray(h.encode()), dtype=torch.uint8), section])


@pytest.mark.parametrize("dtype,lo,w", [(torch.float8_e4m3fn, 0, 8), (torch.float16, 8, 7)])
def test_code_sets_same_bytes_and_bits_on_both_paths(dtype, lo, w):
    x = _layered(dtype, 60000)
    f1 = qlcw.Fields(lo, w, 1)
    hist = qlcw.chunk_histograms(x, lo, w)
    assert np.array_equal(native_qlcw.chunk_histograms(x, lo, w), hist)
    sets = qlcw.cluster_codes(hist, f1)
    assert len(sets) == 1 and 2 < len(sets[0][1].codes) <= qlcw.MAX_CODES    # empty groups are dropped
    for bits, cs in sets:
        ref = qlcw.encode_section(x, f1, cs)
        assert torch.equal(native_qlcw.encode_section(x, f1, cs), ref)
        blob = _stream(dtype, ref, x.numel())
        info = qlccomm.inspect(blob)
        assert info["codes"] == len(cs.codes) and info["chunks_zero"] == 1
        assert kc.outcome(blob, "native") == kc.outcome(blob, "torch") == ("ok", x.view(torch.uint8).numpy().tobytes())
    single = qlcw.encode_section(x, f1).numel()
    assert min(qlcw.encode_section(x, f1, cs).numel() for _, cs in sets) < single   # groups pay here


def test_group_scores_are_exact_on_every_path():
    """cluster_codes' chunk scores: the numba kernel (a reordered, vectorised sum) and einsum
    give the same numbers, integer sums exact in float64, so the groups come out alike."""
    x = _layered(torch.float8_e4m3fn, 60000)
    hist = qlcw.chunk_histograms(x, 0, 8).astype(np.float64)
    assign = np.arange(hist.shape[0]) % 3
    models = qlcw._models(hist, assign, 3)
    assert np.array_equal(models, np.round(models)) and models.max() < 2**26
    assert np.array_equal(native_qlcw.group_scores(hist, models), qlcw._scores(hist, models))
    big = np.full((2, 256), 4096.0)                            # a 2^20-element chunk's worth
    assert np.array_equal(native_qlcw.group_scores(big, models), qlcw._scores(big, models))
    counts = qlcw.chunk_histograms(x, 0, 8)                    # int64, scored as they are
    assert np.array_equal(native_qlcw.group_scores(counts, models), qlcw._scores(hist, models))
    group = np.where(counts.any(axis=1), np.arange(counts.shape[0]) % 3, -1)   # -1: left out
    assert np.array_equal(native_qlcw.group_sums(counts, group, 3), qlcw._group_sums(counts, group, 3))


def test_pair_code_sets_and_an_escaping_code():
    """A CodeSet of pair codes, one of them escaping, fitted to two halves of the chunks."""
    x = _layered(torch.bfloat16, 40000)
    f = qlcw.Fields(7, 8, 2)
    K = -(-x.numel() // 4096)
    chunk_code = (np.arange(K) >= K // 2).astype(np.int64)
    first = qlcw.build_code(qlcw.histogram(x[: (K // 2) * 4096], f), 16)
    room = sum(1 << b for b in first.widths[:15])
    wide = qlcw.WideCode(16, first.widths[:15] + (16,), first.table[:room][:-3], True)   # area 15 escapes
    second = qlcw.build_code(qlcw.histogram(x, f), 16)
    cs = qlcw.CodeSet((wide, second), chunk_code)
    ref = qlcw.encode_section(x, f, cs)
    assert torch.equal(native_qlcw.encode_section(x, f, cs), ref)
    blob = _stream(x.dtype, ref, x.numel())
    assert kc.outcome(blob, "native") == kc.outcome(blob, "torch") == ("ok", x.view(torch.uint8).numpy().tobytes())
    v2 = bytearray(blob.numpy().tobytes())
    v2[4] = 2                                  # several codes need version 3
    assert "needs version 3" in kc.outcome(bytes(v2), "torch")[1]


def test_corrupt_chunk_codes_fail_alike():
    x = _layered(torch.float8_e4m3fn, 40000)
    f1 = qlcw.Fields(0, 8, 1)
    cs = qlcw.cluster_codes(qlcw.chunk_histograms(x, 0, 8), f1)[0][1]
    blob = _stream(x.dtype, qlcw.encode_section(x, f1, cs), x.numel())
    info = qlccomm.inspect(blob)
    codes_at = info["metadata_bytes"] - info["chunks"]               # the chunk codes end the metadata
    bad = bytearray(blob.numpy().tobytes())
    bad[codes_at] = len(cs.codes)
    assert kc.outcome(bytes(bad), "torch") == kc.outcome(bytes(bad), "native")
    assert "names a code past" in kc.outcome(bytes(bad), "torch")[1]
    for c in range(info["chunks"]):                                  # another valid code: both paths agree
        bad = bytearray(blob.numpy().tobytes())
        bad[codes_at + c] ^= 1
        assert kc.outcome(bytes(bad), "torch") == kc.outcome(bytes(bad), "native"), c


def test_adaptive_qlc_groups_chunks_of_large_tensors():
    x = _layered(torch.float8_e4m3fn, qlcw.MULTI_MIN_ELEMS)
    with kc.kernels_env("torch"):
        ref = qlccomm.compress(x)
    got = qlccomm.compress(x)
    assert torch.equal(got, ref)
    info = qlccomm.inspect(got)
    assert info["codec"] == "qlcw" and info["codes"] > 1 and info["fields"]["g"] == 1
    assert torch.equal(qlccomm.decompress(got).view(torch.uint8), x.view(torch.uint8))
    small = x[: qlcw.MULTI_MIN_ELEMS // 2].contiguous()             # below the size: one code
    assert qlccomm.inspect(qlccomm.compress(small)).get("codes", 1) == 1


# -- raw shifts (docs/format.md, "Raw shifts") --------------------------------------------------

SHIFT_SPLITS = [(torch.float32, qlcw.Fields(23, 8, 2)), (torch.float32, qlcw.Fields(23, 8, 1)),
                (torch.bfloat16, qlcw.Fields(7, 8, 2)), (torch.float16, qlcw.Fields(8, 7, 2)),
                (torch.float16, qlcw.Fields(10, 5, 1)), (torch.bfloat16, qlcw.Fields(3, 5, 2)),
                (torch.float32, qlcw.Fields(0, 1, 1))]      # 31 raw bits


def _raw_shifts(x: torch.Tensor, f: qlcw.Fields, chunk: int) -> np.ndarray:
    """The trailing zero bits common to each chunk's raw values, computed apart from the
    codec (numpy, one chunk at a time): the shift the writer must choose."""
    bits = 8 * x.element_size()
    words = x.view({2: torch.int16, 4: torch.int32}[x.element_size()]).numpy().astype(np.int64) & ((1 << bits) - 1)
    raw = (words & ((1 << f.lo) - 1)) | ((words >> (f.lo + f.w)) << f.lo)
    R = bits - f.w
    out = []
    for c in range(0, x.numel(), chunk):
        acc = int(np.bitwise_or.reduce(raw[c:c + chunk]))
        out.append(R if acc == 0 else (acc & -acc).bit_length() - 1)
    return np.array(out)


@pytest.mark.parametrize("dtype,f", SHIFT_SPLITS, ids=lambda v: str(v))
@pytest.mark.parametrize("chunk,tail", [(4096, 1001), (64, 33)])
def test_raw_shifts_same_bytes_and_bits_on_both_paths(dtype, f, chunk, tail):
    """Chunks of upcast values, of powers of two (no raw bit set), coded, all-zero and random
    chunks, an upcast short tail: each chunk's shift is its common zero low raw bits, both
    paths write the same bytes and decode them bit-exactly."""
    x = kc.mixed(dtype, chunk, "cuzpurc", tail, seed=chunk + f.lo, tail_kind="u")
    ref = qlcw.encode_section(x, f, chunk=chunk)
    assert torch.equal(native_qlcw.encode_section(x, f, chunk=chunk, reserve=5)[5:], ref)
    blob = _stream(dtype, ref, x.numel())
    assert blob[4] == qlcw.RAW_SHIFTS_SINCE and ref[3] & qlcw.FLAG_RAW_SHIFTS
    sec = qlccomm.api._parse(qlccomm.format.ByteSource(blob))[1]
    want = np.where(sec.modes == 0, 0, _raw_shifts(x, f, chunk))
    R = 8 * x.element_size() - f.w
    assert np.array_equal(sec.shifts, want) and (want[[1, 4, -1]] > 0).all()
    assert want[3] == R or f.lo + f.w != 8 * x.element_size() - 1      # exponent splits: no raw bit set
    e = np.where(sec.modes == 0, 0, np.minimum(chunk, x.numel() - chunk * np.arange(want.size)))
    assert sec.plane_bytes["raw"] == int(sum((e * (R - want) + 7) // 8))
    assert kc.outcome(blob, "native") == kc.outcome(blob, "torch") == ("ok", x.view(torch.uint8).numpy().tobytes())


def test_raw_shift_of_the_top_raw_bit():
    """float32 split (0, 1): 31 raw bits; a chunk of -0.0 holds only bit 30 of them (shift 30)."""
    x = torch.cat([torch.full((256,), -0.0), kc.coded_like(300, torch.float32, torch.Generator().manual_seed(1))])
    f = qlcw.Fields(0, 1, 1)
    ref = qlcw.encode_section(x, f, chunk=256)
    assert torch.equal(native_qlcw.encode_section(x, f, chunk=256), ref)
    blob = _stream(x.dtype, ref, x.numel())
    assert qlccomm.api._parse(qlccomm.format.ByteSource(blob))[1].shifts[0] == 30
    assert kc.outcome(blob, "native") == kc.outcome(blob, "torch") == ("ok", x.view(torch.uint8).numpy().tobytes())


def test_raw_shifts_only_where_they_save_bytes():
    """The K shift bytes must repay: one float32 chunk with 1 zero low bit in 40 chunks of 256
    saves 32 bytes of raw planes for 40 shift bytes (not written); upcast float16 values, 13
    bits per element, repay them."""
    x = kc.mixed(torch.float32, 256, "c" * 40, 0, seed=3)
    x.view(torch.int32)[256:512] &= ~1
    f = qlcw.Fields(23, 8, 2)
    for impl in (qlcw, native_qlcw):
        assert not impl.encode_section(x, f, chunk=256)[3] & qlcw.FLAG_RAW_SHIFTS
    x[256:512] = x[256:512].half().float()
    assert qlcw.encode_section(x, f, chunk=256)[3] & qlcw.FLAG_RAW_SHIFTS
    assert torch.equal(native_qlcw.encode_section(x, f, chunk=256), qlcw.encode_section(x, f, chunk=256))


def test_corrupt_raw_shifts_fail_alike():
    """A shift past the raw bits, one on an all-zero chunk, a changed shift (the planes'
    length no longer matches), the flag cleared, a version-3 header: FormatError on both
    paths; random corruptions of a shifted stream end alike."""
    x = kc.mixed(torch.float32, 256, "cuzpu", 77, seed=2, tail_kind="u")
    blob = _stream(x.dtype, qlcw.encode_section(x, qlcw.Fields(23, 8, 2), chunk=256), x.numel())
    info = qlccomm.inspect(blob)
    at = info["metadata_bytes"] - info["chunks"]                   # the shifts end the metadata
    good = blob.numpy().tobytes()
    flags_at = Header(CODEC_QLCW, x.dtype, (x.numel(),)).nbytes + 3
    cases = {"past": (at + 1, 25, "raw shift past"), "zero chunk": (at + 2, 1, "raw shift past"),
             "changed": (at + 1, good[at + 1] - 1, "metadata says"), "flag": (flags_at, good[flags_at] & ~16, "metadata says"),
             "version": (4, 3, "needs version 4")}
    for name, (pos, value, match) in cases.items():
        bad = bytearray(good)
        bad[pos] = value
        ref = kc.outcome(bytes(bad), "torch")
        assert ref[0] == "error" and match in ref[1], (name, ref)
        assert kc.outcome(bytes(bad), "native") == ref, name
    rng = np.random.default_rng(11)
    for bad in kc.corruptions(blob, SimpleNamespace(planes_offset=info["metadata_bytes"]), rng, 60):
        assert kc.outcome(bad, "native") == kc.outcome(bad, "torch")


def test_fp32_weights_with_an_fp16_exact_tensor_gain_its_zero_bits():
    """codec="qlc" on float32 weights where one tensor holds float16 values: the stream
    records version 4 and is smaller by about those chunks' 13 zero bits per element."""
    g = torch.Generator().manual_seed(4)
    w = torch.randn(12 * 4096, generator=g) * 0.02
    w[4 * 4096:8 * 4096] = w[4 * 4096:8 * 4096].half().float()
    blob = qlccomm.compress(w)
    info = qlccomm.inspect(blob)
    assert info["codec"] == "qlcw" and info["format_version"] == 4 and info["chunks_shifted"] == 4
    assert info["plane_bytes"]["raw"] == 8 * 4096 * 3 + 4 * 4096 * 11 // 8
    assert torch.equal(qlccomm.decompress(blob).view(torch.uint8), w.view(torch.uint8))
