"""`codec="auto"`: the codec with the least modelled time to code, send and decode a tensor.

The choice rests on a table of measured figures per (codec, dtype, device type, data
kind): ratio and encode / decode GB/s (1e9 uncompressed bytes per second, one thread,
median wall clock of `qlccomm bench`), and the share of all-zero 4096-element chunks
of the measured data.  The package ships one (`qlccomm/autoselect.json`, measured on
qlccomm.datagen's synthetic weights, gradients and activations); `qlccomm bench
--refresh-autoselect` measures this machine and writes a user table, at
`$QLCCOMM_CACHE/autoselect.json` or else `~/.cache/qlccomm/autoselect.json`, whose
entries replace the shipped ones with the same key.

For a tensor `t` of `dtype` on a device of type `device`:

1. the data kind is the table kind (weight, grad, activation, sparse_grad: REFRESH_KINDS)
   whose measured share of all-zero chunks is nearest to that of a sample of `t` (at most
   SAMPLE_CHUNKS chunks, evenly spaced); kinds that tie are summed over.  The synthetic
   weights, gradients and activations have no all-zero chunk (their zero rows hold -0.0
   as often as +0.0), so a dense tensor is judged on all three and a sparse gradient
   (`sparse_grad`: half its 4096-element rows +0.0, as untouched embedding rows are) on
   its own;
2. every codec the table holds for (dtype, device, kind) that codes `dtype` (raw
   excluded: whether to code at all is the cost model's call, not the codec's) is
   timed by the link model of qlccomm.bench (`coded_seconds`, pipelined over PIECES
   pieces) at the link rate `QLCCOMM_LINK_GBPS` (Gbit/s; DEFAULT_LINK_GBPS if unset);
3. the fastest wins; ties go to the higher ratio.

Where the table holds nothing for (dtype, device), `choose` returns None and the caller
keeps its fixed rule (qlccomm.api.pick_codec).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path
from typing import Iterable

import torch

from .qlc import CHUNK_ELEMS

TABLE_NAME = "autoselect.json"
TABLE_FORMAT = "qlccomm-autoselect"
TABLE_VERSION = 1
CACHE_ENV = "QLCCOMM_CACHE"
LINK_ENV = "QLCCOMM_LINK_GBPS"
DEFAULT_LINK_GBPS = 10.0        # Gbit/s: a 10 GbE link between hosts
PIECES = 8                      # pieces of the pipelined send (qlccomm bench --pieces default)
REFRESH_KINDS = ("weight", "grad", "activation", "sparse_grad")   # what `bench --refresh-autoselect` measures
SAMPLE_CHUNKS = 64              # chunks of CHUNK_ELEMS elements sampled to estimate the zero share


@dataclass(frozen=True)
class Entry:
    """One measured row: `codec` on `dtype` (torch name, e.g. "bfloat16") tensors of data
    `kind` on a `device` type; GB/s of uncompressed bytes; `zero_chunks`: the share of
    the measured data's 4096-element chunks that were all-zero (0..1)."""
    codec: str
    dtype: str
    device: str
    kind: str
    ratio: float
    encode_gbps: float
    decode_gbps: float
    zero_chunks: float

    @property
    def key(self) -> tuple[str, str, str, str]:
        return self.codec, self.dtype, self.device, self.kind


def sample_tensor(kind: str, dtype: torch.dtype, numel: int, seed: int = 0) -> torch.Tensor:
    """The data of one table kind: qlccomm.datagen's for weight, grad and activation;
    "sparse_grad" is its gradient with every other 4096-element row set to +0.0."""
    from .datagen import COLUMNS, synthetic
    if kind != "sparse_grad":
        return synthetic(kind, dtype, numel, seed=seed)
    t = synthetic("grad", dtype, numel, seed=seed)
    rows = t.numel() // COLUMNS
    t[: rows * COLUMNS].view(rows, COLUMNS)[::2] = 0
    return t


def dtype_key(dtype: torch.dtype) -> str:
    """The table's name of a dtype: torch's without the prefix ("bfloat16")."""
    return str(dtype).removeprefix("torch.")


def user_table_path() -> Path:
    """Where `qlccomm bench --refresh-autoselect` writes, and where `load_table` looks first."""
    base = os.environ.get(CACHE_ENV, "").strip()
    folder = Path(base) if base else Path.home() / ".cache" / "qlccomm"
    return folder / TABLE_NAME


def parse_table(obj: dict, where: str) -> list[Entry]:
    """The entries of a table object; ValueError naming `where` for anything else."""
    if not isinstance(obj, dict) or obj.get("format") != TABLE_FORMAT or obj.get("version") != TABLE_VERSION:
        raise ValueError(f"{where}: not a {TABLE_FORMAT} table of version {TABLE_VERSION}")
    try:
        return [Entry(str(e["codec"]), str(e["dtype"]), str(e["device"]), str(e["kind"]), float(e["ratio"]),
                      float(e["encode_gbps"]), float(e["decode_gbps"]), float(e["zero_chunks"]))
                for e in obj["entries"]]
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{where}: a bad entry ({e})") from None


def table_json(entries: Iterable[Entry], **about) -> dict:
    """A table object holding `entries`; `about` (e.g. the command that measured them) is kept beside."""
    return {"format": TABLE_FORMAT, "version": TABLE_VERSION, **about, "entries": [asdict(e) for e in entries]}


def shipped_entries() -> list[Entry]:
    """The table that ships with the package (empty if it is missing)."""
    ref = resources.files("qlccomm") / TABLE_NAME
    if not ref.is_file():
        return []
    return parse_table(json.loads(ref.read_text()), f"the shipped {TABLE_NAME}")


