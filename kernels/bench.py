"""Kernel-level benchmark of the QLC backends (``python -m qlccomm.kernels.bench``).

Built on the harness in qlccomm/bench.py (interleaved rounds, wall and process-CPU
timing, the reference cases, the tables); what is here is kernel-specific.

Default mode: each backend (``--backends``, forced through ``QLCCOMM_KERNELS`` for
each call) through the public API (``qlccomm.compress`` / ``qlccomm.decompress``) with
a referenced codebook and an adaptive one, and its codec section alone
(``encode_section`` / ``decode_section``: no stream header, no copy in ``compress``,
no parsing), against `clone`, `copy_` and (on the CPU) zstd level 1 of the same
bytes in the same rounds.  Reports medians over rounds (``--best``: also the best
round) of GB/s (uncompressed bytes per second) by wall clock and by process CPU time
(with one thread, CPU time is immune to time-slicing on a shared machine), and of
the speed relative to `clone` in the same round.

``--parts``: the native QLC kernels one by one (bf16, CPU), milliseconds and GB/s.
``--host-planning``: the host time per call that the fused paths spend planning,
in milliseconds.

Data (``--data``): ``qlccomm.datagen.synthetic`` (its docstring documents the
distributions), ``weights`` its weight-like and ``grads`` its gradient-like kind,
seed 0.  docs/benchmarks.md holds the figures.
"""
from __future__ import annotations

import argparse
import os
import statistics

import torch

import qlccomm
from qlccomm.bench import (Case, Column, assert_bit_exact, clone_case, copy_case, format_table, gbps, host_bytes,
                           interleaved, tensor_bytes, zstd_case)
from qlccomm.datagen import synthetic

DATA_KINDS = {"weights": "weight", "grads": "grad"}
PICKS = {"median": (statistics.median, statistics.median), "best": (min, max)}   # (seconds, speed ratios)


