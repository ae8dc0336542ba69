"""The qlccomm command line: fit, inspect, bench, warmup.

Most tests run the installed console script (the `qlccomm` next to this Python) in a
subprocess, as a user would; a few call `qlccomm.cli.main` in-process.
"""
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import qlccomm
from qlccomm import bench
from qlccomm.cli import kernel_note, main
from qlccomm.codebook import fit_codebook
from qlccomm.datagen import synthetic

QLCCOMM = Path(sys.executable).with_name("qlccomm")


def write_safetensors(path, tensors: dict):
    """A minimal .safetensors writer (u64 header length, JSON header, data)."""
    names = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.float8_e4m3fn: "F8_E4M3",
             torch.int64: "I64"}
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        data = t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def run_cli(*args, env=None, timeout=180):
    """The installed `qlccomm` with `args`; QLCCOMM_DEBUG unset unless `env` sets it."""
    e = {k: v for k, v in os.environ.items() if k != "QLCCOMM_DEBUG"}
    e.update(env or {})
    return subprocess.run([str(QLCCOMM), *map(str, args)], capture_output=True, text=True, timeout=timeout, env=e)


def assert_one_line_error(p, code: int, *words: str):
    assert p.returncode == code, (p.returncode, p.stdout, p.stderr)
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("qlccomm: error: "), p.stderr
    assert "Traceback" not in p.stderr
    for w in words:
        assert w in lines[0], (w, lines[0])


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    """A .safetensors file of bf16, fp32 and e4m3 tensors (plus an int64 one), and a .pt file."""
    d = tmp_path_factory.mktemp("model")
    st = d / "model.safetensors"
    write_safetensors(st, {"w1": synthetic("weight", torch.bfloat16, 30000, 1).reshape(100, 300),
                           "w2": synthetic("weight", torch.bfloat16, 5000, 2),
                           "f": synthetic("weight", torch.float32, 20000, 7),
                           "q": synthetic("weight", torch.float8_e4m3fn, 8000, 3),
                           "ids": torch.arange(10)})
    pt = d / "grads.pt"
    torch.save({"layer": {"g": synthetic("grad", torch.bfloat16, 7000, 4)}, "step": 3}, pt)
    return st, pt


@pytest.fixture(scope="module")
def streams(tmp_path_factory):
    """Stream files: adaptive, by digest of a codebook only a file holds, truncated; the codebook files."""
    d = tmp_path_factory.mktemp("streams")
    t = synthetic("grad", torch.bfloat16, 20000, 5).reshape(200, 100)
    own = fit_codebook(t, transient=True)                 # not registered: this process does not know it
    (d / "own.json").write_text(json.dumps(own.to_json()))
    other = fit_codebook(synthetic("weight", torch.bfloat16, 20000, 9), transient=True)
    (d / "other.json").write_text(json.dumps(other.to_json()))
    adaptive = qlccomm.compress(t).numpy().tobytes()
    (d / "adaptive.qlc").write_bytes(adaptive)
    (d / "truncated.qlc").write_bytes(adaptive[:-10])
    (d / "ref.qlc").write_bytes(qlccomm.compress(t, codebook=own).numpy().tobytes())
    return d, own


# -- conventions: --version, help, one-line errors and exit codes ----------------

def test_version_and_help():
    p = run_cli("--version")
    assert p.returncode == 0 and p.stdout.startswith(f"qlccomm {qlccomm.__version__}"), p
    p = run_cli("bench", "--help")
    assert p.returncode == 0 and "(default: 16.0)" in p.stdout and "--link-gbps" in p.stdout
    assert "(default: cpu)" in p.stdout and "(default: 8)" in p.stdout


def test_usage_errors_exit_2(tmp_path, model):
    st, _ = model
    assert_one_line_error(run_cli("fit", tmp_path / "missing.safetensors", "-o", tmp_path / "cb.json"), 2,
                          "no such file", "missing.safetensors")
    assert_one_line_error(run_cli("bench", "--dtype", "fp64"), 2, "--dtype", "fp64")
    device = "cuda:99" if torch.cuda.is_available() else "cuda"
    assert_one_line_error(run_cli("bench", "--device", device), 2, "--device")
    assert_one_line_error(run_cli("bench", "--repeat", "0"), 2, "--repeat")


