"""codec="auto" by measured cost: the shipped table, the user table, the link rate (qlccomm.autoselect)."""
import json
from importlib import resources

import pytest
import torch

import qlccomm
from qlccomm import api, autoselect
from qlccomm.autoselect import Entry
from qlccomm.cli import main
from qlccomm.datagen import synthetic


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An empty user cache folder (QLCCOMM_CACHE) and no link-rate override."""
    monkeypatch.setenv(autoselect.CACHE_ENV, str(tmp_path))
    monkeypatch.delenv(autoselect.LINK_ENV, raising=False)
    return tmp_path


def sparse_grad(dtype=torch.bfloat16, numel=1 << 20, seed=3) -> torch.Tensor:
    """A gradient with every other 4096-element row +0.0 (untouched embedding rows)."""
    return autoselect.sample_tensor("sparse_grad", dtype, numel, seed=seed)


def stage_seconds(e: Entry) -> float:
    """Seconds per uncompressed GB of the slower codec stage: what rules on a very fast link."""
    return max(1 / e.encode_gbps, 1 / e.decode_gbps)


def test_shipped_table_loads(cache):
    ref = resources.files("qlccomm") / autoselect.TABLE_NAME
    obj = json.loads(ref.read_text())
    assert obj["format"] == autoselect.TABLE_FORMAT and "--refresh-autoselect" in obj["command"]
    entries = autoselect.shipped_entries()
    keys = {e.key for e in entries}
    for dtype in ("bfloat16", "float16", "float32"):
        for kind in autoselect.REFRESH_KINDS:
            assert {("qlc", dtype, "cpu", kind), ("enec", dtype, "cpu", kind)} <= keys
    for e in entries:
        assert e.ratio > 1 and e.encode_gbps > 0 and e.decode_gbps > 0 and 0 <= e.zero_chunks <= 1
    sparse = [e for e in entries if e.kind == "sparse_grad"]
    dense = [e for e in entries if e.kind != "sparse_grad"]
    assert min(e.zero_chunks for e in sparse) > max(e.zero_chunks for e in dense)
    assert autoselect.load_table() == {e.key: e for e in entries}       # the user cache is empty


def test_zero_chunk_share():
    x = synthetic("weight", torch.bfloat16, 256 * 4096)
    assert autoselect.zero_chunk_share(x) == 0.0
    x[: 128 * 4096] = 0
    assert abs(autoselect.zero_chunk_share(x) - 0.5) <= 1 / 64
    assert autoselect.zero_chunk_share(torch.zeros(10, dtype=torch.float16)) == 1.0
    assert autoselect.zero_chunk_share(torch.full((10,), -0.0)) == 0.0      # -0.0 has a bit set


def test_sparse_bf16_gradient_is_qlc(cache):
    g = sparse_grad()
    assert autoselect.zero_chunk_share(g) == pytest.approx(0.5, abs=1 / 64)
    assert autoselect.nearest_kinds(autoselect.candidates(torch.bfloat16, "cpu"), 0.5) == ["sparse_grad"]
    assert api.pick_codec(torch.bfloat16, "auto", g) == "qlc"
    blob = qlccomm.compress(g, codec="auto")
    assert torch.equal(qlccomm.decompress(blob).view(torch.int16), g.view(torch.int16))
    assert qlccomm.inspect(blob)["codec"] != "enec"


def test_user_table_overrides_the_shipped_one(cache):
    w = synthetic("weight", torch.bfloat16, 1 << 18, seed=5)
    shipped = {e.key: e for e in autoselect.shipped_entries()}
    fast = Entry("enec", "bfloat16", "cpu", "weight", 3.0, 50.0, 50.0, 0.0)  # better at everything
    # grad and activation tie with weights on the zero-chunk share: override them alike
    path = autoselect.merge_user_table([fast, *(Entry("enec", "bfloat16", "cpu", k, 3.0, 50.0, 50.0, 0.0)
                                                for k in ("grad", "activation"))])
    assert path == cache / autoselect.TABLE_NAME
    table = autoselect.load_table()
    assert table[fast.key] == fast
    assert table[("qlc", "bfloat16", "cpu", "weight")] == shipped[("qlc", "bfloat16", "cpu", "weight")]
    assert api.pick_codec(torch.bfloat16, "auto", w) == "enec"
    assert qlccomm.inspect(qlccomm.compress(w, codec="auto"))["codec"] == "enec"
    path.unlink()
    assert api.pick_codec(torch.bfloat16, "auto", w) == autoselect.choose(torch.bfloat16, "cpu", w,
                                                                          table=shipped)


def test_choice_follows_the_link_rate(cache, monkeypatch):
    dense = Entry("qlc", "bfloat16", "cpu", "weight", 2.0, 0.1, 0.2, 0.0)     # high ratio, slow
    quick = Entry("enec", "bfloat16", "cpu", "weight", 1.1, 5.0, 8.0, 0.0)    # low ratio, fast
    others = [Entry(c, "bfloat16", "cpu", k, 1.0001, 0.001, 0.001, 0.0) for c in ("qlc", "enec")
              for k in ("grad", "activation")]      # tied kinds, alike for both codecs
    autoselect.merge_user_table([dense, quick, *others])
    w = synthetic("weight", torch.bfloat16, 1 << 16, seed=6)
    monkeypatch.setenv(autoselect.LINK_ENV, "0.001")
    assert api.pick_codec(torch.bfloat16, "auto", w) == "qlc"
    monkeypatch.setenv(autoselect.LINK_ENV, "1000")
    assert api.pick_codec(torch.bfloat16, "auto", w) == "enec"
    monkeypatch.setenv(autoselect.LINK_ENV, "fast")
    with pytest.raises(ValueError, match=autoselect.LINK_ENV):
        api.pick_codec(torch.bfloat16, "auto", w)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_shipped_choice_at_the_link_extremes(cache, dtype):
    """On a near-idle link the higher measured ratio wins; on a near-infinite one the faster
    slower-stage: both read from the shipped table, for the sparse gradient's kind."""
    g = sparse_grad(dtype, 1 << 18)
    rows = [e for e in autoselect.candidates(dtype, "cpu") if e.kind == "sparse_grad"]
    assert {e.codec for e in rows} == {"qlc", "enec"}
    assert autoselect.choose(dtype, "cpu", g, link=1e-6) == max(rows, key=lambda e: e.ratio).codec
    assert autoselect.choose(dtype, "cpu", g, link=1e9) == min(rows, key=stage_seconds).codec


