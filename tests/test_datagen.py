"""The synthetic generator: determinism, the documented shape of each kind, and the shipped
default codebooks being exactly what it fits."""
from importlib import resources

import pytest
import torch

from qlccomm.datagen import ACTIVATION_CHANNELS, KINDS, synthetic, write_default_codebooks


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn,
                                   torch.float8_e5m2, torch.int8, torch.uint8])
def test_deterministic_per_seed(kind, dtype):
    a, b, c = (synthetic(kind, dtype, 10_001, seed=s) for s in (5, 5, 6))
    assert a.dtype == dtype and a.shape == (10_001,)
    assert torch.equal(a.view(torch.uint8), b.view(torch.uint8))
    assert not torch.equal(a.view(torch.uint8), c.view(torch.uint8))


def test_activation_shape():
    """Token rows of ACTIVATION_CHANNELS channels: a quarter of them padding (exactly zero),
    per-channel means and scales with a few outlier channels, magnitudes around 2^-2."""
    a = synthetic("activation", torch.float32, 4096 * ACTIVATION_CHANNELS, seed=0).view(-1, ACTIVATION_CHANNELS)
    padding = a.eq(0).all(1)
    assert 0.22 < padding.float().mean() < 0.28
    tokens = a[~padding]
    assert tokens.ne(0).all()
    spread = tokens.std(0)
    outliers = (spread > 4 * spread.median()).float().mean()     # 1% of the channels, scale x8
    assert 0.003 < outliers < 0.03
    exp = torch.frexp(tokens)[1].flatten()
    assert torch.mode(exp).values.item() in (-2, -1, 0)          # |x| mostly in [2^-3, 2^0)
    kurtosis = (((tokens - tokens.mean(0)) / spread) ** 4).mean()
    assert kurtosis > 4                                         # heavier tails than a normal (3)


def test_unknown_kind():
    with pytest.raises(ValueError, match="activation"):
        synthetic("optimizer", torch.bfloat16, 10)


def test_shipped_codebooks_are_the_generators(tmp_path):
    """`python -m qlccomm.datagen --write-codebooks` reproduces qlccomm/codebooks/*.json byte for byte."""
    shipped = resources.files("qlccomm") / "codebooks"
    for path in write_default_codebooks(tmp_path):
        assert path.read_bytes() == (shipped / path.name).read_bytes(), path.name
