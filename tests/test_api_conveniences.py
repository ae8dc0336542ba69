"""API conveniences (issue 13, item 5): dtype names, a short Codebook repr, host inputs for
decompress (bytes, bytearray, memoryview, numpy), and the numcodecs codec qlccomm.numcodecs.QLC."""
from __future__ import annotations

import json
import mmap

import numpy as np
import pytest
import torch

import qlccomm
from qlccomm import datagen, dtypes
from qlccomm.codebook import Codebook, default_codebook, fit_codebook
from qlccomm.errors import FormatError
from qlccomm.format import ByteSource


# -- dtype names ------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, dtype", [
    ("bf16", torch.bfloat16), ("BF16", torch.bfloat16), ("bfloat16", torch.bfloat16),
    ("torch.bfloat16", torch.bfloat16), ("fp16", torch.float16), ("half", torch.float16),
    ("fp32", torch.float32), ("float", torch.float32), ("e4m3", torch.float8_e4m3fn),
    ("fp8", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2), ("int8", torch.int8), ("uint8", torch.uint8),
    ("float64", torch.float64), ("complex64", torch.complex64), (torch.int16, torch.int16),
])
def test_parse_dtype(name, dtype):
    assert dtypes.parse_dtype(name) is dtype


def test_one_alias_table():
    assert datagen.parse_dtype is dtypes.parse_dtype
    assert datagen.DTYPE_ALIASES is dtypes.DTYPE_ALIASES
    # every dtype qlccomm stores has its torch name in the table
    for d in dtypes.TRAITS:
        assert dtypes.DTYPE_ALIASES[str(d).removeprefix("torch.")] is d


def test_unknown_dtype_name_lists_aliases(tmp_path):
    path = tmp_path / "cb.json"
    default_codebook(torch.bfloat16).save(path)
    calls = [lambda: dtypes.parse_dtype("bf17"), lambda: default_codebook("bf17"),
             lambda: Codebook.load(path, dtype="bf17"),
             lambda: fit_codebook(torch.zeros(8, dtype=torch.bfloat16), dtype="bf17")]
    for call in calls:
        with pytest.raises(ValueError, match=r"unknown dtype 'bf17'; one of .*bf16.*fp16"):
            call()
    with pytest.raises(TypeError):
        dtypes.parse_dtype(3)


@pytest.mark.parametrize("name, dtype", [("bf16", torch.bfloat16), ("fp16", torch.float16), ("fp32", torch.float32),
                                         ("e4m3", torch.float8_e4m3fn), ("e5m2", torch.float8_e5m2),
                                         ("int8", torch.int8), ("uint8", torch.uint8)])
def test_default_codebook_takes_names(name, dtype):
    assert default_codebook(name) is default_codebook(dtype)
    assert default_codebook(name).dtype == dtype


def test_default_codebook_name_of_raw_dtype():
    with pytest.raises(ValueError, match="stored raw"):
        default_codebook("float64")


def test_codebook_load_takes_names(tmp_path):
    bf, fp = default_codebook(torch.bfloat16), default_codebook(torch.float16)
    single = tmp_path / "bf16.json"
    bf.save(single)
    assert Codebook.load(single, dtype="bf16") == bf
    with pytest.raises(KeyError):
        Codebook.load(single, dtype="fp16")
    several = tmp_path / "both.json"
    several.write_text(json.dumps({"codebooks": [bf.to_json(), fp.to_json()]}))
    assert Codebook.load(several, dtype="half") == fp
    assert Codebook.load(several, dtype="BFloat16") == bf


def test_fit_codebook_takes_names():
    t = datagen.synthetic("weight", torch.bfloat16, 4096)
    assert fit_codebook(t, dtype="bf16") == fit_codebook(t)
    with pytest.raises(ValueError, match="mix dtypes"):
        fit_codebook(t, dtype="fp16")


def test_codebook_constructor_takes_a_name():
    cb = default_codebook(torch.bfloat16)
    same = Codebook("bf16", cb.plan, cb.widths, cb.symbols)
    assert same.dtype is torch.bfloat16 and same == cb and same.digest == cb.digest


# -- Codebook repr ----------------------------------------------------------------------------------
def test_codebook_repr_is_short():
    cb = default_codebook("bf16")
    expected = f"Codebook(bfloat16, plan=bf16_exp, widths={tuple(cb.widths)}, digest={cb.digest})"
    assert repr(cb) == expected and str(cb) == expected
    fitted = fit_codebook(datagen.synthetic("weight", torch.float16, 4096), transient=True)
    r = repr(fitted)
    assert r.startswith("Codebook(float16, plan=fp16_") and fitted.digest in r and len(r) < 120


