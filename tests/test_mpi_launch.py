"""The mpiexec variant of the DDP example: hccl_hooks.init_process_group reads MPICH's PMI_RANK /
PMI_SIZE and agrees on a rendezvous address over mpi4py."""
import re
import subprocess
from pathlib import Path

from dist_util import ROOT, rank_env


def test_mpiexec_two_ranks_ddp_example():
    script = ROOT / "launch" / "mpi_train.sh"
    proc = subprocess.run([str(script), "2", "--steps", "3", "--no-compare", "--timeout", "60"], cwd=ROOT,
                          env=rank_env({"PYTHON": str(Path(__import__("sys").executable))}),
                          capture_output=True, text=True, timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-4000:]
    assert "2 ranks, backend gloo" in out and "launcher mpi" in out
    assert len(re.findall(r"^step +\d+ +loss", proc.stdout, re.M)) == 3
    assert "final parameters match across ranks: True" in out
