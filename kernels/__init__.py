"""Fused codec kernels, installed as ``qlccomm.kernels`` (the folder is ``kernels/``).

``implementation(codec, device)`` returns an object with the same
``encode_section`` / ``decode_section`` functions as ``qlccomm.qlc`` (same
signatures, same bytes, same errors), or None where the torch path serves that
device.  The choice is made here and only here:

    cuda  -> Triton                          (torch path if triton cannot be imported)
    npu   -> Triton through triton-ascend    (torch path if triton cannot be imported)
    cpu   -> native numba kernels            (torch path if numba cannot be imported)
    other -> torch path

``QLCCOMM_KERNELS=torch|triton|native`` forces one backend for every device
(``auto`` or unset: the table above).  A forced backend that cannot serve the
device raises RuntimeError rather than silently measuring something else; Triton
on CPU tensors runs only under ``TRITON_INTERPRET=1`` (how the tests run it).

Which codecs each backend implements is the FUSED table; a codec a backend does
not implement runs on the torch path there (forced or not).  Both codecs have
Triton (triton_qlc, triton_enec, triton_qlcw) and native (native_qlc, native_enec,
native_qlcw) kernels.

Two notices, once per process each: a `TorchPathWarning` the first time CPU tensors
fall back to the torch path because the native kernels cannot be imported (numba
missing or broken; not when QLCCOMM_KERNELS chose the backend), and a log line
(WARNING, logger ``qlccomm.kernels``) when the native kernels are first imported
with numba's on-disk cache empty, i.e. before numba compiles them.
"""
from __future__ import annotations

import importlib
import logging
import os
import sys
import warnings

import torch

log = logging.getLogger("qlccomm.kernels")

BACKENDS = ("torch", "triton", "native")
ENV = "QLCCOMM_KERNELS"

# codec -> backend -> module (in this package) with encode_section / decode_section
FUSED: dict[str, dict[str, str]] = {
    "qlc": {"triton": "triton_qlc", "native": "native_qlc"},
    "enec": {"triton": "triton_enec", "native": "native_enec"},
    "qlcw": {"triton": "triton_qlcw", "native": "native_qlcw"},
}

_modules: dict[str, object] = {}        # module name -> imported module, or the import error
_logged: set[tuple] = set()
_notified: set[str] = set()             # notices already given in this process: "torch-cpu", "compile"

COMPILE_NOTICE = ("qlccomm: compiling the CPU kernels (numba) once, a minute or two; cached afterwards "
                  "(`qlccomm warmup` does it ahead of time)")


class TorchPathWarning(RuntimeWarning):
    """CPU tensors run on the torch reference path because the native kernels cannot be imported."""


def _caller_level() -> int:
    """warnings.warn's stacklevel for the first frame outside qlccomm and hccl_hooks (the user's call)."""
    level, frame = 1, sys._getframe(1)
    while frame is not None and frame.f_globals.get("__name__", "").split(".")[0] in ("qlccomm", "hccl_hooks"):
        level, frame = level + 1, frame.f_back
    return level


def _cache_is_cold(mod) -> bool:
    """Whether numba's on-disk cache holds nothing for any kernel of `mod` (so its first calls
    compile).  False where that cannot be told (caching off, numba internals changed)."""
    try:
        seen = False
        for obj in vars(mod).values():
            for disp in (obj, getattr(obj, "parallel", None), getattr(obj, "serial", None)):
                cache_file = getattr(getattr(disp, "_cache", None), "_cache_file", None)
                if cache_file is None or getattr(disp, "py_func", None) is None:
                    continue
                if getattr(disp.py_func, "__module__", None) != mod.__name__:
                    continue                    # a kernel imported from another module (common, native_qlc)
                seen = True
                if cache_file._load_index():   # {} when absent, stale or of another numba version
                    return False
        return seen
    except Exception:                           # pragma: no cover - depends on numba's internals
        return False


def _load(backend: str, codec: str = "qlc"):
    """The backend's module for `codec`, imported on first use; the exception if it
    cannot be; None if the backend does not implement the codec."""
    name = FUSED.get(codec, {}).get(backend)
    if name is None:
        return None
    if name not in _modules:
        try:
            _modules[name] = importlib.import_module(f".{name}", __name__)
        except Exception as e:   # ImportError, or a broken install (OSError, RuntimeError, ...)
            log.debug("qlccomm.kernels: %s (%s backend) unavailable: %r", name, backend, e)
            _modules[name] = e
        else:
            if backend == "native" and "compile" not in _notified and _cache_is_cold(_modules[name]):
                _notified.add("compile")
                log.warning(COMPILE_NOTICE)
    return _modules[name]


def available(backend: str, codec: str = "qlc") -> bool:
    """Whether `backend` implements `codec` and can be imported here ("torch" always can)."""
    if backend == "torch":
        return True
    mod = _load(backend, codec)
    return mod is not None and not isinstance(mod, BaseException)


def _forced() -> str | None:
    v = os.environ.get(ENV, "").strip().lower()
    if v in ("", "auto"):
        return None
    if v not in BACKENDS:
        raise ValueError(f"{ENV}={v!r}: choose one of {', '.join(BACKENDS)} or auto")
    return v


def _device_type(device) -> str:
    if isinstance(device, str):          # "npu:0" is not a torch.device without torch_npu
        return device.split(":", 1)[0]
    return torch.device(device).type


def backend_for(device: torch.device | str, codec: str = "qlc") -> str:
    """The kernel backend that runs `codec` on tensors on `device`: "torch", "triton" or "native"."""
    dtype = _device_type(device)
    forced = _forced()
    if forced is not None:
        backend = forced if forced == "torch" or FUSED.get(codec, {}).get(forced) else "torch"
    elif dtype in ("cuda", "npu"):
        backend = "triton" if available("triton", codec) else "torch"
    elif dtype == "cpu":
        backend = "native" if available("native", codec) else "torch"
        if backend == "torch" and FUSED.get(codec, {}).get("native") and "torch-cpu" not in _notified:
            _notified.add("torch-cpu")
            warnings.warn(
                f"qlccomm: the native CPU kernels cannot be imported ({_load('native', codec)!r}); "
                f"CPU tensors use the torch reference path, several times slower.  Install numba "
                f"(`pip install numba`, a dependency of qlccomm) or set {ENV}=torch to choose that path.",
                TorchPathWarning, stacklevel=_caller_level())
    else:
        backend = "torch"
    key = (str(device), codec, backend)
    if key not in _logged:
        _logged.add(key)
        log.debug("qlccomm.kernels: %s on %s tensors uses the %s backend%s", codec, device, backend,
                  f" (forced by {ENV})" if forced else "")
    return backend


def implementation(codec: str, device: torch.device | str):
    """Fused implementation of `codec` ("qlc", "qlcw" or "enec") on `device`, or None for the torch path."""
    backend = backend_for(device, codec)
    if backend == "torch":
        return None
    mod = _load(backend, codec)
    if isinstance(mod, BaseException):
        raise RuntimeError(f"{ENV}={backend}, but that backend cannot be imported: {mod!r}") from mod
    dtype = _device_type(device)
    if backend == "native" and dtype != "cpu":
        raise RuntimeError(f"{ENV}=native serves CPU tensors only, not {device}")
    if backend == "triton" and dtype == "cpu" and os.environ.get("TRITON_INTERPRET") != "1":
        raise RuntimeError(f"{ENV}=triton on CPU tensors needs TRITON_INTERPRET=1 (set before triton is imported)")
    return mod
