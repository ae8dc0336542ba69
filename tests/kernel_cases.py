"""Shared inputs and checks for the fused-kernel tests (test_kernels_*.py).

Every check compares a fused backend with the torch path (qlccomm.qlc), which is
the reference: same section bytes, same decoded bits, and for corrupt streams the
same outcome (the same FormatError message, or the same decoded tensor).
"""
from __future__ import annotations

import os
from contextlib import contextmanager

import numpy as np
import torch

import qlccomm
from qlccomm import qlc
from qlccomm.codebook import Codebook, codebook_from_histogram, symbol_histogram
from qlccomm.format import CODEC_QLC, ByteSource, Header
from qlccomm.split import PLANS

# (dtype, plan name): every plan, and the 1-byte dtypes the byte plan codes
PLAN_CASES = [
    (torch.bfloat16, "bf16_exp"),
    (torch.float16, "fp16_exp"),
    (torch.float16, "fp16_hi"),
    (torch.float32, "fp32_exp"),
    (torch.float8_e4m3fn, "byte"),
    (torch.float8_e5m2, "byte"),
    (torch.uint8, "byte"),
    (torch.int8, "byte"),
]
BYTE_DTYPES = [torch.bool, torch.float8_e4m3fnuz, torch.float8_e5m2fnuz] + (
    [torch.float8_e8m0fnu] if hasattr(torch, "float8_e8m0fnu") else [])


def case_id(case) -> str:
    dtype, plan = case
    return f"{str(dtype).removeprefix('torch.')}-{plan}"


def _bits(n: int, itemsize: int, g: torch.Generator) -> torch.Tensor:
    """n random elements of `itemsize` bytes as raw bit patterns (uint8 [n * itemsize])."""
    return torch.randint(0, 256, (n * itemsize,), generator=g, dtype=torch.uint8)