_user_cache: dict = {}


def user_entries(path: Path | None = None) -> list[Entry]:
    """The user table's entries (none if the file is missing); read again only when it changes."""
    path = user_table_path() if path is None else path
    try:
        stamp = path.stat().st_mtime_ns
    except OSError:
        return []
    key = (str(path), stamp)
    if key not in _user_cache:
        _user_cache.clear()
        _user_cache[key] = parse_table(json.loads(path.read_text()), str(path))
    return _user_cache[key]


def load_table() -> dict[tuple[str, str, str, str], Entry]:
    """The shipped entries, each replaced by the user table's entry of the same key."""
    table = {e.key: e for e in _shipped_cached()}
    table.update({e.key: e for e in user_entries()})
    return table


_shipped: list[Entry] = []


def _shipped_cached() -> list[Entry]:
    if not _shipped:
        _shipped.extend(shipped_entries())
    return _shipped


def merge_user_table(entries: Iterable[Entry], path: Path | None = None, **about) -> Path:
    """Write `entries` into the user table, keeping its entries of other keys; returns the path."""
    path = user_table_path() if path is None else path
    kept = {e.key: e for e in user_entries(path)}
    kept.update({e.key: e for e in entries})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(table_json(sorted(kept.values(), key=lambda e: e.key), **about), indent=1) + "\n")
    os.replace(tmp, path)
    return path


def link_gbps() -> float:
    """The link rate the choice models, in Gbit/s: QLCCOMM_LINK_GBPS, else DEFAULT_LINK_GBPS.
    ValueError for a value that is not a positive number."""
    text = os.environ.get(LINK_ENV, "").strip()
    if not text:
        return DEFAULT_LINK_GBPS
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not v > 0 or v == float("inf"):
        raise ValueError(f"{LINK_ENV}={text!r}: give the link rate in Gbit/s, a positive number")
    return v


def zero_chunk_share(t: torch.Tensor, samples: int = SAMPLE_CHUNKS, chunk: int = CHUNK_ELEMS) -> float:
    """The share (0..1) of all-zero `chunk`-element chunks among at most `samples` chunks of
    `t`, evenly spaced over it (all bits zero; a short last chunk counts as a chunk).  One
    gather and one reduction on `t`'s device, one synchronisation."""
    flat = t.detach().contiguous().reshape(-1)
    n = flat.numel()
    if n == 0:
        return 0.0
    chunks = -(-n // chunk)
    picks = torch.linspace(0, chunks - 1, min(samples, chunks)).round().to(torch.int64).unique()
    words = flat.view(torch.uint8)
    size = flat.element_size()
    pad = chunks * chunk * size - words.numel()
    if pad:                                   # the short last chunk, padded with zero bytes
        words = torch.cat([words, words.new_zeros(pad)])
    rows = words.view(chunks, chunk * size).index_select(0, picks.to(words.device))
    return float((~rows.ne(0).any(dim=1)).sum().item()) / picks.numel()


def nearest_kinds(entries: Iterable[Entry], share: float) -> list[str]:
    """The kinds whose measured all-zero chunk share (mean over their entries) is nearest to
    `share`: several where they tie (data this measure cannot tell apart)."""
    by_kind: dict[str, list[float]] = {}
    for e in entries:
        by_kind.setdefault(e.kind, []).append(e.zero_chunks)
    gap = {k: abs(sum(v) / len(v) - share) for k, v in by_kind.items()}
    least = min(gap.values(), default=0.0)
    return sorted(k for k, g in gap.items() if g <= least + 1e-9)


def modelled_seconds(e: Entry, nbytes: float, link: float, pieces: int = PIECES) -> float:
    """Seconds to encode, send over a `link` Gbit/s link and decode `nbytes` with entry `e`'s
    figures (qlccomm.bench.coded_seconds)."""
    from .bench import Speeds, coded_seconds
    return coded_seconds(nbytes, link, Speeds(e.codec, e.ratio, e.encode_gbps * 1e9, e.decode_gbps * 1e9), pieces)


def candidates(dtype: torch.dtype, device: str, table: dict | None = None) -> list[Entry]:
    """The table's entries for (dtype, device type) of codecs that code `dtype`, raw excluded."""
    from . import codecs
    table = load_table() if table is None else table
    names = set(codecs.names()) - {"raw"}
    return [e for e in table.values() if e.dtype == dtype_key(dtype) and e.device == device
            and e.codec in names and codecs.get(e.codec).codes(dtype)]


def choose(dtype: torch.dtype, device: str, t: torch.Tensor | None = None, link: float | None = None,
           table: dict | None = None) -> str | None:
    """The codec with the least modelled time for `dtype` tensors on a `device`-type device
    (see the module text); with `t`, for its data kind (the modelled times summed over the
    kinds that tie); without, summed over every kind measured.  `link`: Gbit/s (default `link_gbps()`).  None where the table holds nothing
    for (dtype, device)."""
    rows = candidates(dtype, device, table)
    if not rows:
        return None
    link = link_gbps() if link is None else link
    nbytes = float(t.numel() * t.element_size()) if t is not None and t.numel() else float(1 << 24)
    if t is not None:
        kinds = nearest_kinds(rows, zero_chunk_share(t))
        rows = [e for e in rows if e.kind in kinds]
    cost: dict[str, list[float]] = {}
    ratio: dict[str, list[float]] = {}
    for e in rows:
        cost.setdefault(e.codec, []).append(modelled_seconds(e, nbytes, link))
        ratio.setdefault(e.codec, []).append(e.ratio)
    return min(sorted(cost), key=lambda c: (sum(cost[c]), -sum(ratio[c])))
