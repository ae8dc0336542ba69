"""qlccomm.kernels: which backend serves which device, QLCCOMM_KERNELS, fallbacks, logging."""
from __future__ import annotations

import logging

import pytest
import torch

from qlccomm import kernels

import kernel_cases as kc


@pytest.fixture
def fresh(monkeypatch):
    """A clean slate: no forced backend, no remembered log lines or notices, imports restorable."""
    monkeypatch.delenv("QLCCOMM_KERNELS", raising=False)
    monkeypatch.setattr(kernels, "_logged", set())
    monkeypatch.setattr(kernels, "_notified", set())
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
    with pytest.warns(kernels.TorchPathWarning):
        for dev in ("cpu", "cuda", "npu"):
            assert kernels.backend_for(dev) == "torch"
            assert kernels.implementation("qlc", dev) is None


def test_cpu_fallback_to_torch_warns_once(fresh):
    """Without the native kernels, the first CPU choice warns (naming the import error and
    the fix); later choices, other codecs and other devices do not warn again."""
    _unavailable(fresh, "native")
    _unavailable(fresh, "triton")
    kernels._modules[kernels.FUSED["enec"]["native"]] = ImportError("no native enec here (test)")
    with pytest.warns(kernels.TorchPathWarning) as record:
        for _ in range(3):
            for codec in ("qlc", "enec"):
                assert kernels.backend_for("cpu", codec) == "torch"
                assert kernels.implementation(codec, "cpu") is None
            assert kernels.backend_for("cuda") == "torch"
    assert len(record) == 1
    msg = str(record[0].message)
    assert "torch reference path" in msg and "no native here (test)" in msg and "numba" in msg


def test_no_fallback_warning_when_chosen_or_not_cpu(fresh, recwarn):
    """No warning where the torch path is what was asked for (QLCCOMM_KERNELS=torch), where
    CPU has no fused kernels for the codec, or on devices other than CPU."""
    _unavailable(fresh, "native")
    _unavailable(fresh, "triton")
    fresh.setitem(kernels.FUSED, "other", {})
    assert kernels.backend_for("cpu", "other") == "torch"
    assert kernels.backend_for("meta") == "torch"
    assert kernels.backend_for("cuda") == "torch"
    fresh.setenv("QLCCOMM_KERNELS", "torch")
    assert kernels.backend_for("cpu") == "torch"
    assert not [w for w in recwarn if issubclass(w.category, kernels.TorchPathWarning)]


def test_no_fallback_warning_with_native_kernels(fresh, recwarn):
    pytest.importorskip("numba")
    assert kernels.backend_for("cpu") == "native"
    assert kernels.backend_for("cpu", "enec") == "native"
    assert not [w for w in recwarn if issubclass(w.category, kernels.TorchPathWarning)]


def _compile_notices(caplog):
    return [r for r in caplog.records if r.getMessage() == kernels.COMPILE_NOTICE]


def test_compile_notice_once_when_the_cache_is_cold(fresh, caplog):
    """Importing the native kernels with numba's cache empty logs the one-line notice (WARNING),
    once per process; with the cache warm, nothing."""
    pytest.importorskip("numba")
    for name in ("native_qlc", "native_enec"):
        fresh.delitem(kernels._modules, name, raising=False)
    fresh.setattr(kernels, "_cache_is_cold", lambda mod: True)
    with caplog.at_level(logging.WARNING, logger="qlccomm.kernels"):
        assert kernels.available("native", "qlc") and kernels.available("native", "enec")
        kernels.implementation("qlc", "cpu")
    notices = _compile_notices(caplog)
    assert len(notices) == 1 and notices[0].levelno == logging.WARNING
    assert "\n" not in kernels.COMPILE_NOTICE and "once" in kernels.COMPILE_NOTICE


def test_no_compile_notice_when_the_cache_is_warm(fresh, caplog):
    pytest.importorskip("numba")
    for name in ("native_qlc", "native_enec"):
        fresh.delitem(kernels._modules, name, raising=False)
    fresh.setattr(kernels, "_cache_is_cold", lambda mod: False)
    with caplog.at_level(logging.WARNING, logger="qlccomm.kernels"):
        assert kernels.available("native", "qlc") and kernels.available("native", "enec")
    assert not _compile_notices(caplog)


def test_cache_is_cold_reads_numba_index(fresh, tmp_path):
    """_cache_is_cold: a module whose kernels have an index on disk is warm; one with no index
    (a fresh cache directory) is cold; a module without numba kernels is not 'cold'."""
    pytest.importorskip("numba")
    import importlib.util
    import types
    src = tmp_path / "qlccomm_cold_probe.py"
    src.write_text("from numba import njit\n\n@njit(cache=True)\ndef f(x):\n    return x + 1\n")
    spec = importlib.util.spec_from_file_location("qlccomm_cold_probe", src)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    assert kernels._cache_is_cold(mod)
    assert mod.f(1) == 2                 # compiles and writes the index next to the source
    assert not kernels._cache_is_cold(mod)
    assert not kernels._cache_is_cold(types.ModuleType("empty"))


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
