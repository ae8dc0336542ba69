"""The Triton QLC and ENEC kernels without a GPU.

1. tests/triton_interpreted_cases.py (QLC) and tests/triton_enec_interpreted_cases.py
   (ENEC), each run in a subprocess under TRITON_INTERPRET=1 (Triton's interpreter on
   CPU tensors): every plan / dtype and block or chunk mode, small and odd sizes,
   offsets carried between steps, the public API with QLCCOMM_KERNELS=triton, crafted
   and fuzzed corrupt streams -- all against the torch path.  A subprocess because the
   variable must be set before triton.language is imported; the rest of the suite
   keeps the normal JIT.
2. Every kernel specialisation compiles to an sm_90 (H100) cubin with Triton's own
   ptxas: catches what the interpreter does not check (loop-carried types, layouts).
"""
from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

HERE = Path(__file__).resolve().parent
MODULE = "qlccomm.kernels.triton_qlc"
ENEC_MODULE = "qlccomm.kernels.triton_enec"


def _run_interpreted(cases: str) -> None:
    env = dict(os.environ, TRITON_INTERPRET="1", TRITON_DEFAULT_FP_FUSION="1")
    env.pop("QLCCOMM_KERNELS", None)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--durations=5",
                        str(HERE / cases)],
                       cwd=HERE.parent, env=env, capture_output=True, text=True, timeout=600)
    print(r.stdout[-6000:], r.stderr[-3000:])
    assert r.returncode == 0, f"interpreted Triton cases failed:\n{r.stdout[-6000:]}\n{r.stderr[-3000:]}"
    assert " passed" in r.stdout and "skipped" not in r.stdout.splitlines()[-1]


def test_interpreted_kernels_match_torch_path():
    _run_interpreted("triton_interpreted_cases.py")


def test_interpreted_enec_kernels_match_torch_path():
    _run_interpreted("triton_enec_interpreted_cases.py")


def test_interpreted_qlcw_kernels_match_torch_path():
    """kernels/triton_qlcw.py (QLCW) against qlccomm.qlcw: tests/triton_qlcw_interpreted_cases.py."""
    _run_interpreted("triton_qlcw_interpreted_cases.py")


