"""ENEC codec: block-based fixed-length exponent code (docs/format.md, "ENEC section").

Each element splits (qlccomm.split plans bf16_exp / fp16_exp / fp32_exp) into an
E-bit exponent `e` (E = 8, 5, 8) and raw bits (sign + mantissa, 8 / 11 / 24 bits).
The exponent is coded against per-tensor parameters b, n, m:

    y = (b - e) mod 2^n               (0 <= y < 2^n; exceptions get y = 0)
    e = (b - d) mod 2^E,  d = y if y < 2^(n-1) else y - 2^n

so the window of codable exponents is [b - 2^(n-1) + 1, b + 2^(n-1)] (mod 2^E);
n = 0 codes only e = b.  Exponents outside the window are *exceptions*, stored as
(block-local position, raw exponent).  Elements live in blocks of B = 16384;
a block is a [L, G] matrix (L = 16, G = B / L = 1024) whose column j is group j =
{j + G*k : k < L}.  The low m bits of every y go to the low plane at fixed width m;
a group whose members all have y < 2^m is unflagged, otherwise flagged, and the
flagged groups' members' high n - m bits go, group after group, to the high plane.
Decoding is shifts, masks, gathers and a compaction of the flags: no loop over
elements, groups or blocks.

Parameter search (encoder only; the stream just records b, n, m, L, B): over the
declared space b in [0, 2^E), n in [0, E], m in [0, n] it minimises the section's
byte size.  Every term but the flagged-group count F follows exactly from the
exponent histogram; F comes from per-group keys (the set of bit lengths of the
non-negative distances b - e in the group, and the smallest bit length of the
negative ones) counted over the coded blocks.  When a tensor has more than
SAMPLE_BLOCKS coded blocks, F is estimated on SAMPLE_BLOCKS evenly spaced full
coded blocks (block (2i+1)*KcA // (2*SAMPLE_BLOCKS) of the KcA coded full blocks,
i < SAMPLE_BLOCKS), scaled to all groups and never below the lower bound
ceil(flagged elements / L); otherwise the search is exact.  Candidates b are
visited in order of a lower bound computed from the histogram (branch and
bound), so the search stays exact while evaluating few b.  Ties go to the
smallest (size, n, m, b).

This module holds every host-side decision, once, for every backend: the geometry,
the search, the code tables, the section's metadata and plane layout (EncodePlan,
made by plan_encode) and the parsed, validated metadata of a stream (ENECSection,
made by parse_section).  The backends run only the passes over the elements: the
torch path here, and the fused kernels of qlccomm.kernels.native_enec (numba) and
qlccomm.kernels.triton_enec (Triton).
"""
from __future__ import annotations

import functools
import struct
from dataclasses import dataclass, field

import numpy as np
import torch

from .bitpack import concat_into, pack_bits, packed_nbytes, unpack_bits, unpack_planes
from .errors import EncoderError, FormatError
from .format import ByteSource, Header
from .dtypes import ENEC_DTYPES, TRAITS
from .split import Plan, enec_plan

SUPPORTED_DTYPES: tuple[torch.dtype, ...] = ENEC_DTYPES
PLAN_OF: dict[torch.dtype, Plan] = {d: enec_plan(d) for d in ENEC_DTYPES}

BLOCK_ELEMS = 16384          # elements per block (the writer's B)
GROUP_ELEMS = 16             # members per group (the writer's L)
MAX_BLOCK_ELEMS = 1 << 20
MAX_GROUP_ELEMS = 255
SAMPLE_BLOCKS = 8            # the search is exact up to this many coded blocks
_B_BATCH = 16                # candidate b evaluated together
MODE_ZERO, MODE_CODED = 0, 1

# plan id, b, n, m, L, block size B, block count K, flagged groups F, exceptions X
_HEAD = struct.Struct("<BBBBBIIQQ")
HEAD_BYTES = _HEAD.size


def _unpack_u8(d: torch.Tensor, width: int, n: int) -> torch.Tensor:
    """n values of width <= 8 bits as a fresh, writable uint8 tensor."""
    out = unpack_bits(d, width, n)
    return out.clone() if width == 8 else out