@pytest.mark.parametrize("argv, word", [
    (["bench", "--link-gbps", "fast"], "--link-gbps"), (["bench", "--codec", "zip"], "zip"),
    (["bench", "--size-mib", "-1"], "--size-mib"), (["bench", "--dtype", "int64"], "int64"),
    (["fit", "--dtype", "bf16"], "required"), (["inspect"], "required"), (["frobnicate"], "frobnicate"),
    (["fit", __file__, "--group-by", "file", "--kind", "grad", "-o", "x.json"], "--kind"),
    (["bench", "--refresh-autoselect", "--link-gbps", "1"], "--link-gbps")])
def test_more_usage_errors_in_process(argv, word, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("qlccomm: error: ") and word in err[0], err


def test_failures_exit_1(tmp_path, streams):
    d, _ = streams
    p = run_cli("inspect", d / "truncated.qlc")
    assert_one_line_error(p, 1, "truncated.qlc")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 64)
    assert_one_line_error(run_cli("fit", junk, "-o", tmp_path / "cb.json"), 1, "junk.safetensors")
    assert not (tmp_path / "cb.json").exists()
    p = run_cli("inspect", d / "truncated.qlc", env={"QLCCOMM_DEBUG": "1"})   # developers get the traceback
    assert p.returncode == 1 and "Traceback" in p.stderr


def test_fit_output_folder_checked_before_work(tmp_path, model):
    st, _ = model
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\xff" * 64)            # reading it would fail: the folder check comes first
    p = run_cli("fit", st, junk, "-o", tmp_path / "no" / "such" / "cb.json")
    assert_one_line_error(p, 2, "-o", "does not exist")
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if not os.access(ro, os.W_OK):        # root writes anywhere
            assert_one_line_error(run_cli("fit", st, "-o", ro / "cb.json"), 2, "cannot write")
    finally:
        ro.chmod(0o700)


# -- fit -------------------------------------------------------------------------

