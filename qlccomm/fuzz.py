"""Mutation fuzzer for the stream decoder: ``python -m qlccomm.fuzz`` (``make fuzz``).

Valid streams of every codec, dtype, checksum setting and codebook mode (adaptive, "default",
a fitted one handed to decompress) are mutated (bit flips, truncation, junk, inserts, deletes,
header and codec-section fields of docs/format.md at extremes, relabels, splices; half the
metadata mutants resized to what their new metadata declares) and decoded under each CPU kernel
backend in spawned workers with an address-space limit and a per-case timeout.  Good outcomes:
"error" (typed), "same" (the original), "differs" (no checksum guarded it).  Bad: "exception"
(another type), "overalloc" (untyped memory failure), "crash", "hang", "undetected" (a guarded
stream decoded to something else), "disagree" (backends differ).  Bad cases go to --out as
<outcome>-<seed>-<case>.bin + .json and make the exit status 1; ``--seed S --case N`` replays one.
"""
from __future__ import annotations

import argparse, faulthandler, hashlib, json, math, os, random, re, resource  # noqa: E401
import struct, sys, tempfile, time, traceback, warnings  # noqa: E401
import multiprocessing as mp
from multiprocessing.connection import wait as wait_any

import torch

import qlccomm
from qlccomm import datagen, kernels
from qlccomm.codebook import Codebook
from qlccomm.errors import FormatError, OutputTooLargeError
from qlccomm.format import CRC_OFFSET, dtype_name, stream_crc

GOOD = ("error", "same", "differs")
BAD = ("exception", "overalloc", "crash", "hang", "undetected", "disagree")
CODECS = ("raw", "qlc", "enec", "qlcw")
QLC_DTYPES = (torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2,
              torch.int8, torch.uint8)
ENEC_DTYPES = QLC_DTYPES[:3]
RAW_ONLY = (torch.int32, torch.float64)
SHAPES_SMALL = ((), (0,), (7,), (3, 100))
SHAPES_ALWAYS = ((2, 20000), (5000,))   # several QLC chunks and ENEC blocks, zero ones, short tails
MUTATIONS = ("bitflip", "truncate", "append", "insert", "delete", "field", "relabel", "splice")
INTERESTING = (0, 1, 2, 3, 7, 8, 15, 16, 63, 64, 65, 127, 128, 255, 256, 4095, 4096, 16383, 16384,
               1 << 20, (1 << 20) + 1, 1 << 31, 1 << 32, (1 << 62) - 1, 1 << 62, 1 << 63)
MAX_FIXLEN = 1 << 22                    # longest stream a length fix-up pads to
LENGTH_ERROR = re.compile(r"is (\d+) bytes, (?:its \w+ metadata says|expected) (\d+)$")
MAX_REPRODUCERS = 5                     # per bad signature (outcome, codec, mutation, exception type)


def tensor_digest(t: torch.Tensor) -> str:
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:32]


def _tensor(dtype: torch.dtype, shape: tuple, seed: int) -> torch.Tensor:
    numel, g = math.prod(shape), torch.Generator().manual_seed(seed)
    if dtype in RAW_ONLY:
        flat = torch.randint(-1000, 1000, (numel,), generator=g).to(dtype) if dtype == torch.int32 else \
            torch.randn(numel, generator=g, dtype=dtype)
    elif numel == 0:
        flat = torch.empty(0, dtype=dtype)
    else:
        flat = datagen.synthetic(datagen.KINDS[seed % 3], dtype, numel, seed).clone()
    if numel >= 5000:                   # all-zero QLC chunks (an all-zero ENEC block too at 40000 elements)
        flat[slice(16384, 32768) if numel >= 40000 else slice(0, 4096)] = 0
    if numel >= 5000 and dtype.is_floating_point:   # ENEC exceptions, NaN payloads, -0
        flat[4097:4101] = torch.tensor([float("inf"), float("nan"), -0.0, 1e30]).to(dtype)
    return flat.reshape(shape)