def test_compiles_for_cuda_sm90():
    """Every kernel specialisation the host code launches compiles to an sm_90 cubin
    (Triton's bundled ptxas; no GPU needed).  Uses the real (not interpreted) kernels."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this process runs Triton's interpreter")
    mod = importlib.import_module(MODULE)
    from qlccomm.split import PLANS

    target = GPUTarget("cuda", 90, 32)
    i64 = "i64"
    for name in ("bf16_exp", "fp16_exp", "fp32_exp", "byte"):
        pb = PLANS[name]
        elem = {0: "*u8", 1: "*i16", 2: "*i32"}[pb.kind]
        plan_c = dict(SSH=pb.ssh, RSH=pb.rsh, RHI=pb.rhi, RLO=pb.rlo, SYM_BITS=pb.symbol_bits, RAW_BITS=pb.raw_bits,
                      SUB=1024)
        specs = [
            (mod._qlc_stats, dict(x_ptr=elem, enc_ptr="*i32", stat_ptr="*i32", sym_ptr="*u8", n=i64, chunk="i32",
                                  nchunks="i32", nprog="i32"),
             dict(SSH=pb.ssh, SMASK=pb.smask, WITH_LEN=True, WRITE_SYM=True, SUB=1024)),
            (mod._qlc_encode, dict(x_ptr=elem, enc_ptr="*i32", tab_ptr="*i64", out_ptr="*u8", scr_ptr="*u8", n=i64,
                                   chunk="i32", nchunks="i32", nprog="i32", pbase=i64, ybase=i64, rbase=i64, n_nz=i64),
             dict(plan_c, SMASK=pb.smask)),
            (mod._qlc_decode, dict(data_ptr="*u8", dec_ptr="*i16", tab_ptr="*i64", out_ptr=elem, err_ptr="*i32",
                                   chunk="i32", nchunks="i32", nprog="i32", pbase=i64, pend=i64, ybase=i64, yend=i64,
                                   sbase=i64, rbase=i64, rend=i64, n_nz=i64, wpack=i64), plan_c),
        ]
        if name == "bf16_exp":
            specs.append((mod._qlc_suffix_diff, dict(scr_ptr="*u8", tab_ptr="*i64", out_ptr="*u8", sbase=i64,
                                                     chunk="i32", nchunks="i32", nprog="i32"), dict(SUB=1024)))
        for fn, sig, consts in specs:
            sig = dict(sig, **{k: "constexpr" for k in consts})
            triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=target,
                           options={"num_warps": mod.NUM_WARPS})


def test_enec_compiles_for_cuda_sm90():
    """Every ENEC kernel specialisation the host code launches (per dtype; the writer's
    L = 16, steps of SUB_MAX) compiles to an sm_90 cubin with Triton's ptxas."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this process runs Triton's interpreter")
    mod = importlib.import_module(ENEC_MODULE)
    from qlccomm.split import PLANS

    target = GPUTarget("cuda", 90, 32)
    i64, i32 = "i64", "i32"
    sub = mod.SUB_MAX
    for name in ("bf16_exp", "fp16_exp", "fp32_exp"):
        pb = PLANS[name]
        elem = {1: "*i16", 2: "*i32"}[pb.kind]
        split = dict(SSH=pb.ssh, RSH=pb.rsh, RHI=pb.rhi, RLO=pb.rlo, RAW_BITS=pb.raw_bits)
        specs = [
            (mod._enec_stats, dict(x_ptr=elem, nz_ptr="*i64", part_ptr="*i32", n=i64, B=i32, nblocks=i32,
                                   nprog=i32), dict(SSH=pb.ssh, SMASK=pb.smask, SUB=sub)),
            (mod._enec_count, dict(x_ptr=elem, tab_ptr="*i64", ctab_ptr="*i32", cnt_ptr="*i32", B=i32, m=i32,
                                   nrows=i32, nprog=i32), dict(SSH=pb.ssh, SMASK=pb.smask, L=16, SUB=sub)),
            (mod._enec_write, dict(x_ptr=elem, tab_ptr="*i64", ctab_ptr="*i32", out_ptr="*u8", xpos_ptr="*i32",
                                   xexp_ptr="*i32", B=i32, m=i32, wh=i32, nrows=i32, nprog=i32, flag_base=i64,
                                   low_base=i64, high_base=i64, raw_base=i64, Nr=i64),
             dict(split, SMASK=pb.smask, L=16, SUB=sub)),
            (mod._enec_decode, dict(data_ptr="*u8", tab_ptr="*i64", fo_ptr="*i64", fcnt_ptr="*i32",
                                    etab_ptr="*i32", out_ptr=elem, err_ptr="*i32", B=i32, L=i32, m=i32, wh=i32,
                                    F=i64, use_flags=i32, ncoded=i32, nrows=i32, nprog=i32, flag_lo=i64,
                                    flag_hi=i64, low_lo=i64, low_hi=i64, high_lo=i64, high_hi=i64, raw_lo=i64,
                                    raw_hi=i64, Nr=i64), dict(split, LP=16, SUB=sub)),
            (mod._enec_exc_apply, dict(data_ptr="*u8", tab_ptr="*i64", out_ptr=elem, err_ptr="*i32", B=i32, X=i64,
                                       P=i32, E=i32, nrows=i32, nprog=i32, xp_lo=i64, xp_hi=i64, xe_lo=i64,
                                       xe_hi=i64), dict(SSH=pb.ssh, EMASK=~(pb.smask << pb.ssh), SUB=sub)),
        ]
        if name == "bf16_exp":          # dtype-independent kernels
            specs += [
                (mod._enec_exc_pack, dict(xpos_ptr="*i32", xexp_ptr="*i32", out_ptr="*u8", X=i64, pos_base=i64,
                                          exp_base=i64, P=i32, E=i32, nchunks=i32, nprog=i32), dict(SUB=sub)),
                (mod._enec_flag_count, dict(data_ptr="*u8", tab_ptr="*i64", cnt_ptr="*i32", flag_lo=i64,
                                            flag_hi=i64, nrows=i32, nprog=i32), dict(SUB=sub)),
            ]
        for fn, sig, consts in specs:
            sig = dict(sig, **{k: "constexpr" for k in consts})
            triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=target,
                           options={"num_warps": mod.NUM_WARPS})


@pytest.mark.parametrize("blocks", [3, 13])
def test_enec_device_search_matches_host_search(blocks):
    """triton_enec's search as it runs on an accelerator (sample split and flagged groups
    counted with torch ops where the tensor lives, enec.flagged_counts) picks what the
    host search picks; here on CPU tensors (no kernel launched).  3 blocks: exact search;
    13: sampled."""
    import numpy as np

    from qlccomm import enec
    from qlccomm.kernels import triton_enec as te

    import kernel_cases as kc

    for dtype in kc.ENEC_DTYPES:
        t = kc.specials(kc.weights(blocks * enec.BLOCK_ELEMS + 77, dtype, seed=blocks), seed=1)
        geo = enec.Geometry(t.numel(), enec.BLOCK_ELEMS, enec.GROUP_ELEMS)
        cod = enec.Coded(geo, list(range(geo.KA)), bool(geo.tail))
        E = enec.PLAN_OF[dtype].symbol_bits
        hist = np.bincount(enec._split(t)[0].numpy(), minlength=1 << E).astype(np.int64)
        a = te._search(t, hist, geo, cod, E, on_host=True)
        b = te._search(t, hist, geo, cod, E, on_host=False)
        assert (a.b, a.n, a.m, a.X, a.cost) == (b.b, b.n, b.m, b.X, b.cost)