def test_fit_table_and_json(tmp_path, model):
    st, pt = model
    out = tmp_path / "cb.json"
    p = run_cli("fit", st, pt, "-o", out)
    assert p.returncode == 0, p.stderr
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["tensor", "file", "dtype", "group", "elements", "bits/symbol", "ratio", "fitted",
                                "adaptive"]
    rows = {ln.split()[0]: ln.split() for ln in lines[1:6]}
    assert set(rows) == {"w1", "w2", "f", "q", "layer.g"}
    assert rows["w1"][1:5] == ["model.safetensors", "bfloat16", "weight", "30000"]
    assert rows["layer.g"][1:5] == ["grads.pt", "bfloat16", "grad", "7000"]   # the kind from the file's name
    assert 1.0 < float(rows["f"][6]) < 2.0 and float(rows["q"][5]) > 0
    assert all(float(r[7]) > 1 and float(r[8]) > 1 for r in rows.values())
    assert "skipped 1 tensor: 1 int64 not coded" in p.stdout
    assert "bfloat16 weight: 2 tensors" in p.stdout and "bfloat16 grad: 1 tensors" in p.stdout
    assert "float8_e4m3fn weight: 1 tensors" in p.stdout
    weights, grads = tmp_path / "cb.weight.json", tmp_path / "cb.grad.json"      # one file per group
    assert f"wrote {grads}, {weights}" in p.stdout and not out.exists()
    for dtype in (torch.bfloat16, torch.float32, torch.float8_e4m3fn):
        assert qlccomm.Codebook.load(weights, dtype=dtype).dtype == dtype
    assert qlccomm.Codebook.load(grads).dtype == torch.bfloat16
    assert ("CodebookFitWarning" in p.stderr) == ("warning: " in p.stdout)       # no progress bar otherwise

    p = run_cli("fit", st, "--dtype", "bf16,fp32", "-o", out, "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["output"] == str(out) and info["outputs"] == {"weight": str(out)} and info["group_by"] == "kind"
    assert {c["dtype"] for c in info["codebooks"]} == {"bfloat16", "float32"}
    assert [t["name"] for t in info["tensors"]] == ["w1", "w2", "f"]
    assert {s["name"]: s["reason"] for s in info["skipped"]} == {"q": "not --dtype", "ids": "dtype not coded"}
    assert all(t["ratio"] > 1 and t["bits_per_symbol"] > 0 for t in info["tensors"])
    cb = qlccomm.Codebook.load(out, dtype=torch.bfloat16)
    w1 = synthetic("weight", torch.bfloat16, 30000, 1).reshape(100, 300)         # the real streams' sizes
    t1 = next(t for t in info["tensors"] if t["name"] == "w1")
    assert t1["fitted_bytes"] == qlccomm.compress(w1, codebook=cb).numel()
    assert t1["adaptive_bytes"] == qlccomm.compress(w1).numel()


def test_fit_infers_kinds_from_names():
    from qlccomm.cli import infer_kind
    assert infer_kind("model.layers.0.mlp.weight.grad", "ckpt.pt") == "grad"
    assert infer_kind("w", "grads.pt") == "grad"
    assert infer_kind("hidden_states.3", "run.safetensors") == "activation"
    assert infer_kind("layers.0.self_attn.q_proj.weight", "model.safetensors") == "weight"
    assert infer_kind("interaction.weight", "upgrade.pt") == "weight"          # words, not substrings


def test_fit_mixed_kinds_warns(tmp_path):
    """Weights and a sparse gradient fitted as one: the codebook loses to adaptive coding on both,
    measured; fitted per kind (the default) each group's codebook codes far better."""
    w = synthetic("weight", torch.bfloat16, 1 << 19, seed=1)
    g = synthetic("grad", torch.bfloat16, 1 << 19, seed=2)
    g.view(-1, 4096)[::2] = 0
    torch.save({"w": w}, tmp_path / "model.pt")
    torch.save({"g": g}, tmp_path / "grads.pt")
    files = [tmp_path / "model.pt", tmp_path / "grads.pt"]
    p = run_cli("fit", *files, "--group-by", "dtype", "-o", tmp_path / "one.json", "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert "CodebookFitWarning" in p.stderr and len(info["warnings"]) == 1
    assert "group 'all'" in info["warnings"][0] and "--group-by kind" in info["warnings"][0]
    mixed = {t["name"]: t for t in info["tensors"]}
    assert all(t["fitted_bytes"] > t["adaptive_bytes"] for t in mixed.values())
    cb = qlccomm.Codebook.load(tmp_path / "one.json")
    assert mixed["g"]["fitted_bytes"] == qlccomm.compress(g, codebook=cb).numel()
    p = run_cli("fit", *files, "-o", tmp_path / "cb.json")
    assert p.returncode == 0, p.stderr
    assert "warning: the bfloat16 codebook of group 'all'" not in p.stdout
    apart = qlccomm.Codebook.load(tmp_path / "cb.grad.json")
    assert qlccomm.compress(g, codebook=apart).numel() < mixed["g"]["fitted_bytes"]
    p = run_cli("fit", *files, "--group-by", "dtype", "-o", tmp_path / "one.json")
    assert "warning: the bfloat16 codebook of group 'all'" in p.stdout, p.stdout
    for forced in (["--kind", "grad"], ["--group-by", "file"]):
        p = run_cli("fit", *files, *forced, "-o", tmp_path / "f.json", "--json")
        assert p.returncode == 0, p.stderr
        assert len(json.loads(p.stdout)["codebooks"]) == (1 if forced[0] == "--kind" else 2)


def test_bench_bound_counts_zero_chunks(capsys):
    """A sparse gradient: the bounds count all-zero chunks at 0 bits, so they sit at or above
    the measured QLC ratio (before, the order-0 bound over every element sat far below it)."""
    g = synthetic("grad", torch.bfloat16, 1 << 20, seed=4)
    g.view(-1, 4096)[::2] = 0
    b = bench.bits_bound(g)
    assert b["zero_chunks"] == b["chunks"] // 2 == 128
    measured = g.numel() * 2 / qlccomm.compress(g, codec="qlc", codebook=qlccomm.fit_codebook(g)).numel()
    assert b["entropy_ratio"] >= measured                       # a QLC stream: single symbols
    wide = g.numel() * 2 / qlccomm.compress(g, codec="qlc").numel()
    assert qlccomm.inspect(qlccomm.compress(g, codec="qlc"))["codec"] == "qlcw"
    assert b["pair_entropy_ratio"] >= wide > measured           # pairs: below the order-0 entropy, not the pairs'
    assert b["pair_entropy"] <= b["entropy"] <= b["huffman"]
    dense = g.view(-1, 4096)[1::2].reshape(-1)                  # the coded chunks alone
    d = bench.bits_bound(dense)
    assert d["zero_chunks"] == 0 and d["entropy"] == pytest.approx(2 * b["entropy"], rel=1e-9)
    assert main(["bench", "--file", str(_save(g)), "--codec", "qlc", "--repeat", "1", "--json",
                 "--progress", "never"]) == 0
    bound = json.loads(capsys.readouterr().out)["groups"][0]["bound"]
    assert bound["zero_chunks"] == 128 and bound["pair_entropy_ratio"] == pytest.approx(b["pair_entropy_ratio"])
    text = bench.format_bound(b)
    assert "128 of 256 4096-element chunks all-zero" in text and "pair entropy" in text


def _save(t: torch.Tensor) -> Path:
    import tempfile
    path = Path(tempfile.mkdtemp()) / "g.pt"
    torch.save({"g": t}, path)
    return path


def test_fit_in_process_and_progress(tmp_path, capsys):
    st = tmp_path / "many.safetensors"
    write_safetensors(st, {f"t{i}": synthetic("weight", torch.float16, 200, i) for i in range(25)})
    assert main(["fit", str(st), "-o", str(tmp_path / "cb.json"), "--progress", "always"]) == 0
    cap = capsys.readouterr()
    assert "reading" in cap.err and "t24" in cap.out
    only = tmp_path / "bf.json"
    assert main(["fit", str(st), "--dtype", "fp16", "-o", str(only), "--progress", "never"]) == 0
    assert capsys.readouterr().err == ""
    assert qlccomm.Codebook.load(only).dtype == torch.float16


# -- inspect ---------------------------------------------------------------------

def test_inspect_without_and_with_codebook(streams):
    d, own = streams
    p = run_cli("inspect", d / "ref.qlc")                       # a codebook this process has never seen
    assert p.returncode == 0, p.stderr
    assert own.digest in p.stdout and "not known here" in p.stdout and "5 chunks of 4096" in p.stdout
    p = run_cli("inspect", d / "ref.qlc", "--json")
    info = json.loads(p.stdout)
    assert info["codec"] == "qlc" and info["shape"] == [200, 100] and info["dtype"] == "bfloat16"
    assert info["codebook"] == own.digest and not info["codebook_embedded"] and not info["codebook_known"]
    assert info["chunks"] == 5 and info["chunks_coded"] == 5 and "codebook_widths" not in info
    assert sum(info["plane_bytes"].values()) + info["metadata_bytes"] == info["compressed_bytes"]

    p = run_cli("inspect", d / "ref.qlc", "--codebook", d / "own.json", "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    assert info["codebook_known"] and info["codebook_widths"] == list(own.widths)
    p = run_cli("inspect", d / "ref.qlc", "--codebook", d / "own.json")
    assert "known here" in p.stdout and "area widths" in p.stdout
    assert_one_line_error(run_cli("inspect", d / "ref.qlc", "--codebook", d / "other.json"), 1, own.digest)

    p = run_cli("inspect", d / "adaptive.qlc")                  # 20000 bf16 elements: a pair code
    assert p.returncode == 0, p.stderr
    assert "qlcw stream" in p.stdout and "fields lo 7 w 8 g 2 (16-bit symbols)" in p.stdout
    assert "area widths" in p.stdout and "5 chunks of 4096" in p.stdout


def test_api_inspect_unknown_codebook():
    t = synthetic("grad", torch.bfloat16, 9000, 11)
    cb = fit_codebook(t, transient=True)
    blob = qlccomm.compress(t, codebook=cb)
    info = qlccomm.inspect(blob)
    assert info["codebook"] == cb.digest and info["codebook_known"] is False and info["chunks"] == 3
    with pytest.raises(qlccomm.CodebookError):                  # decoding still needs it
        qlccomm.decompress(blob)
    info = qlccomm.inspect(blob, codebook=cb)
    assert info["codebook_known"] and info["codebook_widths"] == list(cb.widths)
    assert torch.equal(qlccomm.decompress(blob, codebook=cb).view(torch.int16), t.view(torch.int16))
    with pytest.raises(TypeError):
        qlccomm.inspect(blob, codebook=3)


# -- bench -----------------------------------------------------------------------

def test_bench_file_every_dtype(model):
    st, _ = model
    p = run_cli("bench", "--file", st, "--repeat", "1", "--codec", "qlc", "--json")
    assert p.returncode == 0, p.stderr
    info = json.loads(p.stdout)
    groups = {g["dtype"]: g for g in info["groups"]}
    assert set(groups) == {"bfloat16", "float32", "float8_e4m3fn"}    # no --dtype: every coded dtype
    assert groups["bfloat16"]["elements"] == 35000 and groups["float32"]["elements"] == 20000
    for g in groups.values():
        names = [r["codec"] for r in g["rows"]]
        assert names[0] == "qlc" and "zstd-1" in names and "memcpy (host)" in names
        assert g["rows"][0]["ratio"] > 1 and g["rows"][0]["encode_gbps"] > 0
    p = run_cli("bench", "--file", st, "--dtype", "fp32", "--repeat", "1", "--codec", "qlc,enec")
    assert p.returncode == 0, p.stderr
    assert "1 float32 tensor from" in p.stdout and "bfloat16" not in p.stdout
    for word in ("qlc", "enec", "zstd-1", "zstd-3", "lz4", "memcpy", "entropy", "Huffman"):
        assert word in p.stdout
    assert_one_line_error(run_cli("bench", "--file", st, "--dtype", "fp16"), 1, "no float16 tensors")
    assert_one_line_error(run_cli("bench", "--file", st, "--dtype", "e4m3", "--codec", "enec"), 2, "--codec")


def test_bench_pays_and_plot(tmp_path):
    png = tmp_path / "pays.png"
    p = run_cli("bench", "--dtype", "bf16", "--size-mib", "1", "--repeat", "1", "--link-gbps", "1,400",
                "--link-gbps", "10", "--plot", png, "--json")
    assert p.returncode == 0, p.stderr
    (group,) = json.loads(p.stdout)["groups"]
    model = group["pays"]
    assert [lk["link_gbps"] for lk in model["links"]] == [1, 400, 10]
    codecs = [c["codec"] for c in model["links"][0]["codecs"]]
    assert codecs[:2] == ["qlc", "enec"] and "memcpy (host)" not in codecs
    for lk in model["links"]:
        assert lk["raw_s"] == pytest.approx(group["bytes"] / (lk["link_gbps"] * 1e9 / 8))
        for c in lk["codecs"]:
            assert c["pays"] == (c["speedup"] > 1) and c["bound_by"] in ("encode", "wire", "decode")
    assert set(model["break_even_gbps"]) == set(codecs)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    p = run_cli("bench", "--size-mib", "0.25", "--repeat", "1", "--codec", "qlc", "--link-gbps", "25")
    assert p.returncode == 0, p.stderr
    assert "does coding pay" in p.stdout and "coding pays: qlc " in p.stdout and "Gbit/s" in p.stdout


def test_pays_model_break_even():
    for enc, dec, ratio in ((1e9, 4e9, 1.4), (50e9, 80e9, 1.3), (2e9, 1e9, 3.0)):
        sp = bench.Speeds("c", ratio, enc, dec)
        for k in (1, 4, 16):
            be = bench.break_even_gbps(sp, k)
            assert bench.coded_seconds(1e6, be, sp, k) == pytest.approx(bench.raw_seconds(1e6, be), rel=1e-9)
            assert bench.coded_seconds(1e6, be / 2, sp, k) < bench.raw_seconds(1e6, be / 2)    # pays below
            assert bench.coded_seconds(1e6, be * 2, sp, k) > bench.raw_seconds(1e6, be * 2)
    assert bench.break_even_gbps(bench.Speeds("raw", 1.0, 1e9, 1e9), 4) is None


def test_bench_small_in_process(capsys, tmp_path):
    assert main(["bench", "--codec", "qlc", "--dtype", "e4m3", "--size-mib", "0.25", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    for word in ("qlc", "zstd-1", "zstd-3", "lz4", "memcpy", "entropy", "Huffman"):
        assert word in out
    pt = tmp_path / "w.pt"
    torch.save({"w": synthetic("weight", torch.bfloat16, 10000, 6)}, pt)
    assert main(["bench", "--codec", "qlc", "--file", str(pt), "--repeat", "1"]) == 0
    assert "1 bfloat16 tensor from" in capsys.readouterr().out


# -- warmup ----------------------------------------------------------------------

def test_warmup(capsys):
    assert main(["warmup"]) == 0
    assert "cpu kernels" in capsys.readouterr().out


@pytest.mark.filterwarnings("ignore::RuntimeWarning")      # the kernels' own TorchPathWarning
def test_warmup_names_the_slow_path(monkeypatch):
    monkeypatch.setenv("QLCCOMM_KERNELS", "torch")
    assert "slow torch reference path" in kernel_note()
    monkeypatch.delenv("QLCCOMM_KERNELS")
    from qlccomm import kernels
    monkeypatch.setattr(kernels, "available", lambda backend, codec="qlc": backend == "torch")
    note = kernel_note()
    assert "numba" in note and "pip install numba" in note
