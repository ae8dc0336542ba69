"""Train a small transformer with DDP and the lossless compressed gradient all-reduce.

    torchrun --standalone --nproc-per-node 2 launch/train_ddp.py --steps 30     # CPU (gloo)
    torchrun --nproc-per-node 8 launch/train_ddp.py --backend nccl             # GPUs
    torchrun --nproc-per-node 8 launch/train_ddp.py --backend hccl             # Ascend NPUs (torch_npu)
    mpiexec -n 2 python launch/mpi_train.py --steps 30                          # MPI launcher

Prints per-step loss and bytes on the wire with and without compression, checks
that the final parameters are identical on every rank and (with --compare, the
default) that they are bit-identical to the same training with an uncompressed
hook that reduces in the same order.  Exit status 1 if a check fails.
"""
import argparse
import copy
import os
import sys
import time

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hccl_hooks  # noqa: E402
import qlccomm  # noqa: E402
from hccl_hooks import QLCState, broadcast_parameters, ordered_allreduce_hook, qlc_allreduce_hook  # noqa: E402
from tiny_model import build_model, param_digest, train  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--backend", default="auto", help="auto (hccl > nccl > gloo), hccl, nccl or gloo")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"],
                   help="parameter and gradient dtype")
    p.add_argument("--codebook", default="adaptive", help="adaptive, default or a codebook file")
    p.add_argument("--refit-every", type=int, default=0, help="refit the codebook every N hook calls (0: never)")
    p.add_argument("--min-compress-bytes", type=int, default=4096)
    p.add_argument("--bucket-cap-mb", type=float, default=0.05, help="small, so the tiny model has several buckets")
    p.add_argument("--compress", default="on", choices=["on", "auto", "off"],
                   help="on: code every bucket of at least --min-compress-bytes (the tiny model's buckets are "
                        "far too small for coding to pay on loopback, so the cost model would step aside: "
                        "on shows what coding saves); auto: qlccomm's cost model decides per bucket")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-compare", dest="compare", action="store_false",
                   help="skip the uncompressed reference run")
    p.add_argument("--timeout", type=float, default=120.0, help="process-group timeout, seconds")
    return p.parse_args(argv)


def log0(rank, *a):
    if rank == 0:
        print(*a, flush=True)


def run(model0, hook, state, args, info):
    """DDP training of a copy of model0 with `hook`; returns (model, losses)."""
    model = copy.deepcopy(model0)
    ddp = DDP(model, device_ids=None, bucket_cap_mb=args.bucket_cap_mb)
    ddp.register_comm_hook(state, hook)
    stats = getattr(state, "stats", None)

    def on_step(step, loss):
        if stats is None:
            return
        t = stats.total
        prev = on_step.prev
        sent, plain = t["sent_bytes"] - prev[0], t["plain_bytes"] - prev[1]
        on_step.prev = (t["sent_bytes"], t["plain_bytes"])
        log0(info.rank, f"step {step:3d}  loss {loss:.5f}  wire {sent:7d} B compressed / {plain:7d} B plain"
                        f"  ({100 * (1 - sent / plain) if plain else 0:.1f}% saved)")

    on_step.prev = (0, 0)
    losses = train(ddp, args.steps, info.rank, seed=args.seed, device=info.device, on_step=on_step)
    return model, losses


def agree(digest):
    """Every rank's digest (gathered on every rank)."""
    out = [None] * dist.get_world_size()
    dist.all_gather_object(out, digest)
    return out


def train_and_compare(args, info):
    """The demo on an initialised process group: returns a dict of results (and prints on rank 0)."""
    dtype = getattr(torch, args.dtype)
    # every rank builds its own (different) model; the start-up broadcast makes them equal
    model0 = build_model(seed=args.seed + info.rank, dtype=dtype, device=info.device)
    codec = "auto"          # QLC on CPU tensors, ENEC for the wide floats on accelerators
    compress = {"on": True, "auto": None, "off": False}[args.compress]
    ws = broadcast_parameters(model0, src=0, codec=codec, min_compress_bytes=args.min_compress_bytes,
                              compress=compress)
    log0(info.rank, f"start-up broadcast ({codec}): {ws.sent_bytes} B on the wire vs {ws.plain_bytes} B plain")
    start_same = len(set(agree(param_digest(model0)))) == 1

    t0 = time.perf_counter()
    # deterministic: every route reduces in rank order, so the run can be compared bit for bit
    state = QLCState(codebook=args.codebook, min_compress_bytes=args.min_compress_bytes,
                     refit_every=args.refit_every, compress=compress, deterministic=True)
    model, losses = run(model0, qlc_allreduce_hook, state, args, info)
    elapsed = time.perf_counter() - t0
    t = state.stats.total
    log0(info.rank, f"compressed DDP: {args.steps} steps in {elapsed:.2f} s; gradient bytes before coding "
                    f"{t['raw_bytes']} B, after {t['coded_bytes']} B (x{state.stats.ratio:.3f})")
    log0(info.rank, f"bytes on the wire per rank: {t['sent_bytes']} B compressed vs {t['plain_bytes']} B "
                    f"uncompressed, saved {state.stats.saved_bytes} B "
                    f"({100 * state.stats.saved_bytes / max(t['plain_bytes'], 1):.1f}%); "
                    f"call headers {t['meta_bytes']} B")
    digest = param_digest(model)
    same = len(set(agree(digest))) == 1
    log0(info.rank, f"final parameters match across ranks: {same} (sha256 {digest})")
    result = {"start_same": start_same, "same_across_ranks": same, "digest": digest, "losses": losses,
              "stats": dict(t), "buckets": len(state.stats.buckets), "saved_bytes": state.stats.saved_bytes,
              "refitted": sorted(str(d) for d in state.fitted), "identical": None}
    ok = same and start_same
    if args.compare:
        ref, ref_losses = run(model0, ordered_allreduce_hook, None, args, info)
        ref_digest = param_digest(ref)
        identical = all(agree(ref_digest == digest and ref_losses == losses))
        log0(info.rank, f"bit-identical to uncompressed DDP reducing in the same order: {identical} "
                        f"(sha256 {ref_digest})")
        result["identical"] = identical
        ok = ok and identical
    log0(info.rank, "OK" if ok else "FAILED")
    result["ok"] = ok
    return result


def main(argv=None):
    args = parse_args(argv)
    info = hccl_hooks.init_process_group(args.backend, timeout=args.timeout)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    log0(info.rank, f"qlccomm {qlccomm.__version__}: {info.world_size} ranks, backend {info.backend}, "
                    f"device {info.device.type}, launcher {info.launcher}, torch {torch.__version__}")
    result = train_and_compare(args, info)
    hccl_hooks.destroy_process_group()
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