@pytest.mark.parametrize("dtype,f", [("bf16", (7, 8, 2)), ("fp16", (8, 7, 1)), ("fp32", (23, 8, 2)),
                                     ("fp32", (0, 1, 1)), ("e4m3", (0, 8, 2))], ids=str)
def test_qlcw_compiles_for_cuda_sm90(dtype, f):
    """The QLCW kernels as encode_section / decode_section / the histograms launch them (statistics with raw
    low bits, encoder and decoder with and without raw shifts; fp32 (0, 1, 1): 31 raw bits)
    compile to an sm_90 cubin with Triton's ptxas: what the interpreter does not check
    (a variable whose type a branch changes, layouts)."""
    triton = pytest.importorskip("triton")
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    if os.environ.get("TRITON_INTERPRET") == "1":
        pytest.skip("this process runs Triton's interpreter")
    import torch

    from qlccomm import qlcw
    from qlccomm.kernels import triton_qlcw as tw

    torch_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32,
                   "e4m3": torch.float8_e4m3fn}[dtype]
    fields = qlcw.Fields(*f)
    plan = fields.plan(8 * torch_dtype.itemsize)
    elem = {1: "*u8", 2: "*i16", 4: "*i32"}[torch_dtype.itemsize]
    i64 = "i64"
    split = tw._split_consts(fields, plan)
    sub = tw.SUB_MAX
    raw = plan.raw_bits > 0
    specs = [(tw._qlcw_stats, dict(x_ptr=elem, enc_ptr="*i32", code_ptr="*i32", stat_ptr="*i32", low_ptr="*i32",
                                   n=i64, chunk="i32", nchunks="i32", nprog="i32"),
              dict(LO=fields.lo, W=fields.w, G=fields.g, S=fields.symbol_bits, RSH=plan.rsh, RHI=plan.rhi,
                   RLO=plan.rlo, RAW=raw, SUB=sub)),
             (tw._qlcw_hist, dict(x_ptr=elem, hist_ptr="*i32", n=i64, chunk="i32", nchunks="i32", nprog="i32"),
              dict(LO=fields.lo, W=fields.w, G=fields.g, SUB=sub, COPIES=tw.HIST_COPIES))]
    if fields.g == 1 and fields.w <= 8:
        specs += [(tw._qlcw_chunk_hist, dict(x_ptr=elem, hist_ptr="*i32", n=i64, chunk="i32", nchunks="i32",
                                             nprog="i32"), dict(LO=fields.lo, W=fields.w, SUB=sub))]
    for shifted in (False, True) if raw else (False,):
        specs += [
            (tw._qlcw_encode, dict(x_ptr=elem, enc_ptr="*i32", tab_ptr="*i64", shift_ptr="*i32", out_ptr="*u8",
                                   scr_ptr="*u8", chunk="i32", nchunks="i32", nprog="i32", pbase=i64, fbase=i64,
                                   rbase=i64, n_nz=i64),
             dict(split, SHIFTED=shifted, S=fields.symbol_bits, SUB=sub)),
            (tw._qlcw_decode, dict(data_ptr="*u8", wid_ptr="*i32", first_ptr="*i32", rank_ptr="*i32",
                                   info_ptr="*i32", tab_ptr="*i64", shift_ptr="*i32", out_ptr=elem, err_ptr="*i32",
                                   chunk="i32", nchunks="i32", nprog="i32", pbase=i64, pend=i64, fbase=i64,
                                   fend=i64, sbase=i64, rbase=i64, rend=i64, n_nz=i64),
             dict(split, SHIFTED=shifted, ESC=True, SUB=sub)),
        ]
    for fn, sig, consts in specs:
        sig = dict(sig, **{k: "constexpr" for k in consts})
        k = triton.compile(ASTSource(fn=fn, signature=sig, constexprs=consts), target=GPUTarget("cuda", 90, 32),
                           options={"num_warps": tw.NUM_WARPS})
        if fn in (tw._qlcw_hist, tw._qlcw_chunk_hist):     # counts added without ordering: red, not atom
            assert "red.global.gpu.relaxed.add" in k.asm["ptx"] and "acq_rel" not in k.asm["ptx"], fn.__name__
