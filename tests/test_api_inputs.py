"""What `codebook=` takes (one resolve_codebook everywhere), what stays in the codebook
registry and table cache, codebook files that are not, and outputs too large to allocate."""
import gc
import json
import os
import resource
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import qlccomm
from qlccomm import api, kernels, memlimits, qlc
from qlccomm import codebook as cbmod
from qlccomm import collectives as C
from qlccomm.codebook import Codebook, resolve_codebook
from qlccomm.format import CODEC_QLC, Header
from qlccomm.qlc import CB_EMBEDDED, MAX_CHUNK_ELEMS

BACKENDS = [b for b in ("torch", "native") if kernels.available(b, "qlc")]


def enec_available() -> bool:
    try:
        api.pick_codec(torch.bfloat16, "enec")
    except ImportError:
        return False
    return True


def bf16(n=20_000, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(n, generator=g) * 0.02).to(torch.bfloat16)


def same_bits(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8),
                                                                      b.reshape(-1).view(torch.uint8))


@pytest.fixture
def book(tmp_path):
    """(tensor, its fitted codebook, the codebook's file)."""
    t = bf16()
    cb = qlccomm.fit_codebook(t)
    path = tmp_path / "bf16.json"
    cb.save(path)
    return t, cb, path


# -- one resolve, the same inputs everywhere -----------------------------------------------------------
def test_compress_takes_every_codebook_form(book):
    t, cb, path = book
    default = qlccomm.default_codebook(torch.bfloat16)
    cases = [("default", default), (cb, cb), (str(path), cb), (path, cb), ({torch.bfloat16: cb}, cb),
             ({torch.bfloat16: path}, cb), ({torch.bfloat16: "default"}, default)]
    for arg, want in cases:
        blob = qlccomm.compress(t, codebook=arg)
        info = qlccomm.inspect(blob)
        assert not info["codebook_embedded"] and info["codebook"] == want.digest, arg
        assert same_bits(qlccomm.decompress(blob), t)
    for arg in (None, "adaptive", {torch.float16: qlccomm.default_codebook(torch.float16)},
                {torch.bfloat16: None}, {torch.bfloat16: "adaptive"}, {}):
        blob = qlccomm.compress(t, codebook=arg)
        info = qlccomm.inspect(blob)                # adaptive: a code fitted to t, in the stream
        assert info["codec"] == "qlcw" or info["codebook_embedded"], arg
        assert same_bits(qlccomm.decompress(blob), t)


BAD = [123, 0, True, 1.5, b"cb.json", bytearray(b"x"), ["default"], ("default",), object(),
       {"bfloat16": "default"}, {torch.bfloat16: 123}, {torch.bfloat16: {torch.bfloat16: "default"}},
       {torch.bfloat16: b"cb.json"}]


@pytest.mark.parametrize("arg", BAD, ids=lambda a: type(a).__name__ + repr(a)[:20])
def test_anything_else_is_a_type_error_everywhere(arg):
    from hccl_hooks.ddp import QLCState
    t = bf16(5000)
    blob = qlccomm.compress(t)
    with pytest.raises(TypeError, match="codebook"):
        qlccomm.compress(t, codebook=arg)
    with pytest.raises(TypeError, match="codebook"):
        qlccomm.compress(t, codec="raw", codebook=arg)
    with pytest.raises(TypeError, match="codebook"):
        qlccomm.decompress(blob, codebook=arg)
    with pytest.raises(TypeError, match="codebook"):
        resolve_codebook(arg, torch.bfloat16)
    for codec in ("qlc", "raw", "auto", "enec"):
        with pytest.raises(TypeError, match="codebook"):
            C._resolve_coding(torch.bfloat16, codec, arg)
    with pytest.raises(TypeError, match="codebook"):
        QLCState(codebook=arg)


def test_an_int_codebook_opens_no_file_descriptor(tmp_path):
    """codebook=<fd> used to reach open(fd): it must be refused before anything is read."""
    p = tmp_path / "f"
    p.write_bytes(b"{}")
    fd = os.open(p, os.O_RDONLY)
    try:
        with pytest.raises(TypeError):
            qlccomm.compress(bf16(1000), codebook=fd)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 0 and os.fstat(fd)     # not read, not closed
    finally:
        os.close(fd)


