"""Fused codec kernels, installed as ``qlccomm.kernels`` (the folder is ``kernels/``).

``implementation(codec, device)`` returns an object with the same
``encode_section`` / ``decode_section`` functions as ``qlccomm.qlc`` /
``qlccomm.enec`` (same signatures, same bytes), or None where the torch path
serves that device.
"""
from __future__ import annotations

import torch


def backend_for(device: torch.device | str) -> str:
    """The kernel backend used for tensors on `device`: "torch", "triton" or "native"."""
    return "torch"


def implementation(codec: str, device: torch.device | str):
    """Fused implementation of `codec` ("qlc" or "enec") on `device`, or None for the torch path."""
    return None
