"""How much one output tensor can take on a device, and whether a failure was an allocation's.

`decompress` checks a stream's declared size (bytes) against `allocatable_bytes` before
it allocates anything, and turns a failed allocation (`allocation_failed`) into a
MemoryError naming that size, so a hostile stream cannot take the process down.
"""
from __future__ import annotations

import os
from functools import lru_cache

import torch

_OOM_TEXT = ("can't allocate memory", "out of memory", "failed to allocate", "unable to allocate")


def allocation_failed(e: BaseException) -> bool:
    """Whether an exception from a decoder is a failed allocation (torch reports those as
    RuntimeError on the CPU, torch.OutOfMemoryError on accelerators; numpy as MemoryError)."""
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", None)
    if isinstance(e, MemoryError) or (oom is not None and isinstance(e, oom)):
        return True
    text = str(e).lower()
    return any(s in text for s in _OOM_TEXT)


def allocatable_bytes(device: torch.device) -> int | None:
    """The most bytes one output tensor on `device` could take, or None where unknown: on
    the CPU the physical memory, capped by its cgroup's memory limit and by what the
    process's address-space limit leaves; on CUDA devices the device's memory."""
    if device.type == "cpu":
        limits = [_physical_memory_bytes(), _cgroup_memory_bytes()]
        try:
            import resource
            soft = resource.getrlimit(resource.RLIMIT_AS)[0]
            if soft != resource.RLIM_INFINITY and soft > 0:
                limits.append(max(1, soft - _address_space_bytes()))
        except (ImportError, OSError, ValueError, AttributeError):    # no resource module (Windows)
            pass
        known = [v for v in limits if v]
        return min(known) if known else None
    if device.type == "cuda":
        try:
            return int(torch.cuda.get_device_properties(device).total_memory)
        except Exception:                     # noqa: BLE001 - no properties: no early check
            return None
    return None


def _address_space_bytes() -> int:
    """Bytes of address space this process maps now (0 where /proc is not there)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError, AttributeError):
        return 0


@lru_cache(maxsize=1)
def _physical_memory_bytes() -> int | None:
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, OSError, ValueError):
        return None


@lru_cache(maxsize=1)
def _cgroup_memory_bytes() -> int | None:
    """This process's cgroup memory limit in bytes (cgroup v2 memory.max, or v1
    memory.limit_in_bytes), None when there is none or it cannot be read."""
    for path in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        try:
            with open(path) as f:
                text = f.read().strip()
        except OSError:
            continue
        if text.isdigit() and int(text) < (1 << 62):
            return int(text)
        return None
    return None