def build_corpus(seed: int):
    """(streams, codebook specs, known): every stream a dict; known maps a stream's sha256
    to its tensor's digest (a mutant equal to some valid stream must decode to its tensor)."""
    fitted = {dtype_name(dt): qlccomm.fit_codebook(_tensor(dt, (8192,), seed + 7)) for dt in QLC_DTYPES}
    combos = [(dt, "qlc", cb) for dt in QLC_DTYPES for cb in ("adaptive", "default", "fitted")]
    combos += [(dt, "enec", None) for dt in ENEC_DTYPES] + [(dt, "raw", None) for dt in QLC_DTYPES + RAW_ONLY]
    combos += [(dt, "qlcw", None) for dt in QLC_DTYPES if qlccomm.codecs.get("qlcw").codes(dt)]
    streams, known = [], {}
    for k, (dt, requested, cbmode, ck) in enumerate(c + (ck,) for c in combos for ck in (False, True)):
        for shape in SHAPES_ALWAYS + (SHAPES_SMALL[k % len(SHAPES_SMALL)],):
            t = _tensor(dt, shape, seed * 1000 + len(streams))
            cb = {"default": "default", "fitted": fitted.get(dtype_name(dt))}.get(cbmode)
            blob = qlccomm.compress(t, codec=requested, codebook=cb, checksum=ck).numpy().tobytes()
            s = dict(index=len(streams), dtype=dtype_name(dt), shape=list(shape), requested=requested,
                     codebook=cbmode, checksum=ck, codec=qlccomm.inspect(blob)["codec"],
                     cb_key=dtype_name(dt) if cbmode == "fitted" else None, digest=tensor_digest(t), blob=blob)
            streams.append(s)
            known[hashlib.sha256(blob).hexdigest()] = s["digest"]
    extra = []
    for dt, (lo, w) in ((torch.float8_e4m3fn, (0, 8)), (torch.float16, (8, 7)), (torch.bfloat16, (7, 8))):
        t = _tensor(dt, (20000,), seed * 1000 + len(streams) + len(extra))   # QLCW with several codes
        t[:8192] = (t[:8192].float() * 64).to(dt)                  # two groups of chunks apart
        extra.append((t, _multi_code_stream(t, lo, w), "qlcw-codes"))
    for dt, narrow in ((torch.float32, torch.float16), (torch.bfloat16, torch.float8_e4m3fn)):
        t = _tensor(dt, (20000,), seed * 1000 + len(streams) + len(extra))   # QLCW with raw shifts
        t[:12288] = t[:12288].to(narrow).to(dt)                    # values upcast: zero low mantissa bits
        extra.append((t, qlccomm.compress(t, codec="qlcw").numpy().tobytes(), "qlcw-shifts"))
    for t, blob, requested in extra:
        s = dict(index=len(streams), dtype=dtype_name(t.dtype), shape=[t.numel()], requested=requested, codebook=None,
                 checksum=False, codec="qlcw", cb_key=None, digest=tensor_digest(t), blob=blob)
        streams.append(s)
        known[hashlib.sha256(blob).hexdigest()] = s["digest"]
    specs = {k: (dtype_name(c.dtype), c.plan, list(c.widths), list(c.symbols)) for k, c in fitted.items()}
    return streams, specs, known


