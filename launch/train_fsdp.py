"""Train the small transformer with FSDP2 and a lossless compressed parameter all-gather.

    torchrun --standalone --nproc-per-node 2 launch/train_fsdp.py --steps 20            # CPU (gloo)
    torchrun --nproc-per-node 8 launch/train_fsdp.py --backend nccl                    # GPUs
    torchrun --nproc-per-node 8 launch/train_fsdp.py --backend hccl                    # Ascend NPUs

Runs the same training three ways and checks the final parameters bit for bit:
plain FSDP2; FSDP2 with `compress_fsdp_all_gather` (ENEC, or QLC while ENEC is not
installed), which must be identical to plain; and, with --reduce-scatter, FSDP2
with `compress_fsdp_reduce_scatter` (QLC), which must be identical to the same
rank-order reduce-scatter uncoded (codec "raw").  Needs torch >= 2.9.
"""
import argparse
import os
import sys
import time
import warnings

import torch
import torch.distributed as dist

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import hccl_hooks  # noqa: E402
from hccl_hooks import compress_fsdp_all_gather, compress_fsdp_reduce_scatter  # noqa: E402
from tiny_model import build_model, param_digest, train  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--backend", default="auto")
    p.add_argument("--codec", default="auto", help="all-gather codec: auto (QLC on CPU tensors, ENEC for the wide floats on accelerators), "
                        "enec, qlc")
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--reduce-scatter", action="store_true", help="also check the compressed reduce-scatter")
    p.add_argument("--min-compress-bytes", type=int, default=0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=120.0)
    return p.parse_args(argv)


def log0(rank, *a):
    if rank == 0:
        print(*a, flush=True)


def sharded_model(args, info):
    from torch.distributed.fsdp import fully_shard

    # the head's output is a view of its matmul; the loop never modifies it in place
    warnings.filterwarnings("ignore", message=r".*returned a view tensor.*")

    model = build_model(seed=args.seed, dtype=getattr(torch, args.dtype), device=info.device)
    for layer in model.layers:
        fully_shard(layer)
    fully_shard(model)
    return model


def run(args, info, all_gather=None, reduce_scatter=None):
    """FSDP2 training; returns (digest, losses, stats of the installed comms)."""
    model = sharded_model(args, info)
    stats = {}
    # compress=True: the tiny model's messages are far too small for coding to pay on loopback (the
    # cost model would step aside); deterministic: the reduce-scatter reduces in rank order on every route
    options = dict(min_compress_bytes=args.min_compress_bytes, compress=True, deterministic=True)
    if all_gather:
        stats["all_gather"] = compress_fsdp_all_gather(model, codec=all_gather, **options)
    if reduce_scatter:
        stats["reduce_scatter"] = compress_fsdp_reduce_scatter(model, codec=reduce_scatter, **options)
    losses = train(model, args.steps, info.rank, seed=args.seed, device=info.device)
    return param_digest(model), losses, stats


def train_and_compare(args, info):
    codec = args.codec
    t0 = time.perf_counter()
    plain, plain_losses, _ = run(args, info)
    log0(info.rank, f"plain FSDP2: {args.steps} steps in {time.perf_counter() - t0:.2f} s, "
                    f"final loss {plain_losses[-1]:.5f}, sha256 {plain}")
    t0 = time.perf_counter()
    coded, coded_losses, stats = run(args, info, all_gather=codec)
    ag = stats["all_gather"].total
    log0(info.rank, f"FSDP2 + compressed all-gather ({codec}): {time.perf_counter() - t0:.2f} s, sha256 {coded}; "
                    f"parameter bytes {ag['raw_bytes']} B -> {ag['coded_bytes']} B coded; on the wire "
                    f"{ag['sent_bytes']} B vs {ag['plain_bytes']} B plain")
    result = {"codec": codec, "identical": coded == plain and coded_losses == plain_losses,
              "all_gather": dict(ag), "losses": coded_losses}
    log0(info.rank, f"bit-identical to plain FSDP2: {result['identical']}")
    ok = result["identical"]
    if args.reduce_scatter:
        raw, raw_losses, _ = run(args, info, all_gather=codec, reduce_scatter="raw")
        rs, rs_losses, stats = run(args, info, all_gather=codec, reduce_scatter="qlc")
        r = stats["reduce_scatter"].total
        result["rs_identical"] = raw == rs and raw_losses == rs_losses
        result["reduce_scatter"] = dict(r)
        log0(info.rank, f"compressed reduce-scatter (qlc): gradient bytes {r['raw_bytes']} B -> {r['coded_bytes']} B; "
                        f"bit-identical to the uncoded rank-order reduce-scatter: {result['rs_identical']}")
        ok = ok and result["rs_identical"]
    result["ok"] = ok
    log0(info.rank, "OK" if ok else "FAILED")
    return result


def main(argv=None):
    args = parse_args(argv)
    info = hccl_hooks.init_process_group(args.backend, timeout=args.timeout)
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    log0(info.rank, f"{info.world_size} ranks, backend {info.backend}, device {info.device.type}, "
                    f"torch {torch.__version__}")
    result = train_and_compare(args, info)
    hccl_hooks.destroy_process_group()
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