def test_fallback_where_the_table_has_nothing(cache):
    assert autoselect.choose(torch.bfloat16, "cuda", None) is None
    assert autoselect.choose(torch.float8_e4m3fn, "cpu", None) is None
    assert api.pick_codec(torch.bfloat16, "auto") == "enec"              # no tensor: the fixed rule
    q = synthetic("weight", torch.float8_e4m3fn, 1 << 14)
    assert api.pick_codec(q.dtype, "auto", q) == "qlc"
    assert api.pick_codec(torch.int64, "auto", torch.arange(5)) == "raw"


def test_bench_refreshes_the_user_table(cache, capsys):
    shipped = (resources.files("qlccomm") / autoselect.TABLE_NAME).read_bytes()
    argv = ["bench", "--refresh-autoselect", "--dtype", "bf16", "--codec", "qlc,enec", "--size-mib", "0.25",
            "--repeat", "1", "--progress", "never"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert str(cache / autoselect.TABLE_NAME) in out and "sparse_grad" in out
    entries = autoselect.user_entries()
    assert {(e.codec, e.kind) for e in entries} == {(c, k) for c in ("qlc", "enec") for k in autoselect.REFRESH_KINDS}
    assert all(e.dtype == "bfloat16" and e.device == "cpu" and e.ratio > 1 for e in entries)
    assert {e.kind: e.zero_chunks for e in entries}["sparse_grad"] == pytest.approx(0.5, abs=0.02)
    assert (resources.files("qlccomm") / autoselect.TABLE_NAME).read_bytes() == shipped
    assert autoselect.load_table()[("qlc", "bfloat16", "cpu", "weight")] == \
        next(e for e in entries if e.codec == "qlc" and e.kind == "weight")