def test_a_codebook_of_another_dtype_is_a_value_error(book, tmp_path):
    t, cb, path = book
    x = t.float()
    for arg in (cb, str(path), {torch.float32: cb}, {torch.float32: path}):
        with pytest.raises(ValueError):
            qlccomm.compress(x, codebook=arg)
        with pytest.raises(ValueError):
            resolve_codebook(arg, torch.float32)
        with pytest.raises(ValueError):
            C._resolve_coding(torch.float32, "qlc", arg)
    with pytest.raises(KeyError):                   # a file without the dtype: still a KeyError too
        resolve_codebook(path, torch.float32)
    with pytest.raises(ValueError, match="no QLC plan"):
        resolve_codebook("default", torch.float64)
    assert resolve_codebook(cb, torch.float32, strict=False) is None
    assert resolve_codebook(path, torch.float32, strict=False) is None
    assert resolve_codebook("default", torch.float64, strict=False) is None


def test_enec_takes_no_codebook(book):
    t, cb, path = book
    if not enec_available():
        pytest.skip("ENEC is not installed")
    for arg in (cb, "default", str(path), {torch.bfloat16: cb}):
        with pytest.raises(ValueError, match="ENEC takes no codebook"):
            qlccomm.compress(t, codec="enec", codebook=arg)
    for arg in (None, "adaptive", {torch.float16: qlccomm.default_codebook(torch.float16)}):
        blob = qlccomm.compress(t, codec="enec", codebook=arg)
        assert qlccomm.inspect(blob)["codec"] == "enec"
        assert same_bits(qlccomm.decompress(blob, codebook=cb), t)     # a decoder's hint: unused
    # the collectives and hooks pass their codebook for every bucket: unused where the coding is ENEC
    coding, tag = C._resolve_coding(torch.bfloat16, "enec", cb)
    assert coding.codec == "enec" and coding.codebook is None
    coding, _ = C._resolve_coding(torch.bfloat16, "auto", "default", torch.device("meta"))
    assert coding.codec == api.pick_codec(torch.bfloat16, "auto")


def test_collectives_and_hook_resolve_alike(book):
    from hccl_hooks.ddp import QLCState
    t, cb, path = book
    for arg in (cb, str(path), path, {torch.bfloat16: cb}, {torch.bfloat16: str(path)}):
        coding, tag = C._resolve_coding(torch.bfloat16, "qlc", arg)
        assert coding.codebook == cb and tag == bytes.fromhex(cb.digest)
    assert C._resolve_coding(torch.bfloat16, "qlc", {torch.float16: cb})[0].codebook is None
    assert QLCState(codebook=path).codebook_for(torch.bfloat16) == cb
    assert QLCState(codebook={torch.bfloat16: path}).codebook_for(torch.bfloat16) == {torch.bfloat16: path}
    assert QLCState(codebook="default").codebook_for(torch.float64) == "default"   # raw buckets: unused


def test_decompress_takes_the_same_hints(book, monkeypatch):
    t, cb, path = book
    blob = qlccomm.compress(t, codebook=cb)
    monkeypatch.setattr(cbmod, "_REGISTRY", {})              # a process that never saw this codebook
    monkeypatch.setattr(cbmod, "_LOADED", type(cbmod._LOADED)())
    with pytest.raises(qlccomm.CodebookError):
        qlccomm.decompress(blob)
    for hint in (cb, str(path), path, {torch.bfloat16: cb}, {torch.bfloat16: path}):
        assert same_bits(qlccomm.decompress(blob, codebook=hint), t)
    other = qlccomm.fit_codebook(bf16(5000, seed=3).float())
    monkeypatch.setattr(cbmod, "_REGISTRY", {})              # loading the file registered it
    with pytest.raises(qlccomm.CodebookError):                # a hint of another dtype is unused
        qlccomm.decompress(blob, codebook=other)


