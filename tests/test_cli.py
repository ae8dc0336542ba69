"""The qlccomm command line: fit, inspect, bench (real files, real subprocess-free calls)."""
import json
import struct

import torch

import qlccomm
from qlccomm.cli import main
from qlccomm.datagen import synthetic


def write_safetensors(path, tensors: dict):
    """A minimal .safetensors writer (u64 header length, JSON header, data)."""
    names = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.float8_e4m3fn: "F8_E4M3"}
    header, blobs, offset = {}, [], 0
    for name, t in tensors.items():
        data = t.contiguous().view(-1).view(torch.uint8).numpy().tobytes()
        header[name] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(data)]}
        blobs.append(data)
        offset += len(data)
    h = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(h)) + h + b"".join(blobs))


def test_fit_safetensors_and_pt(tmp_path, capsys):
    st = tmp_path / "model.safetensors"
    write_safetensors(st, {"w1": synthetic("weight", torch.bfloat16, 30000, 1).reshape(100, 300),
                           "w2": synthetic("weight", torch.bfloat16, 5000, 2),
                           "q": synthetic("weight", torch.float8_e4m3fn, 8000, 3)})
    pt = tmp_path / "grads.pt"
    torch.save({"layer": {"g": synthetic("grad", torch.bfloat16, 7000, 4)}, "step": 3}, pt)
    out = tmp_path / "cb.json"
    assert main(["fit", str(st), str(pt), "-o", str(out)]) == 0
    text = capsys.readouterr().out
    assert "bfloat16: 3 tensors" in text and "float8_e4m3fn: 1 tensors" in text
    assert "entropy" in text and "Huffman" in text and "ratio" in text
    bf = qlccomm.Codebook.load(out, dtype=torch.bfloat16)
    e4 = qlccomm.Codebook.load(out, dtype=torch.float8_e4m3fn)
    assert bf.dtype == torch.bfloat16 and e4.dtype == torch.float8_e4m3fn

    only = tmp_path / "bf.json"
    assert main(["fit", str(st), "--dtype", "bf16", "-o", str(only)]) == 0
    assert qlccomm.Codebook.load(only).dtype == torch.bfloat16


def test_fit_many_tensors_shows_progress(tmp_path, capsys):
    st = tmp_path / "many.safetensors"
    write_safetensors(st, {f"t{i}": synthetic("weight", torch.float16, 200, i) for i in range(25)})
    assert main(["fit", str(st), "-o", str(tmp_path / "cb.json")]) == 0
    assert "25/25" in capsys.readouterr().err


def test_inspect(tmp_path, capsys):
    blob = qlccomm.compress(synthetic("grad", torch.bfloat16, 20000, 5).reshape(200, 100))
    path = tmp_path / "t.qlc"
    path.write_bytes(blob.numpy().tobytes())
    assert main(["inspect", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["codec"] == "qlc" and info["shape"] == [200, 100] and info["dtype"] == "bfloat16"


def test_bench_small(capsys, tmp_path):
    assert main(["bench", "--codec", "qlc", "--dtype", "e4m3", "--size-mib", "0.25", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    for word in ("qlc", "zstd-1", "zstd-3", "lz4", "memcpy", "entropy", "Huffman"):
        assert word in out
    pt = tmp_path / "w.pt"
    torch.save({"w": synthetic("weight", torch.bfloat16, 10000, 6)}, pt)
    assert main(["bench", "--codec", "qlc", "--dtype", "bf16", "--file", str(pt), "--repeat", "1"]) == 0
    assert "from" in capsys.readouterr().out


def test_warmup(capsys):
    assert main(["warmup"]) == 0
    assert "cpu kernels" in capsys.readouterr().out