def coded_like(n: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """Values whose symbols a QLC code shrinks: weight-like floats, small integers."""
    if dtype.is_floating_point and torch.empty(0, dtype=dtype).element_size() > 1:
        return (torch.randn(n, generator=g) * 0.02).to(dtype)
    if dtype == torch.bool:
        return torch.rand(n, generator=g) < 0.05
    return torch.randint(0, 4, (n,), generator=g, dtype=torch.uint8).view(dtype) if dtype.itemsize == 1 \
        else torch.randint(0, 4, (n,), generator=g).to(dtype)


def raw_like(n: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """Uniformly random bit patterns: symbols a code fitted elsewhere cannot shrink."""
    if dtype == torch.bool:
        return torch.rand(n, generator=g) < 0.5
    return _bits(n, dtype.itemsize, g).view(dtype)


def upcast_like(n: int, dtype: torch.dtype, g: torch.Generator) -> torch.Tensor:
    """Coded-like floats exact in a narrower dtype (float32: float16 values; 16-bit floats:
    float8 e4m3 values): their low mantissa bits are zero, what QLCW's raw shifts drop."""
    narrow = torch.float16 if dtype == torch.float32 else torch.float8_e4m3fn
    return (torch.randn(n, generator=g) * 0.02).to(narrow).to(dtype)


def mixed(dtype: torch.dtype, chunk: int, pattern: str, tail: int, seed: int = 0, tail_kind: str = "c") -> torch.Tensor:
    """Chunks after `pattern` (c: coded-like, z: all zero, r: random bits, u: upcast-like,
    p: positive powers of two: no raw bit set), then a short last chunk of `tail` elements
    of `tail_kind` (0 for none)."""
    g = torch.Generator().manual_seed(seed)

    def part(p: str, n: int) -> torch.Tensor:
        if p == "c":
            return coded_like(n, dtype, g)
        if p == "z":
            return torch.zeros(n, dtype=dtype)
        if p == "r":
            return raw_like(n, dtype, g)
        if p == "u":
            return upcast_like(n, dtype, g)
        if p == "p":
            return torch.exp2(torch.randint(-12, 3, (n,), generator=g).float()).to(dtype)
        raise ValueError(p)
    parts = [part(p, chunk) for p in pattern] + ([part(tail_kind, tail)] if tail else [])
    return torch.cat([q.view(torch.uint8) for q in parts]).view(dtype)


def plan_codebook(x: torch.Tensor, plan: str) -> Codebook:
    """A codebook for `plan` fitted to x (referenced by digest when passed without embed)."""
    return codebook_from_histogram(symbol_histogram(x, PLANS[plan]), x.dtype, PLANS[plan])


def with_header(x_dtype: torch.dtype, numel: int, section: torch.Tensor) -> torch.Tensor:
    h = Header(CODEC_QLC, x_dtype, (numel,))
    return torch.cat([torch.frombuffer(bytearray(h.encode()), dtype=torch.uint8), section.cpu()])


def parse(blob: torch.Tensor, dtype: torch.dtype, numel: int, codebook=None):
    h = Header(CODEC_QLC, dtype, (numel,))
    return h, qlc.parse_section(ByteSource(blob), h.nbytes, numel, dtype, codebook)


def assert_same_encoding(impl, x: torch.Tensor, plan: str, codebook, embed: bool = False,
                         chunk: int = qlc.CHUNK_ELEMS) -> torch.Tensor:
    """impl's section == the torch path's section (bytes), and impl decodes it back
    bit-exactly; returns the section."""
    ref = qlc.encode_section(x, PLANS[plan], codebook, embed=embed, chunk=chunk)
    got = impl.encode_section(x, PLANS[plan], codebook, embed=embed, chunk=chunk)
    assert got.dtype == torch.uint8 and got.device == x.device
    if not torch.equal(ref, got):
        m = min(ref.numel(), got.numel())
        diff = (ref[:m] != got[:m]).nonzero().flatten()[:8].tolist()
        raise AssertionError(f"{x.dtype}/{plan} n={x.numel()} chunk={chunk}: sections differ "
                             f"(sizes {ref.numel()} vs {got.numel()}, first differing bytes {diff})")
    blob = with_header(x.dtype, x.numel(), ref)
    h, sec = parse(blob, x.dtype, x.numel(), codebook)
    y = impl.decode_section(sec, blob.to(x.device), h)
    assert y.dtype == x.dtype and y.shape == (x.numel(),)
    assert torch.equal(y.view(torch.uint8), x.view(torch.uint8)), f"{x.dtype}/{plan}: decode differs"
    return ref


def modes_of(section: torch.Tensor, dtype: torch.dtype, numel: int, codebook=None) -> dict:
    _, sec = parse(with_header(dtype, numel, section), dtype, numel, codebook)
    d = qlc.describe(sec)
    return {k: d[f"chunks_{k}"] for k in ("zero", "coded", "raw")}


@contextmanager
def kernels_env(backend: str):
    old = os.environ.get("QLCCOMM_KERNELS")
    os.environ["QLCCOMM_KERNELS"] = backend
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("QLCCOMM_KERNELS", None)
        else:
            os.environ["QLCCOMM_KERNELS"] = old


def outcome(blob: bytes | torch.Tensor, backend: str, codebook=None):
    """("ok", decoded bytes) or ("error", FormatError message) of decompress on `backend`."""
    with kernels_env(backend):
        try:
            t = qlccomm.decompress(blob, codebook=codebook)
        except qlccomm.FormatError as e:
            return ("error", str(e))
    return ("ok", t.reshape(-1).view(torch.uint8).numpy().tobytes())


def corruptions(blob: torch.Tensor, sec, rng: np.random.Generator, count: int):
    """Mutated copies of a QLC stream: bit flips anywhere, bit flips in the planes only
    (they pass parse_section and reach the decoder), byte overwrites, truncation."""
    data = blob.numpy().tobytes()
    planes = sec.planes_offset
    out = []
    for i in range(count):
        b = bytearray(data)
        kind = i % 4
        if kind == 0:                                   # one bit anywhere
            p = int(rng.integers(len(b)))
            b[p] ^= 1 << int(rng.integers(8))
        elif kind in (1, 2) and len(b) > planes:        # a few bits / a byte in the planes
            for _ in range(1 + int(rng.integers(4))):
                p = int(rng.integers(planes, len(b)))
                if kind == 1:
                    b[p] ^= 1 << int(rng.integers(8))
                else:
                    b[p] = int(rng.integers(256))
        else:                                           # truncated or extended
            b = b[: int(rng.integers(len(b)))] if rng.integers(2) else b + bytes([int(rng.integers(256))])
        out.append(bytes(b))
    return out


def crafted_errors():
    """Streams built to hit each decode-time error of the torch path, as
    (name, blob, codebook, expected message start).  Each is valid to parse_section."""
    cases = []
    # 1. prefixes and suffix byte count disagree: one more suffix byte in the table (and stream)
    x = mixed(torch.bfloat16, 64, "cc", 0, seed=1)
    cb = plan_codebook(x, "bf16_exp")
    sec_t = qlc.encode_section(x, PLANS["bf16_exp"], cb, chunk=64)
    blob = with_header(x.dtype, x.numel(), sec_t)
    h, sec = parse(blob, x.dtype, x.numel(), cb)
    b = bytearray(blob.numpy().tobytes())
    table = sec.planes_offset - 5 * sec.layout.nchunks
    k = table + sec.layout.nchunks                     # u32 suffix bytes of chunk 0
    n0 = int.from_bytes(b[k:k + 4], "little")
    b[k:k + 4] = (n0 + 1).to_bytes(4, "little")
    b.insert(sec.planes_offset + sum(sec.plane_bytes[p] for p in ("prefix", "symbol")), 0)
    cases.append(("mismatch", bytes(b), cb, "suffix plane does not match"))

    # 2. a code names a rank past the table: area 7 runs from rank 14 to 269
    widths = (1, 1, 1, 1, 1, 1, 1, 8)
    syms = list(range(256))
    cb2 = Codebook(torch.bfloat16, "bf16_exp", widths, tuple(syms))
    x2 = torch.zeros(128, dtype=torch.bfloat16)
    x2.view(torch.int16)[:] = 5                        # symbol 0 = rank 0: area 0, 1-bit suffix
    x2.view(torch.int16)[::16] = 14 << 7               # symbol 14 = rank 14: area 7, 8-bit suffix 0
    sec_t = qlc.encode_section(x2, PLANS["bf16_exp"], cb2, embed=True, chunk=64)
    blob = with_header(x2.dtype, x2.numel(), sec_t)
    h, sec = parse(blob, x2.dtype, x2.numel())
    b = bytearray(blob.numpy().tobytes())
    s0 = sec.planes_offset + sec.plane_bytes["prefix"] + sec.plane_bytes["symbol"]
    for p in range(s0, s0 + sec.plane_bytes["suffix"]):
        b[p] = 0xFF                                    # area 7 reads suffix 255: rank 269
    cases.append(("rank", bytes(b), None, "code names a rank past the table"))

    # 3. fp16_exp: a code decodes to a symbol wider than 5 bits (rank 1 is symbol 200)
    syms = [3, 200] + [s for s in range(256) if s not in (3, 200)]
    cb3 = Codebook(torch.float16, "fp16_exp", (1, 2, 3, 4, 5, 6, 7, 8), tuple(syms))
    x3 = torch.zeros(100, dtype=torch.float16)
    x3.view(torch.int16)[:] = (3 << 10) | 5            # symbol 3 = rank 0: 1-bit suffix 0
    sec_t = qlc.encode_section(x3, PLANS["fp16_exp"], cb3, embed=True, chunk=64)
    blob = with_header(x3.dtype, x3.numel(), sec_t)
    h, sec = parse(blob, x3.dtype, x3.numel())
    s0 = sec.planes_offset + sec.plane_bytes["prefix"] + sec.plane_bytes["symbol"]
    b = bytearray(blob.numpy().tobytes())
    b[s0] |= 0x04                                      # chunk 0, element 2: suffix 1 -> symbol 200
    cases.append(("symbol", bytes(b), None, "decoded symbol exceeds 5 bits"))

    # 4. the same, reached only through the zero padding of the short last chunk: its 36
    #    codes take 36 suffix bits; a set high bit of the last byte makes the torch path's
    #    decode of the padding (area 0 at bit 36) read rank 1, symbol 200
    b = bytearray(blob.numpy().tobytes())
    last = s0 + sec.plane_bytes["suffix"] - 1
    b[last] |= 0x10
    cases.append(("padding", bytes(b), None, "decoded symbol exceeds 5 bits"))
    return cases


# -- ENEC ------------------------------------------------------------------------------------------
# Shared by test_kernels_enec.py (native) and triton_enec_interpreted_cases.py (Triton): every
# check compares a fused backend's module with the torch path (qlccomm.enec).
ENEC_DTYPES = [torch.bfloat16, torch.float16, torch.float32]
INT_OF = {torch.bfloat16: torch.int16, torch.float16: torch.int16, torch.float32: torch.int32}
EXP_BITS = {torch.bfloat16: 8, torch.float16: 5, torch.float32: 8}
EXP_SHIFT = {torch.bfloat16: 7, torch.float16: 10, torch.float32: 23}


def weights(n: int, dtype: torch.dtype, seed: int = 0, tail: float = 0.5) -> torch.Tensor:
    """Weight-like values (heavier tails for larger `tail`)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, generator=g) / torch.rand(n, generator=g).clamp_min(1e-3).pow(tail)
    return (x * 0.02).to(dtype)


def specials(t: torch.Tensor, seed: int) -> torch.Tensor:
    """t with zeros, -0.0, subnormals, +-inf and NaN payloads sprinkled in (exceptions)."""
    t = t.clone()
    ib = INT_OF[t.dtype]
    v = t.view(ib)
    top = 31 if t.dtype == torch.float32 else 15
    E, sh = EXP_BITS[t.dtype], EXP_SHIFT[t.dtype]
    inf = ((1 << E) - 1) << sh
    sign = -(1 << top)
    pats = [0, sign, 1, (1 << sh) - 1, inf, inf | 1, inf | (1 << (sh - 1)) | 5, sign | inf, sign | 3]
    g = torch.Generator().manual_seed(seed)
    idx = torch.randint(0, t.numel(), (max(1, t.numel() // 50),), generator=g)
    v[idx] = torch.tensor(pats, dtype=ib).repeat(idx.numel() // len(pats) + 1)[: idx.numel()]
    return t


def enec_stream(section: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A whole ENEC stream (header + section) for the elements of t."""
    from qlccomm.format import CODEC_ENEC
    head = torch.frombuffer(bytearray(Header(CODEC_ENEC, t.dtype, (t.numel(),)).encode()), dtype=torch.uint8)
    return torch.cat([head, section.cpu()])


def enec_decode_with(impl, blob) -> tuple[str, bytes | str]:
    """("ok", decoded bytes) or ("error", FormatError message): parse, then impl decodes."""
    from qlccomm.api import _parse
    from qlccomm.format import CODEC_ENEC
    try:
        src = ByteSource(blob)
        header, sec = _parse(src)
        if header.codec != CODEC_ENEC:
            return ("other codec", "")
        y = impl.decode_section(sec, src.tensor, header)
    except qlccomm.FormatError as e:
        return ("error", str(e))
    return ("ok", y.view(torch.uint8).numpy().tobytes())


def enec_crafted_errors():
    """ENEC streams that parse but fail to decode, as (blob, expected message start): the
    flag plane holds one more set bit than F; an exception position past a short tail; one
    past B = 24 (not a power of two)."""
    from qlccomm import enec
    from qlccomm.api import _parse
    B = enec.BLOCK_ELEMS
    t = weights(2 * B + 100, torch.bfloat16, seed=9, tail=0.5)
    ref, info = enec._encode(t)
    assert info["F"] > 0 and info["m"] < info["n"]
    blob = bytearray(enec_stream(ref, t).numpy().tobytes())
    _, sec = _parse(ByteSource(bytes(blob)))
    flags_at = sec.planes_offset
    data = np.frombuffer(bytes(blob[flags_at:flags_at + sec.plane_bytes["flags"]]), np.uint8)
    zero_byte = flags_at + int(np.flatnonzero(data != 0xFF)[0])
    bit = int(np.flatnonzero(np.unpackbits(np.frombuffer(bytes([blob[zero_byte]]), np.uint8),
                                           bitorder="little") == 0)[0])
    blob[zero_byte] |= 1 << bit
    cases = [(bytes(blob), "flag plane has")]
    # exception past the tail: a stream whose tail block has an exception
    t2 = weights(B + 100, torch.bfloat16, seed=10)
    t2[-1] = float("inf")
    ref2, info2 = enec._encode(t2)
    assert info2["X"] > 0
    b2 = bytearray(enec_stream(ref2, t2).numpy().tobytes())
    _, sec2 = _parse(ByteSource(bytes(b2)))
    pos_at = sec2.planes_offset + sum(sec2.plane_bytes[k] for k in ("flags", "low", "high"))
    b2[pos_at + sec2.X - 1] = 0xFF                     # low byte of the last position: 255 >= Bt = 100
    cases.append((bytes(b2), "ENEC exception position outside"))
    # B = 24 (not a power of two): a 5-bit position of 31
    t3 = weights(48, torch.float32, seed=11)
    t3[3] = float("nan")
    ref3, info3 = enec._encode(t3, B=24, L=4, force=(int(enec._split(t3)[0][0]), 2, 1))
    b3 = bytearray(enec_stream(ref3, t3).numpy().tobytes())
    _, sec3 = _parse(ByteSource(bytes(b3)))
    pos_at = sec3.planes_offset + sum(sec3.plane_bytes[k] for k in ("flags", "low", "high"))
    b3[pos_at] |= 0x1F                                 # first position: 31 >= 24
    cases.append((bytes(b3), "ENEC exception position outside"))
    return cases
