"""Interpreted Triton QLCW kernels (kernels/triton_qlcw.py) on CPU tensors against the torch
path, qlccomm.qlcw (run by tests/test_kernels_triton.py in a subprocess with TRITON_INTERPRET=1;
see tests/interpreted_triton.py).

Every check: the Triton section's bytes == the torch path's, the Triton decoder decodes the
torch path's stream bit-exactly, and on corrupt streams both decoders end alike (the same
FormatError message, or the same tensor).  Small sizes: chunks of 64 or 128 elements (the
interpreter pays per operation).
"""
from __future__ import annotations

import interpreted_triton  # noqa: F401  (first: sets TRITON_INTERPRET, or skips the module)

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from qlccomm import qlc, qlcw  # noqa: E402
from qlccomm.errors import EncoderError, FormatError  # noqa: E402
from qlccomm.format import CODEC_QLCW, FORMAT_VERSION, ByteSource, Header  # noqa: E402

import kernel_cases as kc  # noqa: E402

from qlccomm.kernels import triton_qlcw as tw  # noqa: E402

F = qlcw.Fields
# (dtype, split, chunk): the writer's candidates (two of float16's four)
CASES = [
    (torch.bfloat16, F(7, 8, 2), 64),
    (torch.float16, F(10, 5, 2), 64),
    (torch.float16, F(8, 7, 2), 128),
    (torch.float32, F(23, 8, 2), 64),
    (torch.float8_e4m3fn, F(0, 8, 2), 64),
    (torch.uint8, F(0, 8, 2), 64),
]
# valid splits the writer does not use: g = 1, fields in other places, raw values of 3, 9 and
# 11 bits (packed high bits only / a byte plane and packed bits), a field holding the sign bit
OTHER_SPLITS = [
    (torch.bfloat16, F(7, 8, 1)),
    (torch.bfloat16, F(3, 5, 2)),
    (torch.float16, F(10, 5, 1)),
    (torch.float32, F(24, 8, 2)),
    (torch.uint8, F(2, 5, 2)),
]
WORD = {1: torch.uint8, 2: torch.int16, 4: torch.int32}


def _id(case) -> str:
    dtype, f = case[0], case[1]
    return f"{str(dtype).removeprefix('torch.')}-{f.lo}.{f.w}.{f.g}"


@pytest.fixture
def small_steps():
    """Steps of 16 elements: a chunk of 64 takes 4 steps (offsets carried between them); and
    2 programs, each looping over several chunks (as past the grid limit)."""
    old = tw.SUB_MAX, tw.MAX_PROGRAMS
    tw.SUB_MAX, tw.MAX_PROGRAMS = 16, 2
    yield
    tw.SUB_MAX, tw.MAX_PROGRAMS = old


def special_patterns(dtype: torch.dtype) -> list[int]:
    """Bit patterns of NaN payloads, +-inf, -0.0 and subnormals (words of the dtype)."""
    if dtype.itemsize == 1:
        return [0x7F, 0xFF, 0x80, 0x01, 0x07, 0x81, 0x78, 0x00]   # e4m3fn: NaN, -NaN, -0.0, subnormals
    top = dtype.itemsize * 8 - 1
    sh = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23}[dtype]
    inf = ((1 << (top - sh)) - 1) << sh
    sign = -(1 << top)
    return [inf, sign | inf, inf | 1, sign | inf | (1 << (sh - 1)) | 5, sign, 1, (1 << sh) - 1, sign | 3]


