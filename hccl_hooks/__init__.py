"""hccl_hooks: register qlccomm's lossless compression with DDP, FSDP2 and start-up broadcasts.

    from hccl_hooks import QLCState, qlc_allreduce_hook, init_process_group
    init_process_group()                              # hccl on NPU, else nccl on CUDA, else gloo
    ddp.register_comm_hook(QLCState(), qlc_allreduce_hook)

The same code runs on NPU (HCCL via torch_npu), GPU (NCCL) and CPU (gloo).
"""
from .broadcast import broadcast_parameters
from .ddp import QLCState, QLCStats, cast_wrapper, ordered_allreduce_hook, qlc_allreduce_hook
from .fsdp import compress_fsdp_all_gather, compress_fsdp_reduce_scatter
from .process_group import DistInfo, destroy_process_group, init_process_group, launch_env, pick_backend

__all__ = [
    "QLCState", "QLCStats", "qlc_allreduce_hook", "ordered_allreduce_hook", "cast_wrapper",
    "compress_fsdp_all_gather", "compress_fsdp_reduce_scatter", "broadcast_parameters",
    "init_process_group", "destroy_process_group", "pick_backend", "launch_env", "DistInfo",
]
