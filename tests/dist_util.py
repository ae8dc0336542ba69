"""Helpers for multi-rank tests: real processes, real gloo process groups, no mocks.

Serial tests start ranks as subprocesses (`run_ranks`): each runs
`python tests/dist_util.py TARGET RANK WORLD PORT RESULT ARGS`, joins a gloo group
on 127.0.0.1, calls `TARGET` (``module:function``, importable from tests/) as
``function(rank, world, *args)`` and writes a JSON result.  The parent enforces a
wall-clock limit and kills ranks that outlive it, so a hang cannot stall the suite.

MPI tests (run under ``mpiexec``) use `mpi_gloo_group`: gloo initialised from the
MPI rank and size, once per process.
"""
from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import traceback
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(extra: dict | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(HERE), str(ROOT), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env.update(extra or {})
    return env


@dataclass
class Outcome:
    rank: int
    returncode: int | None       # None: killed at the deadline
    ok: bool                     # the target returned normally
    result: object = None        # its JSON-able return value
    error: str = ""              # "ExcType: message" of what it raised
    traceback: str = ""
    output: str = ""             # the rank's stdout and stderr
    seconds: float = 0.0


def run_ranks(target: str, world: int, *args, timeout: float = 60.0, pg_timeout: float = 30.0,
              env: dict | None = None) -> list[Outcome]:
    """Run `target(rank, world, *args)` on `world` fresh processes joined by a gloo group."""
    port = free_port()
    tmp = Path(tempfile.mkdtemp(prefix="qlccomm-ranks-"))
    procs = []
    start = time.monotonic()
    for rank in range(world):
        log = open(tmp / f"rank{rank}.log", "w+b")
        cmd = [sys.executable, str(HERE / "dist_util.py"), target, str(rank), str(world), str(port),
               str(tmp / f"rank{rank}.json"), str(pg_timeout), json.dumps(list(args))]
        procs.append((subprocess.Popen(cmd, cwd=ROOT, env=rank_env(env), stdout=log, stderr=subprocess.STDOUT), log))
    deadline = start + timeout
    ended = [None] * world
    while time.monotonic() < deadline and any(p.poll() is None for p, _ in procs):
        time.sleep(0.05)
    for i, (p, _) in enumerate(procs):
        if p.poll() is None:
            p.kill()
            p.wait()
        else:
            ended[i] = p.returncode
    outcomes = []
    for rank, (p, log) in enumerate(procs):
        log.seek(0)
        output = log.read().decode(errors="replace")
        log.close()
        res_path = tmp / f"rank{rank}.json"
        data = json.loads(res_path.read_text()) if res_path.exists() else {}
        outcomes.append(Outcome(rank, ended[rank], bool(data.get("ok")), data.get("result"), data.get("error", ""),
                                data.get("traceback", ""), output, data.get("seconds", 0.0)))
    shutil.rmtree(tmp, ignore_errors=True)
    return outcomes


def check_ok(outcomes: list[Outcome]) -> list:
    """Assert that every rank returned normally; return their results in rank order."""
    bad = [o for o in outcomes if not o.ok or o.returncode != 0]
    if bad:
        lines = []
        for o in bad:
            state = "killed at the deadline" if o.returncode is None else f"exit {o.returncode}"
            lines.append(f"--- rank {o.rank} ({state}) {o.error}\n{o.traceback}\n{o.output[-3000:]}")
        raise AssertionError("ranks failed:\n" + "\n".join(lines))
    return [o.result for o in outcomes]


def _child(argv: list[str]) -> int:
    target, rank, world, port, result_path, pg_timeout, args = argv
    rank, world = int(rank), int(world)
    import importlib

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    record = {"ok": False}
    t0 = time.monotonic()
    try:
        mod_name, fn_name = target.split(":")
        fn = getattr(importlib.import_module(mod_name), fn_name)
        backend = os.environ.get("QLCCOMM_TEST_BACKEND", "gloo")      # nccl: tests/test_transport_cuda.py
        if backend == "nccl":
            torch.cuda.set_device(rank)
        dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=float(pg_timeout)))
        record["result"] = fn(rank, world, *json.loads(args))
        record["ok"] = True
    except BaseException as e:  # report everything, SystemExit included
        record["error"] = f"{type(e).__name__}: {e}"
        record["traceback"] = traceback.format_exc()
    record["seconds"] = time.monotonic() - t0
    Path(result_path).write_text(json.dumps(record))
    sys.stdout.flush()
    sys.stderr.flush()
    # leave without tearing the group down: after a fault test it may be broken, and a
    # destructor must not hang the rank
    os._exit(0 if record["ok"] else 1)


# -- MPI ----------------------------------------------------------------------------------------------------
_MPI_GROUP = None


def mpi_gloo_group(timeout_s: float = 60.0):
    """Initialise torch.distributed (gloo) from the MPI rank/size once per process; returns (rank, world)."""
    global _MPI_GROUP
    if _MPI_GROUP is None:
        import atexit

        import torch
        import torch.distributed as dist
        from mpi4py import MPI

        comm = MPI.COMM_WORLD
        rank, world = comm.Get_rank(), comm.Get_size()
        addr = ("127.0.0.1", free_port()) if rank == 0 else None
        addr = comm.bcast(addr, root=0)
        torch.set_num_threads(1)
        dist.init_process_group("gloo", init_method=f"tcp://{addr[0]}:{addr[1]}", rank=rank, world_size=world,
                                timeout=timedelta(seconds=timeout_s))
        atexit.register(lambda: dist.is_initialized() and dist.destroy_process_group())
        _MPI_GROUP = (rank, world)
    return _MPI_GROUP


if __name__ == "__main__":
    sys.exit(_child(sys.argv[1:]))
