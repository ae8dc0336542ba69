"""Process-group start-up: pick hccl / nccl / gloo and read the launcher's environment.

    info = init_process_group()      # under torchrun, mpiexec, or alone (world of 1)
    model.to(info.device)

hccl when torch_npu imports and an NPU is present, else nccl when CUDA is, else
gloo.  torch_npu is optional and never required: importing it without Ascend CANN
fails (ImportError, OSError or RuntimeError), which falls through to the next
backend.
"""
import os
import socket
import time
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist


@dataclass
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    backend: str
    device: torch.device
    launcher: str  # "torchrun", "mpi" or "single"


def pick_backend():
    """(backend, device type): ("hccl", "npu"), ("nccl", "cuda") or ("gloo", "cpu")."""
    try:
        import torch_npu  # noqa: F401  (registers torch.npu)
        if torch.npu.is_available() and torch.npu.device_count() > 0:
            return "hccl", "npu"
    except (ImportError, OSError, RuntimeError, AttributeError):
        pass
    if torch.cuda.is_available():
        return "nccl", "cuda"
    return "gloo", "cpu"


def _int_env(*names):
    for n in names:
        v = os.environ.get(n)
        if v not in (None, ""):
            return int(v)
    return None


def launch_env():
    """The launcher's view: dict(rank, world_size, local_rank, launcher, master_addr, master_port).

    torchrun: RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT.
    MPI: OMPI_COMM_WORLD_* (Open MPI), PMI_RANK / PMI_SIZE / MPI_LOCALRANKID (MPICH);
    master_addr/port are then None unless MASTER_ADDR/MASTER_PORT are set.
    Otherwise a single process.
    """
    addr, port = os.environ.get("MASTER_ADDR"), _int_env("MASTER_PORT")
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        return dict(rank=_int_env("RANK"), world_size=_int_env("WORLD_SIZE"),
                    local_rank=_int_env("LOCAL_RANK") or 0, launcher="torchrun", master_addr=addr, master_port=port)
    rank = _int_env("OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK")
    world = _int_env("OMPI_COMM_WORLD_SIZE", "PMI_SIZE")
    if rank is not None and world is not None:
        local = _int_env("OMPI_COMM_WORLD_LOCAL_RANK", "MPI_LOCALRANKID")
        return dict(rank=rank, world_size=world, local_rank=local if local is not None else rank, launcher="mpi",
                    master_addr=addr, master_port=port)
    return dict(rank=0, world_size=1, local_rank=0, launcher="single", master_addr=addr, master_port=port)


def _free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mpi_rendezvous(rank):
    """(addr, port) chosen by rank 0 and broadcast over MPI (needs mpi4py)."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise RuntimeError("launched by MPI without MASTER_ADDR/MASTER_PORT: install mpi4py, or export "
                           "MASTER_ADDR and MASTER_PORT") from e
    comm = MPI.COMM_WORLD
    if comm.Get_size() > 1:
        # the address must reach every rank: the host name on several nodes, loopback on one
        host = socket.gethostname()
        same_host = len(set(comm.allgather(host))) == 1
        payload = (("127.0.0.1" if same_host else socket.gethostbyname(host)), _free_port()) if rank == 0 else None
        return comm.bcast(payload, root=0)
    return "127.0.0.1", _free_port()


def init_process_group(backend=None, timeout=None, **kwargs):
    """Initialise torch.distributed for this launcher and device; returns a DistInfo.

    backend: None/"auto" picks hccl, nccl or gloo (see pick_backend); or name one.
    timeout: seconds or a timedelta.  Other keyword arguments go to
    torch.distributed.init_process_group.
    """
    env = launch_env()
    if backend in (None, "auto"):
        backend, dev_type = pick_backend()
    else:
        dev_type = {"hccl": "npu", "nccl": "cuda"}.get(backend, "cpu")
    local = env["local_rank"]
    if dev_type == "npu":
        import torch_npu  # noqa: F401
        torch.npu.set_device(local)
        device = torch.device("npu", local)
    elif dev_type == "cuda":
        local = local % max(torch.cuda.device_count(), 1)
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if isinstance(timeout, (int, float)):
        timeout = timedelta(seconds=timeout)
    if timeout is not None:
        kwargs["timeout"] = timeout
    rank, world = env["rank"], env["world_size"]
    if env["launcher"] == "torchrun":
        init_method = "env://"
    elif env["master_addr"] and env["master_port"]:
        init_method = f"tcp://{env['master_addr']}:{env['master_port']}"
    elif env["launcher"] == "mpi":
        addr, port = _mpi_rendezvous(rank)
        init_method = f"tcp://{addr}:{port}"
    else:
        init_method = f"tcp://127.0.0.1:{_free_port()}"
    dist.init_process_group(backend, init_method=kwargs.pop("init_method", init_method), rank=rank,
                            world_size=world, **kwargs)
    return DistInfo(rank, world, local, backend, device, env["launcher"])


SETTLE_S = 0.25
"""Seconds destroy_process_group leaves the GIL free after the group is destroyed."""


def destroy_process_group(settle_s: float = SETTLE_S) -> None:
    """torch.distributed.destroy_process_group(), then `settle_s` seconds with the GIL free.

    Call it last, in place of dist.destroy_process_group().  Gloo's worker threads drop a
    finished call's tensors just after the caller has its result, and need the GIL for it.
    A DDP model keeps its process group alive past destroy_process_group (torch holds
    references to it: pytorch/pytorch#109478), so those threads are still there at exit; one
    that reaches for the GIL while the interpreter finalizes aborts the process after the job
    succeeded ("terminate called without an active exception", SIGABRT).  The pause lets
    them finish first.
    """
    dist.destroy_process_group()
    time.sleep(settle_s)
