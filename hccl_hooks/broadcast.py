"""Start-up weight broadcast: every rank gets src's parameters and buffers, bit for bit."""
import torch

import qlccomm
from qlccomm.collectives import WireStats

BUCKET_BYTES = 64 << 20


def _buckets(tensors, bucket_bytes):
    """Group tensors by (dtype, device) in first-seen order, then cut into buckets of about bucket_bytes."""
    groups = {}
    for t in tensors:
        groups.setdefault((t.dtype, t.device), []).append(t)
    for ts in groups.values():
        cur, size = [], 0
        for t in ts:
            if cur and size + t.numel() * t.element_size() > bucket_bytes:
                yield cur
                cur, size = [], 0
            cur.append(t)
            size += t.numel() * t.element_size()
        if cur:
            yield cur


@torch.no_grad()
def broadcast_parameters(module, src=0, group=None, codec="auto", *, codebook=None, min_compress_bytes=None,
                         bucket_bytes=BUCKET_BYTES, **options):
    """Broadcast `module`'s parameters and buffers from global rank `src`, losslessly compressed.

    Tensors are flattened per dtype into buckets of about `bucket_bytes` and sent
    with `qlccomm.broadcast` (codec "auto" by default: QLC on CPU tensors, ENEC for the
    wide floats on accelerators, uncoded for dtypes without a plan).  Use it on a plain module, before wrapping it in DDP or
    FSDP.  `options` go to every `qlccomm.broadcast` (compress=, link_gbps=, ...).
    Returns a WireStats with the summed byte counts of this rank.

    Example::
        >>> model = build_model()
        >>> broadcast_parameters(model, src=0)
        >>> ddp = DistributedDataParallel(model)
    """
    seen, tensors = set(), []
    for t in list(module.parameters()) + list(module.buffers()):
        if id(t) not in seen:
            seen.add(id(t))
            tensors.append(t.data)
    total = WireStats(collective="broadcast_parameters")
    for bucket in _buckets(tensors, bucket_bytes):
        flat = torch.cat([t.reshape(-1) for t in bucket]) if len(bucket) > 1 else bucket[0].reshape(-1).clone()
        ws = WireStats()
        qlccomm.broadcast(flat, src, group=group, codec=codec, codebook=codebook,
                          min_compress_bytes=min_compress_bytes, stats=ws, **options)
        offset = 0
        for t in bucket:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()
        total.compressed |= ws.compressed
        for k in ("raw_bytes", "coded_bytes", "sent_bytes", "plain_bytes", "meta_bytes"):
            setattr(total, k, getattr(total, k) + getattr(ws, k))
    return total
