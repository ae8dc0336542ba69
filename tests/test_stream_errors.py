"""Corrupt, truncated and foreign streams raise qlccomm.FormatError: never a crash, hang or huge allocation."""
import struct

import pytest
import torch
from hypothesis import HealthCheck, given, settings, strategies as st

import qlccomm
from qlccomm.format import CRC_OFFSET, FIXED_HEADER_BYTES, MAGIC, parse_header


def sample_streams():
    g = torch.Generator().manual_seed(11)
    bf = (torch.randn(9000, generator=g) * 0.02).to(torch.bfloat16)
    bf[4096:8192] = 0                                               # a zero chunk
    e4 = (torch.randn(5000, generator=g) * 50).to(torch.float8_e4m3fn)
    f16 = (torch.randn(3000, generator=g)).to(torch.float16)
    f32 = torch.randn(2000, generator=g)
    cb = qlccomm.fit_codebook(e4)
    return {
        "bf16": qlccomm.compress(bf).numpy().tobytes(),
        "e4m3_digest": qlccomm.compress(e4, codebook=cb).numpy().tobytes(),
        "fp16": qlccomm.compress(f16).numpy().tobytes(),
        "fp32": qlccomm.compress(f32).numpy().tobytes(),
        "raw": qlccomm.compress(torch.arange(100, dtype=torch.int64)).numpy().tobytes(),
    }


STREAMS = sample_streams()


def decode_or_format_error(data: bytes, **kw):
    try:
        return qlccomm.decompress(data, **kw)
    except qlccomm.FormatError:
        return None


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_every_truncation_raises(name):
    data = STREAMS[name]
    for cut in range(len(data)):
        with pytest.raises(qlccomm.FormatError):
            qlccomm.decompress(data[:cut])


@pytest.mark.parametrize("name", sorted(STREAMS))
def test_trailing_bytes_raise(name):
    with pytest.raises(qlccomm.FormatError):
        qlccomm.decompress(STREAMS[name] + b"\0")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(name=st.sampled_from(sorted(STREAMS)), positions=st.lists(st.integers(0, 10**9), min_size=1, max_size=4),
       bits=st.lists(st.integers(0, 7), min_size=4, max_size=4))
def test_bit_flips_raise_format_error_or_decode(name, positions, bits):
    """Without a checksum a flipped mantissa bit is undetectable; anything else must be FormatError."""
    data = bytearray(STREAMS[name])
    for p, b in zip(positions, bits):
        data[p % len(data)] ^= 1 << b
    out = decode_or_format_error(bytes(data))
    if out is not None:
        assert out.numel() * out.element_size() < 10**6


@pytest.mark.parametrize("name", ["bf16", "fp16", "e4m3"])
def test_checksum_detects_every_single_bit_flip(name):
    g = torch.Generator().manual_seed(5)
    t = {"bf16": (torch.randn(700, generator=g) * 0.02).to(torch.bfloat16),
         "fp16": torch.randn(500, generator=g).to(torch.float16),
         "e4m3": (torch.randn(900, generator=g) * 30).to(torch.float8_e4m3fn)}[name]
    blob = qlccomm.compress(t, checksum=True)
    data = blob.numpy().tobytes()
    assert qlccomm.inspect(data)["checksum"] is True
    assert torch.equal(qlccomm.decompress(data).view(torch.uint8), t.view(torch.uint8))
    for i in range(len(data) * 8):
        flipped = bytearray(data)
        flipped[i // 8] ^= 1 << (i % 8)
        with pytest.raises(qlccomm.FormatError):
            qlccomm.decompress(bytes(flipped))


@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=600), magic=st.booleans())
def test_random_streams(data, magic):
    if magic:
        data = MAGIC + bytes([1]) + data
    with pytest.raises(qlccomm.FormatError):
        qlccomm.decompress(data)


def _header(codec, dtype_code, numel, shape, flags=0):
    return MAGIC + struct.pack("<BBBBQIB", 1, codec, dtype_code, flags, numel, 0, len(shape)) + \
        struct.pack(f"<{len(shape)}Q", *shape)


