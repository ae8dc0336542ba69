"""The MPI launch path of hccl_hooks.init_process_group, under the real mpiexec (marked mpi):
MPICH's PMI_RANK / PMI_SIZE (or Open MPI's OMPI_COMM_WORLD_*) and the rendezvous address
agreed over mpi4py.  (An end-to-end `launch/mpi_train.sh 2` costs two more torch start-ups;
`make demo`-style runs of it are left to the examples.)  Serially: the shell launchers parse."""
import subprocess

import pytest

import hccl_hooks
from dist_util import ROOT


@pytest.mark.mpi(min_size=2)
def test_launch_env_matches_mpi(mpi_group):
    from mpi4py import MPI

    rank, world = mpi_group
    env = hccl_hooks.launch_env()
    assert env["launcher"] == "mpi"
    assert (env["rank"], env["world_size"]) == (MPI.COMM_WORLD.Get_rank(), MPI.COMM_WORLD.Get_size()) == (rank, world)
    assert 0 <= env["local_rank"] < world


@pytest.mark.mpi(min_size=2)
def test_mpi_rendezvous_agrees_on_one_address(mpi_group):
    from mpi4py import MPI

    from hccl_hooks.process_group import _mpi_rendezvous

    addr = _mpi_rendezvous(mpi_group[0])
    everyone = MPI.COMM_WORLD.allgather(addr)
    assert all(a == everyone[0] for a in everyone) and everyone[0][0] == "127.0.0.1" and everyone[0][1] > 0


@pytest.mark.parametrize("script", ["mpi_train.sh", "cpu_gloo.sh", "gpu_nccl.sh", "npu_hccl.sh"])
def test_shell_launchers_parse(script):
    subprocess.run(["bash", "-n", str(ROOT / "launch" / script)], check=True)
