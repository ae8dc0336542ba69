"""The DDP example under an MPI launcher (MPICH or Open MPI):

    mpiexec -n 2 python launch/mpi_train.py --steps 30
    launch/mpi_train.sh 4 --steps 30

hccl_hooks.init_process_group reads the MPI rank and size (PMI_RANK / PMI_SIZE,
OMPI_COMM_WORLD_*), agrees on a rendezvous address over mpi4py and starts the
torch.distributed backend (hccl, nccl or gloo; the PyPI torch wheels have no MPI
backend).  Same options as train_ddp.py.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from train_ddp import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