def test_a_changed_codebook_file_is_read_again(tmp_path):
    a, b = qlccomm.fit_codebook(bf16(seed=1)), qlccomm.fit_codebook(bf16(seed=2) * 50)
    assert a.digest != b.digest
    path = tmp_path / "cb.json"
    a.save(path)
    os.utime(path, ns=(1_000_000_000, 1_000_000_000))
    assert resolve_codebook(path, torch.bfloat16) == a
    assert resolve_codebook(str(path), torch.bfloat16) == a
    b.save(path)
    os.utime(path, ns=(2_000_000_000, 2_000_000_000))
    assert resolve_codebook(path, torch.bfloat16) == b


# -- codebook files that are not ----------------------------------------------------------------------
def _bad_files(tmp_path: Path, good: dict) -> dict:
    files = {
        "version 99": json.dumps({**good, "version": 99}),
        "no version": json.dumps({k: v for k, v in good.items() if k != "version"}),
        "bad JSON": '{"format": "qlccomm-codebook", "version": 1,',
        "binary": bytes(range(256)) * 4,
        "empty": b"",
        "JSON list": "[1, 2, 3]",
        "JSON number": "5",
        "not a codebook": json.dumps({"format": "something-else"}),
        "unknown dtype": json.dumps({**good, "dtype": "zeros"}),
        "string widths": json.dumps({**good, "widths": ["5"] * 8}),
        "codebooks not a list": json.dumps({"codebooks": 7}),
        "codebooks version 2": json.dumps({"codebooks": [{**good, "version": 2}]}),
    }
    paths = {}
    for i, (name, content) in enumerate(files.items()):
        p = tmp_path / f"bad{i}.json"
        p.write_bytes(content if isinstance(content, bytes) else content.encode())
        paths[name] = p
    return paths


def test_bad_codebook_files_raise_format_error_naming_the_file(tmp_path):
    good = qlccomm.default_codebook(torch.bfloat16).to_json()
    t = bf16(2000)
    for name, p in _bad_files(tmp_path, good).items():
        for call in (lambda: Codebook.load(p), lambda: Codebook.load(p, dtype=torch.bfloat16),
                     lambda: qlccomm.compress(t, codebook=p), lambda: resolve_codebook(str(p), torch.bfloat16),
                     lambda: C._resolve_coding(torch.bfloat16, "qlc", p)):
            with pytest.raises(qlccomm.FormatError) as e:
                call()
            assert str(p) in str(e.value), (name, str(e.value))
    assert "version 99" in str(pytest.raises(qlccomm.FormatError, Codebook.load,
                                             _bad_files(tmp_path, good)["version 99"]).value)
    with pytest.raises(FileNotFoundError):
        Codebook.load(tmp_path / "missing.json")


def test_from_json_refuses_other_versions():
    good = qlccomm.default_codebook(torch.bfloat16).to_json()
    assert Codebook.from_json(good) == qlccomm.default_codebook(torch.bfloat16)
    for version in (0, 2, 99, "1", None):
        with pytest.raises(qlccomm.FormatError, match="version"):
            Codebook.from_json({**good, "version": version})


# -- the registry and the table cache ----------------------------------------------------------------
def _live_codebooks() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if type(o) is Codebook)


def test_created_and_loaded_codebooks_are_looked_up_by_digest(tmp_path, monkeypatch):
    monkeypatch.setattr(cbmod, "_REGISTRY", {})
    cb = qlccomm.fit_codebook(bf16())
    assert cbmod.lookup(cb.digest) is cb                         # created
    path = tmp_path / "e4.json"
    other = qlccomm.fit_codebook(bf16().to(torch.float8_e4m3fn))
    other.save(path)
    monkeypatch.setattr(cbmod, "_REGISTRY", {})
    loaded = Codebook.load(path)
    assert cbmod.lookup(other.digest) is loaded                  # loaded
    cbmod._shipped.cache_clear()                                 # as in a process that never looked one up
    assert cbmod.lookup(qlccomm.default_codebook(torch.int8).digest).dtype == torch.int8     # shipped
    # neither a fitted-and-embedded code nor a decoder's hint joins the registry
    monkeypatch.setattr(cbmod, "_REGISTRY", {})
    hint = qlccomm.fit_codebook(bf16(seed=4), transient=True)
    blob = qlccomm.compress(bf16(seed=4), codebook=hint)
    qlccomm.decompress(qlccomm.compress(bf16(seed=5)))
    assert qlccomm.decompress(blob, codebook=hint).numel() and hint.digest not in cbmod._REGISTRY
    assert len(cbmod._REGISTRY) == 0


