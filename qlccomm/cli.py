"""The `qlccomm` command: fit, inspect, bench, warmup (`qlccomm --help`, `qlccomm CMD --help`).

Errors are one line on stderr, ``qlccomm: error: ...``, with exit status 2 for usage
errors (an unknown option or a bad value, an unknown dtype or device, a file argument
that does not exist, an output folder that does not exist or is not writable: all
checked before any work) and 1 for failures (a corrupt stream or tensor file, a
codebook that does not match, a decode failure, ...).  QLCCOMM_DEBUG=1 re-raises
failures with their traceback.  `--json` (fit, inspect, bench) prints one JSON object
on stdout instead of the tables; progress bars go to stderr, only on a terminal
unless `--progress always`.
"""
from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import math
import os
import re
import sys
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import torch

from . import __version__, api, bench, kernels, qlcw
from .codebook import (ALPHABET, codebook_from_histogram, entropy_bits, huffman_bits,
                       symbol_histogram, total_bits)
from .datagen import KINDS, synthetic
from .dtypes import DTYPE_ALIASES, parse_dtype
from .format import FORMAT_VERSION, dtype_name
from .split import candidate_plans
from .tensorfile import iter_tensors

EXIT_FAILURE, EXIT_USAGE = 1, 2
DEBUG_ENV = "QLCCOMM_DEBUG"
CODED_DTYPES = tuple(dict.fromkeys(d for d in DTYPE_ALIASES.values() if candidate_plans(d)))
CODED_NAMES = ", ".join(sorted(k for k, d in DTYPE_ALIASES.items() if d in CODED_DTYPES))


class UsageError(Exception):
    """A bad command line: exit status 2."""


class Parser(argparse.ArgumentParser):
    """argparse, with its errors raised as UsageError (one line, no usage dump)."""

    def error(self, message: str):
        raise UsageError(f"{message} (see '{self.prog} --help')")


class Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults in the help, except where there is none to show."""

    def _get_help_string(self, action):
        if action.default is None or action.default is False or action.default is argparse.SUPPRESS or action.required:
            return action.help
        return super()._get_help_string(action)


# -- argument types (a bad value is a usage error, raised before any work) --------------

def dtype_arg(text: str) -> torch.dtype:
    try:
        dtype = parse_dtype(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"unknown dtype {text!r}; the coded ones: {CODED_NAMES}") from None
    if not candidate_plans(dtype):
        raise argparse.ArgumentTypeError(f"qlccomm does not code {dtype_name(dtype)}; the coded dtypes: "
                                         f"{CODED_NAMES}")
    return dtype


def dtype_list(text: str) -> list[torch.dtype]:
    return [dtype_arg(p.strip()) for p in text.split(",") if p.strip()]


def existing_file(text: str) -> str:
    p = Path(text)
    if not p.exists():
        raise argparse.ArgumentTypeError(f"no such file: {text}")
    if not p.is_file():
        raise argparse.ArgumentTypeError(f"not a file: {text}")
    if not os.access(p, os.R_OK):
        raise argparse.ArgumentTypeError(f"cannot read {text}")
    return text


def output_file(text: str) -> str:
    p = Path(text)
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise argparse.ArgumentTypeError(f"folder {folder} does not exist (for {text})")
    if p.is_dir():
        raise argparse.ArgumentTypeError(f"{text} is a folder")
    if not os.access(folder, os.W_OK | os.X_OK) or (p.exists() and not os.access(p, os.W_OK)):
        raise argparse.ArgumentTypeError(f"cannot write {text}")
    return text


def positive(kind):
    def parse(text: str):
        try:
            v = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (v > 0 and math.isfinite(v)):
            raise argparse.ArgumentTypeError(f"must be > 0, not {text}")
        return v
    parse.__name__ = f"positive {kind.__name__}"
    return parse


def non_negative_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if v < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, not {text}")
    return v


def gbps_list(text: str) -> list[float]:
    return [positive(float)(p.strip()) for p in text.split(",") if p.strip()]


def codec_list(text: str) -> list[str]:
    from . import codecs
    names = ("auto", *codecs.names())
    out = [p.strip() for p in text.split(",") if p.strip()]
    for c in out:
        if c not in names:
            raise argparse.ArgumentTypeError(f"unknown codec {c!r}; choose from {', '.join(names)}")
    return out


def device_arg(text: str) -> str:
    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        if text.split(":")[0] == "npu":      # a torch.device only once torch_npu is imported
            dev = None
        else:
            raise argparse.ArgumentTypeError(f"unknown device {text!r}") from None
    kind = text.split(":")[0] if dev is None else dev.type
    if kind == "cpu":
        return text
    if kind == "npu":
        try:
            importlib.import_module("torch_npu")
        except ImportError:
            raise argparse.ArgumentTypeError("npu needs torch_npu, which is not installed") from None
    backend = getattr(torch, kind, None)
    if backend is None or not hasattr(backend, "is_available") or not backend.is_available():
        build = f"torch {torch.__version__}" + (", built without CUDA" if kind == "cuda" and
                                                torch.version.cuda is None else "")
        raise argparse.ArgumentTypeError(f"{kind} is not available here ({build})")
    index = dev.index if dev is not None else (int(text.split(":")[1]) if ":" in text else None)
    if index is not None and hasattr(backend, "device_count") and index >= backend.device_count():
        raise argparse.ArgumentTypeError(f"{text}: there are {backend.device_count()} {kind} devices")
    return text


# -- progress ----------------------------------------------------------------------

class _NoBar:
    n = 0

    def update(self, k: int = 1) -> None:
        self.n += k

    def close(self) -> None:
        pass


def progress_bar(args, total: int, desc: str, *, nbytes: bool = False):
    """A tqdm bar on stderr when it is a terminal (or --progress always); else a counter."""
    mode = getattr(args, "progress", "auto")
    if mode == "never" or (mode == "auto" and not sys.stderr.isatty()):
        return _NoBar()
    try:
        from tqdm import tqdm
    except ImportError:
        return _NoBar()
    kw = dict(unit="B", unit_scale=True, unit_divisor=1024) if nbytes else dict(unit=" calls")
    return tqdm(total=total, desc=desc, file=sys.stderr, leave=False, dynamic_ncols=True, mininterval=0.2, **kw)


def read_files(args, files: list[str], desc: str = "reading"):
    """(file, name, tensor) of every tensor of `files`, one at a time, with a progress bar over
    the files' bytes."""
    bar = progress_bar(args, sum(os.path.getsize(f) for f in files), desc, nbytes=True)
    try:
        for f in files:
            before, size = bar.n, os.path.getsize(f)
            for name, t in iter_tensors(f):
                yield f, name, t
                bar.update(min(t.numel() * t.element_size(), max(0, size - (bar.n - before))))
            bar.update(max(0, size - (bar.n - before)))        # the header and skipped tensors
    finally:
        bar.close()