def tensor(dtype: torch.dtype, chunk: int, seed: int, pattern: str = "czrc") -> torch.Tensor:
    """Chunks after `pattern` (coded-like, all-zero, random bits), then a short last chunk of
    an odd number of elements; special values in the first chunk and in the last."""
    x = kc.mixed(dtype, chunk, pattern, tail=chunk // 2 + 1, seed=seed).clone()
    v = x.view(WORD[dtype.itemsize])
    pats = torch.tensor(special_patterns(dtype), dtype=torch.int64).to(v.dtype)
    v[3 : 3 + 2 * len(pats) : 2] = pats
    v[-len(pats):] = pats
    return x


def stream(x: torch.Tensor, section: torch.Tensor):
    """(blob, header, parsed section) of a QLCW stream holding `section`."""
    h = Header(CODEC_QLCW, x.dtype, (x.numel(),), version=FORMAT_VERSION)
    blob = torch.cat([torch.frombuffer(bytearray(h.encode()), dtype=torch.uint8), section.cpu()])
    return blob, h, qlcw.parse_section(ByteSource(blob), h.nbytes, h)


def bits(t: torch.Tensor) -> torch.Tensor:
    return t.reshape(-1).view(torch.uint8)


def assert_same(x: torch.Tensor, f: qlcw.Fields, chunk: int, code=None):
    """Triton section == torch section; Triton decodes it bit-exactly.  Returns the parsed section."""
    ref = qlcw.encode_section(x, f, code, chunk=chunk)
    got = tw.encode_section(x, f, code, chunk=chunk)
    assert got.dtype == torch.uint8 and got.device == x.device
    if not torch.equal(ref, got):
        m = min(ref.numel(), got.numel())
        diff = (ref[:m] != got[:m]).nonzero().flatten()[:8].tolist()
        raise AssertionError(f"{x.dtype}/{f} n={x.numel()} chunk={chunk}: sections differ "
                             f"(sizes {ref.numel()} vs {got.numel()}, first differing bytes {diff})")
    blob, h, sec = stream(x, ref)
    y = tw.decode_section(sec, blob, h)
    assert y.dtype == x.dtype and y.shape == (x.numel(),)
    assert torch.equal(bits(y), bits(x)), f"{x.dtype}/{f}: decode differs"
    return sec


def modes(sec) -> dict:
    d = qlcw.describe(sec)
    return {k: d[f"chunks_{k}"] for k in ("zero", "coded", "raw")}


def decode_outcome(impl, blob: bytes, dtype: torch.dtype, numel: int):
    """("ok", decoded bytes) or ("error", FormatError message): parse, then impl decodes."""
    h = Header(CODEC_QLCW, dtype, (numel,), version=FORMAT_VERSION)
    data = torch.frombuffer(bytearray(blob), dtype=torch.uint8)
    try:
        sec = qlcw.parse_section(ByteSource(data), h.nbytes, h)
        y = impl.decode_section(sec, data, h)
    except FormatError as e:
        return ("error", str(e))
    return ("ok", bits(y).numpy().tobytes())


def encode_outcome(impl, x, f, code, chunk):
    try:
        return ("ok", impl.encode_section(x, f, code, chunk=chunk).numpy().tobytes())
    except EncoderError as e:
        return ("error", str(e))


# -- same bytes, bit-exact decode ----------------------------------------------------------------

@pytest.mark.parametrize("steps", ["whole", "small"])
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_sections_match_torch_path(case, steps, request):
    """Coded, all-zero and raw chunks, a short odd last chunk, NaN / inf / -0.0 / subnormals;
    whole chunks per step, or steps of 16 elements and 2 programs (`small_steps`)."""
    if steps == "small":
        request.getfixturevalue("small_steps")
    dtype, f, chunk = case
    x = tensor(dtype, chunk, seed=chunk + f.lo)
    sec = assert_same(x, f, chunk)
    assert all(v > 0 for v in modes(sec).values()), modes(sec)
    assert x.numel() % chunk % 2 == 1


def test_escape_area_and_full_table():
    """The fitted code escapes symbols seen once (area 15 holds the symbol itself) for float16
    pairs of 7-bit fields; pairs of small bytes (16 symbols, each frequent) fit a table of 16 areas."""
    sec = assert_same(tensor(torch.float16, 128, seed=3), F(8, 7, 2), 128)
    assert sec.code.escape
    sec = assert_same(kc.mixed(torch.uint8, 64, "czc", tail=33, seed=4), F(0, 8, 2), 64)
    assert not sec.code.escape


@pytest.mark.parametrize("case", OTHER_SPLITS, ids=_id)
def test_other_valid_splits(case):
    dtype, f = case
    assert_same(tensor(dtype, 64, seed=f.lo * 3 + f.g, pattern="crzc"), f, 64)


def test_default_chunk_size():
    """Chunks of 4096 (the writer's): coded, all-zero and raw chunks, a short last chunk."""
    x = kc.mixed(torch.bfloat16, qlc.CHUNK_ELEMS, "czr", tail=1001, seed=5)
    sec = assert_same(x, F(7, 8, 2), qlc.CHUNK_ELEMS)
    assert all(v > 0 for v in modes(sec).values()), modes(sec)


@pytest.mark.skipif(not hasattr(qlcw, "histogram"), reason="qlcw.histogram not in this tree")
def test_histogram_matches_torch_path():
    """The histogram adaptive coding weighs QLCW by (zero chunks and padding left out)."""
    for dtype, f, chunk in CASES[:2] + CASES[4:5]:
        x = tensor(dtype, chunk, seed=31)
        assert np.array_equal(tw.histogram(x, f, chunk), qlcw.histogram(x, f, chunk))


def test_given_codes_and_unwritable_symbols():
    """A code fitted to another tensor (escape: writes everything), and one that lacks
    symbols of the tensor: both paths raise the same EncoderError."""
    dtype, f = torch.float16, F(10, 5, 2)
    other = qlcw.parse_section(*_parse_args(tensor(dtype, 64, seed=21), f, 64)).code
    x = tensor(dtype, 64, seed=22)
    assert_same(x, f, 64, other)
    only_zero = qlcw.build_code(np.zeros(1 << f.symbol_bits, np.int64), f.symbol_bits)
    assert not only_zero.escape
    ref = encode_outcome(qlcw, x, f, only_zero, 64)
    assert ref[0] == "error" and "cannot write" in ref[1]
    assert encode_outcome(tw, x, f, only_zero, 64) == ref
    z = torch.zeros(100, dtype=dtype)                  # all-zero chunks never need the code
    assert_same(z, f, 64, only_zero)


def _parse_args(x, f, chunk):
    blob, h, _ = stream(x, qlcw.encode_section(x, f, chunk=chunk))
    return ByteSource(blob), h.nbytes, h


def test_reserve_into_and_out():
    x = tensor(torch.bfloat16, 64, seed=6)
    f = F(7, 8, 2)
    ref = qlcw.encode_section(x, f, chunk=64)
    into = torch.full((ref.numel() + 50,), 0xAB, dtype=torch.uint8)
    got = tw.encode_section(x, f, chunk=64, reserve=7, into=into)
    assert got.numel() == ref.numel() + 7 and got.data_ptr() == into.data_ptr()
    assert torch.equal(got[7:], ref)
    small = torch.empty(10, dtype=torch.uint8)
    got = tw.encode_section(x, f, chunk=64, reserve=3, into=small)
    assert got.data_ptr() != small.data_ptr() and torch.equal(got[3:], ref)
    blob, h, sec = stream(x, ref)
    out = torch.empty(x.numel(), dtype=x.dtype)
    y = tw.decode_section(sec, blob, h, out=out)
    assert y.data_ptr() == out.data_ptr() and torch.equal(bits(out), bits(x))


# -- corrupt streams -----------------------------------------------------------------------------

def _rank_stream():
    """A bfloat16 stream of pair symbols 0..30 under a code of 15 areas of 2 ranks and area 15
    of 16 ranks, of which only rank 30 is in the table (T = 31): 3 coded chunks of 64."""
    x = torch.zeros(192, dtype=torch.bfloat16)
    v = x.view(torch.int16)
    sym = torch.arange(96) % 31
    v[0::2] = ((sym << 7) | 5).to(torch.int16)         # the pair's low field; the high one is 0
    v[1::2] = 3
    code = qlcw.WideCode(16, (1,) * 15 + (4,), np.arange(31, dtype=np.int64), False)
    sec_t = qlcw.encode_section(x, F(7, 8, 2), code, chunk=64)
    assert torch.equal(sec_t, tw.encode_section(x, F(7, 8, 2), code, chunk=64))
    blob, h, sec = stream(x, sec_t)
    assert modes(sec)["coded"] == 3
    return x, blob, sec


def test_crafted_corrupt_streams_raise_the_same_errors():
    x, blob, sec = _rank_stream()
    b0 = bytearray(blob.numpy().tobytes())
    s0 = sec.planes_offset + sec.plane_bytes["prefix"] + sec.plane_bytes["field"]
    n = sec.modes.size
    # 1. a suffix byte more in chunk 0's table entry (and in the stream): prefixes disagree
    b = bytearray(b0)
    k = sec.planes_offset - 4 * n                      # u32 suffix bytes of chunk 0
    b[k:k + 4] = (int.from_bytes(b[k:k + 4], "little") + 1).to_bytes(4, "little")
    b.insert(s0 + int(sec.suffix_len[0]), 0)
    # 2. every suffix bit of chunk 1 set: area 15 reads rank 30 + 15, past the table
    c = bytearray(b0)
    s1 = s0 + int(sec.suffix_len[0])
    c[s1 : s1 + int(sec.suffix_len[1])] = b"\xff" * int(sec.suffix_len[1])
    for bad, msg in ((b, "suffix plane does not match the prefixes"), (c, "code names a rank past the table")):
        ref = decode_outcome(qlcw, bytes(bad), x.dtype, x.numel())
        assert ref[0] == "error" and ref[1].startswith(msg), ref
        assert decode_outcome(tw, bytes(bad), x.dtype, x.numel()) == ref


def test_fuzzed_planes_end_like_torch_path():
    """Bit flips and byte overwrites in the planes (they pass parse_section): the same
    FormatError or the same tensor, on a stream without and one with the escape area."""
    rng = np.random.default_rng(7)
    outcomes = set()
    for dtype, f, chunk in ((torch.bfloat16, F(7, 8, 2), 64), (torch.float16, F(10, 5, 2), 64)):
        x = tensor(dtype, chunk, seed=8)
        blob, _, sec = stream(x, qlcw.encode_section(x, f, chunk=chunk))
        data = blob.numpy().tobytes()
        end_suffix = sec.planes_offset + sum(sec.plane_bytes[p] for p in ("prefix", "field", "suffix"))
        for i in range(10):
            b = bytearray(data)
            for _ in range(1 + int(rng.integers(3))):
                # mostly prefix and suffix bytes (what the decoder checks), sometimes anywhere in the planes
                p = int(rng.integers(sec.planes_offset, end_suffix if i % 3 else len(b)))
                if i % 2:
                    b[p] ^= 1 << int(rng.integers(8))
                else:
                    b[p] = int(rng.integers(256))
            ref = decode_outcome(qlcw, bytes(b), dtype, x.numel())
            assert decode_outcome(tw, bytes(b), dtype, x.numel()) == ref
            outcomes.add(ref[0] if ref[0] == "ok" else ref[1])
    assert len(outcomes) >= 2, outcomes


# -- several codes per section -------------------------------------------------------------------

SCALES = {"a": 1e-3, "b": 1.0, "c": 1e3}


def scaled(dtype: torch.dtype, chunk: int, pattern: str, tail: int, seed: int) -> torch.Tensor:
    """Chunks after `pattern` (a, b, c: normal values scaled by 1e-3, 1, 1e3, so each part has
    its own exponents; z: all zero; r: random bits), then a short last chunk of `tail`
    c-scaled elements."""
    gen = torch.Generator().manual_seed(seed)
    parts = []
    for p in pattern + "t":
        if p == "z":
            parts.append(torch.zeros(chunk, dtype=dtype))
        elif p == "r":
            parts.append(kc.raw_like(chunk, dtype, gen))
        else:
            m = tail if p == "t" else chunk
            parts.append((torch.randn(m, generator=gen) * SCALES.get(p, 1e3)).to(dtype))
    return torch.cat([q.view(torch.uint8) for q in parts]).view(dtype)


def _by_count(hist: np.ndarray) -> np.ndarray:
    used = np.flatnonzero(hist)
    return used[np.lexsort((used, -hist[used]))]


def escape_code(hist: np.ndarray, S: int) -> qlcw.WideCode:
    """A code that lists the more frequent half of the histogram's symbols (15 areas of
    1..128 ranks) and escapes the rest in area 15."""
    widths = (0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7)
    order = _by_count(hist)
    keep = max(1, min(order.size // 2, sum(1 << b for b in widths)))
    return qlcw.WideCode(S, widths + (S,), order[:keep], True)


def group_codes(x: torch.Tensor, f: qlcw.Fields, chunk: int, groups, escape=(), unfitted=()) -> qlcw.CodeSet:
    """One code per group of chunks (groups[c]: chunk c's code): for the groups in `escape` an
    escape code (escape_code), else a code of 16 areas listing every symbol of its chunks
    (qlcw.build_code, every count raised by one so that none is worth escaping).  Escape codes
    are fitted without the chunks in `unfitted`."""
    groups = np.asarray(groups, np.int64)
    codes = []
    for m in range(int(groups.max()) + 1):
        rows = [x[c * chunk:(c + 1) * chunk] for c in np.flatnonzero(groups == m)
                if not (m in escape and c in unfitted)]
        hist = qlcw.histogram(torch.cat(rows), f, chunk)   # chunks in order: the short last one last
        codes.append(escape_code(hist, f.symbol_bits) if m in escape
                     else qlcw.build_code(hist + (hist > 0), f.symbol_bits))
    return qlcw.CodeSet(tuple(codes), groups)


# chunks a b z c a r b c + a short last one (c); codes: 0 for a (an escape code, also the
# random chunk's, fitted without it: raw), 1 for b (and the all-zero chunk: a writer may name any
# code there), 2 for c
MULTI_PATTERN, MULTI_GROUPS = "abzcarbc", [0, 1, 1, 2, 0, 0, 1, 2, 2]


def multi_stream(f: qlcw.Fields, chunk: int = 64, seed: int = 41):
    x = scaled(torch.bfloat16, chunk, MULTI_PATTERN, tail=chunk // 2 + 1, seed=seed)
    return x, group_codes(x, f, chunk, MULTI_GROUPS, escape={0}, unfitted={MULTI_PATTERN.index("r")})


@pytest.mark.parametrize("g,steps", [(1, "whole"), (2, "whole"), (2, "small")])
def test_codesets_match_torch_path(g, steps, request):
    """Three codes (one escaping), each chunk with its own: coded chunks under each code,
    all-zero, raw and a short odd last chunk; with `small_steps` 2 programs loop over chunks
    of different codes."""
    if steps == "small":
        request.getfixturevalue("small_steps")
    f = F(7, 8, g)
    x, cs = multi_stream(f)
    assert [c.escape for c in cs.codes] == [True, False, False]
    sec = assert_same(x, f, 64, cs)
    assert len(sec.codes) == 3 and np.array_equal(sec.chunk_code, MULTI_GROUPS)
    assert all(v > 0 for v in modes(sec).values()), modes(sec)
    coded = sec.modes == qlc.MODE_CODED
    assert set(sec.chunk_code[coded].tolist()) == {0, 1, 2}
    assert x.numel() % 64 % 2 == 1


def test_chunk_histograms_match_torch_path(small_steps):
    """Per-chunk field histograms (zero rows for all-zero chunks, a short last chunk)."""
    cases = [(torch.bfloat16, 7, 8, 64), (torch.float16, 8, 7, 128), (torch.uint8, 0, 8, 64),
             (torch.float32, 23, 8, 48)]
    for dtype, lo, w, chunk in cases:
        x = tensor(dtype, chunk, seed=lo + w, pattern="czrcz")
        ref = qlcw.chunk_histograms(x, lo, w, chunk)
        got = tw.chunk_histograms(x, lo, w, chunk)
        assert got.dtype == ref.dtype and np.array_equal(got, ref), (dtype, lo, w)
        assert not ref[1].any() and ref[0].any()


def test_clustered_codes_match_torch_path():
    """The writer's code sets: qlcw.cluster_codes on the (Triton) chunk histograms of a tensor
    with differently-scaled parts (up to 8 codes, escaping and not), g = 1."""
    x = scaled(torch.bfloat16, 64, "abzcarbcab", tail=17, seed=45)
    f = F(7, 8, 1)
    sets = qlcw.cluster_codes(tw.chunk_histograms(x, 7, 8, 64), f)
    assert sets and all(len(cs.codes) >= 2 for _, cs in sets)
    for _, cs in sets:
        sec = assert_same(x, f, 64, cs)
        assert len(sec.codes) == len(cs.codes) and np.array_equal(sec.chunk_code, cs.chunk_code)


def test_codeset_errors_match_torch_path():
    """A chunk whose code cannot write its symbols (EncoderError), a CodeSet for another chunk
    count, a chunk code past the set (ValueError each): the torch path's exceptions."""
    f = F(7, 8, 2)
    x, cs = multi_stream(f)
    groups = np.array(MULTI_GROUPS)
    groups[1] = 2                                    # a b-scaled chunk under the c-scaled code
    bad = qlcw.CodeSet(cs.codes, groups)
    ref = encode_outcome(qlcw, x, f, bad, 64)
    assert ref[0] == "error" and "cannot write" in ref[1]
    assert encode_outcome(tw, x, f, bad, 64) == ref
    for wrong, exc in ((qlcw.CodeSet(cs.codes, groups[:-1]), ValueError),
                       (qlcw.CodeSet(cs.codes, np.array(MULTI_GROUPS) * 0 + 3), ValueError)):
        with pytest.raises(exc):
            qlcw.encode_section(x, f, wrong, chunk=64)
        with pytest.raises(exc):
            tw.encode_section(x, f, wrong, chunk=64)


def _swap_stream():
    """A bfloat16 stream (g = 2) of 4 codes: A listing the symbols of the chunks other than the
    random one, B = A's table reversed (same widths and size), C = the first half of A's table
    (same widths), D an escape code; coded chunks use A and B, the random chunk D (raw), no
    chunk C.  Returns x, the stream bytes and the parsed section."""
    f = F(7, 8, 2)
    x = scaled(torch.bfloat16, 64, "abzrc", tail=33, seed=47)
    hist = qlcw.histogram(torch.cat([x[:3 * 64], x[4 * 64:]]), f, 64)
    a = qlcw.build_code(hist + (hist > 0), 16)             # every symbol listed (group_codes)
    assert not a.escape and a.table.size >= 4
    codes = (a, qlcw.WideCode(16, a.widths, a.table[::-1].copy(), False),
             qlcw.WideCode(16, a.widths, a.table[: a.table.size // 2].copy(), False),
             escape_code(hist, 16))
    cs = qlcw.CodeSet(codes, np.array([0, 1, 0, 3, 1, 0]))
    ref = qlcw.encode_section(x, f, cs, chunk=64)
    assert torch.equal(ref, tw.encode_section(x, f, cs, chunk=64))
    blob, _, sec = stream(x, ref)
    return x, blob.numpy().tobytes(), sec


def test_chunk_codes_corrupted_end_like_torch_path():
    """Chunk-code bytes past the set: parse_section's FormatError (both paths).  A chunk that
    names another valid code: both decoders end alike, and the outcomes are those expected:
    decoded (same widths, other table), a rank past the table (same widths, shorter table),
    the prefixes disagreeing with the suffix bytes (other widths); with both of the last two
    in one stream, the mismatch is reported (the torch path's order)."""
    x, blob, sec = _swap_stream()
    K = sec.modes.size
    at = sec.planes_offset - K                          # chunk c's code: byte at + c
    coded = [int(c) for c in np.flatnonzero(sec.modes == qlc.MODE_CODED)]
    other = [int(c) for c in np.flatnonzero(sec.modes != qlc.MODE_CODED)]
    assert len(coded) == 4 and len(other) == 2, sec.modes

    def outcome(*changes):
        b = bytearray(blob)
        for c, k in changes:
            b[at + c] = k
        ref = decode_outcome(qlcw, bytes(b), x.dtype, x.numel())
        assert decode_outcome(tw, bytes(b), x.dtype, x.numel()) == ref, changes
        return ref

    for c, k in ((coded[0], 4), (coded[1], 255), (other[0], 4)):   # every chunk's code is checked
        ref = outcome((c, k))
        assert ref[0] == "error" and ref[1].startswith("a chunk names a code past"), ref
    same = ("ok", bits(x).numpy().tobytes())
    assert outcome(*[(c, 2) for c in other]) == same   # zero and raw chunks ignore their code
    for c in coded[:2]:
        swapped = outcome((c, 1 - int(sec.chunk_code[c])))
        assert swapped[0] == "ok" and swapped != same
    rank = "code names a rank past the table"
    mismatch = "suffix plane does not match the prefixes"
    found = {}
    for c in coded:
        for k in (2, 3):
            r = outcome((c, k))
            found.setdefault(r[0] if r[0] == "ok" else r[1].split(" (")[0], []).append((c, k))
    assert rank in found and mismatch in found, found
    # one chunk past C's table, another under D's widths: the mismatch is reported
    r1 = found[rank][0]
    r2 = next(ck for ck in found[mismatch] if ck[0] != r1[0])
    ref = outcome(r1, r2)
    assert ref[0] == "error" and ref[1].startswith(mismatch), ref


def test_fuzzed_multi_code_stream_ends_like_torch_path():
    """Bit flips and byte overwrites in the chunk codes and planes of a 3-code stream (g = 2)."""
    rng = np.random.default_rng(11)
    f = F(7, 8, 2)
    x, cs = multi_stream(f, seed=53)
    blob, _, sec = stream(x, qlcw.encode_section(x, f, cs, chunk=64))
    data = blob.numpy().tobytes()
    K = sec.modes.size
    end_suffix = sec.planes_offset + sum(sec.plane_bytes[p] for p in ("prefix", "field", "suffix"))
    outcomes = set()
    for i in range(8):
        b = bytearray(data)
        for _ in range(1 + int(rng.integers(2))):
            p = int(rng.integers(sec.planes_offset - K, end_suffix))
            if i % 2:
                b[p] ^= 1 << int(rng.integers(8))
            else:
                b[p] = int(rng.integers(256))
        ref = decode_outcome(qlcw, bytes(b), x.dtype, x.numel())
        assert decode_outcome(tw, bytes(b), x.dtype, x.numel()) == ref
        outcomes.add(ref[0] if ref[0] == "ok" else ref[1])
    assert len(outcomes) >= 2, outcomes


# -- raw shifts (docs/format.md, "Raw shifts") ----------------------------------------------------

@pytest.mark.parametrize("steps", ["whole", "small"])
@pytest.mark.parametrize("case", [c for c in CASES + [(d, f, 64) for d, f in OTHER_SPLITS]
                                  if c[0].itemsize > 1] + [(torch.float32, F(0, 1, 1), 64)], ids=_id)
def test_raw_shifts_match_torch_path(case, steps, request):
    """Chunks of upcast values and of powers of two (raw values with zero low bits), coded,
    all-zero and random chunks, an upcast odd tail: the Triton stats find the same shifts,
    the encoder writes the same bytes, the decoder restores the bits."""
    if steps == "small":
        request.getfixturevalue("small_steps")
    dtype, f, chunk = case
    x = kc.mixed(dtype, chunk, "cuzpur", tail=chunk // 2 + 1, seed=chunk + f.lo, tail_kind="u")
    sec = assert_same(x, f, chunk)
    assert sec.shifts is not None and (sec.shifts > 0).sum() >= 3


def test_raw_shift_of_the_top_raw_bit():
    """float32 split (0, 1): 31 raw bits; a chunk of -0.0 holds only bit 30 (shift 30)."""
    x = torch.cat([torch.full((64,), -0.0), kc.coded_like(70, torch.float32, torch.Generator().manual_seed(1))])
    assert assert_same(x, F(0, 1, 1), 64).shifts[0] == 30


def test_corrupt_raw_shifts_end_like_torch_path():
    x = kc.mixed(torch.float32, 64, "cuzpu", tail=33, seed=9, tail_kind="u")
    blob, h, sec = stream(x, qlcw.encode_section(x, F(23, 8, 2), chunk=64))
    at = sec.planes_offset - sec.modes.size                          # the shifts end the metadata
    rng = np.random.default_rng(3)
    for _ in range(12):
        bad = bytearray(blob.numpy().tobytes())
        bad[at + int(rng.integers(sec.modes.size))] = int(rng.integers(26))
        ref = decode_outcome(qlcw, bytes(bad), x.dtype, x.numel())
        assert decode_outcome(tw, bytes(bad), x.dtype, x.numel()) == ref
