"""The Triton kernels on a CUDA device against the torch path on the same device, at sizes
the interpreter cannot reach (tens of MiB, thousands of programs, the grid loop past
MAX_PROGRAMS): same section bytes, bit-exact decodes, the same FormatError for corrupt
streams.  Skipped without a CUDA device (CI has none); launch/gpu_bench.sh runs it.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import qlccomm
from qlccomm import enec, kernels, qlc

import kernel_cases as kc

if not torch.cuda.is_available():
    pytest.skip("needs a CUDA device", allow_module_level=True)
pytest.importorskip("triton")

from qlccomm.kernels import triton_enec as te, triton_qlc as tq  # noqa: E402

DEV = torch.device("cuda")
MIB = 1 << 20


def _big(dtype: torch.dtype, nbytes: int, seed: int) -> torch.Tensor:
    """Weight-like values with all-zero, random-bit and upcast chunks (QLCW raw shifts) and
    special values in between."""
    n = nbytes // torch.empty(0, dtype=dtype).element_size()
    g = torch.Generator().manual_seed(seed)
    x = kc.coded_like(n, dtype, g)
    c = qlc.CHUNK_ELEMS
    x[5 * c:9 * c] = 0
    x[20 * c:21 * c] = kc.raw_like(c, dtype, g)
    if dtype.is_floating_point and dtype.itemsize > 1:
        x[30 * c:40 * c] = kc.upcast_like(10 * c, dtype, g)
    if dtype in kc.ENEC_DTYPES:
        x = kc.specials(x, seed)
    return x.to(DEV)


@pytest.mark.parametrize("case", kc.PLAN_CASES, ids=kc.case_id)
@pytest.mark.parametrize("adaptive", [True, False], ids=["adaptive", "codebook"])
def test_qlc_large_matches_torch_path(case, adaptive):
    dtype, plan = case
    x = _big(dtype, 64 * MIB, seed=1)
    cb = None if adaptive else kc.plan_codebook(x.cpu(), plan)
    kc.assert_same_encoding(tq, x, plan, cb, embed=adaptive)


def test_qlc_grid_loop():
    """More chunks than MAX_PROGRAMS: programs loop over chunks."""
    n = (tq.MAX_PROGRAMS + 777) * 256
    x = _big(torch.bfloat16, 2 * n, seed=2)
    kc.assert_same_encoding(tq, x, "bf16_exp", None, embed=True, chunk=256)


@pytest.mark.parametrize("dtype", kc.ENEC_DTYPES, ids=str)
def test_enec_large_matches_torch_path(dtype):
    x = _big(dtype, 64 * MIB, seed=3).reshape(-1)
    ref = enec.encode_section(x)
    got = te.encode_section(x)
    assert torch.equal(ref, got), f"{dtype}: sections differ"
    blob = kc.enec_stream(got, x).to(DEV)
    y = qlccomm.decompress(blob)
    assert torch.equal(y.view(torch.uint8), x.view(torch.uint8))


@pytest.mark.parametrize("codec", ["qlc", "enec"])
def test_api_round_trip_on_device(codec):
    x = _big(torch.bfloat16, 16 * MIB, seed=4).reshape(256, -1)
    assert kernels.backend_for(x.device, codec) == "triton"
    assert codec != "qlc" or kernels.backend_for(x.device, "qlcw") == "triton"
    blob = qlccomm.compress(x, codec=codec)
    written = {"qlc": "qlcw", "enec": "enec"}[codec]     # bf16 under codec="qlc": a QLCW section
    assert blob.device.type == "cuda" and qlccomm.inspect(blob.cpu())["codec"] == written
    assert torch.equal(qlccomm.decompress(blob).view(torch.uint8), x.view(torch.uint8))


@pytest.mark.parametrize("codec", ["qlc", "enec"])
def test_fuzzed_streams_fail_alike(codec):
    """Corrupt streams on the device: the Triton decoder and the torch path agree
    (same FormatError message, or the same decoded bytes)."""
    x = _big(torch.bfloat16, 1 * MIB, seed=5)
    blob = qlccomm.compress(x, codec=codec).cpu()
    rng = np.random.default_rng(6)
    for bad in kc.corruptions(blob, _parsed(blob), rng, 40):
        t = torch.frombuffer(bytearray(bad), dtype=torch.uint8).to(DEV) if bad else torch.empty(0, dtype=torch.uint8,
                                                                                                   device=DEV)
        got = [_outcome(t, backend) for backend in ("triton", "torch")]
        assert got[0] == got[1]


def _parsed(blob: torch.Tensor):
    from qlccomm.api import _parse
    from qlccomm.format import ByteSource
    return _parse(ByteSource(blob))[1]


def _outcome(blob: torch.Tensor, backend: str):
    with kc.kernels_env(backend):
        try:
            y = qlccomm.decompress(blob)
        except qlccomm.FormatError as e:
            return ("error", str(e))
    return ("ok", y.reshape(-1).view(torch.uint8).cpu().numpy().tobytes())


@pytest.mark.parametrize("dtype,lo,w,g", [(torch.bfloat16, 7, 8, 2), (torch.float16, 8, 7, 2),
                                          (torch.float32, 23, 8, 2), (torch.float8_e4m3fn, 0, 8, 1)])
def test_qlcw_large_matches_torch_path(dtype, lo, w, g):
    """QLCW at 64 MiB: one code, and (single fields) 8 codes over groups of chunks; the same
    section bytes as the torch path on the device, and bit-exact decodes of it."""
    from qlccomm import qlcw
    from qlccomm.format import CODEC_QLCW, Header
    from qlccomm.kernels import triton_qlcw as tw
    x = _big(dtype, 64 * MIB, seed=3)
    f = qlcw.Fields(lo, w, g)
    codes = [None]
    if g == 1:
        codes += [cs for _, cs in qlcw.cluster_codes(qlcw.chunk_histograms(x, lo, w), f)]
    for code in codes:
        ref = qlcw.encode_section(x, f, code)
        assert torch.equal(tw.encode_section(x, f, code), ref)
        head = Header(CODEC_QLCW, dtype, (x.numel(),), version=qlcw.section_version(int(ref[3]))).encode()
        blob = torch.cat([torch.frombuffer(bytearray(head), dtype=torch.uint8).to(DEV), ref])
        with kc.kernels_env("triton"):
            assert torch.equal(qlccomm.decompress(blob).view(torch.uint8), x.view(torch.uint8))
