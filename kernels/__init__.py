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
Triton (triton_qlc, triton_enec) and native (native_qlc, native_enec) kernels.
"""
from __future__ import annotations

import importlib
import logging
import os

import torch

log = logging.getLogger("qlccomm.kernels")

BACKENDS = ("torch", "triton", "native")
ENV = "QLCCOMM_KERNELS"

# codec -> backend -> module (in this package) with encode_section / decode_section
FUSED: dict[str, dict[str, str]] = {
    "qlc": {"triton": "triton_qlc", "native": "native_qlc"},
    "enec": {"triton": "triton_enec", "native": "native_enec"},
}

_modules: dict[str, object] = {}        # module name -> imported module, or the import error
_logged: set[tuple] = set()


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
    else:
        backend = "torch"
    key = (str(device), codec, backend)
    if key not in _logged:
        _logged.add(key)
        log.debug("qlccomm.kernels: %s on %s tensors uses the %s backend%s", codec, device, backend,
                  f" (forced by {ENV})" if forced else "")
    return backend


def implementation(codec: str, device: torch.device | str):
    """Fused implementation of `codec` ("qlc" or "enec") on `device`, or None for the torch path."""
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
