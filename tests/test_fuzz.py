"""qlccomm.fuzz: a short seeded campaign meets no bad outcome and sees typed errors for every
codec; the classifier calls bad outcomes bad (real streams, real decodes, no mocks)."""
import json
import subprocess
import sys

import pytest
import torch

import qlccomm
from qlccomm import fuzz

BACKENDS = fuzz._backends()


def campaign(out, *args, timeout=240):
    proc = subprocess.run([sys.executable, "-m", "qlccomm.fuzz", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=timeout)
    return proc, json.loads((out / "summary.json").read_text())


def test_short_campaign(tmp_path):
    proc, summary = campaign(tmp_path, "--seconds", "45", "--workers", "2", "--seed", "11")
    report = proc.stdout + proc.stderr[-4000:]
    assert summary["backends"] == BACKENDS, report
    for codec in fuzz.CODECS:
        assert summary["counts"][codec]["error"] > 0, f"no typed error seen for {codec}\n{report}"
    total = {o: sum(c[o] for c in summary["counts"].values()) for o in fuzz.GOOD + fuzz.BAD}
    assert total["same"] > 0 and total["differs"] > 0, report
    assert summary["streams"] >= 200, report
    assert proc.returncode == 0 and not summary["bad"], report


def test_a_hung_case_is_killed_recorded_and_fails_the_run(tmp_path):
    """A per-case timeout that a decode can hardly meet: a case is a hang (its worker killed and,
    while there is work, replaced), each hang gets a reproducer, and the exit status is 1.
    (A result already waiting when the parent looks is taken, so not every case need hang.)"""
    proc, summary = campaign(tmp_path, "--streams", "6", "--workers", "1", "--timeout", "0.0001", "--seed", "3")
    assert proc.returncode == 1, proc.stdout + proc.stderr[-4000:]
    hangs = sum(c["hang"] for c in summary["counts"].values())
    assert hangs >= 1 and sum(sum(c.values()) for c in summary["counts"].values()) == 6
    cases = sorted(json.loads(p.read_text())["case"] for p in tmp_path.glob("hang-3-???????.json"))   # not the .codebook.json beside some
    assert len(cases) == hangs
    first = json.loads((tmp_path / f"hang-3-{cases[0]:07d}.json").read_text())
    assert len((tmp_path / f"hang-3-{cases[0]:07d}.bin").read_bytes()) == first["stream_bytes"]
    assert first["replay"] == f"python -m qlccomm.fuzz --seed 3 --case {cases[0]}"


def stream(seed, checksum=True):
    t = (torch.randn(3000, generator=torch.Generator().manual_seed(seed)) * 0.02).to(torch.bfloat16)
    return t, qlccomm.compress(t, codec="qlc", checksum=checksum).numpy().tobytes()


def test_classifier():
    t, blob = stream(1)
    u, other = stream(2)
    digest = fuzz.tensor_digest(t)
    ok = fuzz.run_case(blob, None, None, BACKENDS)
    assert fuzz.classify(ok, digest, guarded=True) == "same"
    assert fuzz.classify(fuzz.run_case(blob[:-1], None, None, BACKENDS), digest, guarded=True) == "error"
    # a guarded stream that decodes to another tensor is undetected corruption; unguarded, it is allowed
    wrong = fuzz.run_case(other, None, None, BACKENDS)
    assert fuzz.classify(wrong, digest, guarded=True) == "undetected"
    assert fuzz.classify(wrong, digest, guarded=False) == "differs"
    assert "undetected" in fuzz.BAD and "differs" in fuzz.GOOD
    # backends that decode differently disagree, whatever they decoded
    assert fuzz.classify({"torch": ok["torch"], "native": wrong["torch"]}, digest, guarded=False) == "disagree"
    assert fuzz.classify({"torch": ok["torch"], "native": fuzz.run_case(blob[:-1], None, None, ["torch"])["torch"]},
                         digest, guarded=False) == "disagree"
    # an untyped exception from decompress (here a TypeError for a list) is bad
    untyped = fuzz.run_case([1, 2, 3], None, None, BACKENDS)
    assert untyped["torch"]["type"] == "builtins.TypeError"
    assert fuzz.classify(untyped, digest, guarded=False) == "exception"
    # a failed allocation is over-allocation, unless it is a typed refusal
    try:
        torch.empty(1 << 60, dtype=torch.uint8)
    except RuntimeError as e:
        facts = fuzz.error_facts(e)
    assert facts == {"typed": False, "memory": True}
    assert fuzz.classify({"torch": {"kind": "raised", **facts}}, digest, guarded=False) == "overalloc"
    assert fuzz.error_facts(qlccomm.CodebookError("x")) == {"typed": True, "memory": False}


@pytest.fixture(scope="module")
def corpus():
    return fuzz.build_corpus(5)


def test_corpus_and_cases(corpus):
    streams, specs, known = corpus
    assert {s["codec"] for s in streams} == set(fuzz.CODECS)
    assert {s["dtype"] for s in streams} >= {"bfloat16", "float16", "float32", "float8_e4m3fn", "float8_e5m2",
                                             "int8", "uint8", "int32", "float64"}
    assert {s["codebook"] for s in streams if s["codec"] == "qlc"} == {"adaptive", "default", "fitted"}
    assert {s["checksum"] for s in streams} == {False, True}
    cbs = fuzz._codebooks(specs)
    for s in streams:          # every base stream decodes to its tensor on every backend
        res = fuzz.run_case(s["blob"], cbs.get(s["cb_key"]), None, BACKENDS)
        assert fuzz.classify(res, s["digest"], guarded=s["checksum"]) == "same", s["index"]
    cases = [fuzz.make_case(5, i, streams, known) for i in range(1000)]
    assert [c["blob"] for c in cases[:50]] == [fuzz.make_case(5, i, streams, known)["blob"] for i in range(50)]
    assert {c["mutation"]["kind"] for c in cases} == set(fuzz.MUTATIONS)
    assert {c["codec"] for c in cases} == set(fuzz.CODECS)
    fieldnames = {c["mutation"].get("field", "").split(".")[0] for c in cases}
    assert {"qlc", "enec", "ndim", "numel", "codec", "dtype"} <= fieldnames