# -- decompress from host memory --------------------------------------------------------------------
def _kinds(raw: bytes, tmp_path):
    a = np.frombuffer(bytearray(raw), np.uint8)
    ro = a.copy()
    ro.flags.writeable = False
    strided = np.zeros(2 * len(a), np.uint8)
    strided[::2] = a
    path = tmp_path / "blob.qlc"
    path.write_bytes(raw)
    f = open(path, "rb")
    mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    f.close()
    kinds = {
        "bytes": raw, "bytearray": bytearray(raw), "memoryview(bytes)": memoryview(raw),
        "memoryview(bytearray)": memoryview(bytearray(raw)), "numpy": a, "numpy read-only": ro,
        "numpy strided": strided[::2], "memoryview(numpy)": memoryview(a), "mmap": mm,
    }
    return kinds, mm


@pytest.mark.parametrize("codec", ["qlc", "enec", "raw"])
@pytest.mark.parametrize("checksum", [False, True])
def test_decompress_host_inputs(codec, checksum, tmp_path):
    t = datagen.synthetic("weight", torch.bfloat16, 3 * 4096).reshape(3, 4096)
    raw = qlccomm.compress(t, codec=codec, checksum=checksum).numpy().tobytes()
    kinds, mm = _kinds(raw, tmp_path)
    try:
        for kind, blob in kinds.items():
            d = qlccomm.decompress(blob)
            assert d.shape == t.shape and d.dtype == t.dtype and d.device.type == "cpu", kind
            assert torch.equal(d.view(torch.int16), t.view(torch.int16)), kind
            out = torch.empty(3 * 4096, dtype=torch.bfloat16)
            assert qlccomm.decompress(blob, out=out) is out, kind
            assert torch.equal(out.view(torch.int16), t.reshape(-1).view(torch.int16)), kind
            info = qlccomm.inspect(blob)
            assert info["shape"] == [3, 4096] and info["compressed_bytes"] == len(raw), kind
        del kinds, blob
    finally:
        mm.close()      # no buffer of it is still exported (BufferError otherwise)


def test_writable_host_memory_is_not_copied():
    raw = qlccomm.compress(torch.arange(100, dtype=torch.float32)).numpy().tobytes()
    ba = bytearray(raw)
    assert ByteSource(ba).tensor.data_ptr() == np.frombuffer(ba, np.uint8).ctypes.data
    a = np.frombuffer(bytearray(raw), np.uint8)
    assert ByteSource(a).tensor.data_ptr() == a.ctypes.data
    assert ByteSource(memoryview(a)).tensor.data_ptr() == a.ctypes.data
    mv = memoryview(ba)[5:]
    assert ByteSource(mv).tensor.data_ptr() == np.frombuffer(ba, np.uint8).ctypes.data + 5


def test_read_only_host_memory_is_copied_once_on_the_cpu():
    raw = qlccomm.compress(torch.arange(100, dtype=torch.float32)).numpy().tobytes()
    src = ByteSource(raw)
    assert src.read(0, 4) == b"QLCM" and len(src) == len(raw)
    t = src.tensor
    assert t is src.tensor                                      # taken once
    t[0] = 0                                                    # a private, writable copy
    assert raw[:1] == b"Q"


def test_decompress_host_input_onto_a_device():
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    t = datagen.synthetic("weight", torch.bfloat16, 8192)
    raw = qlccomm.compress(t, codec="qlc").numpy().tobytes()
    for blob in (raw, bytearray(raw), np.frombuffer(raw, np.uint8)):
        d = qlccomm.decompress(blob, device="cuda")
        assert d.device.type == "cuda" and torch.equal(d.cpu().view(torch.int16), t.view(torch.int16))


@pytest.mark.parametrize("bad", [np.zeros((2, 40), np.uint8), np.zeros(40, np.int8), np.zeros(10, np.float32),
                                 np.zeros((), np.uint8), "QLCM", 7, [81, 76, 67, 77]],
                         ids=["2-D", "int8", "float32", "0-d", "str", "int", "list"])
def test_decompress_rejects_other_inputs(bad):
    with pytest.raises(TypeError):
        qlccomm.decompress(bad)


@pytest.mark.parametrize("blob", [b"", bytearray(b"QLCM\x01"), np.zeros(0, np.uint8), memoryview(b"QLCX" + bytes(40))])
def test_decompress_bad_host_streams(blob):
    with pytest.raises(FormatError):
        qlccomm.decompress(blob)


def test_compress_stays_tensor_only():
    with pytest.raises(TypeError, match="torch.from_numpy"):
        qlccomm.compress(np.zeros(10, np.float32))


# -- numcodecs --------------------------------------------------------------------------------------
try:
    import numcodecs
    from qlccomm.numcodecs import QLC, numpy_dtype, torch_dtype
except ImportError:         # the tests above still run
    numcodecs = None
needs_numcodecs = pytest.mark.skipif(numcodecs is None, reason="needs numcodecs")

