"""The DDP example under torchrun with 3 ranks, as `make demo` runs it (with 2), and the
launcher-environment parsing of hccl_hooks.init_process_group."""
import re
import subprocess
import sys

import pytest
import torch

import hccl_hooks
from dist_util import ROOT, rank_env


def test_torchrun_three_ranks_ddp_demo_bit_identical():
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "3",
           str(ROOT / "launch" / "train_ddp.py"), "--steps", "20", "--timeout", "60"]
    proc = subprocess.run(cmd, cwd=ROOT, env=rank_env(), capture_output=True, text=True, timeout=240)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "3 ranks, backend gloo" in out and "launcher torchrun" in out
    assert len(re.findall(r"^step +\d+ +loss", proc.stdout, re.M)) == 20
    assert "final parameters match across ranks: True" in out
    assert "bit-identical to uncompressed DDP reducing in the same order: True" in out
    saved = int(re.search(r"saved (\d+) B", out).group(1))
    assert saved > 0


def test_launch_env_torchrun(monkeypatch):
    for k, v in {"RANK": "2", "WORLD_SIZE": "3", "LOCAL_RANK": "1", "MASTER_ADDR": "h", "MASTER_PORT": "29500"}.items():
        monkeypatch.setenv(k, v)
    env = hccl_hooks.launch_env()
    assert env == dict(rank=2, world_size=3, local_rank=1, launcher="torchrun", master_addr="h", master_port=29500)


@pytest.mark.parametrize("names", [("OMPI_COMM_WORLD_RANK", "OMPI_COMM_WORLD_SIZE", "OMPI_COMM_WORLD_LOCAL_RANK"),
                                   ("PMI_RANK", "PMI_SIZE", "MPI_LOCALRANKID")])
def test_launch_env_mpi(monkeypatch, names):
    for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(k, raising=False)
    for k, v in zip(names, ("3", "4", "1")):
        monkeypatch.setenv(k, v)
    env = hccl_hooks.launch_env()
    assert (env["rank"], env["world_size"], env["local_rank"], env["launcher"]) == (3, 4, 1, "mpi")


def test_launch_env_single_process(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "OMPI_COMM_WORLD_RANK", "PMI_RANK", "PMIX_RANK", "PMI_SIZE",
              "OMPI_COMM_WORLD_SIZE"):
        monkeypatch.delenv(k, raising=False)
    assert hccl_hooks.launch_env()["launcher"] == "single"


def test_backend_choice_without_npu_or_gpu():
    # torch_npu is never installed here; without CUDA the choice is gloo on the CPU
    backend, device = hccl_hooks.pick_backend()
    if torch.cuda.is_available():
        assert (backend, device) == ("nccl", "cuda")
    else:
        assert (backend, device) == ("gloo", "cpu")
