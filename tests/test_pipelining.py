"""qlccomm.pipelining.compressed_p2p around torch.distributed.pipelining's schedules (GPipe and
1F1B), on 2 spawned gloo ranks: the same losses and the same parameters, bit for bit, as the
uncompressed schedule, with fewer bytes sent."""
from __future__ import annotations

import pytest
import torch
import torch.nn as nn

from dist_util import check_ok, run_ranks


class Stage(nn.Module):
    def __init__(self, first: bool, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.first = first
        self.embed = nn.Embedding(500, 64) if first else None
        self.body = nn.Sequential(nn.Linear(64, 256), nn.GELU(), nn.Linear(256, 64))
        self.head = None if first else nn.Linear(64, 500)

    def forward(self, x):
        if self.first:
            x = self.embed(x)
        x = x + self.body(x)
        return x if self.head is None else self.head(x)


def train(rank, world, schedule_name, compressed, steps=3):
    import torch.distributed as dist
    from torch.distributed.pipelining import PipelineStage, Schedule1F1B, ScheduleGPipe

    from qlccomm.pipelining import compressed_p2p
    model = Stage(rank == 0, seed=10 + rank).to(torch.bfloat16)
    stage = PipelineStage(model, rank, world, torch.device("cpu"))
    loss_fn = lambda out, y: nn.functional.cross_entropy(out.float().reshape(-1, 500), y.reshape(-1))  # noqa: E731
    cls = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B}[schedule_name]
    schedule = cls(stage, n_microbatches=4, loss_fn=loss_fn)       # every rank: the schedule has a backward
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    g = torch.Generator().manual_seed(3)
    losses, sent = [], None
    for step in range(steps):
        x = torch.randint(0, 500, (8, 48), generator=g)
        y = torch.randint(0, 500, (8, 48), generator=g)
        out = []
        opt.zero_grad()

        def step():
            if rank == 0:
                schedule.step(x)
            else:
                schedule.step(target=y, losses=out)
        if compressed:
            with compressed_p2p(compress=True, min_compress_bytes=0) as stats:
                step()
            sent = (stats.raw_bytes, stats.sent_bytes, stats.coded_messages)
        else:
            step()
        opt.step()
        losses.append([float(v) for v in out])
    digest = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()]).view(torch.int32).sum().item()
    dist.barrier()
    return {"losses": losses, "digest": digest, "sent": sent}


def both(rank, world, schedule_name):
    return {"plain": train(rank, world, schedule_name, False), "coded": train(rank, world, schedule_name, True)}


@pytest.mark.parametrize("schedule_name", ["gpipe", "1f1b"])
def test_compressed_schedule_is_bit_identical(schedule_name):
    results = check_ok(run_ranks("test_pipelining:both", 2, schedule_name, timeout=180))
    for r in results:
        assert r["plain"]["losses"] == r["coded"]["losses"]
        assert r["plain"]["digest"] == r["coded"]["digest"]
        raw, sent, coded = r["coded"]["sent"]
        assert coded > 0 and sent < raw
    assert results[1]["plain"]["losses"][-1]                     # the last stage computed losses


def test_without_the_seam_it_refuses(monkeypatch):
    from torch.distributed.pipelining import schedules

    from qlccomm.pipelining import compressed_p2p
    monkeypatch.delattr(schedules, "_batch_p2p")
    with pytest.raises(RuntimeError, match="_batch_p2p"):
        with compressed_p2p():
            pass


def hand_written(rank, world):
    import argparse
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "launch"))
    import train_pipeline
    return train_pipeline.run(rank, argparse.Namespace(steps=4, compress="on", compare=True))


def test_hand_written_pipeline_example_is_bit_identical():
    """launch/train_pipeline.py: compressed activations forward, gradients backward, the loss
    curve bit-identical to the uncompressed run."""
    assert check_ok(run_ranks("test_pipelining:hand_written", 2, timeout=180)) == [True, True]