NUMPY_DTYPES = ["bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16",
                "float32", "float64", "complex64", "complex128"]
ML_DTYPES = ["bfloat16", "float8_e4m3fn", "float8_e5m2", "float8_e4m3fnuz", "float8_e5m2fnuz", "float8_e8m0fnu",
             "complex32"]


def _random(dtype, shape, seed=0) -> np.ndarray:
    d = np.dtype(dtype)
    rng = np.random.default_rng(seed)
    if d.kind == "b":
        return rng.integers(0, 2, shape).astype(bool)
    n = int(np.prod(shape))
    return rng.integers(0, 256, n * d.itemsize, dtype=np.uint8).view(d).reshape(shape)


def _codecs_for(dtype) -> list[str]:
    enec = str(torch_dtype(dtype)).removeprefix("torch.") in ("bfloat16", "float16", "float32")
    return ["auto", "qlc", "raw"] + (["enec"] if enec else [])


def _roundtrip(a: np.ndarray, codec: str):
    q = QLC(codec=codec)
    enc = q.encode(a)
    assert isinstance(enc, bytes)
    b = q.decode(enc)
    assert isinstance(b, np.ndarray) and b.dtype == a.dtype and b.shape == a.shape
    assert b.tobytes() == np.ascontiguousarray(a).tobytes()
    out = np.empty(a.shape, a.dtype)
    assert q.decode(enc, out=out) is out and out.tobytes() == b.tobytes()
    return enc


@pytest.mark.parametrize("dtype", NUMPY_DTYPES)
@needs_numcodecs
def test_numcodecs_roundtrip_numpy_dtypes(dtype):
    for codec in _codecs_for(dtype):
        for shape in [(5, 37), (0,), (), (2, 0, 3)]:
            _roundtrip(_random(dtype, shape), codec)


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@pytest.mark.parametrize("name", ML_DTYPES)
@needs_numcodecs
def test_numcodecs_roundtrip_ml_dtypes(name):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    if not hasattr(ml_dtypes, name) or not hasattr(torch, name):
        pytest.skip(f"{name} missing from this ml_dtypes or torch")
    dtype = np.dtype(getattr(ml_dtypes, name))
    for codec in _codecs_for(dtype):
        _roundtrip(_random(dtype, (3, 50)), codec)
    assert numpy_dtype(getattr(torch, name)) == dtype


@needs_numcodecs
def test_numcodecs_compresses_real_looking_data():
    ml_dtypes = pytest.importorskip("ml_dtypes")
    for dt, npdt in [(torch.float16, np.float16), (torch.bfloat16, ml_dtypes.bfloat16), (torch.int8, np.int8)]:
        t = datagen.synthetic("weight", dt, 1 << 15)
        a = t.view(torch.int16 if dt.itemsize == 2 else torch.int8).numpy().view(npdt).reshape(32, -1)
        for codec in ["auto", "qlc"]:
            enc = _roundtrip(a, codec)
            assert len(enc) < 0.95 * a.nbytes, (dt, codec)
            assert qlccomm.inspect(enc)["codec"] in ("qlc", "qlcw", "enec")
            assert torch.equal(qlccomm.decompress(enc).reshape(-1).view(torch.uint8),
                               t.reshape(-1).view(torch.uint8))     # a plain qlccomm stream


@needs_numcodecs
def test_numcodecs_encode_layouts():
    a = _random("float32", (6, 40), seed=3)
    q = QLC()
    assert q.decode(q.encode(a.T)).tobytes() == np.ascontiguousarray(a.T).tobytes()      # F-ordered
    assert q.decode(q.encode(a[:, ::3])).tobytes() == np.ascontiguousarray(a[:, ::3]).tobytes()
    ro = a.copy()
    ro.flags.writeable = False
    assert q.decode(q.encode(ro)).tobytes() == a.tobytes()
    big = a.astype(">f4")
    back = q.decode(q.encode(big))
    assert back.dtype == np.float32 and np.array_equal(back, a)                          # native order
    assert q.decode(q.encode(a.tobytes())).tobytes() == a.tobytes()                       # bytes: uint8


@needs_numcodecs
def test_numcodecs_decode_into_buffers():
    a = _random("int16", (4, 25), seed=1)
    q = QLC(codec="qlc", checksum=True)
    enc = q.encode(a)
    ba = bytearray(a.nbytes)
    q.decode(enc, out=ba)
    assert bytes(ba) == a.tobytes()
    as_bytes = np.empty(a.nbytes, np.uint8)                   # any dtype of the right size: bitwise
    assert q.decode(enc, out=as_bytes) is as_bytes and as_bytes.tobytes() == a.tobytes()
    strided = np.zeros((4, 50), np.int16)[:, ::2]             # not contiguous: decoded, then copied in
    q.decode(enc, out=strided)
    assert np.array_equal(strided, a)
    with pytest.raises(ValueError, match="decodes to 200"):
        q.decode(enc, out=np.empty(99, np.int16))
    assert q.decode(np.frombuffer(enc, np.uint8)).tobytes() == a.tobytes()
    assert q.decode(memoryview(enc)).tobytes() == a.tobytes()