def _multi_code_stream(t: torch.Tensor, lo: int, w: int) -> bytes:
    """A QLCW stream of `t` whose chunks use two codes, one fitted to each half of them."""
    import numpy as np
    from . import qlcw
    from .format import CODEC_QLCW, Header
    f = qlcw.Fields(lo, w, 1)
    hist = qlcw.chunk_histograms(t.reshape(-1), lo, w)
    half = (np.arange(hist.shape[0]) >= hist.shape[0] // 2).astype(np.int64)
    codes = tuple(qlcw.build_code(hist[half == k].sum(axis=0), w) for k in (0, 1))
    cs = qlcw.CodeSet(codes, half)
    sec = qlcw.encode_section(t.reshape(-1), f, cs).numpy().tobytes()
    return Header(CODEC_QLCW, t.dtype, tuple(t.shape), version=qlcw.section_version(sec[3])).encode() + sec


def fields(blob: bytes) -> list[tuple[str, int, int]]:
    """(name, offset, size) of the header's and the codec section's fields (docs/format.md)."""
    f = [("magic", 0, 4), ("version", 4, 1), ("codec", 5, 1), ("dtype", 6, 1), ("flags", 7, 1),
         ("numel", 8, 8), ("crc", 16, 4), ("ndim", 20, 1)]
    f += [(f"dim{i}", 21 + 8 * i, 8) for i in range(blob[20])]
    s, codec = 21 + 8 * blob[20], blob[5]
    if codec == 1 and len(blob) > s + 1:                       # QLC
        f += [("qlc.plan", s, 1), ("qlc.cb_mode", s + 1, 1)]
        if blob[s + 1] == 1:
            f += [(f"qlc.width{k}", s + 2 + k, 1) for k in range(8)]
            f += [(f"qlc.symbol{r}", s + 10 + r, 1) for r in (0, 1, 2, 127, 255)]
            p = s + 266
        else:
            f, p = f + [("qlc.digest", s + 2, 8)], s + 10
        K = struct.unpack_from("<I", blob, p + 4)[0]
        f += [("qlc.C", p, 4), ("qlc.K", p + 4, 4)]
        f += [(f"qlc.mode{c}", p + 8 + c, 1) for c in range(K)]
        f += [(f"qlc.suffix_bytes{c}", p + 8 + K + 4 * c, 4) for c in range(K)]
    elif codec == 3 and len(blob) >= s + 24:                   # QLCW
        f += [("qlcw.lo", s, 1), ("qlcw.w", s + 1, 1), ("qlcw.g", s + 2, 1), ("qlcw.flags", s + 3, 1)]
        M, p = ((blob[s + 3] >> 1) & 7) + 1, s + 4
        for m in range(M):                                      # each code: [escape,] widths, T, table
            if m:
                f, p = f + [(f"qlcw.code{m}.escape", p, 1)], p + 1
            if len(blob) < p + 20:
                break
            f += [(f"qlcw.code{m}.width{k}", p + k, 1) for k in range(16)] + [(f"qlcw.code{m}.T", p + 16, 4)]
            T = struct.unpack_from("<I", blob, p + 16)[0]
            f += [(f"qlcw.code{m}.symbol{r}", p + 20 + 2 * r, 2) for r in (0, 1, T - 1) if 0 <= r < T]
            p += 20 + 2 * T
        if len(blob) >= p + 8:
            K = struct.unpack_from("<I", blob, p + 4)[0]
            f += [("qlcw.C", p, 4), ("qlcw.K", p + 4, 4)]
            f += [(f"qlcw.mode{c}", p + 8 + c, 1) for c in range(K)]
            f += [(f"qlcw.suffix_bytes{c}", p + 8 + K + 4 * c, 4) for c in range(K)]
            if M > 1:
                f += [(f"qlcw.chunk_code{c}", p + 8 + 5 * K + c, 1) for c in range(K)]
            if blob[s + 3] & 16:                                # raw shifts
                at = p + 8 + 5 * K + (K if M > 1 else 0)
                f += [(f"qlcw.raw_shift{c}", at + c, 1) for c in range(K)]
    elif codec == 2 and len(blob) >= s + 29:                   # ENEC
        f += [("enec.plan", s, 1), ("enec.b", s + 1, 1), ("enec.n", s + 2, 1), ("enec.m", s + 3, 1),
              ("enec.L", s + 4, 1), ("enec.B", s + 5, 4), ("enec.K", s + 9, 4), ("enec.F", s + 13, 8),
              ("enec.X", s + 21, 8)]
        K, X = struct.unpack_from("<I", blob, s + 9)[0], struct.unpack_from("<Q", blob, s + 21)[0]
        f += [(f"enec.mode{k}", s + 29 + k, 1) for k in range(K)]
        f += [(f"enec.exceptions{k}", s + 29 + K + 4 * k, 4) for k in range(K) if X]
    return [x for x in f if x[1] + x[2] <= len(blob)]


def mutate(rng: random.Random, base: dict, streams: list) -> tuple[bytes, dict, bool]:
    """(mutant, description, recrc): recrc when the CRC was recomputed after the mutation so that
    the parser behind the checksum is reached (the mutant then counts as unguarded)."""
    data, kind = bytearray(base["blob"]), rng.choice(MUTATIONS)
    flds = fields(base["blob"])
    meta_end = max(o + s for _, o, s in flds)
    desc: dict = {"kind": kind}
    if kind == "bitflip":
        span = meta_end if rng.random() < 0.5 else len(data)
        desc["bits"] = [rng.randrange(span * 8) for _ in range(rng.choice((1, 1, 2, 3, 8)))]
        for b in desc["bits"]:
            data[b // 8] ^= 1 << (b % 8)
    elif kind == "truncate":
        desc["cut"] = rng.randrange(min(len(data), meta_end + 8) if rng.random() < 0.5 else len(data))
        del data[desc["cut"]:]
    elif kind in ("append", "insert", "delete"):      # append: junk after the end
        pos = len(data) if kind == "append" else rng.randrange(meta_end if rng.random() < 0.5 else len(data) + 1)
        desc.update(pos=pos, n=(n := rng.choice((1, 2, 4, 8, 64, 4096 if kind == "append" else 16))))
        if kind == "delete":
            del data[pos:pos + n]
        else:
            data[pos:pos] = bytes(n) if rng.random() < 0.3 else rng.randbytes(n)
    elif kind == "field":
        name, off, size = rng.choice(flds)
        old, top = int.from_bytes(data[off:off + size], "little"), (1 << 8 * size) - 1
        new = rng.choice([v for v in INTERESTING if v <= top] + [
            top, top - 1, top >> 1, (old + 1) & top, (old - 1) & top, old ^ (1 << rng.randrange(8 * size)),
            rng.getrandbits(8 * size)])
        data[off:off + size] = new.to_bytes(size, "little")
        desc.update(field=name, offset=off, old=old, new=new)
        if name.startswith("dim") and rng.random() < 0.5:      # keep numel = prod(shape): the header parses
            numel = math.prod(struct.unpack_from(f"<{data[20]}Q", data, 21))
            if numel < 1 << 64:
                data[8:16], desc["numel"] = struct.pack("<Q", numel), numel
    elif kind == "relabel":
        off = rng.choice((5, 6))
        new = rng.choice((0, 1, 2, 3, 255) if off == 5 else tuple(range(23)) + (255,))
        desc.update(field="codec" if off == 5 else "dtype", old=data[off], new=new)
        data[off] = new
    else:                                                       # splice: a prefix of this, a tail of another
        ob = (other := streams[rng.randrange(len(streams))])["blob"]
        i, j = (21 + 8 * data[20], 21 + 8 * ob[20]) if rng.random() < 0.3 else (   # this header, its section
            rng.randrange(len(data) + 1), rng.randrange(len(ob) + 1))
        desc.update(other=other["index"], prefix=i, tail_from=j)
        data = data[:i] + ob[j:]
    flagged = len(data) > CRC_OFFSET + 4 and bool(data[7] & 1)
    if kind in ("bitflip", "field", "relabel", "splice") and rng.random() < 0.5:
        recrc = flagged                             # resize the stream to what its new metadata declares
        data = _fix_length(data, rng, desc)
    else:
        recrc = flagged and rng.random() < 0.5
    if recrc:
        data[CRC_OFFSET:CRC_OFFSET + 4] = struct.pack("<I", stream_crc(data))
    return bytes(data), desc, recrc


def _fix_length(data: bytearray, rng: random.Random, desc: dict) -> bytearray:
    """Pad (random or zero bytes) or cut `data` to the length its parser asks for, so that the
    mutant gets past the length checks to the plane decoders.  Parses only (qlccomm.inspect)."""
    probe = bytearray(data)
    if len(probe) > CRC_OFFSET + 4 and probe[7] & 1:
        probe[CRC_OFFSET:CRC_OFFSET + 4] = struct.pack("<I", stream_crc(probe))
    try:
        qlccomm.inspect(bytes(probe))
    except FormatError as e:                        # any other error: the workers will meet it too
        if (m := LENGTH_ERROR.search(str(e))) and (want := int(m.group(2))) <= MAX_FIXLEN:
            desc["fixlen"], pad = want, max(0, want - len(data))
            return data[:want] + (bytes(pad) if rng.random() < 0.5 else rng.randbytes(pad))
    except Exception:  # noqa: BLE001
        pass
    return data


def make_case(seed: int, i: int, streams: list, known: dict) -> dict:
    rng = random.Random(f"qlccomm-fuzz/{seed}/{i}")
    codec = rng.choice(CODECS)                      # each codec as often, though the corpus has more QLC
    base = rng.choice([s for s in streams if s["codec"] == codec])
    blob, desc, recrc = mutate(rng, base, streams)
    return dict(case=i, base=base["index"], codec=base["codec"], blob=blob, mutation=desc, recrc=recrc,
                cb_key=base["cb_key"] if rng.random() < 0.9 else None,
                max_output_bytes=None if rng.random() < 0.75 else 1 << 28,
                guarded=len(blob) > 7 and bool(blob[7] & 1) and not recrc,
                expected=known.get(hashlib.sha256(blob).hexdigest(), base["digest"]))


def error_facts(e: BaseException) -> dict:
    """typed: a FormatError (CodebookError too) or an OutputTooLargeError (the API's refusal of an
    output it cannot allocate); memory: a memory failure (MemoryError, or the RuntimeError torch
    raises when an allocation fails)."""
    memory = isinstance(e, MemoryError) or isinstance(e, RuntimeError) and "alloc" in str(e).lower()
    return {"typed": isinstance(e, (FormatError, OutputTooLargeError)), "memory": memory}


def run_case(blob: bytes, codebook, max_output_bytes, backends) -> dict:
    """Decode `blob` once per backend: {backend: {"kind": "decoded", "digest"} or {"kind": "raised", ...}}."""
    results = {}
    for b in backends:
        os.environ[kernels.ENV] = b                 # read per call by kernels.backend_for
        try:
            t = qlccomm.decompress(blob, codebook=codebook, max_output_bytes=max_output_bytes)
            results[b] = {"kind": "decoded", "digest": tensor_digest(t), "shape": list(t.shape)}
        except Exception as e:  # noqa: BLE001 - classifying every exception is the point
            results[b] = {"kind": "raised", "type": f"{type(e).__module__}.{type(e).__qualname__}",
                          "message": str(e)[:400], "where": "".join(traceback.format_tb(e.__traceback__)[-3:])[-1500:]
                          } | error_facts(e)
    return results


def classify(results: dict, expected: str, guarded: bool) -> str:
    """The outcome of one case from its per-backend results (see the module docstring)."""
    outs = list(results.values())
    for o in outs:
        if o["kind"] == "raised" and not o["typed"]:
            return "overalloc" if o["memory"] else "exception"
    if len({"raised" if o["kind"] == "raised" else o["digest"] for o in outs}) > 1:
        return "disagree"
    if outs[0]["kind"] == "raised":
        return "error"
    return "same" if outs[0]["digest"] == expected else "undetected" if guarded else "differs"


def _codebooks(specs: dict) -> dict:
    return {k: Codebook(getattr(torch, d), plan, tuple(w), tuple(s), transient=True)  # not registered:
            for k, (d, plan, w, s) in specs.items()}                                  # only decompress(codebook=)


def _backends() -> list[str]:
    return ["torch"] + (["native"] if all(kernels.available("native", c) for c in ("qlc", "enec")) else [])


def _worker(conn, specs: dict, warmup: list, mem_bytes: int) -> None:
    faulthandler.enable()                           # a crash prints its Python stack to stderr
    warnings.simplefilter("ignore")                 # e.g. torch's "ComplexHalf is experimental", per mutant
    if mem_bytes:
        resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
    torch.set_num_threads(1)
    cbs, backends = _codebooks(specs), _backends()
    for blob, key in warmup:                        # load every kernel before the timeouts count
        run_case(blob, cbs.get(key), None, backends)
    conn.send(("ready", backends))
    while (msg := conn.recv()) is not None:
        i, blob, key, max_out = msg
        conn.send(("done", i, run_case(blob, cbs.get(key), max_out, backends)))


class Campaign:
    def __init__(self, args):
        self.args, self.t0, self.fuzz_t0, self.cases = args, time.monotonic(), None, 0
        self.streams, self.specs, self.known = build_corpus(args.seed)
        self.counts = {c: dict.fromkeys(GOOD + BAD, 0) for c in CODECS}
        self.bad, self.backends = {}, []            # (outcome, codec, mutation, what) -> facts; backend names
        first = {(s["codec"], s["dtype"], s["codebook"]): (s["blob"], s["cb_key"]) for s in self.streams}
        self.worker_args = (self.specs, list(first.values()), args.mem_gib << 30)

    def _start(self) -> dict:
        parent, child = mp.get_context("spawn").Pipe()
        p = mp.get_context("spawn").Process(target=_worker, args=(child, *self.worker_args), daemon=True)
        p.start()
        child.close()
        return {"proc": p, "conn": parent, "case": None, "ready": False, "deadline": time.monotonic() + 600}

    def _lost(self, s: dict, outcome: str, note: str, more: bool) -> dict:
        """A worker that died or hung: record its case, start another in its place if there is work."""
        if s["case"] is None:
            raise RuntimeError(f"a fuzz worker failed to start: {note}")
        s["proc"].kill()
        s["proc"].join(5)
        self.record(s["case"], outcome, None, note.format(code=s["proc"].exitcode))
        s["case"], s["ready"] = None, False
        return self._start() if more else s

    def run(self) -> None:
        a = self.args
        end = self.t0 + a.seconds if a.seconds else math.inf
        slots = [self._start() for _ in range(a.workers)]
        more = lambda: (a.streams is None or self.cases < a.streams) and time.monotonic() < end  # noqa: E731
        while True:
            for s in slots:
                if s["ready"] and s["case"] is None and more():
                    s["case"] = c = make_case(a.seed, self.cases, self.streams, self.known)
                    s["deadline"], self.cases = time.monotonic() + a.timeout, self.cases + 1
                    s["conn"].send((c["case"], c["blob"], c["cb_key"], c["max_output_bytes"]))
            busy = [s for s in slots if s["case"] is not None or (not s["ready"] and more())]
            if not busy:
                break
            ready = wait_any([s["conn"] for s in busy], max(0.0, min(s["deadline"] for s in busy) - time.monotonic()))
            for i, s in enumerate(slots):
                if s in busy and s["conn"] in ready:
                    try:
                        msg = s["conn"].recv()
                    except (EOFError, OSError):
                        slots[i] = self._lost(s, "crash", "worker died, exit code {code}", more())
                        continue
                    if msg[0] == "ready":
                        s["ready"], self.backends = True, msg[1]
                        self.fuzz_t0 = self.fuzz_t0 or time.monotonic()
                    else:
                        c, s["case"] = s["case"], None
                        self.record(c, classify(msg[2], c["expected"], c["guarded"]), msg[2])
                elif s in busy and time.monotonic() > s["deadline"]:
                    slots[i] = self._lost(s, "hang", f"no result in {a.timeout} s: killed", more())
        for s in slots:                             # idle workers exit; the others are gone or starting
            if s["ready"]:
                s["conn"].send(None)
            s["proc"].join(5 if s["ready"] else 0)
            s["proc"].kill()
        self.elapsed = time.monotonic() - self.t0

    def record(self, case: dict, outcome: str, results: dict | None, note: str = "") -> None:
        self.counts[case["codec"]][outcome] += 1
        if outcome in GOOD:
            return
        raised = [o for o in (results or {}).values() if o["kind"] == "raised" and not o["typed"]]
        what = f"{raised[0]['type']}: {raised[0]['message'][:200]}" if raised else note
        entry = self.bad.setdefault((outcome, case["codec"], case["mutation"]["kind"], what.split(":")[0]),
                                    {"count": 0, "example": what, "reproducers": []})
        entry["count"] += 1
        if len(entry["reproducers"]) < MAX_REPRODUCERS:
            os.makedirs(self.args.out, exist_ok=True)
            stem = os.path.join(self.args.out, f"{outcome}-{self.args.seed}-{case['case']:07d}")
            with open(stem + ".bin", "wb") as fh:
                fh.write(case["blob"])
            if case["cb_key"]:                  # decompress(stream, codebook=Codebook.load(this))
                _codebooks({case["cb_key"]: self.specs[case["cb_key"]]})[case["cb_key"]].save(stem + ".codebook.json")
            with open(stem + ".json", "w") as fh:
                json.dump(describe(case, self.streams, self.args.seed) | {"outcome": outcome, "note": note,
                          "results": results, "stream": stem + ".bin"}, fh, indent=1)
            entry["reproducers"].append(stem + ".bin")

    def summary(self) -> int:
        fuzz_s = time.monotonic() - self.fuzz_t0 if self.fuzz_t0 else 0.0
        rate = self.cases / fuzz_s if fuzz_s else 0.0
        print(f"qlccomm.fuzz seed {self.args.seed}: {self.cases} streams in {self.elapsed:.1f} s ({rate:.1f} "
              f"streams/s over {fuzz_s:.1f} s of fuzzing), {len(self.streams)} base streams, backends "
              f"{', '.join(self.backends)}\n{'codec':6} " + " ".join(f"{c:>10}" for c in GOOD + BAD) + "     total")
        for row in CODECS + ("total",):
            vals = [sum(self.counts[c][o] for c in (CODECS if row == "total" else (row,))) for o in GOOD + BAD]
            print(f"{row:6} " + " ".join(f"{v:>10}" for v in vals) + f" {sum(vals):>9}")
        for (outcome, codec, mut, _), e in sorted(self.bad.items()):
            print(f"BAD {outcome} x{e['count']}: codec {codec}, mutation {mut}: {e['example']}\n"
                  f"    e.g. {e['reproducers'][0] if e['reproducers'] else '-'}")
        os.makedirs(self.args.out, exist_ok=True)
        with open(os.path.join(self.args.out, "summary.json"), "w") as fh:
            bad = [dict(outcome=k[0], codec=k[1], mutation=k[2]) | v for k, v in sorted(self.bad.items())]
            json.dump({"seed": self.args.seed, "streams": self.cases, "seconds": self.elapsed, "streams_per_s": rate,
                       "backends": self.backends, "counts": self.counts, "bad": bad}, fh, indent=1)
        print(f"summary and reproducers in {self.args.out}")
        return 1 if self.bad else 0


def describe(case: dict, streams: list, seed: int) -> dict:
    """A case for JSON: everything but the stream's bytes, the base stream, how to replay it."""
    return {k: v for k, v in case.items() if k != "blob"} | {
        "seed": seed, "stream_bytes": len(case["blob"]), "replay": f"python -m qlccomm.fuzz --seed {seed} "
        f"--case {case['case']}", "base_stream": {k: v for k, v in streams[case["base"]].items() if k != "blob"}}


def replay(args) -> int:
    """Run case --case of --seed here (no worker, no limits) and print what happened."""
    streams, specs, known = build_corpus(args.seed)
    case = make_case(args.seed, args.case, streams, known)
    results = run_case(case["blob"], _codebooks(specs).get(case["cb_key"]), case["max_output_bytes"], _backends())
    outcome = classify(results, case["expected"], case["guarded"])
    print(json.dumps(describe(case, streams, args.seed) | {"results": results, "outcome": outcome}, indent=1))
    return 1 if outcome in BAD else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m qlccomm.fuzz", description=__doc__.split("\n\n")[0])
    for flag, typ, default, text in (
            ("--streams", int, None, "mutants to decode"), ("--seconds", float, None, "stop after this long"),
            ("--workers", int, 2, "worker processes"), ("--seed", int, 0, "campaign seed"),
            ("--out", str, os.path.join(tempfile.gettempdir(), "qlccomm-fuzz"), "folder for reproducers, summary.json"),
            ("--timeout", float, 20.0, "seconds before a case is a hang"),
            ("--mem-gib", int, 4, "address-space limit of a worker, GiB (0: none)"),
            ("--case", int, None, "replay this one case in-process and print it")):
        p.add_argument(flag, type=typ, default=default, help=text)
    args = p.parse_args(argv)
    if args.case is not None:
        return replay(args)
    if args.streams is None and args.seconds is None:
        p.error("give --streams or --seconds")
    os.environ.update({v: os.environ.get(v, "1") for v in ("OMP_NUM_THREADS", "NUMBA_NUM_THREADS")})  # workers
    if args.mem_gib:                                # the parent parses mutants too (length fix-ups)
        resource.setrlimit(resource.RLIMIT_AS, (4 * args.mem_gib << 30,) * 2)
    c = Campaign(args)
    c.run()
    return c.summary()


if __name__ == "__main__":
    sys.exit(main())