def test_shipped_codebooks_are_found_whatever_the_registry_holds(monkeypatch):
    """Shipped codebooks (current and previous) are read once and looked up apart from the
    registry: a registry replaced after they were read (as other tests here do) still finds
    them.  The look-up used to read them into whichever registry was there at the time."""
    monkeypatch.setattr(cbmod, "_REGISTRY", {})
    cbmod._shipped.cache_clear()
    previous = [b for d, b in cbmod._shipped().items() if d != qlccomm.default_codebook(b.dtype).digest]
    assert previous                                              # codebooks/previous/ is shipped
    monkeypatch.setattr(cbmod, "_REGISTRY", {})
    for b in previous:
        assert cbmod.lookup(b.digest) is b


def test_device_tables_come_from_one_bounded_cache():
    cb = qlccomm.fit_codebook(bf16(seed=6))
    twin = Codebook(cb.dtype, cb.plan, cb.widths, cb.symbols, transient=True)
    assert twin.device_tables("cpu") is cb.device_tables(torch.device("cpu"))     # keyed by digest
    assert not any(isinstance(v, dict) and "decode" in v for v in cb._tables.values())   # none on the object
    for i in range(3 * cbmod.TABLE_CACHE_ENTRIES):
        qlccomm.fit_codebook(bf16(500, seed=100 + i), transient=True).device_tables("cpu")
        assert len(cbmod._TABLE_CACHE) <= cbmod.TABLE_CACHE_ENTRIES


@pytest.mark.parametrize("backend", BACKENDS)
def test_decoding_3000_adaptive_streams_leaves_registry_and_caches_bounded(backend, monkeypatch):
    """Every stream embeds a different code: none is registered, none stays alive, the table
    caches stay at their bounds."""
    monkeypatch.setenv(kernels.ENV, backend)
    x = torch.arange(4096 * 3, dtype=torch.int32).remainder(23).to(torch.uint8)
    blob = qlccomm.compress(x)
    info = qlccomm.inspect(blob)
    assert info["codebook_embedded"] and info["plan"] == "byte"
    at = Header(CODEC_QLC, x.dtype, tuple(x.shape)).nbytes + 2 + 8       # plan, mode, widths: the symbols
    base = np.frombuffer(blob.numpy().tobytes(), np.uint8).copy()
    rng = np.random.default_rng(0)
    for _ in range(3):                                                   # warm-up (kernels, shipped books)
        qlccomm.decompress(torch.from_numpy(base.copy()))
    registry, live = len(cbmod._REGISTRY), _live_codebooks()
    digests = set()
    for i in range(3000):
        s = base.copy()
        s[at:at + 256] = rng.permutation(256)                            # another valid code, another digest
        y = qlccomm.decompress(torch.from_numpy(s))
        assert y.numel() == x.numel()
        if i % 500 == 0:
            digests.add(qlccomm.inspect(s.tobytes())["codebook"])
            assert len(cbmod._TABLE_CACHE) <= cbmod.TABLE_CACHE_ENTRIES
    del y
    assert len(digests) == 6
    assert len(cbmod._REGISTRY) == registry
    assert len(cbmod._TABLE_CACHE) <= cbmod.TABLE_CACHE_ENTRIES
    assert _live_codebooks() <= live + 2


