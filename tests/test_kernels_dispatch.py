"""qlccomm.kernels: which backend serves which device, QLCCOMM_KERNELS, fallbacks, logging."""
from __future__ import annotations

import logging

import pytest
import torch

from qlccomm import kernels

import kernel_cases as kc


@pytest.fixture
def fresh(monkeypatch):
    """A clean slate: no forced backend, no remembered log lines, imports restorable."""
    monkeypatch.delenv("QLCCOMM_KERNELS", raising=False)
    monkeypatch.setattr(kernels, "_logged", set())
    monkeypatch.setattr(kernels, "_modules", dict(kernels._modules))
    return monkeypatch


def _unavailable(monkeypatch, backend):
    kernels._modules[kernels.FUSED["qlc"][backend]] = ImportError(f"no {backend} here (test)")


def test_auto_choice_per_device(fresh):
    assert kernels.backend_for("cpu") == ("native" if kernels.available("native") else "torch")
    want = "triton" if kernels.available("triton") else "torch"
    assert kernels.backend_for("cuda") == want
    assert kernels.backend_for(torch.device("cuda", 1)) == want
    assert kernels.backend_for("npu:0") == want          # a string: torch.device("npu") needs torch_npu
    assert kernels.backend_for("meta") == "torch"


def test_missing_backends_fall_back_to_torch(fresh):
    _unavailable(fresh, "native")
    _unavailable(fresh, "triton")
    for dev in ("cpu", "cuda", "npu"):
        assert kernels.backend_for(dev) == "torch"
        assert kernels.implementation("qlc", dev) is None


@pytest.mark.parametrize("forced", ["torch", "TORCH", " torch "])
def test_forced_torch(fresh, forced):
    fresh.setenv("QLCCOMM_KERNELS", forced)
    for dev in ("cpu", "cuda", "npu:1"):
        assert kernels.backend_for(dev) == "torch"
        assert kernels.implementation("qlc", dev) is None


def test_forced_native(fresh):
    pytest.importorskip("numba")
    fresh.setenv("QLCCOMM_KERNELS", "native")
    impl = kernels.implementation("qlc", "cpu")
    assert impl.__name__ == "qlccomm.kernels.native_qlc"
    assert callable(impl.encode_section) and callable(impl.decode_section)
    with pytest.raises(RuntimeError, match="CPU tensors only"):
        kernels.implementation("qlc", "cuda")


def test_forced_but_unavailable_is_an_error(fresh):
    _unavailable(fresh, "native")
    fresh.setenv("QLCCOMM_KERNELS", "native")
    assert kernels.backend_for("cpu") == "native"
    with pytest.raises(RuntimeError, match="cannot be imported"):
        kernels.implementation("qlc", "cpu")


def test_forced_triton_on_cpu_needs_the_interpreter(fresh):
    pytest.importorskip("triton")
    fresh.setenv("QLCCOMM_KERNELS", "triton")
    fresh.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(RuntimeError, match="TRITON_INTERPRET=1"):
        kernels.implementation("qlc", "cpu")


def test_bad_value(fresh):
    fresh.setenv("QLCCOMM_KERNELS", "cuda")
    with pytest.raises(ValueError, match="QLCCOMM_KERNELS"):
        kernels.backend_for("cpu")
    fresh.setenv("QLCCOMM_KERNELS", "auto")
    assert kernels.backend_for("meta") == "torch"


def test_codec_without_fused_kernels_runs_on_torch(fresh):
    """A codec a backend does not implement (FUSED) gets the torch path, even when forced."""
    fresh.setitem(kernels.FUSED, "other", {})
    for forced in ("auto", "native", "triton"):
        fresh.setenv("QLCCOMM_KERNELS", forced)
        for dev in ("cpu", "cuda"):
            assert kernels.backend_for(dev, "other") == "torch"
            assert kernels.implementation("other", dev) is None


def test_choice_logged_once_per_device(fresh, caplog):
    with caplog.at_level(logging.DEBUG, logger="qlccomm.kernels"):
        for _ in range(3):
            kernels.backend_for("cpu")
            kernels.backend_for("meta")
        kernels.implementation("qlc", "cpu")
    lines = [r.getMessage() for r in caplog.records if "tensors uses the" in r.getMessage()]
    assert len(lines) == 2, lines
    assert any(line.startswith("qlccomm.kernels: qlc on cpu tensors uses the ") for line in lines)


def test_torch_path_through_the_api(fresh):
    """The API with QLCCOMM_KERNELS=torch is the torch path (qlc.encode_section) itself."""
    import qlccomm
    from qlccomm import qlc
    x = kc.mixed(torch.bfloat16, 4096, "czr", tail=9, seed=2)
    fresh.setenv("QLCCOMM_KERNELS", "torch")
    blob = qlccomm.compress(x)
    sec = qlc.encode_section(x, kc.PLANS["bf16_exp"], None, embed=True)
    assert torch.equal(blob[-sec.numel():], sec)


def test_empty_output_is_an_ordinary_tensor():
    from qlccomm.kernels import common
    for n, dt in ((0, torch.uint8), (5, torch.bfloat16), (9 << 20, torch.float32)):
        t = common.empty_output(n, dt)
        assert t.shape == (n,) and t.dtype == dt and t.is_contiguous() and t.device.type == "cpu"
        t.fill_(1)
        assert bool((t == 1).all())
