"""A two-stage pipeline on two ranks, hand-written with qlccomm's point-to-point calls.

    torchrun --standalone --nproc-per-node 2 launch/train_pipeline.py --steps 20

Rank 0 holds the embedding and the first transformer layer, rank 1 the second layer and
the head.  Every step runs two microbatches GPipe-style: rank 0 sends each microbatch's
hidden states forward (`qlccomm.isend`, bf16), rank 1 computes the loss and sends the
gradient of those hidden states back; both directions are compressed losslessly.  The job
trains twice from the same weights, compressed and uncompressed (`--no-compare` skips the
second), and checks that the loss curves are bit-identical; it prints the bytes saved.
Exit status 1 if a check fails.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.distributed as dist
import torch.nn as nn

import hccl_hooks
import qlccomm
from qlccomm.collectives import WireStats

VOCAB, D, HEADS, SEQ, BATCH, MICRO = 1000, 128, 4, 64, 16, 2


class Half(nn.Module):
    """Stage 0 (embedding + a layer) or stage 1 (a layer + the head)."""

    def __init__(self, first: bool):
        super().__init__()
        self.embed = nn.Embedding(VOCAB, D) if first else None
        self.layer = nn.TransformerEncoderLayer(D, HEADS, 4 * D, dropout=0.0, batch_first=True)
        self.head = None if first else nn.Linear(D, VOCAB)

    def forward(self, x):
        if self.embed is not None:
            x = self.embed(x)
        x = self.layer(x)
        return x if self.head is None else self.head(x)


def batch(step: int, seed: int = 0):
    """Tokens and next-token targets of a step (the same on both ranks): arithmetic sequences,
    token t+1 = token t + stride (mod VOCAB), so there is something to learn."""
    g = torch.Generator().manual_seed(seed * 7919 + step)
    start = torch.randint(0, VOCAB, (BATCH, 1), generator=g)
    stride = torch.randint(1, 8, (BATCH, 1), generator=g)
    t = (start + stride * torch.arange(SEQ + 1)) % VOCAB
    return t[:, :-1], t[:, 1:]


def train(rank: int, steps: int, compress, seed: int = 0) -> tuple[list[float], dict]:
    """Train the pipeline `steps` steps; returns the loss curve (rank 1) and the bytes this rank sent."""
    torch.manual_seed(seed + rank)
    model = Half(first=rank == 0).to(torch.bfloat16)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    peer = 1 - rank
    kw = {"compress": compress, "min_compress_bytes": 0}
    sent = {"raw": 0, "wire": 0, "coded": 0}
    losses = []

    def record(ws: WireStats):
        sent["raw"] += ws.raw_bytes
        sent["wire"] += ws.sent_bytes
        sent["coded"] += int(ws.compressed)

    for step in range(steps):
        x, y = batch(step, seed)
        opt.zero_grad()
        xs, ys = x.chunk(MICRO), y.chunk(MICRO)
        if rank == 0:
            outs, works = [], []
            for i, xm in enumerate(xs):                         # forward: send the hidden states
                h = model(xm)
                outs.append(h)
                st = WireStats()
                works.append((qlccomm.isend(h.detach(), peer, tag=i, stats=st, **kw), st))
            grads = [torch.empty_like(h) for h in outs]
            recvs = [qlccomm.irecv(g, peer, tag=100 + i) for i, g in enumerate(grads)]
            for (w, st) in works:
                w.wait()
                record(st)
            for h, g, r in zip(outs, grads, recvs):             # backward: their gradients come back
                r.wait()
                h.backward(g)
        else:
            total = 0.0
            for i, ym in enumerate(ys):
                h = torch.empty(ym.shape[0], SEQ, D, dtype=torch.bfloat16)
                qlccomm.recv(h, peer, tag=i)
                h.requires_grad_()
                logits = model(h)
                loss = nn.functional.cross_entropy(logits.float().reshape(-1, VOCAB), ym.reshape(-1)) / MICRO
                loss.backward()
                total += loss.item()
                st = WireStats()
                qlccomm.send(h.grad, peer, tag=100 + i, stats=st, **kw)
                record(st)
            losses.append(total)
        opt.step()
    return losses, sent


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--compress", choices=["on", "auto"], default="on",
                   help="on: code every message (these 0.5 MiB messages are too small for coding to pay on "
                        "loopback: the cost model would step aside); auto: the cost model decides")
    p.add_argument("--no-compare", dest="compare", action="store_false", help="skip the uncompressed run")
    args = p.parse_args(argv)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    if dist.get_world_size() != 2:
        raise SystemExit("train_pipeline.py runs on exactly 2 ranks")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    ok = run(rank, args)
    hccl_hooks.destroy_process_group()
    return 0 if ok else 1


def run(rank: int, args) -> bool:
    """Both trainings and the checks, on an initialised 2-rank group; True when they pass."""
    compress = {"on": True, "auto": None}[args.compress]
    losses, sent = train(rank, args.steps, compress)
    totals = [None, None]
    dist.all_gather_object(totals, sent)
    raw = sum(t["raw"] for t in totals)
    wire = sum(t["wire"] for t in totals)
    ok = True
    if rank == 1:
        for step, loss in enumerate(losses):
            print(f"step {step:3d}  loss {loss:.6f}", flush=True)
        print(f"activations forward and gradients backward: {raw} B of tensors, {wire} B on the wire, "
              f"saved {raw - wire} B ({100 * (raw - wire) / max(raw, 1):.1f}%), "
              f"{sum(t['coded'] for t in totals)} messages coded", flush=True)
    if args.compare:
        plain, _ = train(rank, args.steps, False)
        if rank == 1:
            ok = plain == losses
            print(f"loss curve bit-identical to the uncompressed pipeline: {ok}", flush=True)
        flags = [None, None]
        dist.all_gather_object(flags, ok)
        ok = all(flags)
    if rank == 1:
        print("OK" if ok else "FAILED", flush=True)
    return ok


if __name__ == "__main__":
    sys.exit(main())
