"""Kernel-level benchmark of the QLC backends on CPU tensors (``python -m qlccomm.kernels.bench``).

Goes through the public API (``qlccomm.compress`` / ``qlccomm.decompress``), with
the backend chosen by ``QLCCOMM_KERNELS`` for each measurement, and also times the
codec section alone (``encode_section`` / ``decode_section``: no stream header, no
copy in ``compress``, no parsing).  Measures in *interleaved rounds*: every round
times the memory copies, zstd level 1 and each codec once, on the same bytes, so
load from other processes hits all of them alike.  Reports medians over rounds of
GB/s (uncompressed bytes per second) by wall clock and by process CPU time (with one
thread, CPU time is immune to time-slicing on a shared machine), and of the speed
relative to `clone` (allocate + copy) in the same round.

References: `copy_` copies into an existing tensor (memory bandwidth); `clone`
allocates and copies (what an out-of-place result costs: fresh pages fault in).

Data (``--data``): ``qlccomm.datagen.synthetic`` (its docstring documents the
distributions), ``weights`` its weight-like and ``grads`` its gradient-like kind,
seed 0.

This is not the user-facing ``qlccomm bench`` (qlccomm/cli.py): it measures the
kernels on one core, section by section; docs/benchmarks.md holds the figures.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch

import qlccomm
from qlccomm.datagen import synthetic

DATA_KINDS = {"weights": "weight", "grads": "grad"}


def make_data(kind: str, nbytes: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """`nbytes` bytes of `dtype` from qlccomm.datagen ("weights" or "grads")."""
    if kind not in DATA_KINDS:
        raise ValueError(f"--data is one of {', '.join(DATA_KINDS)}, not {kind!r}")
    return synthetic(DATA_KINDS[kind], dtype, nbytes // dtype.itemsize, seed)


_SYNC = [lambda: None]


def _timed(fn):
    _SYNC[0]()
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    _SYNC[0]()
    return time.perf_counter() - t0, time.process_time() - c0, out


def _backend(name: str):
    os.environ["QLCCOMM_KERNELS"] = name


def run(mib: float = 64, rounds: int = 7, threads: int = 1, data: str = "weights",
        dtype: torch.dtype = torch.bfloat16, backends=("native", "torch"), adaptive: bool = True,
        device: str = "cpu", best: bool = False):
    torch.set_num_threads(threads)
    x = make_data(data, int(mib * (1 << 20)), dtype).to(device)
    if x.device.type == "cuda":
        _SYNC[0] = torch.cuda.synchronize
    elif x.device.type != "cpu" and hasattr(getattr(torch, x.device.type, None), "synchronize"):
        _SYNC[0] = getattr(torch, x.device.type).synchronize
    nbytes = x.numel() * x.element_size()
    cb = qlccomm.fit_codebook(x)
    raw = x.view(torch.uint8).cpu().numpy() if x.device.type == "cpu" else None

    cases = {}                                   # name -> (encode fn, decode fn)
    y = torch.empty_like(x)
    cases["clone"] = (lambda: x.clone(), None)
    cases["copy_"] = (lambda: y.copy_(x), None)
    zblob = None
    try:
        import zstandard
        if raw is not None:                      # zstd only where the bytes are: on the CPU
            zc, zd = zstandard.ZstdCompressor(level=1), zstandard.ZstdDecompressor()
            zblob = zc.compress(raw)
            cases["zstd-1"] = (lambda: zc.compress(raw), lambda: zd.decompress(zblob))
    except ImportError:
        pass
    blobs = {}
    for b in backends:
        for mode in (("codebook", "adaptive") if adaptive else ("codebook",)):
            _backend(b)
            c = cb if mode == "codebook" else None
            blob = qlccomm.compress(x, codebook=c)
            assert torch.equal(qlccomm.decompress(blob, codebook=cb).view(torch.uint8), x.view(torch.uint8))
            name = f"qlc/{b}/{mode}"
            blobs[name] = blob
            cases[name] = ((lambda c=c, b=b: (_backend(b), qlccomm.compress(x, codebook=c))),
                           (lambda blob=blob, b=b: (_backend(b), qlccomm.decompress(blob, codebook=cb))))
    # the codec section alone (no stream header, no torch.cat in compress, no parse)
    from qlccomm import kernels, qlc
    from qlccomm.format import ByteSource, parse_header
    for b in backends:
        _backend(b)
        impl = kernels.implementation("qlc", x.device) or qlc
        blob = qlccomm.compress(x, codebook=cb)
        src = ByteSource(blob)
        header = parse_header(src.read(0, 21 + 8 * x.dim()))
        sec = qlc.parse_section(src, header.nbytes, header.numel, x.dtype, cb)
        flat = x.reshape(-1)
        name = f"qlc/{b}/codebook/section"
        blobs[name] = blob
        cases[name] = ((lambda impl=impl: impl.encode_section(flat, cb.plan_obj, cb)),
                       (lambda impl=impl, sec=sec, header=header, blob=blob: impl.decode_section(sec, blob, header)))
    sizes = {"clone": nbytes, "copy_": nbytes, **({"zstd-1": len(zblob)} if zblob is not None else {}),
             **{k: v.numel() for k, v in blobs.items()}}

    wall = {k: {"enc": [], "dec": []} for k in cases}
    cpu = {k: {"enc": [], "dec": []} for k in cases}
    rel = {k: {"enc": [], "dec": []} for k in cases}
    for _ in range(rounds):
        t_copy, c_copy, _ = _timed(cases["clone"][0])
        wall["clone"]["enc"].append(t_copy)
        cpu["clone"]["enc"].append(c_copy)
        rel["clone"]["enc"].append(1.0)
        for name, (enc, dec) in cases.items():
            if name == "clone":
                continue
            for what, fn in (("enc", enc), ("dec", dec)):
                if fn is None:
                    continue
                t, c, _ = _timed(fn)
                wall[name][what].append(t)
                cpu[name][what].append(c)
                rel[name][what].append(t_copy / t)
    os.environ.pop("QLCCOMM_KERNELS", None)

    for label, pick, pick_rel in (("median", statistics.median, statistics.median), ("best", min, max)):
        if label == "best" and not best:
            continue
        rate = (lambda ts: f"{nbytes / pick(ts) / 1e9:8.3f}" if ts else f"{'-':>8}")
        relf = (lambda rs: f"{pick_rel(rs):8.3f}" if rs else f"{'-':>8}")
        print(f"# {mib} MiB {str(dtype).removeprefix('torch.')} {data} on {x.device}, {threads} CPU thread(s), "
              f"{label} of {rounds} interleaved rounds; GB/s = uncompressed bytes / s")
        print(f"{'case':<28}{'ratio':>7}  {'enc GB/s':>8}{'dec GB/s':>9}  {'enc cpu':>8}{'dec cpu':>9}"
              f"  {'enc/clone':>9}{'dec/clone':>10}")
        for name in cases:
            print(f"{name:<28}{nbytes / sizes[name]:>7.3f}  {rate(wall[name]['enc'])}{rate(wall[name]['dec']):>9}"
                  f"  {rate(cpu[name]['enc'])}{rate(cpu[name]['dec']):>9}  {relf(rel[name]['enc']):>9}"
                  f"{relf(rel[name]['dec']):>10}")


def parts(mib: float = 64, rounds: int = 9, data: str = "weights") -> None:
    """Where the native QLC encode and decode time goes, one thread, referenced codebook:
    each kernel timed alone (interleaved rounds, medians), outputs into already-touched
    buffers, against the whole section calls (fresh output)."""
    import numpy as np

    from qlccomm import qlc
    from qlccomm.format import ByteSource, parse_header

    from . import common, native_qlc as nq

    torch.set_num_threads(1)
    x = make_data(data, int(mib * (1 << 20)), torch.bfloat16)
    cb = qlccomm.fit_codebook(x)
    plan, pb, chunk = cb.plan_obj, cb.plan_obj, qlc.CHUNK_ELEMS
    xa = nq._elements(x, pb)
    n = xa.shape[0]
    K = -(-n // chunk)
    bits, nz, check = np.zeros(K, np.int64), np.zeros(K, np.bool_), np.zeros(K, np.int64)
    tabs = common.codebook_tables(cb)
    wsuf, enc = nq._wide(tabs["wsuf"], pb), nq._wide(tabs["enc"], pb)
    no_hist = np.zeros((0, 256), np.int32)

    def stats():
        nq.qlc_stats(xa, chunk, pb.ssh, pb.smask, wsuf, False, bits, nz, no_hist)

    stats()
    lay = common.encode_layout(n, chunk, plan, cb, False, bits, nz)
    o = np.zeros(lay.total, np.uint8)
    b = lay.bases

    pairs = nq._pair_table(cb, pb)

    def encode(raw_bits, ptab=pairs):
        nq.qlc_encode(xa, chunk, pb.ssh, pb.smask, pb.rsh, pb.rhi, pb.rlo, pb.symbol_bits, raw_bits, enc, ptab,
                      lay.table, o, b["prefix"], b["symbol"], b["suffix"], b["raw"], lay.n_nz, check)

    blob = qlccomm.compress(x, codebook=cb)
    src = ByteSource(blob)
    header = parse_header(src.read(0, 21 + 8 * x.dim()))
    sec = qlc.parse_section(src, header.nbytes, header.numel, x.dtype, cb)
    dl = common.decode_layout(sec)
    dtab, w4 = common.decode_tables(cb, pb)
    out = np.zeros(n, np.uint16)
    flags = np.zeros(K, np.int32)
    d, e = dl.bases, dl.ends

    def decode(raw_bits):
        nq.qlc_decode(blob.numpy(), out, chunk, pb.ssh, pb.rsh, pb.rhi, pb.rlo, pb.symbol_bits, raw_bits, dtab, w4,
                      tabs["wpack"], dl.table, d["prefix"], e["prefix"], d["symbol"], e["symbol"], d["suffix"],
                      d["raw"], e["raw"], dl.n_nz, flags)

    cases = {
        "qlc_stats (suffix bits)": stats,
        "qlc_encode": lambda: encode(pb.raw_bits),
        "qlc_encode, no raw plane": lambda: encode(0),
        "qlc_encode, 1 code per lookup": lambda: encode(pb.raw_bits, nq._NO_PAIRS),
        "encode_section (fresh out)": lambda: nq.encode_section(x, plan, cb),
        "qlc_decode": lambda: decode(pb.raw_bits),
        "qlc_decode, no raw merge": lambda: decode(0),
        "decode_section (fresh out)": lambda: nq.decode_section(sec, blob, header),
        "zstd-1 compress": None,
    }
    try:
        import zstandard
        raw = x.view(torch.uint8).numpy()
        zc = zstandard.ZstdCompressor(level=1)
        cases["zstd-1 compress"] = lambda: zc.compress(raw)
    except ImportError:
        del cases["zstd-1 compress"]
    times = {k: [] for k in cases}
    for fn in cases.values():
        fn()
    for _ in range(rounds):
        for k, fn in cases.items():
            t, _, _ = _timed(fn)
            times[k].append(t)
    nbytes = x.numel() * 2
    print(f"# {mib} MiB bfloat16 {data}, 1 thread, {rounds} interleaved rounds: median and best (least disturbed)")
    for k, ts in times.items():
        t, b = statistics.median(ts), min(ts)
        print(f"{k:<30}{t * 1e3:8.1f} ms{nbytes / t / 1e9:8.3f} GB/s   best{b * 1e3:8.1f} ms{nbytes / b / 1e9:8.3f} GB/s")


def host_planning(mib: float = 256, rounds: int = 9) -> None:
    """Host time per call that the fused paths spend outside their kernels on a bf16 tensor
    of `mib` MiB (chunk planning from per-chunk statistics; parsing and planning a stream):
    a floor under every backend's time per call, whatever the device."""
    import numpy as np

    from qlccomm import qlc
    from qlccomm.format import ByteSource, parse_header

    from . import common

    x = make_data("weights", int(mib * (1 << 20)), torch.bfloat16)
    cb = qlccomm.fit_codebook(x)
    blob = qlccomm.compress(x, codebook=cb)
    header = parse_header(ByteSource(blob).read(0, 21 + 8 * x.dim()))
    sec = qlc.parse_section(ByteSource(blob), header.nbytes, header.numel, x.dtype, cb)
    K = sec.layout.modes.numel()
    bits = sec.layout.suffix_len.numpy().astype(np.int64) * 8
    nz = np.ones(K, np.bool_)
    cases = {
        "encode_layout": lambda: common.encode_layout(x.numel(), qlc.CHUNK_ELEMS, cb.plan_obj, cb, False, bits, nz),
        "parse_section": lambda: qlc.parse_section(ByteSource(blob), header.nbytes, header.numel, x.dtype, cb),
        "decode_layout": lambda: common.decode_layout(sec),
    }
    print(f"# host planning, {mib} MiB bfloat16 weights ({K} chunks), median and best of {rounds}")
    for name, fn in cases.items():
        fn()
        ts = [_timed(fn)[0] for _ in range(rounds)]
        print(f"{name:<16}{statistics.median(ts) * 1e3:8.2f} ms   best{min(ts) * 1e3:8.2f} ms")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--mib", type=float, default=64)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data", choices=list(DATA_KINDS), default="weights")
    p.add_argument("--dtype", default="bfloat16")
    p.add_argument("--backends", default="native,torch")
    p.add_argument("--no-adaptive", action="store_true")
    p.add_argument("--best", action="store_true", help="also print the best round (least disturbed)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, ... (use --backends triton,torch off the CPU)")
    p.add_argument("--parts", action="store_true", help="time the native kernels one by one instead (bf16, CPU)")
    p.add_argument("--host-planning", action="store_true", help="time the fused paths' host planning instead")
    a = p.parse_args(argv)
    if a.parts:
        return parts(a.mib, a.rounds, a.data)
    if a.host_planning:
        return host_planning(a.mib, a.rounds)
    run(a.mib, a.rounds, a.threads, a.data, getattr(torch, a.dtype), tuple(a.backends.split(",")),
        not a.no_adaptive, a.device, a.best)


if __name__ == "__main__":
    main()
