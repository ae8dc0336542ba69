"""FSDP2: compressed parameter all-gather (and gradient reduce-scatter) via FSDPModule's custom comms.

    model = fully_shard(model)
    compress_fsdp_all_gather(model, codec="auto")      # weights: QLC on CPU, ENEC on accelerators
    compress_fsdp_reduce_scatter(model, codec="qlc")   # optional: gradients

Needs torch >= 2.9 (`FSDPModule.set_custom_all_gather`).  The all-gather is
lossless, so training is bit-identical to plain FSDP2.  The reduce-scatter sums in
rank order in float32 (like qlccomm.all_reduce), which differs from the backend's
own reduce-scatter order: compare it with `compress_fsdp_reduce_scatter(m, codec="raw")`.
"""
import torch

import qlccomm
from qlccomm.collectives import WireStats

from .ddp import QLCStats


def _fsdp_api(what):
    try:
        from torch.distributed.fsdp import FSDPModule
        from torch.distributed.fsdp._fully_shard._fsdp_api import AllGather, ReduceScatter
    except ImportError:
        FSDPModule = AllGather = ReduceScatter = None
    if FSDPModule is None or not hasattr(FSDPModule, "set_custom_all_gather"):
        raise RuntimeError(f"{what} needs torch >= 2.9 (FSDPModule.set_custom_all_gather / "
                           f"set_custom_reduce_scatter); this is torch {torch.__version__}")
    return FSDPModule, AllGather, ReduceScatter


def _fsdp_modules(module, FSDPModule, what):
    mods = [m for m in module.modules() if isinstance(m, FSDPModule)]
    if not mods:
        raise ValueError(f"{what}: {type(module).__name__} holds no fully_shard module; call fully_shard first")
    return mods


def _check_codec(codec):
    if codec == "enec":
        try:
            qlccomm.compress(torch.zeros(4, dtype=torch.bfloat16), codec="enec")
        except ImportError as e:
            raise ImportError(f"the ENEC codec is not available ({e}); use codec='qlc'") from e


def _alloc(size, dtype, device):
    return torch.empty(tuple(int(s) for s in size), dtype=dtype, device=device)


def compress_fsdp_all_gather(module, codec="auto", *, codebook=None, min_compress_bytes=None, **options):
    """Install a lossless compressed all-gather on every fully_shard module in `module`.

    `options` go to every `qlccomm.all_gather_into_tensor` (compress=, link_gbps=, ...).
    Returns a QLCStats that records each all-gather (bytes before/after coding).

    Example::
        >>> model = fully_shard(model)
        >>> stats = compress_fsdp_all_gather(model)
    """
    FSDPModule, AllGather, _ = _fsdp_api("compress_fsdp_all_gather")
    _check_codec(codec)
    stats = QLCStats()

    class QLCAllGather(AllGather):
        """qlccomm.all_gather_into_tensor as an FSDP2 AllGather (synchronous: returns None)."""

        def allocate(self, size, *, dtype, device):
            return _alloc(size, dtype, device)

        def __call__(self, output_tensor, input_tensor, group, async_op=False):
            ws = WireStats()
            qlccomm.all_gather_into_tensor(output_tensor, input_tensor, group=group, codec=codec,
                                           codebook=codebook, min_compress_bytes=min_compress_bytes, stats=ws,
                                           **options)
            stats.record(0, ws)
            return None  # FSDP waits only on dist.Work handles; the data is already in place

    comm = QLCAllGather()
    for m in _fsdp_modules(module, FSDPModule, "compress_fsdp_all_gather"):
        m.set_custom_all_gather(comm)
    return stats


def compress_fsdp_reduce_scatter(module, codec="qlc", *, codebook=None, min_compress_bytes=None, **options):
    """Install a lossless compressed gradient reduce-scatter on every fully_shard module.

    Coded gradients are summed in rank order in float32 (so are uncoded ones with
    deterministic=True; `options` go to every `qlccomm.reduce_scatter_tensor`).
    ReduceOp.PREMUL_SUM (a gradient divide factor)
    is not supported: leave the factor unset or call
    `module.set_force_sum_reduction_for_comms(True)`.  Returns a QLCStats.
    """
    FSDPModule, _, ReduceScatter = _fsdp_api("compress_fsdp_reduce_scatter")
    _check_codec(codec)
    stats = QLCStats()

    class QLCReduceScatter(ReduceScatter):
        """qlccomm.reduce_scatter_tensor as an FSDP2 ReduceScatter (synchronous)."""

        def allocate(self, size, *, dtype, device):
            return _alloc(size, dtype, device)

        def __call__(self, output_tensor, input_tensor, group, op, async_op=False):
            ws = WireStats()
            qlccomm.reduce_scatter_tensor(output_tensor, input_tensor, op=op, group=group, codec=codec,
                                          codebook=codebook, min_compress_bytes=min_compress_bytes, stats=ws,
                                          **options)
            stats.record(0, ws)
            return None

    comm = QLCReduceScatter()
    for m in _fsdp_modules(module, FSDPModule, "compress_fsdp_reduce_scatter"):
        m.set_custom_reduce_scatter(comm)
    return stats