# -- outputs too large to allocate --------------------------------------------------------------------
def zero_stream(numel: int, dtype=torch.float32) -> bytes:
    """A QLC stream of `numel` zeros in chunks of MAX_CHUNK_ELEMS: 5 bytes per chunk."""
    from qlccomm.split import candidate_plans
    plan = candidate_plans(dtype)[0]
    cb = qlccomm.default_codebook(dtype)
    nchunks = -(-numel // MAX_CHUNK_ELEMS)
    head = Header(CODEC_QLC, dtype, (numel,)).encode()
    head += struct.pack("<BB", plan.plan_id, CB_EMBEDDED) + cb.to_bytes() + struct.pack("<II", MAX_CHUNK_ELEMS,
                                                                                      nchunks)
    return head + bytes(5 * nchunks)


def test_zero_stream_is_a_valid_stream():
    blob = zero_stream(3 * MAX_CHUNK_ELEMS + 5)
    assert len(blob) < 1000 and qlccomm.inspect(blob)["chunks_zero"] == 4
    assert not bool(qlccomm.decompress(blob).any())


def test_an_output_larger_than_memory_fails_fast_without_allocating():
    phys = memlimits._physical_memory_bytes() or 0
    nbytes = max(1 << 40, 2 * phys)
    blob = zero_stream(nbytes // 4)                      # float32: ~5 bytes per 4 MiB declared
    assert len(blob) < nbytes >> 19
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    with pytest.raises(qlccomm.OutputTooLargeError, match=str(nbytes)):
        qlccomm.decompress(blob)
    with pytest.raises(qlccomm.OutputTooLargeError, match=str(nbytes)):
        qlccomm.decompress(torch.frombuffer(bytearray(blob), dtype=torch.uint8))
    assert time.perf_counter() - t0 < 60
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss < 512 * 1024          # KiB
    with pytest.raises(qlccomm.FormatError, match=str(nbytes)):
        qlccomm.decompress(blob, max_output_bytes=1 << 30)
    assert qlccomm.inspect(blob)["raw_bytes"] == nbytes                        # describing it is fine


def test_a_failing_allocation_is_a_memory_error(monkeypatch):
    blob = zero_stream(2 * MAX_CHUNK_ELEMS)
    impl = kernels.implementation("qlc", torch.device("cpu")) or qlc

    def fails(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 8388608 bytes. Error code 12 (Cannot allocate memory)")
    monkeypatch.setattr(impl, "decode_section", fails)
    with pytest.raises(qlccomm.OutputTooLargeError, match=str(8 * MAX_CHUNK_ELEMS)):
        qlccomm.decompress(blob)

    def other(*a, **k):
        raise RuntimeError("some other failure")
    monkeypatch.setattr(impl, "decode_section", other)
    with pytest.raises(RuntimeError, match="some other failure"):
        qlccomm.decompress(blob)


_UNDER_LIMIT = r"""
import resource, sys, torch, qlccomm
from qlccomm import memlimits
sys.path.insert(0, sys.argv[1])
from test_api_inputs import zero_stream
numel = 1 << 30                                     # 4 GiB of float32 zeros in a ~5 KB stream
blob = zero_stream(numel)
qlccomm.decompress(zero_stream(1 << 16))            # warm-up: kernels compiled before the limit
with open("/proc/self/status") as f:
    vm = next(int(l.split()[1]) for l in f if l.startswith("VmSize:")) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (1 << 30), resource.getrlimit(resource.RLIMIT_AS)[1]))
for early in (True, False):
    if not early:
        memlimits.allocatable_bytes = lambda device: None      # no early check: the allocation itself fails
    try:
        qlccomm.decompress(blob)
    except qlccomm.OutputTooLargeError as e:
        assert str(4 * numel) in str(e), e
        assert ("more than" if early else "failed") in str(e), e
        print("MemoryError", early)
    else:
        raise SystemExit("decoded 4 GiB under a 1 GiB headroom?")
"""


def test_under_an_address_space_limit_a_huge_declaration_is_a_memory_error():
    """The review's case: a 5 KB all-zero stream declaring 4 GiB, in a process with a
    memory limit, is a MemoryError naming the size (never torch's RuntimeError)."""
    r = subprocess.run([sys.executable, "-c", _UNDER_LIMIT, str(Path(__file__).parent)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.split() == ["MemoryError", "True", "MemoryError", "False"]