@needs_numcodecs
def test_numcodecs_checksum_detects_corruption():
    a = _random("float32", (100,), seed=2)
    enc = bytearray(QLC(checksum=True).encode(a))
    enc[-1] ^= 1
    with pytest.raises(FormatError, match="CRC32"):
        QLC().decode(bytes(enc))


@pytest.mark.parametrize("bad", [np.array(["a", "b"]), np.array([object(), 1], dtype=object),
                                 np.zeros(3, "datetime64[s]"), np.zeros(3, [("x", "f4"), ("y", "i4")]),
                                 np.zeros(3, "f2").view("V2")],
                         ids=["str", "object", "datetime", "structured", "void"])
@needs_numcodecs
def test_numcodecs_rejects_dtypes(bad):
    with pytest.raises(TypeError, match="qlccomm stores no numpy dtype"):
        QLC().encode(bad)


@pytest.mark.filterwarnings("ignore:ComplexHalf support is experimental")
@needs_numcodecs
def test_numcodecs_complex32():
    if not hasattr(torch, "complex32"):
        pytest.skip("no complex32")
    t = torch.randn(2, 8, dtype=torch.float16).view(torch.complex32)
    enc = qlccomm.compress(t).numpy().tobytes()
    try:
        import ml_dtypes
        has = hasattr(ml_dtypes, "complex32")
    except ImportError:
        has = False
    if not has:
        with pytest.raises(TypeError, match="ml_dtypes"):
            QLC().decode(enc)
        return
    a = QLC().decode(enc)
    assert a.dtype == np.dtype(ml_dtypes.complex32) and a.shape == (2, 4)
    assert a.tobytes() == t.view(torch.float16).numpy().tobytes()
    _roundtrip(a, "auto")


@needs_numcodecs
def test_numcodecs_config_and_registry():
    q = QLC(codec="qlc", checksum=True, codebook="default")
    cfg = q.get_config()
    assert cfg == {"id": "qlccomm", "codec": "qlc", "checksum": True, "codebook": "default"}
    assert json.loads(json.dumps(cfg)) == cfg
    again = numcodecs.get_codec(cfg)
    assert isinstance(again, QLC) and again == q and again.get_config() == cfg
    assert QLC.from_config({k: v for k, v in cfg.items() if k != "id"}) == q
    assert numcodecs.get_codec({"id": "qlccomm"}) == QLC()
    assert numcodecs.registry.codec_registry["qlccomm"] is QLC
    assert repr(QLC()) == "QLC(checksum=False, codebook=None, codec='auto')"
    a = datagen.synthetic("weight", torch.float16, 8192).numpy()
    enc = again.encode(a)
    assert qlccomm.inspect(enc)["checksum"] is True
    assert again.decode(enc).tobytes() == a.tobytes()


@needs_numcodecs
def test_numcodecs_codebook_file(tmp_path):
    t = datagen.synthetic("weight", torch.float16, 8192)
    path = tmp_path / "fp16.json"
    fit_codebook(t).save(path)
    q = QLC(codec="qlc", codebook=path)
    assert q.get_config()["codebook"] == str(path)
    a = t.numpy()
    assert q.decode(q.encode(a)).tobytes() == a.tobytes()


@pytest.mark.parametrize("kwargs, err", [({"codec": "zstd"}, ValueError), ({"checksum": 1}, TypeError),
                                         ({"codebook": 3}, TypeError),
                                         ({"codec": "enec", "codebook": "default"}, ValueError)])
@needs_numcodecs
def test_numcodecs_bad_parameters(kwargs, err):
    with pytest.raises(err):
        QLC(**kwargs)


@needs_numcodecs
def test_numcodecs_enec_of_an_integer_dtype():
    with pytest.raises(ValueError, match="ENEC codes"):
        QLC(codec="enec").encode(np.zeros(10, np.int8))


@needs_numcodecs
def test_zarr_roundtrip():
    zarr = pytest.importorskip("zarr")
    if not hasattr(zarr, "create_array"):
        pytest.skip("needs zarr >= 3")
    store = zarr.storage.MemoryStore()
    a = datagen.synthetic("weight", torch.float16, 64 * 100).numpy().reshape(64, 100)
    z = zarr.create_array(store=store, shape=a.shape, chunks=(16, 50), dtype=a.dtype, zarr_format=2,
                          compressors=QLC(codec="qlc"))
    z[:] = a
    back = zarr.open_array(store=store, mode="r")
    assert back.metadata.compressor == QLC(codec="qlc")
    assert back[:].tobytes() == a.tobytes()
