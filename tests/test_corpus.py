"""Format v1 stays put: the recorded streams (tests/corpus.py) decode to their inputs on every
CPU backend, and today's encoders write exactly the recorded bytes for the same inputs."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import corpus
import qlccomm
from qlccomm import kernels
from qlccomm.format import CODEC_NAMES, parse_header

MANIFEST, ARRAYS = corpus.load()
BACKENDS = [b for b in ("torch", "native") if kernels.available(b, "qlc")]


def _books() -> dict:
    return {k.removeprefix("codebook_"): qlccomm.Codebook.from_json(json.loads(v.tobytes()))
            for k, v in ARRAYS.items() if k.startswith("codebook_")}


def _input(case):
    raw = torch.from_numpy(ARRAYS[case["input"]].copy())
    dtype = corpus.dtype_of(case["dtype"])
    if raw.numel() == 0:
        return torch.empty(case["shape"], dtype=dtype)
    return raw.view(dtype).reshape(case["shape"])


@pytest.fixture(params=BACKENDS)
def backend(request, monkeypatch):
    monkeypatch.setenv(kernels.ENV, request.param)
    return request.param


def test_the_corpus_covers_every_codec_dtype_and_mode():
    seen = {(c["codec"], c["dtype"], c.get("codebook"), c["checksum"]) for c in MANIFEST}
    assert len(MANIFEST) >= 60
    assert {c["dtype"] for c in MANIFEST} >= {"bfloat16", "float16", "float32", "float8_e4m3fn", "float8_e5m2",
                                              "int8", "uint8", "int32", "float64"}
    assert {m for _, _, m, _ in seen} >= {"adaptive", "default", "fitted", None}
    assert {CODEC_NAMES[parse_header(ARRAYS[f"stream_{c['id']}"].tobytes()).codec]
            for c in MANIFEST} == {"qlc", "enec", "raw"}


def test_inputs_are_what_the_generator_makes():
    for case in MANIFEST:
        assert torch.equal(_input(case).reshape(-1).view(torch.uint8),
                           corpus.make_input(case).reshape(-1).view(torch.uint8)), case


def test_recorded_streams_decode_to_their_inputs(backend):
    books = _books()
    for case in MANIFEST:
        blob = torch.from_numpy(ARRAYS[f"stream_{case['id']}"].copy())
        cb = books.get(case["dtype"]) if case.get("codebook") == "fitted" else None
        got = qlccomm.decompress(blob, codebook=cb)
        want = _input(case)
        assert got.dtype == want.dtype and got.shape == want.shape, case
        assert torch.equal(got.reshape(-1).view(torch.uint8), want.reshape(-1).view(torch.uint8)), (backend, case)


def test_todays_encoders_write_the_recorded_bytes(backend):
    """Every recorded stream is what today's writer makes, except that adaptive coding now
    writes a QLCW stream (format v2) where its pair code is smaller: for those cases the QLC
    section the writer weighed against it is the recorded one, byte for byte."""
    books = _books()
    wide = 0
    for case in MANIFEST:
        x = _input(case)
        blob = corpus.compress_case(case, x, books)
        recorded = torch.from_numpy(ARRAYS[f"stream_{case['id']}"])
        if CODEC_NAMES[parse_header(blob.numpy().tobytes()).codec] == "qlcw":
            assert case["codec"] == "qlc" and case["codebook"] == "adaptive" and not case["checksum"], case
            assert torch.equal(qlccomm.decompress(blob).reshape(-1).view(torch.uint8),
                               x.reshape(-1).view(torch.uint8)), case
            hlen = parse_header(recorded.numpy().tobytes()).nbytes
            section = qlccomm.codecs.get("qlc").encode(x.reshape(-1), None, reserve=0, into=None)
            assert torch.equal(section, recorded[hlen:]), (backend, case)
            wide += 1
        else:
            assert torch.equal(blob, recorded), (backend, case)
    assert wide >= 5


def test_the_fitted_codebooks_are_reproduced():
    for name, cb in _books().items():
        assert corpus.fitted_codebook(corpus.dtype_of(name)).digest == cb.digest, name


def test_default_and_referenced_streams_decode_in_a_fresh_process(tmp_path):
    """A process that has loaded nothing decodes the default-codebook streams, and the
    referenced ones once given their codebook."""
    script = Path(__file__).resolve().parent / "corpus.py"
    code = f"""
import json, sys, torch
sys.path.insert(0, {str(script.parent)!r})
import corpus, qlccomm
manifest, arrays = corpus.load()
books = {{k.removeprefix("codebook_"): qlccomm.Codebook.from_json(json.loads(v.tobytes()))
         for k, v in arrays.items() if k.startswith("codebook_")}}
n = 0
for c in manifest:
    if c.get("codebook") not in ("default", "fitted"):
        continue
    blob = torch.from_numpy(arrays["stream_" + c["id"]].copy())
    got = qlccomm.decompress(blob, codebook=books[c["dtype"]] if c["codebook"] == "fitted" else None)
    assert torch.equal(got.reshape(-1).view(torch.uint8), torch.from_numpy(arrays[c["input"]].copy())), c
    n += 1
print(n)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                         env=dict(os.environ, PYTHONPATH=os.pathsep.join(sys.path)))
    assert out.returncode == 0, out.stderr[-3000:]
    assert int(out.stdout.strip()) >= 14
