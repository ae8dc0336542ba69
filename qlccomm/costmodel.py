"""Does coding pay for this call?  A per-group model of the link and the codecs.

For a call of M bytes on W ranks the model predicts (seconds)

    t_plain = latency + wire(kind, W) * M / plain_rate(kind)
    t_coded = latency + max(wire(kind, W) * M / (ratio * link), cpu) + fill

where `wire` is the bytes per rank a ring moves per byte of the tensor (all_reduce
2(W-1)/W, ...), `plain_rate` the ring bytes/s the backend's own collective achieves,
`link` the bytes/s one rank's link moves, `ratio` the coding ratio of
this stream, `cpu` the codec and reduction work per rank (bytes coded and decoded
times the measured seconds per byte) and `fill` the pipeline's start and end (the
first slice coded before anything moves, the last one decoded after everything
crossed).  Every input is measured:

* plain rate per collective: from the plain route's own timings (wall time against a
  ring's bytes: the backends' algorithms differ, gloo's reduce-scatter moves all-reduce
  traffic); the first two eligible calls of each collective in a group take the plain
  route, and the faster of them counts;
* link: the best plain rate of any collective, raised by coded calls whose wall time
  shows the wire was the bottleneck; QLCCOMM_LINK_GBPS / link_gbps= fixes both instead;
* codec seconds per byte per (codec, dtype, device): a short calibration on a piece
  of the first tensor coded, then the coded calls' own encode/decode times;
* ratio per stream (collective, dtype, element count: a DDP bucket is one stream):
  sampled from the first tensor, then the coded calls' own ratios;
* a per-collective correction (measured / predicted coded time) for imperfect overlap.

Each rank puts its two estimates in its call header; every rank then takes the
same decision from all of them (wire.agreed_route).  A stream probes the other
route now and then (after 20, 60, 140, ... calls) so that stale estimates heal.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
import time
from dataclasses import dataclass, field

import torch

EWMA = 0.3                      # weight of a new observation
MIN_TIMED_BYTES = 256 * 1024    # smaller calls are latency-bound: they only update the latency
PROBE_FIRST = 20                # a stream first probes the other route after this many calls
LINK_CALIBRATION_CALLS = 2      # plain calls of >= MIN_TIMED_BYTES timed before the model decides
PROBE_WITHIN = 2.0              # probes only where the two estimates are within this factor
MAX_STREAMS = 4096              # streams remembered per group (least recently used ones are forgotten)
ENV_LINK = "QLCCOMM_LINK_GBPS"


def wire_factor(kind: str, world: int) -> float:
    """Bytes one rank sends per byte of the call's tensor on the plain (ring) route."""
    w = world
    return {"all_reduce": 2.0 * (w - 1) / w, "reduce_scatter_tensor": (w - 1) / w,
            "all_gather_into_tensor": float(w - 1), "broadcast": 1.0,
            "all_to_all_single": (w - 1) / w, "p2p": 1.0}[kind]


def coded_wire_factor(kind: str, world: int) -> float:
    """The same for qlccomm's schedules (schedules.py), before coding."""
    return wire_factor(kind, world)


def work_factors(kind: str, world: int) -> tuple[float, float, float]:
    """(bytes encoded, bytes decoded, bytes reduced) per rank per byte of the tensor ("p2p": the
    sender's; the receiver decodes at the same time, and faster)."""
    w = world
    return {"all_reduce": (1.0, 2.0 * (w - 1) / w, 1.0),
            "reduce_scatter_tensor": ((w - 1) / w, (w - 1) / w, 1.0),
            "all_gather_into_tensor": (1.0, float(w - 1), 0.0),
            "broadcast": (1.0, 1.0, 0.0),
            "all_to_all_single": ((w - 1) / w, (w - 1) / w, 0.0),
            "p2p": (1.0, 0.0, 0.0)}[kind]        # the sender encodes while the receiver decodes


def _ewma(old: float | None, new: float) -> float:
    return new if old is None else (1 - EWMA) * old + EWMA * new


@dataclass
class CodecSpeed:
    """Seconds per raw byte to encode and decode one codec/dtype on one device type."""

    encode: float
    decode: float


_SPEEDS: dict[tuple, CodecSpeed] = {}          # (codec, dtype, device type) -> CodecSpeed
_SPEEDS_LOCK = threading.Lock()
REDUCE_S_PER_BYTE = {"cpu": 0.5e-9}            # float32 accumulation, refined by measurement


