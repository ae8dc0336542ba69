import torch, torch.distributed as dist, qlccomm
from qlccomm import collectives as C
def run(rank, world):
    out = {}
    for dt in [torch.bfloat16, torch.float32, torch.int8, torch.float64]:
        xs = [((torch.randn(5003, generator=torch.Generator().manual_seed(k))*0.02).to(dt) if dt.is_floating_point else torch.randint(-3,3,(5003,), generator=torch.Generator().manual_seed(k)).to(dt)) for k in range(world)]
        t = xs[rank].clone(); st = C.WireStats()
        C.all_reduce(t, min_compress_bytes=0, stats=st)
        ref = C.reference_all_reduce(xs)
        out[str(dt)] = [bool(torch.equal(t.view(torch.uint8), ref.view(torch.uint8))), st.as_dict()]
    t = xs[rank].clone()
    w = C.all_reduce(t, async_op=True, min_compress_bytes=0); v = w.get_future().wait()
    out["async"] = bool(torch.equal(t, C.reference_all_reduce(xs)))
    o = torch.empty(world*100, dtype=torch.bfloat16); i = (torch.randn(100)*rank).bfloat16()
    C.all_gather_into_tensor(o, i, min_compress_bytes=0)
    out["ag"] = bool(torch.equal(o[rank*100:(rank+1)*100], i))
    return out