# ---------------------------------------------------------------------------------------------
# geometry
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Geometry:
    """Blocks of one tensor (counts in elements, groups and blocks).  The last block is a
    *tail* when it is shorter than B: it has Gt = ceil(Bt / L) groups and is padded to
    L*Gt with virtual elements (y = 0)."""

    numel: int
    B: int
    L: int

    @property
    def G(self) -> int:
        return self.B // self.L

    @property
    def K(self) -> int:
        return -(-self.numel // self.B)

    @property
    def Bt(self) -> int:
        return self.numel - (self.K - 1) * self.B

    @property
    def tail(self) -> bool:
        return self.Bt < self.B

    @property
    def KA(self) -> int:
        """Full-size blocks (all but a tail)."""
        return self.K - 1 if self.tail else self.K

    @property
    def Gt(self) -> int:
        return -(-self.Bt // self.L) if self.tail else 0

    @property
    def pos_bits(self) -> int:
        """Bits of a block-local exception position."""
        return (self.B - 1).bit_length()


@dataclass(frozen=True)
class Coded:
    """Which blocks are coded (the others are all-zero); sizes of the coded part."""

    geo: Geometry
    coded_full: list[int]        # indices of coded full-size blocks
    tail_coded: bool

    @classmethod
    def from_modes(cls, geo: Geometry, modes) -> Coded:
        """The coded blocks of block modes (integers [K], MODE_ZERO / MODE_CODED)."""
        modes = np.asarray(modes)
        return cls(geo, np.flatnonzero(modes[: geo.KA]).tolist(), bool(geo.tail and modes[-1]))

    @property
    def KcA(self) -> int:
        return len(self.coded_full)

    @property
    def Kc(self) -> int:
        return self.KcA + int(self.tail_coded)

    @property
    def Gc(self) -> int:
        return self.KcA * self.geo.G + (self.geo.Gt if self.tail_coded else 0)

    @property
    def Nv(self) -> int:
        """Coded elements including the tail's virtual ones."""
        return self.Gc * self.geo.L

    @property
    def Nr(self) -> int:
        """Real elements of coded blocks."""
        return self.KcA * self.geo.B + (self.geo.Bt if self.tail_coded else 0)

    @property
    def all_coded(self) -> bool:
        return self.KcA == self.geo.KA and (self.tail_coded or not self.geo.tail)

    @property
    def blocks(self) -> list[int]:
        """Indices of the coded blocks, in block order."""
        return list(self.coded_full) + ([self.geo.K - 1] if self.tail_coded else [])


def _plane_sizes(geo: Geometry, cod: Coded, E: int, R: int, n: int, m: int, F: int, X: int) -> dict[str, int]:
    """Bytes of each plane, in stream order."""
    return {
        "flags": (cod.Gc + 7) // 8 if m < n else 0,
        "low": packed_nbytes(cod.Nv, m),
        "high": packed_nbytes(F * geo.L, n - m),
        "exc_pos": packed_nbytes(X, geo.pos_bits),
        "exc_exp": packed_nbytes(X, E),
        "raw": packed_nbytes(cod.Nr, R),
    }


# columns of block_table (int64 [Kc, TAB_COLS]): the fused kernels' per-coded-block facts
TAB_BLOCK, TAB_ELEMS, TAB_GROUPS, TAB_GORD, TAB_RORD, TAB_XOFF, TAB_XCNT, TAB_FOFF = range(8)
TAB_COLS = 8


def block_table(geo: Geometry, cod: Coded, exc_block: np.ndarray | None = None) -> np.ndarray:
    """Per coded block, in block order: block index, real elements, groups, coded groups and
    coded real elements before it (its offsets in the flag / low and raw planes), exceptions
    before it and in it (from exc_block, exceptions per block [K]; zeros without it).
    TAB_FOFF (flagged groups before it) is left 0: it needs the flags."""
    blocks = np.asarray(cod.blocks, np.int64)
    Kc = blocks.size
    tab = np.zeros((Kc, TAB_COLS), np.int64)
    tab[:, TAB_BLOCK] = blocks
    elems = np.full(Kc, geo.B, np.int64)
    groups = np.full(Kc, geo.G, np.int64)
    if cod.tail_coded:
        elems[-1] = geo.Bt
        groups[-1] = geo.Gt
    tab[:, TAB_ELEMS] = elems
    tab[:, TAB_GROUPS] = groups
    tab[:, TAB_GORD] = np.cumsum(groups) - groups
    tab[:, TAB_RORD] = np.cumsum(elems) - elems
    if exc_block is not None and Kc:
        xc = np.asarray(exc_block, np.int64)[blocks]
        tab[:, TAB_XCNT] = xc
        tab[:, TAB_XOFF] = np.cumsum(xc) - xc
    return tab


def plane_bases(sizes: dict[str, int], start: int) -> tuple[dict[str, int], dict[str, int]]:
    """Start and end byte offsets of the planes (sizes in bytes, stream order) from byte `start`."""
    bases, ends, pos = {}, {}, start
    for name, size in sizes.items():
        bases[name] = pos
        pos += size
        ends[name] = pos
    return bases, ends


def section_head(plan: Plan, b: int, n: int, m: int, geo: Geometry, F: int, X: int, modes,
                 exc_block=None) -> bytes:
    """The section's metadata: fixed fields, block modes (uint8 [K]) and, when X > 0, the
    exceptions of each block (integers [K], 0 for all-zero blocks) as u32."""
    head = _HEAD.pack(plan.plan_id, b, n, m, geo.L, geo.B, geo.K, F, X) + np.asarray(modes, np.uint8).tobytes()
    if X:
        head += np.asarray(exc_block, np.int64).astype("<u4").tobytes()
    return head


# ---------------------------------------------------------------------------------------------
# parameter search
# ---------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _tables(E: int):
    """Static per-E tables over (b, e) and the (n, m) pairs."""
    A = 1 << E
    b = np.arange(A)[:, None]
    e = np.arange(A)[None, :]
    u = (b - e) % A
    s = np.where(u >= A // 2, u - A, u)                      # signed distance b - e
    bitlen = np.vectorize(lambda x: int(x).bit_length())
    p = np.where(s >= 0, bitlen(np.maximum(s, 0)), -1)       # bit length of s >= 0
    q = np.where(s < 0, bitlen(np.maximum(-s - 1, 0)), -1)   # bit length of -s-1 for s < 0
    pbit = np.where(p >= 0, 1 << np.maximum(p, 0), 0).astype(np.uint8)
    qval = np.where(q >= 0, q, E).astype(np.uint8)
    pairs = [(n, m) for n in range(E + 1) for m in range(n + 1)]
    pn = np.array([n for n, _ in pairs])
    pm = np.array([m for _, m in pairs])
    nkeys = A * (E + 1)
    key = np.arange(nkeys)
    P, Q = key % A, key // A
    flag = np.zeros((nkeys, len(pairs)), dtype=np.int64)
    for i, (n, m) in enumerate(pairs):
        if m < n:
            band = ((1 << n) - 1) ^ ((1 << (m + 1)) - 1)     # bit lengths m+1 .. n-1
            flag[:, i] = ((P & band) != 0) | (Q <= n - 1)
    bb, ee = np.broadcast_arrays(b, e)
    # bincount indices (b*E + bit length) and exponents of the (b, e) cells of each sign
    cells = {name: (bb[c >= 0] * E + c[c >= 0], ee[c >= 0]) for name, c in (("p", p), ("q", q))}
    return {"cells": cells, "pbit": pbit, "qval": qval, "pn": pn, "pm": pm, "pairs": pairs,
            "flag": flag, "nkeys": nkeys}


@dataclass
class Choice:
    """The search's result: parameters, their exceptions X (elements), the section's size
    (bytes; estimated when not exact) and how many bases b were evaluated."""

    b: int
    n: int
    m: int
    X: int
    cost: float
    exact: bool
    evaluated_b: int = 0


@functools.lru_cache(maxsize=8)
def _member_indicators(E: int, device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """float32 [2^E, 2^E * E] and [2^E, 2^E * (E + 1)] by exponent e: whether, for base b,
    e's bit length on the s >= 0 side is k (column b * E + k), and whether its qval is k
    (column b * (E + 1) + k); see _tables."""
    T = _tables(E)
    A = 1 << E
    pbit = T["pbit"].astype(np.int64)                                    # [b, e]
    pk = np.where(pbit > 0, np.log2(np.maximum(pbit, 1)).astype(np.int64), -1)
    ip = (pk.T[:, :, None] == np.arange(E)).reshape(A, A * E)
    iq = (T["qval"].astype(np.int64).T[:, :, None] == np.arange(E + 1)).reshape(A, A * (E + 1))
    return (torch.from_numpy(ip.astype(np.float32)).to(device), torch.from_numpy(iq.astype(np.float32)).to(device))


def flagged_counts(sample: torch.Tensor, E: int, g_step: int = 4096) -> np.ndarray:
    """Flagged sampled groups for every base b and every (n, m) pair, int64 [2^E, pairs] on
    the host, computed with torch ops on the sample's device (member-major [L, groups]
    uint8 exponents): the part of `_search` that reads the sample, for every b at once.

    A group's key for base b is (OR of its members' bits pbit[b, e], min of qval[b, e]):
    from the group's exponent counts C [groups, 2^E], two matrix products with constant
    indicator tables say which bit lengths and which qvals occur, for every b.  About 25
    small ops per step of `g_step` groups; scratch about 4 * g_step * 2^E * (2E + 1)
    bytes.  For CUDA, where the sample need not come back to the host; the counts equal
    those _search computes on the host (tests/test_enec.py)."""
    T = _tables(E)
    A = 1 << E
    dev = sample.device
    ip, iq = _member_indicators(E, str(dev))
    flag = torch.from_numpy(T["flag"]).to(dev, torch.float64)            # [nkeys, pairs]
    bit_values = (1 << torch.arange(E, device=dev)).to(torch.float32)
    offsets = torch.arange(A, device=dev)[None, :] * T["nkeys"]
    e = sample.t().to(torch.int64)                                       # [G, L]
    H = torch.zeros(A * T["nkeys"], dtype=torch.int64, device=dev)
    for g0 in range(0, e.shape[0], g_step):
        eg = e[g0:g0 + g_step]
        C = torch.zeros(eg.shape[0], A, device=dev).scatter_add_(1, eg, torch.ones(eg.shape, device=dev))
        P = (C @ ip).clamp_(max=1).view(-1, A, E) @ bit_values            # [g, A]: OR of the bits
        Q = (C @ iq).clamp_(max=1).view(-1, A, E + 1).argmax(dim=2)         # first qval present: the min
        keys = P.to(torch.int64) + A * Q.to(torch.int64) + offsets
        H += torch.bincount(keys.reshape(-1), minlength=A * T["nkeys"])
    F = H.view(A, -1).to(torch.float64) @ flag                            # counts < 2^53: exact
    return F.round_().to(torch.int64).cpu().numpy()


def _search(hist: np.ndarray, sample: np.ndarray | None, scale: float, exact: bool, geo: Geometry,
            cod: Coded, E: int, flagged: np.ndarray | None = None) -> Choice:
    """Pick (b, n, m).  hist: exponent histogram of the coded real elements (int64 [2^E]).
    sample: exponents of the sampled groups as a member-major [L, groups] uint8 array, or
    instead flagged = flagged_counts(sample) (computed on a device).  scale: coded groups /
    sampled groups."""
    T = _tables(E)
    A = 1 << E
    L = geo.L
    pn, pm = T["pn"], T["pm"]
    total = int(hist.sum())
    # element-level counts per b: CP[b, p] (s >= 0 of bit length p), CQ[b, q] (s < 0)
    CP, CQ = (np.bincount(T["cells"][k][0], weights=hist[T["cells"][k][1]], minlength=A * E)
              .astype(np.int64).reshape(A, E) for k in ("p", "q"))
    cp = np.concatenate([np.zeros((A, 1), np.int64), np.cumsum(CP, 1)], 1)   # cp[:, k] = sum_{p<k}
    cq = np.concatenate([np.zeros((A, 1), np.int64), np.cumsum(CQ, 1)], 1)
    inwin = np.where(pn == 0, CP[:, [0]], cp[:, pn] + cq[:, pn])             # [A, pairs]
    X = total - inwin
    nflag = np.where(pm < pn, (cp[:, pn] - cp[:, np.minimum(pm + 1, pn)]) + cq[:, pn], 0)
    f_lb = -(-nflag // L)
    w = pn - pm
    base = np.where(pm < pn, (cod.Gc + 7) // 8, 0) + packed_nbytes(cod.Nv, pm)
    exc = np.where(X > 0, 4 * geo.K + packed_nbytes(X, geo.pos_bits) + packed_nbytes(X, E), 0)

    def cost(F):
        hi = packed_nbytes(F * L, w) if exact else F * L * w / 8.0
        return base + hi + exc

    lb = cost(f_lb)                                   # [A, pairs]; exact where m == n
    lb_b = lb.min(1)
    order = sorted(range(A), key=lambda bb: (lb_b[bb], bb))
    best = None
    pairs = T["pairs"]
    done = 0
    i = 0
    if flagged is None:
        # a group's key depends only on its set of exponents: evaluate each distinct set once
        rows = np.sort(np.ascontiguousarray(sample.T), axis=1)             # [groups, L], sorted
        dup = np.zeros(rows.shape, dtype=bool)
        dup[:, 1:] = rows[:, 1:] == rows[:, :-1]
        canon = np.sort(np.where(dup, rows[:, :1], rows), axis=1)        # the set, in one canonical form
        _, first, weight = np.unique(canon.view(np.dtype((np.void, L))).ravel(), return_index=True,
                                     return_counts=True)
        sets = canon[first]
        g = sets.shape[0]
        flat = sets.T.reshape(-1).astype(np.intp)
    while i < A:
        if best is not None and lb_b[order[i]] > best[0]:
            break
        batch = order[i : i + min(_B_BATCH, 2 + i)]     # batches grow: the best b comes early
        i += len(batch)
        bs = np.array(batch)
        if flagged is not None:
            F = flagged[bs]
        else:
            P = np.bitwise_or.reduce(T["pbit"][bs][:, flat].reshape(len(bs), L, g), axis=1).astype(np.int64)
            Q = T["qval"][bs][:, flat].reshape(len(bs), L, g).min(axis=1).astype(np.int64)
            keys = P + A * Q + (np.arange(len(bs)) * T["nkeys"])[:, None]
            H = np.bincount(keys.reshape(-1), weights=np.tile(weight, len(bs)),
                            minlength=len(bs) * T["nkeys"]).astype(np.int64).reshape(len(bs), -1)
            used = np.flatnonzero(H.any(0))
            F = H[:, used] @ T["flag"][used]                    # flagged sampled groups [nb, pairs]
        if not exact:                                           # (integer matmul: no BLAS)
            F = np.maximum(F * scale, f_lb[bs])
        c = base + (packed_nbytes(F * L, w) if exact else F * L * w / 8.0) + exc[bs]
        c = np.where(pm[None, :] < pn[None, :], c, lb[bs])     # m == n: no flags, exact
        done += len(bs)
        cc = c.ravel()
        nn = np.broadcast_to(pn, c.shape).ravel()
        mm = np.broadcast_to(pm, c.shape).ravel()
        bb = np.broadcast_to(bs[:, None], c.shape).ravel()
        j = np.lexsort((bb, mm, nn, cc))[0]              # smallest (cost, n, m, b)
        cand = (float(cc[j]), int(nn[j]), int(mm[j]), int(bb[j]))
        if best is None or cand < best:
            best = cand
            best_x = int(X[cand[3], pairs.index((cand[1], cand[2]))])
    cst, n, m, b = best
    return Choice(b, n, m, best_x, cst, exact, done)


def sample_plan(cod: Coded) -> tuple[list[int], bool]:
    """Which blocks the search reads: ordinals among the coded full blocks, and whether the
    search is exact (then every coded block is read, the coded tail included)."""
    exact = cod.Kc <= SAMPLE_BLOCKS
    if exact:
        return list(range(cod.KcA)), True
    return [((2 * i + 1) * cod.KcA) // (2 * SAMPLE_BLOCKS) for i in range(SAMPLE_BLOCKS)], False


def sample_from_tensor(flat: torch.Tensor, geo: Geometry, cod: Coded,
                       device: torch.device | str | None = None) -> tuple[torch.Tensor, float, bool]:
    """The search's sample read from the tensor itself, for the fused paths (which never
    split every element): only the blocks `sample_plan` names are split, on `device`
    (flat's by default; those blocks alone are copied there first)."""
    dev = flat.device if device is None else torch.device(device)
    B = geo.B
    pick, exact = sample_plan(cod)
    if pick:
        idx = torch.tensor([cod.coded_full[i] for i in pick], dtype=torch.int64, device=flat.device)
        rows = flat[: geo.KA * B].view(geo.KA, B).index_select(0, idx).to(dev)
        rows_e = _split(rows.reshape(-1))[0].view(len(pick), B)
    else:
        rows_e = torch.empty(0, B, dtype=torch.uint8, device=dev)
    tail = _split(flat[geo.KA * B:].to(dev))[0] if exact and cod.tail_coded else None
    return sample_tensor(rows_e, tail, geo, cod, exact)


def sample_tensor(rows: torch.Tensor, tail: torch.Tensor | None, geo: Geometry,
                  cod: Coded, exact: bool) -> tuple[torch.Tensor, float, bool]:
    """The search's sample from the exponents of the blocks `sample_plan` names: rows
    [k, B] (full blocks, in that order), tail [Bt] (the coded tail when exact, else None).
    Returns member-major [L, groups] exponents on the rows' device, coded groups / sampled
    groups, exact."""
    L, G = geo.L, geo.G
    cols = []
    if rows.shape[0]:
        cols.append(rows.view(rows.shape[0], L, G).permute(1, 0, 2).reshape(L, -1))
    if tail is not None:
        idx = torch.arange(L * geo.Gt, device=tail.device)
        idx = torch.where(idx < geo.Bt, idx, idx % geo.Gt)   # virtual members copy member 0
        cols.append(tail.index_select(0, idx).view(L, geo.Gt))
    groups = cod.Gc if exact else SAMPLE_BLOCKS * G
    return torch.cat(cols, 1), cod.Gc / groups, exact


def search(hist: np.ndarray, sample: torch.Tensor, scale: float, exact: bool, geo: Geometry, cod: Coded,
           E: int, on_host: bool | None = None) -> Choice:
    """_search on a sample tensor: on CUDA (or with on_host=False) the flagged groups of
    every base are counted there (flagged_counts) and only those counts come back, rather
    than the sample; elsewhere on the host (other devices' float64 matmul and uint8
    reductions are not to be relied on)."""
    if on_host is None:
        on_host = sample.device.type != "cuda"
    if on_host:
        return _search(hist, sample.cpu().numpy(), scale, exact, geo, cod, E)
    return _search(hist, None, scale, exact, geo, cod, E, flagged=flagged_counts(sample, E))


def _sample_groups(ec: torch.Tensor, geo: Geometry, cod: Coded) -> tuple[torch.Tensor, float, bool]:
    """Member-major [L, groups] exponents of the groups the search looks at (on ec's device)."""
    B = geo.B
    pick, exact = sample_plan(cod)
    full = ec[: cod.KcA * B].view(cod.KcA, B)
    rows = full if exact else full.index_select(0, torch.tensor(pick, device=ec.device))
    tail = ec[cod.KcA * B :] if exact and cod.tail_coded else None
    return sample_tensor(rows, tail, geo, cod, exact)


# ---------------------------------------------------------------------------------------------
# the code: y and exponents
# ---------------------------------------------------------------------------------------------

def _exceptions(u: torch.Tensor, n: int, E: int) -> torch.Tensor:
    """Positions (int64) of the exponents outside the window; u = (b - e) mod 2^E."""
    if n == 0:
        t = u.clamp_max(1)
    else:
        t = u + (1 << (n - 1))
        if E < 8:
            t &= (1 << E) - 1
        t >>= n                    # non-zero exactly outside the window
        t.clamp_max_(1)
    return _nonzero01(t)


def exponents_of(y: torch.Tensor, b: int, n: int, E: int) -> torch.Tensor:
    """Exponents (uint8) of coded values y (uint8, < 2^n; consumed): e = (b - d) mod 2^E."""
    mask = (1 << E) - 1
    if n == 0:
        return torch.full(y.shape, b, dtype=torch.uint8, device=y.device)
    if n == E:
        e = b - y
    else:
        e = y >> (n - 1)
        e <<= n
        e -= y
        e += b
    if E < 8:
        e &= mask
    return e


def code_tables(b: int, n: int, E: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The code as lookup tables for the fused kernels, computed by the torch path's own
    operations: by exponent e < 2^E, y (uint8, 0 for exceptions) and whether e is an
    exception (bool); by y < 2^n (256 entries), the exponent it decodes to (uint8)."""
    A = 1 << E
    u = b - torch.arange(A, dtype=torch.uint8)
    if E < 8:
        u &= A - 1
    exc = torch.zeros(A, dtype=torch.bool)
    if n < E:
        exc[_exceptions(u.clone(), n, E)] = True
        u &= (1 << n) - 1
    u[exc] = 0
    etab = exponents_of(torch.arange(256, dtype=torch.int64).to(torch.uint8) & ((1 << n) - 1), b, n, E)
    return u.numpy().copy(), exc.numpy().copy(), etab.numpy().copy()


# ---------------------------------------------------------------------------------------------
# the encode plan: every host-side decision of an encoder, for every backend
# ---------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Layout:
    """Where everything of a section goes (byte offsets from the section's first byte)."""

    head: bytes                  # the section's metadata
    start: dict[str, int]        # plane -> its first byte, planes in stream order (none when nothing is coded)
    end: dict[str, int]          # plane -> one past its last byte
    nbytes: int                  # the whole section


@dataclass
class EncodePlan:
    """The host's side of encoding one section, shared by every backend (the torch path
    below, qlccomm.kernels.native_enec, qlccomm.kernels.triton_enec): the backends run
    the passes over the elements and hand their results to the plan, stage by stage:

        plan_encode(flat, B, L)     dtype and geometry checked (ValueError)
        set_modes(modes)            after the statistics pass: block modes -> coded blocks,
                                    block table
        search(hist, sample) or     parameters b, n, m; code tables ytab / xtab; the
        force(b, n, m, hist)        exceptions X, from the coded elements' histogram
        count(exceptions, flagged)  after the counting pass: F, exceptions per block, the
                                    block table's offsets; EncoderError where the counts
                                    disagree with X
        layout()                    the section's metadata and its planes' offsets

    Counts are in elements (X), groups (F) and blocks; table is block_table's int64
    [Kc, TAB_COLS]."""

    plan: Plan
    geo: Geometry
    modes: np.ndarray | None = None          # uint8 [K]: MODE_ZERO / MODE_CODED per block
    cod: Coded | None = None
    table: np.ndarray | None = None          # int64 [Kc, TAB_COLS]
    b: int = 0
    n: int = 0
    m: int = 0
    choice: Choice | None = None             # the search's result (None when forced)
    ytab: np.ndarray | None = None           # uint8 [2^E]: y by exponent (0 for exceptions)
    xtab: np.ndarray | None = None           # bool [2^E]: whether an exponent is an exception
    X: int = 0                               # exceptions
    F: int = 0                               # flagged groups
    exc_block: np.ndarray | None = None      # int64 [K]: exceptions per block, when X > 0

    @property
    def E(self) -> int:
        """Exponent bits."""
        return self.plan.symbol_bits

    @property
    def R(self) -> int:
        """Raw bits per element."""
        return self.plan.raw_bits

    @property
    def A(self) -> int:
        """Exponent values, 2^E."""
        return 1 << self.plan.symbol_bits

    @property
    def wh(self) -> int:
        """High bits per member of a flagged group, n - m."""
        return self.n - self.m

    def set_modes(self, modes) -> None:
        """Block modes (integers [K]) from the statistics pass: a block is MODE_ZERO when
        every bit of every element is 0."""
        self.modes = np.asarray(modes, np.uint8)
        self.cod = Coded.from_modes(self.geo, self.modes)
        self.table = block_table(self.geo, self.cod)

    def search(self, hist: np.ndarray, sample: tuple[torch.Tensor, float, bool],
               on_host: bool | None = None) -> None:
        """Parameters by the search (`search`): hist, the coded real elements' exponent
        histogram (integers [>= 2^E]); sample, (member-major [L, groups] exponents, coded
        groups / sampled groups, exact) as sample_tensor returns it."""
        hist = np.asarray(hist, np.int64)[: self.A]
        self.choice = search(hist, *sample, self.geo, self.cod, self.E, on_host)
        self._code(self.choice.b, self.choice.n, self.choice.m, hist)
        if self.X != self.choice.X:
            raise EncoderError(f"ENEC encoder: {self.X} exceptions by the code table, {self.choice.X} by the search")

    def force(self, b: int, n: int, m: int, hist: np.ndarray) -> None:
        """Parameters given by the caller (ValueError outside the declared space)."""
        if not (0 <= b < self.A and 0 <= m <= n <= self.E):
            raise ValueError(f"bad ENEC parameters b={b} n={n} m={m}")
        self._code(b, n, m, np.asarray(hist, np.int64)[: self.A])

    def _code(self, b: int, n: int, m: int, hist: np.ndarray) -> None:
        self.b, self.n, self.m = b, n, m
        self.ytab, self.xtab, _ = code_tables(b, n, self.E)
        self.X = int(hist @ self.xtab.astype(np.int64))

    def exceptions_of(self, hist: np.ndarray) -> np.ndarray:
        """Exceptions of each histogram row (int64 [..., >= 2^E] -> [...])."""
        return np.asarray(hist, np.int64)[..., : self.A] @ self.xtab.astype(np.int64)

    def count(self, exceptions: np.ndarray | None = None, flagged: np.ndarray | int = 0) -> None:
        """The counting pass's results per coded block, in block order: exceptions
        (integers [Kc]; None: none) and flagged groups (integers [Kc], or only their
        total).  Fills the block table's exception and flag offsets."""
        tab = self.table
        xc = np.zeros(len(tab), np.int64) if exceptions is None else np.asarray(exceptions, np.int64)
        if int(xc.sum()) != self.X:
            raise EncoderError(f"ENEC encoder: {int(xc.sum())} exceptions counted, {self.X} by the code table")
        tab[:, TAB_XCNT] = xc
        tab[:, TAB_XOFF] = np.cumsum(xc) - xc
        self.exc_block = None
        if self.X:
            self.exc_block = np.zeros(self.geo.K, np.int64)
            self.exc_block[tab[:, TAB_BLOCK]] = xc
        if np.ndim(flagged):
            fc = np.asarray(flagged, np.int64)
            tab[:, TAB_FOFF] = np.cumsum(fc) - fc
            flagged = fc.sum()
        self.F = int(flagged)
        if self.F and self.m == self.n:
            raise EncoderError(f"ENEC encoder: {self.F} flagged groups with m == n")

    def layout(self) -> Layout:
        """The section's metadata and plane offsets (final once `count` has run)."""
        head = section_head(self.plan, self.b, self.n, self.m, self.geo, self.F, self.X, self.modes, self.exc_block)
        if not self.cod.Kc:
            return Layout(head, {}, {}, len(head))
        sizes = _plane_sizes(self.geo, self.cod, self.E, self.R, self.n, self.m, self.F, self.X)
        start, end = plane_bases(sizes, len(head))
        return Layout(head, start, end, end["raw"])

    def info(self) -> dict:
        """Facts for tests and benchmarks: geometry, coded, search (when searched), b, n, m, F, X."""
        info = {"geometry": self.geo, "coded": self.cod, "b": self.b, "n": self.n, "m": self.m, "F": self.F,
                "X": self.X}
        if self.choice is not None:
            info["search"] = self.choice
        return info


def plan_encode(flat: torch.Tensor, B: int | None = None, L: int | None = None) -> EncodePlan:
    """The first stage of an EncodePlan for `flat` (1-D, >= 1 element) in blocks of B
    elements and groups of L (None: the writer's BLOCK_ELEMS / GROUP_ELEMS, read at the
    call): ValueError for a dtype ENEC does not code, a bad geometry, or more blocks
    than a u32 counts."""
    B = BLOCK_ELEMS if B is None else B
    L = GROUP_ELEMS if L is None else L
    if flat.dtype not in PLAN_OF:
        raise ValueError(f"ENEC codes {SUPPORTED_DTYPES}, not {flat.dtype}")
    if not (1 <= L <= MAX_GROUP_ELEMS and L <= B <= MAX_BLOCK_ELEMS and B % L == 0):
        raise ValueError(f"bad ENEC block geometry B={B} L={L}")
    geo = Geometry(flat.numel(), B, L)
    if geo.K >= 1 << 32:
        raise ValueError(f"ENEC cannot hold {geo.numel} elements in u32 blocks of {B}")
    return EncodePlan(PLAN_OF[flat.dtype], geo)


# ---------------------------------------------------------------------------------------------
# split / merge of the element bits (the plans' layout, computed on bytes)
# ---------------------------------------------------------------------------------------------

def _u8(x: torch.Tensor) -> torch.Tensor:
    """The low byte of each integer of x, as a fresh uint8 tensor (modular conversion)."""
    out = torch.empty(x.shape, dtype=torch.uint8, device=x.device)
    out.copy_(x)
    return out


def _split(flat: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Exponents (uint8) and the raw bits as the raw plane's byte planes (uint8), the last
    one unpacked when the raw width is not a whole number of bytes.  Same bits as the
    plans' split; written with in-place and same-dtype operations, which avoid large
    temporaries."""
    if flat.dtype == torch.float32:
        by = flat.view(torch.uint8).view(-1, 4)
        b2, b3 = by[:, 2], by[:, 3]
        e = b3 << 1
        e |= b2 >> 7
        p2 = b2 & 0x7F
        p2 |= b3 & 0x80
        return e, [by[:, 0].contiguous(), by[:, 1].contiguous(), p2]
    x = flat.view(torch.int16)
    s = torch.bitwise_right_shift(x, 8)
    high = _u8(s)                                   # bits 15..8
    low = _u8(x)                                    # bits 7..0
    if flat.dtype == torch.bfloat16:
        e = high << 1
        e |= low >> 7
        raw = low
        raw &= 0x7F
        raw |= high & 0x80
        return e, [raw]
    e = high >> 2                                   # float16
    e &= 0x1F
    top = high >> 5                                 # raw bits 10..8: sign, mantissa 9..8
    top &= 4
    top |= high & 3
    return e, [low, top]


def _merge(e: torch.Tensor, raw: list[torch.Tensor], dtype: torch.dtype) -> torch.Tensor:
    """Inverse of :func:`_split` (e: uint8 exponents)."""
    n = e.numel()
    if dtype == torch.float32:
        p0, p1, p2 = raw
        out = torch.empty(n, 4, dtype=torch.uint8, device=e.device)
        out[:, 0] = p0
        out[:, 1] = p1
        b2 = e << 7
        b2 |= p2 & 0x7F
        out[:, 2] = b2
        b3 = e >> 1
        b3 |= p2 & 0x80
        out[:, 3] = b3
        return out.view(-1).view(dtype)
    out = torch.empty(n, dtype=torch.int16, device=e.device)
    t = torch.empty(n, dtype=torch.int16, device=e.device)
    if dtype == torch.bfloat16:
        out.copy_(raw[0].view(torch.int8))            # sign extends over bits 15..7
        out &= -32641                                  # 0x807F: sign and 7 mantissa bits
        t.copy_(e)
        t <<= 7
    else:                                              # float16
        low, top = raw
        hb = e << 2
        hb |= top & 3
        s = top & 4
        s <<= 5
        hb |= s
        out.copy_(hb)
        out <<= 8
        t.copy_(low)
    out |= t
    return out.view(dtype)


# ---------------------------------------------------------------------------------------------
# encode
# ---------------------------------------------------------------------------------------------

def _rows_select(x: torch.Tensor, geo: Geometry, cod: Coded) -> torch.Tensor:
    """The coded blocks' real elements of a per-element tensor, in block order."""
    if cod.all_coded:
        return x
    parts = []
    if cod.KcA:
        idx = torch.tensor(cod.coded_full, device=x.device)
        parts.append(x[: geo.KA * geo.B].view(geo.KA, geo.B).index_select(0, idx).view(-1))
    if cod.tail_coded:
        parts.append(x[geo.KA * geo.B :])
    return torch.cat(parts) if parts else x[:0]


def _group_any(v: torch.Tensor, geo: Geometry, cod: Coded) -> torch.Tensor:
    """uint8 [Gc]: non-zero where some member of the group is non-zero."""
    L, G, B = geo.L, geo.G, geo.B
    parts = []
    if cod.KcA:
        parts.append(v[: cod.KcA * B].view(cod.KcA, L, G).amax(1).view(-1))
    if cod.tail_coded:
        parts.append(v[cod.KcA * B :].view(L, geo.Gt).amax(0))
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def _member_positions(gid: torch.Tensor, geo: Geometry, cod: Coded) -> tuple[torch.Tensor, torch.Tensor]:
    """For groups gid (int64, coded-group numbers): position of member 0 in the coded
    element order, and the distance between members (G, or Gt in the tail)."""
    G, B = geo.G, geo.B
    split = cod.KcA * G
    in_full = gid < split
    blk = torch.div(gid, G, rounding_mode="floor")
    base = torch.where(in_full, blk * B + (gid - blk * G), gid - split + cod.KcA * B)
    stride = torch.where(in_full, G, max(geo.Gt, 1))
    return base, stride


_ROW_DTYPE = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64, 16: torch.complex128}
_DENSE = 8    # flagged groups above 1/_DENSE of all groups: whole-block (dense) high-bit moves


def _take_rows(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """x[idx] for a 2-D uint8 x: rows of 1..16 bytes move as single elements (much faster
    than a row-wise gather)."""
    width = x.shape[1]
    rd = _ROW_DTYPE.get(width)
    if rd is None:
        return x.index_select(0, idx)
    flat = x.reshape(-1)
    if flat.storage_offset() % width:
        flat = flat.clone()
    return flat.view(rd).index_select(0, idx).view(torch.uint8).view(-1, width)


def _to_group_major(v: torch.Tensor, geo: Geometry, cod: Coded) -> torch.Tensor:
    """[Gc, L]: row g holds coded group g's members (virtual ones included)."""
    L, G, B = geo.L, geo.G, geo.B
    parts = []
    if cod.KcA:
        parts.append(v[: cod.KcA * B].view(cod.KcA, L, G).transpose(1, 2).reshape(-1, L))
    if cod.tail_coded:
        parts.append(v[cod.KcA * B :].view(L, geo.Gt).t())
    return torch.cat(parts) if len(parts) > 1 else parts[0].contiguous()


def _or_group_major(y: torch.Tensor, rows: torch.Tensor, geo: Geometry, cod: Coded) -> None:
    """y (element order, coded, virtual included) |= rows ([Gc, L], group-major), in place."""
    L, G, B = geo.L, geo.G, geo.B
    if cod.KcA:
        ya = y[: cod.KcA * B].view(cod.KcA, L, G)
        ya |= rows[: cod.KcA * G].view(cod.KcA, G, L).transpose(1, 2)
    if cod.tail_coded:
        yt = y[cod.KcA * B :].view(L, geo.Gt)
        yt |= rows[cod.KcA * G :].t()


def _nonzero01(x: torch.Tensor) -> torch.Tensor:
    """Positions (int64) of the ones of a 1-D uint8 tensor of zeros and ones.  On the CPU
    numpy's scan over a bool view is several times faster than torch.nonzero."""
    if x.device.type == "cpu" and x.is_contiguous():
        return torch.from_numpy(np.flatnonzero(x.numpy().view(np.bool_)))
    return torch.nonzero(x).view(-1)


def _block_modes(flat: torch.Tensor, geo: Geometry) -> np.ndarray:
    """uint8 [K]: MODE_CODED where some bit of some element of the block is set."""
    ints = flat.view(TRAITS[flat.dtype].int_view)
    nz = []
    if geo.KA:
        rows = ints[: geo.KA * geo.B].view(geo.KA, geo.B)
        nz.append(rows.amax(1).ne(0) | rows.amin(1).ne(0))
    if geo.tail:
        t = ints[geo.KA * geo.B :]
        nz.append((t.amax().ne(0) | t.amin().ne(0)).view(1))
    return torch.cat(nz).to(torch.uint8).cpu().numpy()


def _code_planes(ep: EncodePlan, ec: torch.Tensor) -> list[torch.Tensor]:
    """The flag, low, high and exception planes of the coded exponents ec (uint8 [Nr], the
    coded blocks' real elements in block order) under the plan's parameters; hands the
    exception and flagged-group counts to the plan."""
    geo, cod = ep.geo, ep.cod
    B, L, E, A, n, m = geo.B, geo.L, ep.E, ep.A, ep.n, ep.m
    u = ep.b - ec                                # uint8 arithmetic: (b - e) mod 256
    if E < 8:
        u &= A - 1
    pos = _exceptions(u, n, E) if n < E else u.new_empty(0, dtype=torch.int64)
    y = u
    if n < E:
        y &= (1 << n) - 1
    exc_planes, exc_counts = [], None
    if pos.numel():
        y.index_fill_(0, pos, 0)
        rank = torch.div(pos, B, rounding_mode="floor")         # the coded block's ordinal
        exc_counts = torch.bincount(rank, minlength=cod.Kc).cpu().numpy()
        exc_planes = [pack_bits(pos - rank * B, geo.pos_bits), pack_bits(ec.index_select(0, pos), E)]
    if cod.Nv > cod.Nr:                          # the tail's virtual elements: y = 0
        y = torch.cat([y, y.new_zeros(cod.Nv - cod.Nr)])
    planes = []
    F = 0
    if m < n:
        hi = y >> m
        flags = _group_any(hi, geo, cod).clamp_max_(1)
        gid = _nonzero01(flags)
        F = gid.numel()
        planes.append(pack_bits(flags, 1))
        y &= (1 << m) - 1
        planes.append(pack_bits(y, m))
        if F * _DENSE > cod.Gc:                  # many flagged groups: via group-major rows
            rows = _take_rows(_to_group_major(hi, geo, cod), gid)
            planes.append(pack_bits(rows.view(-1), n - m))
        elif F:                                  # few: gather member by member
            base, stride = _member_positions(gid, geo, cod)
            rows_t = torch.empty(L, F, dtype=torch.uint8, device=ec.device)
            for k in range(L):
                rows_t[k] = hi.index_select(0, base)
                base += stride
            planes.append(pack_bits(rows_t.t().reshape(-1), n - m))
    else:
        planes.append(pack_bits(y, m))
    ep.count(exc_counts, F)
    return planes + exc_planes


def _encode(flat: torch.Tensor, B: int = BLOCK_ELEMS, L: int = GROUP_ELEMS,
            force: tuple[int, int, int] | None = None, reserve: int = 0,
            into: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
    """The ENEC section of `flat` (after `reserve` bytes, see encode_section) and facts about
    it (EncodePlan.info); `force` = (b, n, m) skips the search."""
    ep = plan_encode(flat, B, L)
    geo = ep.geo
    ep.set_modes(_block_modes(flat, geo))
    cod = ep.cod
    planes = []
    if cod.Kc:
        e, raw = _split(flat)
        ec = _rows_select(e, geo, cod)
        hist = torch.bincount(ec, minlength=ep.A).cpu().numpy()
        if force is None:
            ep.search(hist, _sample_groups(ec, geo, cod))
        else:
            ep.force(*force, hist)
        rawc = [_rows_select(r, geo, cod) for r in raw]
        R = ep.R
        planes = _code_planes(ep, ec) + [r if i < R // 8 else pack_bits(r, R % 8) for i, r in enumerate(rawc)]
    head = torch.frombuffer(bytearray(ep.layout().head), dtype=torch.uint8).to(flat.device)
    return concat_into([torch.empty(reserve, dtype=torch.uint8, device=flat.device), head] + planes, into), ep.info()


def encode_section(flat: torch.Tensor, reserve: int = 0, into: torch.Tensor | None = None) -> torch.Tensor:
    """The ENEC section of a 1-D contiguous tensor (>= 1 element, a supported dtype).
    `reserve` bytes, left uninitialised, precede the section in the result: room for
    the caller's stream header without a copy.  `into`: a 1-D uint8 buffer to write the
    result into when it has room (the result is then its front)."""
    return _encode(flat, reserve=reserve, into=into)[0]


# ---------------------------------------------------------------------------------------------
# parse / decode
# ---------------------------------------------------------------------------------------------

@dataclass
class ENECSection:
    """A parsed, validated section: what every decoder backend reads before its passes."""

    plan: Plan
    dtype: torch.dtype
    b: int
    n: int
    m: int
    F: int                               # flagged groups
    X: int                               # exceptions
    geo: Geometry
    cod: Coded
    modes: torch.Tensor                  # uint8 [K], host
    exc_counts: torch.Tensor | None      # int64 [K], host: exceptions per block, when X > 0
    planes_offset: int                   # absolute byte offset of the first plane
    plane_bytes: dict = field(default_factory=dict)      # plane -> bytes, stream order

    def block_table(self) -> np.ndarray:
        """block_table of the coded blocks, exception offsets and counts filled in."""
        return block_table(self.geo, self.cod, self.exc_counts.numpy() if self.X else None)

    def zero_blocks(self) -> np.ndarray:
        """Indices (int64) of the all-zero blocks."""
        return np.flatnonzero(self.modes.numpy() == MODE_ZERO).astype(np.int64)

    def plane_bounds(self) -> tuple[dict[str, int], dict[str, int]]:
        """Absolute start and end byte offsets of the planes in the stream."""
        return plane_bases(self.plane_bytes, self.planes_offset)

    def exponent_table(self) -> np.ndarray:
        """uint8 [256]: the exponent each y < 2^n decodes to (code_tables)."""
        return code_tables(self.b, self.n, self.plan.symbol_bits)[2]

    def zeros(self, out: torch.Tensor | None, device) -> torch.Tensor:
        """The decoded tensor of a section with no coded block: `out` (viewed flat) zeroed,
        or a fresh one."""
        if out is not None:
            return out.view(-1).zero_()
        return torch.zeros(self.geo.numel, dtype=self.dtype, device=device)


def flag_count_error(got: int, F: int) -> FormatError:
    """The error of a flag plane whose set bits (`got`) differ from the metadata's F."""
    return FormatError(f"flag plane has {got} flagged groups, metadata says {F}")


def exception_position_error() -> FormatError:
    """The error of an exception position at or past its block's real elements."""
    return FormatError("ENEC exception position outside its block")


def parse_section(src: ByteSource, start: int, header: Header) -> ENECSection:
    """Parse and validate the ENEC section's metadata at byte `start`; reads no plane."""
    dtype = header.dtype
    if dtype not in PLAN_OF:
        raise FormatError(f"ENEC stream of dtype {dtype}, which ENEC does not code")
    N = header.numel
    if N == 0:
        raise FormatError("ENEC stream with no elements")
    plan_id, b, n, m, L, B, K, F, X = _HEAD.unpack(src.read(start, start + HEAD_BYTES))
    plan = PLAN_OF[dtype]
    if plan_id != plan.plan_id:
        raise FormatError(f"ENEC plan id {plan_id} does not code {dtype}")
    E, R = plan.symbol_bits, plan.raw_bits
    if b >= 1 << E or n > E or m > n:
        raise FormatError(f"bad ENEC parameters b={b} n={n} m={m} for {E}-bit exponents")
    if not 1 <= L <= MAX_GROUP_ELEMS or not L <= B <= MAX_BLOCK_ELEMS or B % L:
        raise FormatError(f"bad ENEC block geometry B={B} L={L}")
    geo = Geometry(N, B, L)
    if K != geo.K:
        raise FormatError(f"{K} blocks cannot hold {N} elements in blocks of {B}")
    pos = start + HEAD_BYTES
    modes = torch.frombuffer(bytearray(src.read(pos, pos + K)), dtype=torch.uint8)
    pos += K
    if int(modes.max()) > MODE_CODED:
        raise FormatError("unknown ENEC block mode")
    cod = Coded.from_modes(geo, modes.numpy())
    if m == n and F:
        raise FormatError("flagged groups in a stream with m == n")
    if F > cod.Gc:
        raise FormatError(f"{F} flagged groups of {cod.Gc}")
    exc_counts = None
    if X:
        exc_counts = torch.frombuffer(bytearray(src.read(pos, pos + 4 * K)), dtype=torch.int32).to(torch.int64)
        exc_counts &= 0xFFFFFFFF
        pos += 4 * K
        size = torch.full((K,), B, dtype=torch.int64)
        size[-1] = geo.Bt
        size[modes == MODE_ZERO] = 0
        if bool((exc_counts > size).any()) or int(exc_counts.sum()) != X:
            raise FormatError("ENEC exception table does not match its blocks")
    if cod.Kc == 0 and (n or m or b or F or X):
        raise FormatError("parameters in an ENEC stream with no coded block")
    planes = _plane_sizes(geo, cod, E, R, n, m, F, X) if cod.Kc else {}
    end = pos + sum(planes.values())
    if len(src) != end:
        raise FormatError(f"stream is {len(src)} bytes, its ENEC metadata says {end}")
    return ENECSection(plan, dtype, b, n, m, F, X, geo, cod, modes, exc_counts, pos, planes)


def describe(sec: ENECSection) -> dict:
    """Section facts for `qlccomm.inspect`."""
    return {
        "plan": sec.plan.name, "b": sec.b, "n": sec.n, "m": sec.m, "group_elems": sec.geo.L,
        "block_elems": sec.geo.B, "blocks": sec.geo.K,
        "blocks_zero": int((sec.modes == MODE_ZERO).sum()), "blocks_coded": sec.cod.Kc,
        "groups": sec.cod.Gc, "flagged_groups": sec.F,
        "flagged_fraction": sec.F / sec.cod.Gc if sec.cod.Gc else 0.0,
        "exceptions": sec.X, "plane_bytes": dict(sec.plane_bytes),
        "metadata_bytes": HEAD_BYTES + sec.geo.K + (4 * sec.geo.K if sec.X else 0),
    }


def _apply_high(y: torch.Tensor, hi: torch.Tensor, flags: torch.Tensor, gid: torch.Tensor, m: int,
                geo: Geometry, cod: Coded) -> None:
    """y (coded elements, virtual included) |= the flagged groups' high values << m, in place.
    hi: [F, L] uint8 in group order; flags: uint8 [Gc]; gid: [F] int64 flagged group numbers."""
    F = hi.shape[0]
    if F * _DENSE > cod.Gc:
        # many flagged groups: group g takes row (exclusive prefix sum of the flags)[g] of hi,
        # unflagged groups an appended zero row; then one OR in element order
        rank = torch.cumsum(flags, 0, dtype=torch.int32)
        idx = torch.where(flags.bool(), rank.to(torch.int64) - 1, F)
        rows = _take_rows(torch.cat([hi, hi.new_zeros(1, geo.L)]), idx)
        rows <<= m
        _or_group_major(y, rows, geo, cod)
        return
    hi_t = hi.t().contiguous()
    hi_t <<= m
    base, stride = _member_positions(gid, geo, cod)
    for k in range(geo.L):                           # members of the flagged groups
        cur = y.index_select(0, base)
        cur |= hi_t[k]
        y.index_copy_(0, base, cur)
        base += stride


def decode_section(sec: ENECSection, data: torch.Tensor, header: Header,
                   out: torch.Tensor | None = None) -> torch.Tensor:
    """Decode a parsed section; `data` is the whole stream on the target device.  Returns
    the flat tensor (`out` viewed flat when given: contiguous, the stream's dtype and count)."""
    if sec.cod.Kc == 0:
        return sec.zeros(out, data.device)
    flat = _decode_planes(sec, data)
    return flat if out is None else out.view(-1).copy_(flat)


def _decode_planes(sec: ENECSection, data: torch.Tensor) -> torch.Tensor:
    dev = data.device
    geo, cod = sec.geo, sec.cod
    E, R = sec.plan.symbol_bits, sec.plan.raw_bits
    N, B = geo.numel, geo.B
    out_int = TRAITS[sec.dtype].int_view
    starts, ends = sec.plane_bounds()
    views = {name: data[starts[name] : ends[name]] for name in starts}
    b, n, m = sec.b, sec.n, sec.m
    # y, then the exponent
    y = _unpack_u8(views["low"], m, cod.Nv)
    if m < n and sec.F:
        flags = _unpack_u8(views["flags"], 1, cod.Gc)
        gid = _nonzero01(flags)
        if gid.numel() != sec.F:
            raise flag_count_error(gid.numel(), sec.F)
        hi = _unpack_u8(views["high"], n - m, sec.F * geo.L).view(sec.F, geo.L)
        _apply_high(y, hi, flags, gid, m, geo, cod)
    e = exponents_of(y[: cod.Nr], b, n, E)
    if sec.X:
        local = unpack_bits(views["exc_pos"], geo.pos_bits, sec.X).to(torch.int64)
        exps = _unpack_u8(views["exc_exp"], E, sec.X)
        counts = sec.exc_counts[torch.tensor(cod.blocks, dtype=torch.int64)]
        # exceptions are listed block after block; a block's rank among the coded blocks is a
        # running sum of the rank steps placed at each non-empty block's first exception
        nonempty = torch.nonzero(counts).view(-1)
        starts = (torch.cumsum(counts, 0) - counts).index_select(0, nonempty)
        steps = torch.diff(nonempty, prepend=nonempty.new_zeros(1))
        marks = torch.zeros(sec.X, dtype=torch.int64, device=dev)
        marks.index_copy_(0, starts.to(dev), steps.to(dev))
        rank = torch.cumsum(marks, 0)
        n_tail = int(counts[-1]) if cod.tail_coded else 0
        bad = bool((local >= B).any()) if B & (B - 1) else False
        if n_tail and not bad:
            bad = bool((local[sec.X - n_tail :] >= geo.Bt).any())
        if bad:
            raise exception_position_error()
        e.index_put_((rank * B + local,), exps)
    if R == 8:
        raw = [views["raw"]]
    else:
        raw = unpack_planes(views["raw"], R, cod.Nr)
    vals = _merge(e, raw, sec.dtype)
    if cod.all_coded:
        return vals
    out = torch.zeros(N, dtype=out_int, device=dev)
    vi = vals.view(out_int)
    if cod.KcA:
        idx = torch.tensor(cod.coded_full, device=dev)
        out[: geo.KA * B].view(geo.KA, B).index_copy_(0, idx, vi[: cod.KcA * B].view(cod.KcA, B))
    if cod.tail_coded:
        out[geo.KA * B :] = vi[cod.KcA * B :]
    return out.view(sec.dtype)