def test_huge_declared_sizes_are_refused_without_allocating():
    # raw stream claiming 2^40 float32 elements in 21 + 8 bytes
    with pytest.raises(qlccomm.FormatError):
        qlccomm.decompress(_header(0, 10, 1 << 40, (1 << 40,)))
    # QLC stream claiming 2^40 elements: its chunk table would need 1.3 GB; the stream has a few bytes
    body = bytes([1, 1]) + bytes(264) + struct.pack("<II", 4096, (1 << 40) // 4096)
    with pytest.raises(qlccomm.FormatError):
        qlccomm.decompress(_header(1, 8, 1 << 40, (1 << 40,)) + body)
    # shape and element count disagree
    with pytest.raises(qlccomm.FormatError):
        qlccomm.decompress(_header(0, 1, 10, (3, 3)) + bytes(10))
    # element count past the limit
    with pytest.raises(qlccomm.FormatError):
        qlccomm.decompress(_header(0, 1, 1 << 63, (1 << 63,)))


def test_max_output_bytes():
    t = torch.zeros(1 << 16, dtype=torch.bfloat16)
    blob = qlccomm.compress(t)
    with pytest.raises(qlccomm.FormatError):
        qlccomm.decompress(blob, max_output_bytes=1000)
    assert qlccomm.decompress(blob, max_output_bytes=1 << 17).numel() == 1 << 16


def test_foreign_version_flags_and_codes():
    good = bytearray(STREAMS["bf16"])
    for offset, value in ((4, 0), (4, 5), (5, 9), (5, 3), (6, 200), (7, 0x80)):   # (5, 3): codec 3 needs version 2
        bad = bytearray(good)
        bad[offset] = value
        with pytest.raises(qlccomm.FormatError):
            qlccomm.decompress(bytes(bad))
    bad = bytearray(good)
    bad[CRC_OFFSET] = 1                                            # CRC value without the CRC flag
    with pytest.raises(qlccomm.FormatError):
        qlccomm.decompress(bytes(bad))


def test_wrong_input_types():
    with pytest.raises(TypeError):
        qlccomm.decompress(12345)
    with pytest.raises(qlccomm.FormatError):
        qlccomm.decompress(torch.zeros(10, dtype=torch.int32))
    assert issubclass(qlccomm.FormatError, ValueError)
    assert issubclass(qlccomm.CodebookError, qlccomm.FormatError)
    assert FIXED_HEADER_BYTES == 21


def _refused(data: bytes):
    """The header parser and decompress both raise FormatError for `data`."""
    with pytest.raises(qlccomm.FormatError):
        parse_header(data)
    with pytest.raises(qlccomm.FormatError):
        qlccomm.decompress(data)


@pytest.mark.parametrize("codec", [0, 1, 2])
@pytest.mark.parametrize("shape", [(1 << 63, 0), (0, (1 << 64) - 1), (3, 0, 1 << 63)])
def test_shape_dimension_past_int64_raises(codec, shape):
    """A dimension torch cannot take as an int64 (the element count, 0, agrees)."""
    _refused(_header(codec, 10, 0, shape))


@pytest.mark.parametrize("codec", [0, 1, 2])
@pytest.mark.parametrize("shape", [(1 << 32, 1 << 32, 0), (1 << 62, 4, 0), (2, 1 << 62, 3, 0)])
def test_shape_product_overflow_raises(codec, shape):
    """Dimensions whose product overflows 64 bits before a zero dimension (element count 0)."""
    _refused(_header(codec, 10, 0, shape))


@pytest.mark.parametrize("codec", [0, 1, 2])
@pytest.mark.parametrize("shape", [(3, 0, 1 << 62, 2), (0, 1 << 31, 1 << 31, 2),
                                   (4294983680, 0, 903, 144396663052797697, 795458214266537220, 1374179596971150604,
                                    1952900979675763988, 2531622362380377372, 3110343745084990756,
                                    3689065127789604140, 4267786510494217524, 4846507893198830908,
                                    5425229275903444292, 6003950658608057676, 6582672041312671060,
                                    7161393424017284444)])
def test_empty_shape_whose_strides_overflow_raises(codec, shape):
    """Empty shapes whose product fits but whose strides do not (torch: "Stride calculation
    overflowed"); the last is the header of a spliced stream the fuzzer found."""
    _refused(_header(codec, 10, 0, shape))


@pytest.mark.parametrize("numel, shape", [(10, (3, 3)), (0, (5,)), (5, (5, 0)), (2, ()), (0, ()), (1 << 40, (1 << 20,))])
def test_shape_disagreeing_with_element_count_raises(numel, shape):
    _refused(_header(0, 1, numel, shape) + bytes(min(numel, 16)))


@pytest.mark.parametrize("shape", [(1 << 62, 2, 0), (0, (1 << 63) - 1), (5, 0, 7), (0,), (0, 1 << 40, 1 << 30)])
def test_empty_tensors_of_large_shapes_round_trip(shape):
    """Shapes torch can hold stay accepted, however large their non-zero dimensions."""
    t = torch.empty(0, dtype=torch.bfloat16).reshape(shape)
    for codec in ("qlc", "enec", "raw"):
        blob = qlccomm.compress(t, codec=codec)
        assert parse_header(blob.numpy().tobytes()).shape == shape
        out = qlccomm.decompress(blob)
        assert out.shape == shape and out.dtype == torch.bfloat16