def calibrate(codec: str, codebook, sample: torch.Tensor, repeat: int = 3) -> tuple[CodecSpeed, float]:
    """Time encode and decode of `sample` after a warm-up, best of `repeat` (the process may
    share its cores with training at this moment); returns the speed and the ratio."""
    from .api import compress, decompress
    decompress(compress(sample, codec=codec, codebook=codebook), codebook=codebook)     # warm-up
    enc = dec = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        blob = compress(sample, codec=codec, codebook=codebook)
        t1 = time.perf_counter()
        decompress(blob, codebook=codebook)
        t2 = time.perf_counter()
        enc, dec = min(enc, t1 - t0), min(dec, t2 - t1)
    nbytes = sample.numel() * sample.element_size()
    return CodecSpeed(enc / nbytes, dec / nbytes), nbytes / blob.numel()


def codec_speed(codec: str, codebook, dtype: torch.dtype, device: torch.device, sample) -> CodecSpeed:
    key = (codec, dtype, device.type)
    with _SPEEDS_LOCK:
        sp = _SPEEDS.get(key)
    if sp is None:
        sp, _ = calibrate(codec, codebook, sample())
        with _SPEEDS_LOCK:
            _SPEEDS.setdefault(key, sp)
    return sp


def sample_of(flat: torch.Tensor, nbytes: int = 1 << 20, pieces: int = 8) -> torch.Tensor:
    """About `nbytes` of `flat` in `pieces` pieces spread over it (a contiguous copy)."""
    isz = flat.element_size()
    n = flat.numel()
    per = max(1, nbytes // isz // pieces)
    if n <= per * pieces:
        return flat.contiguous()
    step = n // pieces
    return torch.cat([flat[i * step:i * step + per] for i in range(pieces)])


@dataclass
class Estimate:
    """The model's view of one call: seconds on each route, and whether to probe."""

    t_plain: float
    t_coded: float
    probe: bool = False
    inputs: dict = field(default_factory=dict)


@dataclass
class _Stream:
    ratio: float | None = None
    calls: int = 0
    next_probe: int = PROBE_FIRST
    probe_gap: int = 2 * PROBE_FIRST


class CostModel:
    """The estimates of one group (one Link); not shared between groups."""

    def __init__(self):
        self.plain_Bps: dict[str, float] = {}        # per collective: ring bytes/s its dist route achieves
        self._plain_seen: dict[str, int] = {}        # per collective: plain calls timed so far
        self.link_Bps: float | None = None           # what one rank's link moves: the best of those
        self.latency_s = 3e-4
        self._correction: dict[str, float] = {}      # kind -> measured / predicted coded time
        self._streams: OrderedDict[tuple, _Stream] = OrderedDict()

    def stream(self, key: tuple) -> _Stream:
        """The stream of `key` (a bucket, a message key and size): its ratio, calls and
        correction; at most MAX_STREAMS are kept, so varying shapes cannot grow memory."""
        st = self._streams.get(key)
        if st is None:
            st = self._streams[key] = _Stream()
            if len(self._streams) > MAX_STREAMS:
                self._streams.popitem(last=False)
        else:
            self._streams.move_to_end(key)
        return st

    def estimate(self, kind: str, nbytes: int, world: int, speed: CodecSpeed, ratio: float, slice_bytes: int,
                 device_type: str, forced_Bps: float | None, stream: _Stream) -> Estimate:
        """Seconds on each route for a call of `nbytes` (0: unknown; the call then goes plain)."""
        calibrated = self._plain_seen.get(kind, 0) >= LINK_CALIBRATION_CALLS
        link = forced_Bps or (self.link_Bps if calibrated else None)
        plain_rate = forced_Bps or self.plain_Bps.get(kind)
        enc_f, dec_f, red_f = work_factors(kind, world)
        red = REDUCE_S_PER_BYTE.get(device_type, 0.0)
        cpu = nbytes * (enc_f * speed.encode + dec_f * speed.decode + red_f * red)
        inputs = {"link_gbps": round(link * 8e-9, 3) if link else None,
                  "plain_gbps": round(plain_rate * 8e-9, 3) if plain_rate else None, "ratio": round(ratio, 4),
                  "encode_gbps": round(1e-9 / speed.encode, 3) if speed.encode else None,
                  "decode_gbps": round(1e-9 / speed.decode, 3) if speed.decode else None,
                  "cpu_ms": round(cpu * 1e3, 3), "bytes": nbytes, "world": world}
        if not link:
            return Estimate(0.0, 0.0, False, inputs)
        # the pipeline's ends: the first slice is coded before anything moves, the last one is
        # decoded after everything else has crossed (all_reduce: and reduced and recoded
        # between its two hops); the wire term already holds every byte
        hops = 2 if kind == "all_reduce" else 1
        fill = hops * slice_bytes * (speed.encode + speed.decode)
        wire = coded_wire_factor(kind, world) * nbytes / ratio / link
        t_coded = (self.latency_s + max(wire, cpu) + fill) * self._correction.get(kind, 1.0)
        t_plain = self.latency_s + wire_factor(kind, world) * nbytes / plain_rate
        # probe the other route now and then, unless the estimates say it is far worse (a probe then
        # costs more than a stale estimate could)
        probe = stream.calls == stream.next_probe and max(t_coded, t_plain) < PROBE_WITHIN * min(t_coded, t_plain)
        inputs.update(t_plain_ms=round(t_plain * 1e3, 3), t_coded_ms=round(t_coded * 1e3, 3),
                      correction=round(self._correction.get(kind, 1.0), 3))
        return Estimate(t_plain, t_coded, probe, inputs)

    def called(self, stream: _Stream) -> None:
        """Count a call of the stream (and schedule its next probe)."""
        if stream.calls == stream.next_probe:
            stream.next_probe += stream.probe_gap
            stream.probe_gap *= 2
        stream.calls += 1

    def observe_plain(self, kind: str, nbytes: int, world: int, seconds: float) -> None:
        """A plain-route call of `nbytes` took `seconds` on this rank."""
        if nbytes < MIN_TIMED_BYTES:
            self.latency_s = _ewma(self.latency_s, min(seconds, 0.01))
            return
        moved = wire_factor(kind, world) * nbytes
        observed = moved / max(seconds - self.latency_s, 1e-6)
        seen = self._plain_seen[kind] = self._plain_seen.get(kind, 0) + 1
        if seen <= LINK_CALIBRATION_CALLS:                # first calls: the best one (warm-up noise)
            self.plain_Bps[kind] = max(self.plain_Bps.get(kind, 0.0), observed)
        else:
            self.plain_Bps[kind] = _ewma(self.plain_Bps[kind], observed)
        self.link_Bps = max(self.link_Bps or 0.0, self.plain_Bps[kind])

    def observe_coded(self, kind: str, nbytes: int, world: int, seconds: float, predicted: float,
                      stream: _Stream, ratio: float, sent_bytes: int, cpu_s: float) -> None:
        """A coded call took `seconds` (`predicted` by the model, 0 if it had no estimate),
        coded at `ratio`, this rank sending `sent_bytes` and working `cpu_s` seconds."""
        stream.ratio = _ewma(stream.ratio, ratio)
        if nbytes < MIN_TIMED_BYTES:
            return
        if predicted > 0:
            old = self._correction.get(kind, 1.0)
            self._correction[kind] = min(max(_ewma(old, old * seconds / predicted), 0.7), 2.0)
        if seconds > 1.5 * cpu_s and self.link_Bps is not None:     # the wire was the bottleneck
            self.link_Bps = max(self.link_Bps, sent_bytes / seconds)

    @staticmethod
    def observe_codec(codec: str, dtype: torch.dtype, device_type: str, encoded: int, encode_s: float,
                      decoded: int, decode_s: float) -> None:
        """Encode/decode work measured inside a call (raw bytes, seconds)."""
        key = (codec, dtype, device_type)
        with _SPEEDS_LOCK:
            sp = _SPEEDS.get(key)
            if sp is None:
                return
            if encoded >= MIN_TIMED_BYTES:
                sp.encode = _ewma(sp.encode, encode_s / encoded)
            if decoded >= MIN_TIMED_BYTES:
                sp.decode = _ewma(sp.decode, decode_s / decoded)


def forced_link_Bps(link_gbps: float | None) -> float | None:
    """bytes/s from the `link_gbps` argument or QLCCOMM_LINK_GBPS (Gbit/s); None: learned."""
    if link_gbps is None:
        env = os.environ.get(ENV_LINK, "").strip()
        if not env:
            return None
        try:
            link_gbps = float(env)
        except ValueError:
            raise ValueError(f"{ENV_LINK}={env!r} is not a number of Gbit/s") from None
    if not link_gbps > 0:
        raise ValueError(f"link_gbps must be > 0 Gbit/s, not {link_gbps}")
    return float(link_gbps) * 1e9 / 8
