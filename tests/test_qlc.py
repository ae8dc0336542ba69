"""QLC round trips, chunk modes, sizes and the API contract (torch path on CPU)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st

import qlccomm
from qlccomm import qlc
from qlccomm.codebook import PREFIX_BITS
from qlccomm.format import FIXED_HEADER_BYTES

CODED = [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2,
         torch.int8, torch.uint8]
RAW_ONLY = [torch.float64, torch.int32, torch.int64, torch.int16, torch.complex64]
ALL = CODED + RAW_ONLY + [torch.bool]


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.dtype == b.dtype and a.shape == b.shape and a.device == b.device
            and torch.equal(a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8)))


def from_bytes(data: bytes, dtype: torch.dtype) -> torch.Tensor:
    size = torch.empty(0, dtype=dtype).element_size()
    data = data[: len(data) // size * size]
    if not data:
        return torch.empty(0, dtype=dtype)
    if dtype == torch.bool:
        return torch.frombuffer(bytearray(data), dtype=torch.uint8).clamp(max=1).to(torch.bool)
    return torch.frombuffer(bytearray(data), dtype=torch.uint8).view(dtype)


def floats_like(dtype, n, seed=0, scale=0.02):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) * scale
    if dtype in (torch.int8, torch.uint8):
        return (x * 3000).round().clamp(-100, 100).to(torch.int32).add(128 if dtype == torch.uint8 else 0).to(dtype)
    if dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
        return (x / x.abs().amax(dim=0, keepdim=True).clamp_min(1e-30) * 400).to(dtype) if n else x.to(dtype)
    return x.to(dtype)


@settings(max_examples=120, deadline=None)
@given(dtype=st.sampled_from(ALL), data=st.binary(min_size=0, max_size=3000))
def test_round_trip_arbitrary_bits(dtype, data):
    """Every bit pattern (NaN payloads, infinities, -0.0, subnormals) survives."""
    t = from_bytes(data, dtype)
    assert same_bits(qlccomm.decompress(qlccomm.compress(t)), t)


@settings(max_examples=60, deadline=None)
@given(dtype=st.sampled_from(CODED), shape=st.lists(st.integers(0, 40), min_size=0, max_size=3),
       seed=st.integers(0, 2**31), codec=st.sampled_from(["qlc", "auto"]))
def test_round_trip_shapes(dtype, shape, seed, codec):
    t = floats_like(dtype, math.prod(shape), seed).reshape(shape)
    blob = qlccomm.compress(t, codec=codec)
    assert blob.dtype == torch.uint8 and blob.dim() == 1
    assert same_bits(qlccomm.decompress(blob), t)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_every_16_bit_pattern(dtype):
    t = torch.arange(-32768, 32768, dtype=torch.int32).to(torch.int16).view(dtype)
    for codebook in (None, "default"):
        assert same_bits(qlccomm.decompress(qlccomm.compress(t, codebook=codebook)), t)


@pytest.mark.parametrize("dtype", CODED + [torch.float8_e4m3fnuz, torch.bool])
def test_every_byte_pattern(dtype):
    t = torch.arange(256, dtype=torch.int32).to(torch.uint8).view(dtype) if dtype != torch.bool \
        else torch.tensor([True, False] * 100)
    assert same_bits(qlccomm.decompress(qlccomm.compress(t.repeat(50))), t.repeat(50))


def test_special_float32_values():
    specials = torch.tensor([0.0, -0.0, float("inf"), float("-inf"), 1e-45, -1e-45, 1e-39, 3.4e38],
                            dtype=torch.float32)
    nan_payloads = torch.tensor([0x7FC00001, 0x7F800001, 0xFFFFFFFF - (1 << 32), 0x7FBFFFFF], dtype=torch.int64)
    t = torch.cat([specials, nan_payloads.to(torch.int32).view(torch.float32), floats_like(torch.float32, 5000)])
    assert same_bits(qlccomm.decompress(qlccomm.compress(t)), t)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn, torch.float32])
def test_several_mib(dtype):
    from qlccomm.datagen import synthetic
    t = synthetic("grad", dtype, (3 << 20) // torch.empty(0, dtype=dtype).element_size() + 123, seed=3)
    blob = qlccomm.compress(t)
    assert blob.numel() < t.numel() * t.element_size()
    assert same_bits(qlccomm.decompress(blob), t)


def test_non_contiguous_and_sliced():
    base = floats_like(torch.bfloat16, 64 * 300).reshape(64, 300)
    for view in (base.t(), base[:, ::3], base[5:40], base.flip(0), base[3, 7]):
        out = qlccomm.decompress(qlccomm.compress(view))
        assert out.is_contiguous() and same_bits(out, view.contiguous())


def test_chunk_modes_all_present():
    """A zero chunk, a coded chunk and a raw chunk in one stream."""
    g = torch.Generator().manual_seed(1)
    coded = floats_like(torch.bfloat16, 4096)
    zero = torch.zeros(4096, dtype=torch.bfloat16)
    noise = torch.randint(0, 65536, (4096,), generator=g, dtype=torch.int32).to(torch.int16).view(torch.bfloat16)
    tail = floats_like(torch.bfloat16, 1000, seed=2)
    t = torch.cat([coded, zero, noise, coded, zero, tail])
    for blob in (qlccomm.compress(t, codebook=qlccomm.fit_codebook(t)), qlccomm.compress(t)):   # QLC, QLCW
        info = qlccomm.inspect(blob)
        assert info["chunks_zero"] == 2 and info["chunks_raw"] == 1 and info["chunks_coded"] == 3
        assert same_bits(qlccomm.decompress(blob), t)
    assert info["codec"] == "qlcw"


def test_all_zero_tensor_costs_almost_nothing():
    t = torch.zeros(1 << 20, dtype=torch.bfloat16)
    blob = qlccomm.compress(t)
    assert blob.numel() < 6000          # header, codebook, 5 bytes per 4096-element chunk
    assert same_bits(qlccomm.decompress(blob), t)


@pytest.mark.parametrize("dtype", CODED)
def test_incompressible_is_stored_raw(dtype):
    g = torch.Generator().manual_seed(7)
    n = 10_000
    t = torch.randint(0, 256, (n * torch.empty(0, dtype=dtype).element_size(),), generator=g,
                      dtype=torch.int32).to(torch.uint8).view(dtype)
    blob = qlccomm.compress(t)
    header = FIXED_HEADER_BYTES + 8 * t.dim()
    assert blob.numel() <= t.numel() * t.element_size() + header
    assert same_bits(qlccomm.decompress(blob), t)


def test_never_expands_beyond_header_small_inputs():
    for n in range(0, 40):
        for dtype in CODED:
            t = floats_like(dtype, n, seed=n)
            blob = qlccomm.compress(t)
            assert blob.numel() <= n * t.element_size() + FIXED_HEADER_BYTES + 8


def test_coded_size_matches_codebook_expectation():
    """Plane sizes follow exactly from the codebook's code lengths; metadata is all the rest."""
    from qlccomm.datagen import synthetic
    t = synthetic("weight", torch.bfloat16, 1 << 20, seed=4)
    cb = qlccomm.fit_codebook(t)
    blob = qlccomm.compress(t, codebook=cb)
    info = qlccomm.inspect(blob)
    assert info["chunks_coded"] == info["chunks"]
    lengths = torch.as_tensor(cb.code_lengths())
    sym = (t.view(torch.int16).to(torch.int32) >> 7) & 0xFF
    per_chunk_bits = lengths[sym.long()].view(-1, 4096).sum(1) - PREFIX_BITS * 4096
    suffix_bytes = int(((per_chunk_bits + 7) // 8).sum())
    planes = info["plane_bytes"]
    assert planes["suffix"] == suffix_bytes
    assert planes["prefix"] == t.numel() * 3 // 8 and planes["raw"] == t.numel()
    coded_bits = cb.expected_bits(t) * t.numel()
    assert abs((planes["prefix"] + planes["suffix"]) * 8 - coded_bits) <= 8 * info["chunks"]
    assert info["compressed_bytes"] == info["metadata_bytes"] + sum(planes.values())


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn, torch.float16, torch.float32])
def test_metadata_below_one_percent_from_1_mib(dtype):
    from qlccomm.datagen import synthetic
    t = synthetic("grad", dtype, (1 << 20) // torch.empty(0, dtype=dtype).element_size(), seed=5)
    info = qlccomm.inspect(qlccomm.compress(t))
    assert info["codec"] in ("qlc", "qlcw")         # adaptive: QLCW where its pair code is smaller
    assert info["metadata_bytes"] <= 0.01 * info["compressed_bytes"]


def test_inspect_fields():
    t = floats_like(torch.bfloat16, 10_000).reshape(100, 100)
    info = qlccomm.inspect(qlccomm.compress(t))
    for key in ("codec", "dtype", "shape", "raw_bytes", "compressed_bytes", "ratio", "plan", "codebook",
                "chunks", "plane_bytes"):
        assert key in info
    assert info["shape"] == [100, 100] and info["raw_bytes"] == 20_000 and info["dtype"] == "bfloat16"


def test_decompress_accepts_bytes_and_device():
    t = floats_like(torch.float16, 5000)
    blob = qlccomm.compress(t)
    raw = blob.numpy().tobytes()
    for src in (raw, bytearray(raw), memoryview(raw)):
        assert same_bits(qlccomm.decompress(src), t)
    assert qlccomm.decompress(raw, device="cpu").device.type == "cpu"


def test_raw_codec_and_unknown_codec():
    t = floats_like(torch.bfloat16, 1000)
    assert qlccomm.inspect(qlccomm.compress(t, codec="raw"))["codec"] == "raw"
    with pytest.raises(ValueError):
        qlccomm.compress(t, codec="lzma")
    with pytest.raises(TypeError):
        qlccomm.compress(np.zeros(3))


def test_digest_referenced_codebook():
    t = floats_like(torch.bfloat16, 50_000)
    cb = qlccomm.fit_codebook(t)
    referenced = qlccomm.compress(t, codebook=cb)
    plan = cb.plan_obj
    assert (qlc.encode_section(t, plan, cb).numel()          # no embedded table
            < qlc.encode_section(t, plan, cb, embed=True).numel())
    assert qlccomm.inspect(referenced)["codebook"] == cb.digest
    assert qlccomm.inspect(referenced)["codebook_embedded"] is False
    assert same_bits(qlccomm.decompress(referenced), t)
    with pytest.raises(ValueError):
        qlccomm.compress(t.float(), codebook=cb)          # codebook of another dtype


def test_unknown_codebook_digest_raises(monkeypatch):
    import qlccomm.codebook as cbmod
    t = floats_like(torch.bfloat16, 5000)
    cb = qlccomm.fit_codebook(t)
    blob = qlccomm.compress(t, codebook=cb)
    monkeypatch.setattr(cbmod, "_REGISTRY", {})              # a process that never saw this codebook
    with pytest.raises(qlccomm.CodebookError):
        qlccomm.decompress(blob)
    assert same_bits(qlccomm.decompress(blob, codebook=cb), t)


def test_codebook_path_and_default(tmp_path):
    t = floats_like(torch.float8_e4m3fn, 20_000)
    cb = qlccomm.fit_codebook(t)
    path = tmp_path / "cb.json"
    cb.save(path)
    assert same_bits(qlccomm.decompress(qlccomm.compress(t, codebook=str(path))), t)
    assert same_bits(qlccomm.decompress(qlccomm.compress(t, codebook="default")), t)
