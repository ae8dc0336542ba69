"""Bit planes (docs/format.md "Bit planes") and the symbol/raw split of every plan."""
import pytest
import torch

from qlccomm import FormatError
from qlccomm.bitpack import pack_bits, packed_nbytes, unpack_bits, unpack_planes, value_dtype
from qlccomm.split import PLANS


@pytest.mark.parametrize("width", range(0, 32))
def test_round_trip_every_width(width):
    g = torch.Generator().manual_seed(width)
    for n in (0, 1, 7, 8, 9, 100, 1001):
        v = torch.randint(0, 1 << width, (n,), generator=g, dtype=torch.int64) if width else torch.zeros(n, dtype=torch.int64)
        packed = pack_bits(v.to(value_dtype(width)), width)
        assert packed.dtype == torch.uint8 and packed.numel() == packed_nbytes(n, width)
        out = unpack_bits(packed, width, n)
        assert out.dtype == value_dtype(width) and torch.equal(out.to(torch.int64), v)
        planes = unpack_planes(packed, width, n)
        assert len(planes) == width // 8 + (1 if width % 8 else 0)


def test_bit_order_is_little_endian():
    assert pack_bits(torch.tensor([1, 2]), 3).tolist() == [0b010001]
    assert pack_bits(torch.tensor([0x5A5, 0x7FF]), 11).tolist() == [0xA5, 0xFF, 0b111101]
    assert pack_bits(torch.tensor([1] * 8, dtype=torch.uint8), 1).tolist() == [0xFF]


def test_wrong_plane_size_raises():
    with pytest.raises(FormatError):
        unpack_bits(torch.zeros(3, dtype=torch.uint8), 3, 9)


@pytest.mark.parametrize("plan,dtype", [("bf16_exp", torch.bfloat16), ("fp16_hi", torch.float16),
                                        ("fp16_exp", torch.float16), ("fp32_exp", torch.float32),
                                        ("byte", torch.float8_e4m3fn), ("byte", torch.int8)])
def test_split_merge_every_bit_pattern(plan, dtype):
    size = torch.empty(0, dtype=dtype).element_size()
    if size == 4:
        bits = torch.randint(0, 256, (4 * 100_000,), dtype=torch.int32, generator=torch.Generator().manual_seed(0))
        bits = bits.to(torch.uint8)
    else:
        bits = torch.arange(1 << (8 * size), dtype=torch.int32).to(torch.int16 if size == 2 else torch.uint8)
        bits = bits.view(torch.uint8)
    x = bits.view(dtype)
    p = PLANS[plan]
    sym, raw = p.split(x)
    assert sym.dtype == torch.uint8 and int(sym.max()) < (1 << p.symbol_bits)
    if p.raw_bits:
        assert int(raw.max()) < (1 << p.raw_bits)
    assert torch.equal(p.merge(sym, raw, dtype).view(torch.uint8), bits)