# -- output helpers ----------------------------------------------------------------

def print_json(obj) -> None:
    def clean(v):
        if isinstance(v, float) and not math.isfinite(v):
            return None
        if isinstance(v, dict):
            return {k: clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v
    print(json.dumps(clean(obj), indent=1))


def table(headers: list[str], rows: list[list], specs: list[str]) -> list[str]:
    """Left-aligned text columns, right-aligned numbers; widths fitted to the content."""
    def cell(v, spec):
        return "-" if v is None else v if isinstance(v, str) else format(v, spec)
    cells = [[cell(v, s) for v, s in zip(r, specs)] for r in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    left = [all(isinstance(r[i], str) or r[i] is None for r in rows) for i in range(len(headers))]

    def line(vals):
        return "  ".join(f"{v:<{w}}" if lf else f"{v:>{w}}" for v, w, lf in zip(vals, widths, left)).rstrip()
    return [line(headers)] + [line(r) for r in cells]


# -- fit ---------------------------------------------------------------------------

GRAD_WORDS = {"grad", "grads", "gradient", "gradients"}
ACTIVATION_WORDS = {"act", "acts", "activation", "activations", "hidden", "hiddens"}
GROUP_BY = ("kind", "file", "dtype")


def infer_kind(name: str, file: str) -> str:
    """"grad", "activation" or "weight" for a tensor from the words of its name, then of its
    file's name: a word grad/grads/gradient(s) (e.g. "layer.weight.grad", "grads.pt") means a
    gradient, act(s)/activation(s)/hidden (e.g. "hidden_states") an activation; else a weight."""
    for text in (name, Path(file).stem):
        words = set(re.split(r"[^a-z0-9]+", text.lower()))
        if words & GRAD_WORDS:
            return "grad"
        if words & ACTIVATION_WORDS:
            return "activation"
    return "weight"


def fit_label(args, file: str, name: str) -> str:
    """The group a tensor is fitted in beside its dtype: its kind, its file's stem, or "all"."""
    if args.group_by == "dtype":
        return "all"
    if args.group_by == "file":
        return Path(file).stem
    return args.kind or infer_kind(name, file)


def fit_outputs(output: str, labels: list[str]) -> dict[str, str]:
    """The file each group label's codebooks go to: `output` itself for one label, else
    `output` with ".LABEL" before its suffix (cb.json -> cb.grad.json, cb.weight.json)."""
    if len(labels) == 1:
        return {labels[0]: output}
    p = Path(output)
    return {lb: str(p.with_name(f"{p.stem}.{lb}{p.suffix or '.json'}")) for lb in labels}


def fit_tensors(args):
    """(file, name, tensor, skip reason or None) of every tensor of the files, in order."""
    want = set(args.dtype) if args.dtype else None
    for f, name, t in read_files(args, args.files):
        reason = ("dtype not coded" if not candidate_plans(t.dtype) else
                  "not --dtype" if want is not None and t.dtype not in want else
                  "empty" if t.numel() == 0 else None)
        yield f, name, t, reason


def best_codebook(by_plan: dict, dtype: torch.dtype):
    """(codebook, histogram) of the plan whose fitted codebook codes `by_plan`'s histograms in the fewest bits."""
    best = None
    for plan in candidate_plans(dtype):
        h = by_plan[plan.name]
        cb = codebook_from_histogram(h, dtype, plan)
        bits = total_bits(h, cb)
        if best is None or bits < best[0]:
            best = (bits, cb, h)
    return best[1], best[2]


def cmd_fit(args) -> int:
    if args.kind and args.group_by != "kind":
        raise UsageError(f"argument --kind: applies to --group-by kind, not --group-by {args.group_by}")
    hists: dict = defaultdict(lambda: defaultdict(lambda: np.zeros(ALPHABET, np.int64)))
    counts: dict = defaultdict(int)
    tensors, skipped = [], []
    for f, name, t, reason in fit_tensors(args):
        if reason is not None:
            skipped.append({"file": f, "name": name, "dtype": dtype_name(t.dtype), "reason": reason})
            continue
        key = (t.dtype, fit_label(args, f, name))
        counts[key] += 1
        own = {}
        for plan in candidate_plans(t.dtype):
            own[plan.name] = symbol_histogram(t, plan)
            hists[key][plan.name] += own[plan.name]
        tensors.append({"file": f, "name": name, "dtype": t.dtype, "group": key[1], "elements": t.numel(),
                        "raw_bytes": t.numel() * t.element_size(),
                        "adaptive_bytes": api.compress(t, codec="qlc").numel(), "hists": own})
        del t
    if not hists:
        want = args.dtype
        what = f" of dtype {', '.join(dtype_name(d) for d in want)}" if want else " of a coded dtype"
        raise RuntimeError(f"no tensors{what} in {', '.join(args.files)}")
    books, summary = {}, []
    for (dtype, label), by_plan in hists.items():
        cb, h = best_codebook(by_plan, dtype)
        n, plan = int(h.sum()), cb.plan_obj
        exp, ent, huf = float((h * cb.code_lengths()).sum() / n), entropy_bits(h), huffman_bits(h)
        books[(dtype, label)] = cb
        summary.append({
            "dtype": dtype_name(dtype), "group": label, "tensors": counts[(dtype, label)], "elements": n,
            "plan": plan.name, "widths": list(cb.widths), "digest": cb.digest, "bits_per_symbol": exp,
            "entropy_bits": ent, "huffman_bits": huf, "raw_bits": plan.raw_bits, "item_bits": plan.item_bits,
            "ratio": plan.item_bits / (exp + plan.raw_bits),
            "entropy_ratio": plan.item_bits / (ent + plan.raw_bits),
            "huffman_ratio": plan.item_bits / (huf + plan.raw_bits)})
    per_tensor = fitted_sizes(args, tensors, books)
    warned = fit_warnings(summary, per_tensor, args.group_by)
    outputs = fit_outputs(args.output, sorted({label for _, label in books}))
    for label, path in outputs.items():
        lst = [cb for (_, lb), cb in books.items() if lb == label]
        with open(path, "w") as fh:
            json.dump(lst[0].to_json() if len(lst) == 1 else {"codebooks": [b.to_json() for b in lst]}, fh, indent=1)
    if args.json:
        print_json({"output": args.output, "outputs": outputs, "group_by": args.group_by, "codebooks": summary,
                    "tensors": per_tensor, "skipped": skipped, "warnings": warned})
        return 0
    print_fit_report(args, summary, per_tensor, skipped, warned, outputs)
    return 0


def fitted_sizes(args, tensors: list[dict], books: dict) -> list[dict]:
    """Per fitted tensor: bits/symbol and modelled ratio with its group's codebook, and the
    real stream sizes in bytes, coded with that codebook and adaptively (a second read of
    the files: one tensor in memory at a time)."""
    records = iter(tensors)
    out = []
    for _, _, t, reason in fit_tensors(args):
        if reason is not None:
            continue
        rec = next(records)
        cb = books[(rec["dtype"], rec["group"])]
        plan = cb.plan_obj
        h = rec["hists"][plan.name]
        bits = float((h * cb.code_lengths()).sum() / h.sum())
        fitted = api.compress(t, codec="qlc", codebook=cb).numel()
        out.append({"file": rec["file"], "name": rec["name"], "dtype": dtype_name(rec["dtype"]),
                    "group": rec["group"], "elements": rec["elements"], "bits_per_symbol": bits,
                    "ratio": plan.item_bits / (bits + plan.raw_bits), "fitted_bytes": fitted,
                    "adaptive_bytes": rec["adaptive_bytes"], "fitted_ratio": rec["raw_bytes"] / fitted,
                    "adaptive_ratio": rec["raw_bytes"] / rec["adaptive_bytes"]})
        del t
    return out


def fit_warnings(summary: list[dict], per_tensor: list[dict], group_by: str) -> list[str]:
    """A CodebookFitWarning (and its text, returned) per group whose fitted codebook codes the
    group's own tensors in more stream bytes than adaptive coding (`compress(t, codec="qlc")`)."""
    import warnings

    from .errors import CodebookFitWarning
    texts = []
    for s in summary:
        rows = [r for r in per_tensor if r["dtype"] == s["dtype"] and r["group"] == s["group"]]
        fitted, adaptive = sum(r["fitted_bytes"] for r in rows), sum(r["adaptive_bytes"] for r in rows)
        s["fitted_bytes"], s["adaptive_bytes"] = fitted, adaptive
        if fitted > adaptive:
            worse = sum(r["fitted_bytes"] > r["adaptive_bytes"] for r in rows)
            hint = "" if group_by == "kind" else "; or fit each kind of data apart (--group-by kind)"
            text = (f"the {s['dtype']} codebook of group {s['group']!r} codes its {len(rows)} tensors in {fitted} "
                    f"bytes, more than adaptive coding would ({adaptive} bytes; {worse} of them worse): adaptive "
                    f"coding fits each tensor on its own; use codebook=None for them{hint}")
            warnings.warn(text, CodebookFitWarning, stacklevel=2)
            texts.append(text)
    return texts


def print_fit_report(args, summary, per_tensor, skipped, warned, outputs) -> None:
    """The human report of `qlccomm fit`: per tensor, per codebook, warnings, files written."""
    many_files = len(args.files) > 1
    headers = (["tensor"] + (["file"] if many_files else []) +
               ["dtype", "group", "elements", "bits/symbol", "ratio", "fitted", "adaptive"])
    specs = ["s"] + (["s"] if many_files else []) + ["s", "s", "d", ".3f", ".4f", ".4f", ".4f"]
    rows = [[r["name"]] + ([Path(r["file"]).name] if many_files else []) +
            [r["dtype"], r["group"], r["elements"], r["bits_per_symbol"], r["ratio"], r["fitted_ratio"],
             r["adaptive_ratio"]] for r in per_tensor]
    print("\n".join(table(headers, rows, specs)))
    if skipped:
        reasons: dict = defaultdict(int)
        for r in skipped:
            reasons[f"{r['dtype']} not coded" if r["reason"] == "dtype not coded" else r["reason"]] += 1
        print(f"skipped {len(skipped)} tensor{'s' if len(skipped) > 1 else ''}: "
              + ", ".join(f"{v} {k}" for k, v in reasons.items()))
    print("(bits/symbol: mean code length with the group's fitted codebook; ratio: the tensor's bits over the "
          "coded bits, stream headers and chunk modes left out; fitted, adaptive: measured stream ratios with "
          f"the fitted codebook and with codebook=None; groups: by {args.group_by})")
    for s in summary:
        print(f"{s['dtype']} {s['group']}: {s['tensors']} tensors, {s['elements']} elements, plan {s['plan']}, "
              f"widths {s['widths']}")
        print(f"  expected {s['bits_per_symbol']:.3f} bits/symbol; entropy {s['entropy_bits']:.3f}; "
              f"Huffman {s['huffman_bits']:.3f}; raw {s['raw_bits']} bits/element")
        print(f"  ratio {s['ratio']:.4f} (entropy bound {s['entropy_ratio']:.4f}, Huffman {s['huffman_ratio']:.4f}); "
              f"streams {s['fitted_bytes']} bytes fitted, {s['adaptive_bytes']} adaptive; digest {s['digest']}")
    for w in warned:
        print(f"warning: {w}")
    print(f"wrote {', '.join(outputs.values())}")


# -- inspect -----------------------------------------------------------------------

def cmd_inspect(args) -> int:
    with open(args.blob, "rb") as f:
        data = f.read()
    try:
        info = api.inspect(data, codebook=args.codebook)
    except (ValueError, MemoryError) as e:             # FormatError, CodebookError, a bad codebook file
        raise RuntimeError(f"{args.blob}: {e}") from e
    if args.codebook and info.get("codebook_known") is False:
        raise RuntimeError(f"{args.codebook} holds no {info['dtype']} codebook with digest {info['codebook']}, "
                           f"the one {args.blob} references")
    if args.json:
        print_json(info)
        return 0
    print(f"{args.blob}: {info['codec']} stream, format v{info['format_version']}, {info['dtype']} "
          f"{info['shape']} ({info['numel']} elements)")
    print(f"  {info['raw_bytes']} bytes raw, {info['compressed_bytes']} stored (header {info['header_bytes']}), "
          f"ratio {info['ratio']:.4f}; checksum {'yes' if info['checksum'] else 'no'}")
    shown = {"codec", "format_version", "dtype", "shape", "numel", "raw_bytes", "compressed_bytes", "header_bytes",
             "ratio", "checksum"}
    if "codebook" in info:
        how = "embedded" if info["codebook_embedded"] else "by digest"
        known = "" if info["codebook_embedded"] else \
            ("; known here" if info["codebook_known"] else "; not known here: --codebook FILE supplies it")
        widths = f"; area widths {info['codebook_widths']}" if "codebook_widths" in info else ""
        print(f"  codebook {info['codebook']} ({how}{known}){widths}")
        shown |= {"codebook", "codebook_embedded", "codebook_known", "codebook_widths"}
    if "fields" in info:                                # QLCW: the split and the code's table
        f = info["fields"]
        print(f"  fields lo {f['lo']} w {f['w']} g {f['g']} ({info['symbol_bits']}-bit symbols); table "
              f"{info['table_entries']} entries{', escape area' if info['escape'] else ''}; "
              f"area widths {info['widths']}")
        shown |= {"fields", "symbol_bits", "table_entries", "escape", "widths"}
    if "chunks" in info:
        split = f"plan {info['plan']}; " if "plan" in info else ""
        print(f"  {split}{info['chunks']} chunks of {info['chunk_elems']} elements: "
              f"{info['chunks_zero']} zero, {info['chunks_coded']} coded, {info['chunks_raw']} raw")
        shown |= {"plan", "chunks", "chunk_elems", "chunks_zero", "chunks_coded", "chunks_raw"}
    if "plane_bytes" in info:
        planes = ", ".join(f"{k} {v}" for k, v in info["plane_bytes"].items())
        print(f"  planes (bytes): {planes}; metadata {info.get('metadata_bytes', '-')} bytes")
        shown |= {"plane_bytes", "metadata_bytes"}
    rest = [(k, v) for k, v in info.items() if k not in shown]
    for k, v in rest:
        print(f"  {k}: {v:.4g}" if isinstance(v, float) else f"  {k}: {v}")
    return 0


# -- bench -------------------------------------------------------------------------

def _bench_groups(args) -> list[tuple[str, torch.Tensor]]:
    """(description, flat tensor) per dtype to measure: synthetic, or every coded dtype of --file."""
    if not args.file:
        out = []
        for dtype in args.dtype or [torch.bfloat16]:
            numel = max(1, int(args.size_mib * (1 << 20)) // torch.empty(0, dtype=dtype).element_size())
            out.append((f"synthetic {args.kind}-like {dtype_name(dtype)} (qlccomm.datagen, seed {args.seed})",
                        synthetic(args.kind, dtype, numel, seed=args.seed)))
        return out
    parts: dict = defaultdict(list)          # dtype -> flat tensors, in the order dtypes first appear
    sources: dict = defaultdict(dict)
    others: dict = defaultdict(int)
    for f, _, t in read_files(args, args.file):
        if candidate_plans(t.dtype) and t.numel() and (not args.dtype or t.dtype in args.dtype):
            parts[t.dtype].append(t.reshape(-1))
            sources[t.dtype][f] = None
        else:
            others[dtype_name(t.dtype)] += 1
    files = ", ".join(args.file)
    if not parts:
        what = ", ".join(dtype_name(d) for d in args.dtype) if args.dtype else "coded-dtype"
        held = "; ".join(f"{k}: {v}" for k, v in others.items()) or "none"
        raise RuntimeError(f"no {what} tensors in {files} (tensors it holds by dtype: {held})")
    return [(f"{len(ps)} {dtype_name(d)} tensor{'s' if len(ps) > 1 else ''} from {', '.join(sources[d])}",
             torch.cat(ps)) for d, ps in parts.items()]


def _codecs_for(args, dtype: torch.dtype) -> tuple[list[str], list[str]]:
    """(codecs to run on `dtype`, notes on asked-for ones that do not apply)."""
    asked = args.codec or ["qlc", "enec"]
    usable, notes = [], []
    for c in asked:
        try:
            api.pick_codec(dtype, c)
            usable.append(c)
        except ValueError as e:
            if args.codec:
                notes.append(str(e))
    return usable, notes


def refresh_autoselect(args) -> int:
    """`qlccomm bench --refresh-autoselect`: measure every --dtype (default bf16, fp16, fp32) on
    every kind of autoselect.REFRESH_KINDS with --codec (default qlc and enec, where they apply) on --device, and
    merge the figures into the user table of qlccomm.autoselect (never the installed package)."""
    from . import autoselect
    dtypes = args.dtype or [torch.bfloat16, torch.float16, torch.float32]
    entries, shown = [], []
    for dtype in dtypes:
        numel = max(1, int(args.size_mib * (1 << 20)) // torch.empty(0, dtype=dtype).element_size())
        usable = [c for c in _codecs_for(args, dtype)[0] if c not in ("auto", "raw")]
        for kind in autoselect.REFRESH_KINDS:
            t = autoselect.sample_tensor(kind, dtype, numel, seed=args.seed).to(args.device)
            zero = float((~bench.nonzero_chunks(t)).float().mean())
            rows, _ = bench.run(t, usable, repeat=args.repeat)
            for sp in (bench.Speeds.of(c) for c in rows if c.name in usable):
                e = autoselect.Entry(sp.name, autoselect.dtype_key(dtype), t.device.type, kind, round(sp.ratio, 4),
                                     round(sp.encode_Bps / 1e9, 4), round(sp.decode_Bps / 1e9, 4), round(zero, 4))
                entries.append(e)
                shown.append([e.codec, dtype_name(dtype), e.device, kind, e.ratio, e.encode_gbps, e.decode_gbps,
                              e.zero_chunks])
            del t
    about = {"measured": time.strftime("%Y-%m-%d"), "threads": torch.get_num_threads(),
             "command": (f"qlccomm bench --refresh-autoselect --dtype {','.join(dtype_name(d) for d in dtypes)} "
                         f"--codec {','.join(args.codec or ['qlc', 'enec'])} --device {args.device} "
                         f"--size-mib {args.size_mib:g} --repeat {args.repeat} --threads {torch.get_num_threads()}"),
             "size_mib": args.size_mib, "repeat": args.repeat, "seed": args.seed}
    path = autoselect.merge_user_table(entries, **about)
    if args.json:
        print_json({"output": str(path), **about, "entries": [e.__dict__ for e in entries]})
        return 0
    print("\n".join(table(["codec", "dtype", "device", "kind", "ratio", "encode GB/s", "decode GB/s",
                           "zero chunks"], shown, ["s", "s", "s", "s", ".4f", ".3f", ".3f", ".1%"])))
    print(f"wrote {path} (codec=\"auto\" reads it over the shipped table)")
    return 0


def cmd_bench(args) -> int:
    if args.refresh_autoselect:
        clash = [o for o, v in (("--file", args.file), ("--link-gbps", args.link_gbps), ("--plot", args.plot)) if v]
        if clash:
            raise UsageError(f"argument --refresh-autoselect: measures synthetic data only; not with {clash[0]}")
    if args.plot and importlib.util.find_spec("matplotlib") is None:
        raise UsageError("argument --plot: needs matplotlib (pip install qlccomm[plot])")
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.refresh_autoselect:
        return refresh_autoselect(args)
    links = [x for xs in args.link_gbps or [] for x in xs]
    groups = _bench_groups(args)
    if args.codec:
        for c in args.codec:
            if not any(c in _codecs_for(args, t.dtype)[0] for _, t in groups):
                raise UsageError(f"argument --codec: {c} codes none of "
                                 f"{', '.join(dtype_name(t.dtype) for _, t in groups)}")
    from . import kernels
    results, plot_groups = [], []
    for desc, t in groups:
        t = t.to(args.device)
        usable, notes = _codecs_for(args, t.dtype)
        bars: list = []

        def step(done, total, label=f"bench {dtype_name(t.dtype)}"):
            if not bars:
                bars.append(progress_bar(args, total, label))
            bars[0].update(1)

        try:
            rows, bound = bench.run(t, usable, repeat=args.repeat, progress=step)
        finally:
            for bar in bars:
                bar.close()
        nbytes = bench.tensor_bytes(t)
        group = {"source": desc, "dtype": dtype_name(t.dtype), "elements": t.numel(), "bytes": nbytes,
                 "device": str(t.device), "kernels": kernels.backend_for(t.device), "notes": notes,
                 "bound": bound, "rows": bench.report_rows(rows)}
        speeds = [s for s in map(bench.Speeds.of, rows) if s is not None and s.name != "raw"]
        if links:
            group["pays"] = bench.pays(nbytes, speeds, links, args.pieces)
        results.append((group, rows, bound))
        plot_groups.append((f"{desc}, {nbytes / (1 << 20):.1f} MiB", nbytes, speeds))
        del t
    if args.plot:
        bench.plot_pays(plot_groups, links, args.pieces, args.plot)
    if args.json:
        print_json({"threads": torch.get_num_threads(), "repeat": args.repeat, "groups": [g for g, _, _ in results],
                    **({"plot": args.plot} if args.plot else {})})
        return 0
    blocks = []
    for group, rows, bound in results:
        title = (f"{group['source']}: {group['elements']} elements, {group['bytes'] / (1 << 20):.1f} MiB on "
                 f"{group['device']} (kernels: {group['kernels']}, torch threads {torch.get_num_threads()}, "
                 f"median of {args.repeat})")
        text = bench.format_report(rows, bound, title)
        for n in group["notes"]:
            text += f"\n({n})"
        if "pays" in group:
            text += "\n" + bench.format_pays(group["pays"])
        blocks.append(text)
    print("\n\n".join(blocks))
    if args.plot:
        print(f"wrote {args.plot}")
    return 0


# -- warmup ------------------------------------------------------------------------

def kernel_note() -> str:
    """Which CPU kernels run, with a hint where only the torch reference path is available."""
    qlc_b, enec_b, qlcw_b = (kernels.backend_for("cpu", c) for c in ("qlc", "enec", "qlcw"))
    text = f"qlc {qlc_b}, enec {enec_b}, qlcw {qlcw_b}"
    if "torch" in (qlc_b, enec_b, qlcw_b):
        if os.environ.get(kernels.ENV, "").strip().lower() not in ("", "auto"):
            text += f" (forced by {kernels.ENV}={os.environ[kernels.ENV]}: the slow torch reference path)"
        elif not kernels.available("native"):
            text += (" (numba cannot be imported: the slow torch reference path runs; "
                     "`pip install numba` for the fast CPU kernels)")
    return text


def cmd_warmup(args) -> int:
    """Run every coded dtype through the CPU kernels once, so that numba compiles (and
    caches on disk) now rather than inside the first job or test."""
    t0 = time.perf_counter()
    g = torch.Generator().manual_seed(0)
    threads = torch.get_num_threads()
    cases = [(t, dtype) for t in sorted({1, max(2, threads)})      # serial and thread-pool kernels
             for dtype in (torch.bfloat16, torch.float16, torch.float32, torch.float8_e4m3fn, torch.float8_e5m2,
                           torch.int8, torch.uint8)]
    for t, dtype in cases:
        torch.set_num_threads(t)
        body = synthetic("grad", dtype, 20_000, seed=1)
        size = body.element_size()
        noise = torch.randint(0, 256, (4096 * size,), generator=g, dtype=torch.int32).to(torch.uint8).view(dtype)
        x = torch.cat([body, torch.zeros(4096, dtype=dtype), noise, body[:1000]])  # every chunk mode, short tail
        for codec, codebook in (("qlc", None), ("qlc", "default"), ("qlcw", None), ("enec", None)):
            try:
                api.pick_codec(dtype, codec)
            except ValueError:
                continue
            out = api.decompress(api.compress(x, codec=codec, codebook=codebook))
            if not torch.equal(out.view(torch.uint8), x.view(torch.uint8)):
                raise RuntimeError(f"{codec} round trip of {dtype} is not bit-exact")
        f = qlcw.adaptive_fields(x)
        if f is not None:      # the chunk histograms of large tensors (qlcw.weighs_chunk_codes)
            (kernels.implementation("qlcw", "cpu") or qlcw).chunk_histograms(x, f.lo, f.w)
    torch.set_num_threads(threads)
    print(f"cpu kernels: {kernel_note()}; ready in {time.perf_counter() - t0:.1f} s")
    return 0


# -- the parser --------------------------------------------------------------------

def build_parser() -> Parser:
    ap = Parser(prog="qlccomm", formatter_class=Formatter,
                description="Lossless tensor compression for torch.distributed: fit codebooks, inspect streams, "
                            "benchmark the codecs.",
                epilog="Errors: one line on stderr; exit status 2 for usage errors, 1 for failures "
                       f"({DEBUG_ENV}=1 shows the traceback).")
    ap.add_argument("--version", action="version",
                    version=f"qlccomm {__version__} (stream format v{FORMAT_VERSION}, torch {torch.__version__})")
    sub = ap.add_subparsers(dest="cmd", required=True, metavar="COMMAND")
    dtypes = CODED_NAMES

    def progress_opt(p):
        p.add_argument("--progress", choices=("auto", "always", "never"), default="auto",
                       help="progress bars on stderr (auto: when stderr is a terminal)")

    f = sub.add_parser("fit", formatter_class=Formatter,
                       help="fit codebooks per dtype and kind of data to the tensors of .safetensors / .pt files",
                       description="Fit one codebook per coded dtype and group (by default the kind of data: "
                                   "weights, gradients and activations have different exponent spreads, and one "
                                   "codebook over several kinds codes each worse than adaptive coding) to the "
                                   "tensors of the files and write them; prints each tensor's bits/symbol and its "
                                   "measured stream ratio with its codebook and with adaptive coding "
                                   "(codebook=None), and warns (CodebookFitWarning) where the fitted codebook "
                                   "loses to adaptive coding on its own tensors.  With several groups, -o cb.json "
                                   "writes cb.GROUP.json per group (e.g. cb.weight.json, cb.grad.json).")
    f.add_argument("files", nargs="+", type=existing_file, metavar="FILE", help=".safetensors or torch.save (.pt) file")
    f.add_argument("--dtype", type=dtype_list, metavar="DTYPES",
                   help=f"fit only these dtypes, comma-separated ({dtypes}); default: every coded dtype")
    f.add_argument("--group-by", choices=GROUP_BY, default="kind",
                   help="fit a codebook per dtype and: kind (of data, from --kind or inferred from each tensor's "
                        "name, then its file's name: a word grad/grads/gradient means gradients, "
                        "act/activation/hidden activations, anything else weights), file (one per input "
                        "file), or dtype (one per dtype over everything)")
    f.add_argument("--kind", choices=list(KINDS),
                   help="with --group-by kind: the kind of every tensor, instead of inferring it from names")
    f.add_argument("-o", "--output", required=True, type=output_file, metavar="FILE",
                   help="codebook file to write (JSON; with several groups FILE's stem gets .GROUP); its folder "
                        "must exist")
    f.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    progress_opt(f)
    f.set_defaults(fn=cmd_fit)

    i = sub.add_parser("inspect", formatter_class=Formatter, help="describe a stream file without decoding it",
                       description="Describe a stream from its header and section metadata: codec, dtype, shape, "
                                   "sizes, codebook digest, chunk statistics.  No codebook is needed.")
    i.add_argument("blob", type=existing_file, metavar="FILE", help="a stream written from qlccomm.compress")
    i.add_argument("--codebook", type=existing_file, metavar="FILE",
                   help="codebook file for a stream that references one by digest (adds its widths; "
                        "an error if it is not the stream's)")
    i.add_argument("--json", action="store_true", help="print the description as JSON")
    i.set_defaults(fn=cmd_inspect)

    b = sub.add_parser("bench", formatter_class=Formatter,
                       help="ratio and GB/s against zstd, lz4 and a memory copy; whether coding pays on a link",
                       description="Measure the codecs' ratio and encode/decode GB/s on synthetic tensors or on "
                                   "the tensors of --file (every coded dtype it holds), against zstd, lz4 and "
                                   "memcpy.  With --link-gbps (or --plot), model whether coding pays on that link "
                                   "(the formula: python -c 'import qlccomm.bench; help(qlccomm.bench)').")
    b.add_argument("--codec", type=codec_list, metavar="CODECS",
                   help="comma-separated: qlc, enec, auto, raw; default: qlc, and enec where it applies")
    b.add_argument("--dtype", type=dtype_list, metavar="DTYPES",
                   help=f"comma-separated ({dtypes}); default: bf16 for synthetic data, every coded dtype of --file")
    b.add_argument("--kind", choices=list(KINDS), default="weight", help="synthetic data kind")
    b.add_argument("--file", action="append", type=existing_file, metavar="FILE",
                   help=".safetensors or .pt file (repeatable) instead of synthetic data")
    b.add_argument("--size-mib", type=positive(float), default=16.0, metavar="MIB",
                   help="synthetic tensor size per dtype")
    b.add_argument("--device", type=device_arg, default="cpu", help="device to measure on")
    b.add_argument("--repeat", type=positive(int), default=5, metavar="N", help="timed rounds (the median counts)")
    b.add_argument("--threads", type=non_negative_int, default=0, metavar="N", help="torch threads (0: leave as is)")
    b.add_argument("--seed", type=int, default=0, help="synthetic data seed")
    b.add_argument("--link-gbps", type=gbps_list, action="append", metavar="GBPS",
                   help="link speed(s) in Gbit/s, comma-separated or repeated: print whether coding pays there")
    b.add_argument("--pieces", type=positive(int), default=8, metavar="K",
                   help="pieces the coded send is pipelined over in the link model")
    b.add_argument("--plot", type=output_file, metavar="PNG",
                   help="draw time against link speed for raw and each codec, break-even marked (matplotlib)")
    b.add_argument("--refresh-autoselect", action="store_true",
                   help="measure --codec on every synthetic kind (weight, grad, activation, and a gradient with half its "
                        "rows zero) of each --dtype "
                        "(default bf16, fp16, fp32) and write the table codec=\"auto\" chooses by to "
                        "$QLCCOMM_CACHE/autoselect.json (else ~/.cache/qlccomm/autoselect.json); its entries "
                        "override the shipped ones (see qlccomm.autoselect)")
    b.add_argument("--json", action="store_true", help="print the results as JSON instead of tables")
    progress_opt(b)
    b.set_defaults(fn=cmd_bench)

    w = sub.add_parser("warmup", formatter_class=Formatter,
                       help="compile the CPU kernels ahead of the first job (numba caches them)",
                       description="Run every coded dtype through the CPU kernels once so that numba compiles "
                                   "(and caches) them now; says which kernels run.")
    w.set_defaults(fn=cmd_warmup)
    return ap


def _one_line(e: BaseException) -> str:
    msg = " ".join(str(e).split()) or type(e).__name__
    if not isinstance(e, (ValueError, OSError, RuntimeError, MemoryError)):
        msg = f"{type(e).__name__}: {msg} (set {DEBUG_ENV}=1 for the traceback)"
    return msg


def main(argv: list[str] | None = None) -> int:
    """The console script: returns the exit status (0, 1 for failures, 2 for usage errors)."""
    try:
        args = build_parser().parse_args(argv)
        return args.fn(args)
    except UsageError as e:
        print(f"qlccomm: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:                 # `qlccomm ... | head`: stop quietly
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return EXIT_FAILURE
    except KeyboardInterrupt:
        print("qlccomm: interrupted", file=sys.stderr)
        return 130
    except Exception as e:
        if os.environ.get(DEBUG_ENV, "").strip() not in ("", "0"):
            raise
        print(f"qlccomm: error: {_one_line(e)}", file=sys.stderr)
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