def make_data(kind: str, nbytes: int, dtype: torch.dtype, seed: int = 0) -> torch.Tensor:
    """`nbytes` bytes of `dtype` from qlccomm.datagen ("weights" or "grads")."""
    if kind not in DATA_KINDS:
        raise ValueError(f"--data is one of {', '.join(DATA_KINDS)}, not {kind!r}")
    return synthetic(DATA_KINDS[kind], dtype, nbytes // dtype.itemsize, seed)


def _use(backend: str) -> None:
    os.environ["QLCCOMM_KERNELS"] = backend


def _section(blob: torch.Tensor, x: torch.Tensor, cb):
    """(header, parsed QLC section) of `blob`, the stream of `x` with codebook `cb`."""
    from qlccomm import qlc
    from qlccomm.format import ByteSource, parse_header

    src = ByteSource(blob)
    header = parse_header(src.read(0, 21 + 8 * x.dim()))
    return header, qlc.parse_section(src, header.nbytes, header.numel, x.dtype, cb)


def backend_cases(x: torch.Tensor, cb, backends: tuple[str, ...], adaptive: bool) -> list[Case]:
    """Per backend: the API with codebook `cb` (and adaptive), then the section calls alone."""
    from qlccomm import kernels, qlc

    n = tensor_bytes(x)
    cases = []
    modes = [("codebook", cb)] + ([("adaptive", None)] if adaptive else [])
    for b in backends:
        for mode, c in modes:
            _use(b)
            blob = qlccomm.compress(x, codebook=c)
            assert_bit_exact(qlccomm.decompress(blob, codebook=cb), x, f"qlc/{b}/{mode}")
            cases.append(Case(f"qlc/{b}/{mode}", n,
                              lambda c=c, b=b: (_use(b), qlccomm.compress(x, codebook=c)),
                              lambda blob=blob, b=b: (_use(b), qlccomm.decompress(blob, codebook=cb)),
                              blob.numel()))
    flat = x.reshape(-1)
    for b in backends:
        _use(b)
        impl = kernels.implementation("qlc", x.device) or qlc
        blob = qlccomm.compress(x, codebook=cb)
        header, sec = _section(blob, x, cb)
        cases.append(Case(f"qlc/{b}/codebook/section", n,
                          lambda impl=impl: impl.encode_section(flat, cb.plan_obj, cb),
                          lambda impl=impl, sec=sec, header=header, blob=blob: impl.decode_section(sec, blob, header),
                          blob.numel()))
    return cases


def run(mib: float = 64, rounds: int = 7, threads: int = 1, data: str = "weights",
        dtype: torch.dtype = torch.bfloat16, backends: tuple[str, ...] = ("native", "torch"),
        adaptive: bool = True, device: str = "cpu", best: bool = False) -> None:
    """Print the default-mode tables for `mib` MiB of `data` on `device`: `rounds`
    interleaved rounds, GB/s by wall clock and CPU time, and speed relative to `clone`."""
    torch.set_num_threads(threads)
    x = make_data(data, int(mib * (1 << 20)), dtype).to(device)
    cb = qlccomm.fit_codebook(x)
    clone = clone_case(x)
    cases = [clone, copy_case(x)]
    if x.device.type == "cpu":                   # zstd only where the bytes are: on the CPU
        cases.append(zstd_case(host_bytes(x), 1))
    cases += backend_cases(x, cb, backends, adaptive)
    # no warm-up round: the round trips above already ran every codec once
    interleaved(cases, rounds, x.device, warmup=0)
    os.environ.pop("QLCCOMM_KERNELS", None)

    columns = [Column("case", 28, align="<"), Column("ratio", 7), Column("enc GB/s", 10), Column("dec GB/s", 9),
               Column("enc cpu", 10), Column("dec cpu", 9), Column("enc/clone", 11), Column("dec/clone", 10)]
    for label in ("median", "best") if best else ("median",):
        pick, pick_rel = PICKS[label]

        def rel(wall: list[float]) -> float | None:
            return pick_rel([c / t for c, t in zip(clone.enc.wall, wall)]) if wall else None

        print(f"# {mib} MiB {str(dtype).removeprefix('torch.')} {data} on {x.device}, {threads} CPU thread(s), "
              f"{label} of {rounds} interleaved rounds; GB/s = uncompressed bytes / s")
        rows = [[c.name, c.ratio(), gbps(c.in_bytes, c.enc.wall, pick), gbps(c.in_bytes, c.dec.wall, pick),
                 gbps(c.in_bytes, c.enc.cpu, pick), gbps(c.in_bytes, c.dec.cpu, pick), rel(c.enc.wall),
                 rel(c.dec.wall)] for c in cases]
        print("\n".join(format_table(columns, rows)))


def _print_ms(title: str, cases: list[Case], gb: bool) -> None:
    """`title`, then the median and best milliseconds of each case's encode (each with GB/s if `gb`)."""
    columns = [Column("case", 30, align="<")]
    for label in PICKS:
        columns += [Column(f"{label} ms", 10, ".2f")] + ([Column("GB/s", 9)] if gb else [])
    rows = []
    for c in cases:
        row: list[object] = [c.name]
        for pick, _ in PICKS.values():
            s = pick(c.enc.wall)
            row += [s * 1e3] + ([gbps(c.in_bytes, [s])] if gb else [])
        rows.append(row)
    print(title)
    print("\n".join(format_table(columns, rows)))


def parts(mib: float = 64, rounds: int = 9, data: str = "weights") -> None:
    """Where the native QLC encode and decode time goes, one thread, referenced codebook:
    each kernel timed alone (interleaved rounds), outputs into already-touched buffers,
    against the whole section calls (fresh output) and zstd-1; milliseconds and GB/s."""
    import numpy as np

    from qlccomm import qlc

    from . import common, native_qlc as nq

    torch.set_num_threads(1)
    x = make_data(data, int(mib * (1 << 20)), torch.bfloat16)
    cb = qlccomm.fit_codebook(x)
    pb, chunk = cb.plan_obj, qlc.CHUNK_ELEMS
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
    lay = common.encode_layout(n, chunk, pb, cb, False, bits, nz)
    o = np.zeros(lay.total, np.uint8)
    b = lay.bases
    pairs = nq._pair_table(cb, pb)

    def encode(raw_bits, ptab=pairs):
        nq.qlc_encode(xa, chunk, pb.ssh, pb.smask, pb.rsh, pb.rhi, pb.rlo, pb.symbol_bits, raw_bits, enc, ptab,
                      lay.table, o, b["prefix"], b["symbol"], b["suffix"], b["raw"], lay.n_nz, check)

    blob = qlccomm.compress(x, codebook=cb)
    header, sec = _section(blob, x, cb)
    dl = common.decode_layout(sec)
    dtab, w4 = common.decode_tables(cb, pb)
    out = np.zeros(n, np.uint16)
    flags = np.zeros(K, np.int32)
    d, e = dl.bases, dl.ends

    def decode(raw_bits):
        nq.qlc_decode(blob.numpy(), out, chunk, pb.ssh, pb.rsh, pb.rhi, pb.rlo, pb.symbol_bits, raw_bits, dtab, w4,
                      tabs["wpack"], dl.table, d["prefix"], e["prefix"], d["symbol"], e["symbol"], d["suffix"],
                      d["raw"], e["raw"], dl.n_nz, flags)

    nb = tensor_bytes(x)
    kernels = {
        "qlc_stats (suffix bits)": stats,
        "qlc_encode": lambda: encode(pb.raw_bits),
        "qlc_encode, no raw plane": lambda: encode(0),
        "qlc_encode, 1 code per lookup": lambda: encode(pb.raw_bits, nq._NO_PAIRS),
        "encode_section (fresh out)": lambda: nq.encode_section(x, pb, cb),
        "qlc_decode": lambda: decode(pb.raw_bits),
        "qlc_decode, no raw merge": lambda: decode(0),
        "decode_section (fresh out)": lambda: nq.decode_section(sec, blob, header),
    }
    cases = [Case(name, nb, fn) for name, fn in kernels.items()]
    zstd = zstd_case(host_bytes(x), 1)
    if zstd.encode is not None:
        cases.append(Case("zstd-1 compress", nb, zstd.encode))
    interleaved(cases, rounds)
    _print_ms(f"# {mib} MiB bfloat16 {data}, 1 thread, {rounds} interleaved rounds: median and best "
              "(least disturbed); GB/s = uncompressed bytes / s", cases, gb=True)


def host_planning(mib: float = 256, rounds: int = 9) -> None:
    """Host time per call that the fused paths spend outside their kernels on a bf16 tensor
    of `mib` MiB (chunk planning from per-chunk statistics; parsing and planning a stream),
    in milliseconds: a floor under every backend's time per call, whatever the device."""
    import numpy as np

    from qlccomm import qlc
    from qlccomm.format import ByteSource

    from . import common

    x = make_data("weights", int(mib * (1 << 20)), torch.bfloat16)
    cb = qlccomm.fit_codebook(x)
    blob = qlccomm.compress(x, codebook=cb)
    header, sec = _section(blob, x, cb)
    K = sec.layout.modes.numel()
    bits = sec.layout.suffix_len.numpy().astype(np.int64) * 8
    nz = np.ones(K, np.bool_)
    nb = tensor_bytes(x)
    cases = [
        Case("encode_layout", nb,
             lambda: common.encode_layout(x.numel(), qlc.CHUNK_ELEMS, cb.plan_obj, cb, False, bits, nz)),
        Case("parse_section", nb,
             lambda: qlc.parse_section(ByteSource(blob), header.nbytes, header.numel, x.dtype, cb)),
        Case("decode_layout", nb, lambda: common.decode_layout(sec)),
    ]
    interleaved(cases, rounds)
    _print_ms(f"# host planning, {mib} MiB bfloat16 weights ({K} chunks), median and best of {rounds} "
              "interleaved rounds", cases, gb=False)


def main(argv: list[str] | None = None) -> None:
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
