"""torch.distributed vs qlccomm over a private, rate-shaped network (entry point: launch/shaped_link.sh).

    sudo bash launch/shaped_link.sh --ranks 2 --rate 1gbit [--rates 0.5,1,2.5,5,unshaped]
         [--cases all_reduce,...] [--repeat 5] [--plot docs/link_speed.png] [--json out.json]

**Network.**  Each rank r lives in its own network namespace ``<prefix>r<r>`` with one
veth end ``v<r>`` (address 10.213.<s>.<r+1>/24, made up: it exists only inside these
namespaces); the other end ``b<r>`` is a port of the bridge ``br0`` in a namespace of its
own, ``<prefix>br``.  Nothing is created in, or routed through, the host's namespace.
Every namespace is deleted on exit, on error and on SIGINT/SIGTERM (and
launch/shaped_link.sh deletes leftovers of its prefix if this process dies hard).

**Shaping.**  ``tc qdisc add dev X root tbf rate R burst B latency L`` on both ends of every
veth: the rank's end limits what it sends, the bridge's end what it receives, so every
rank has a full-duplex link of rate R, like a NIC port on a switch.

* burst B = max(64 KiB, R x 2 ms) (250 kB at 1 Gbit/s): the bucket must hold one whole
  GSO/TSO packet (veth hands tbf segments of up to 64 KiB; a smaller bucket makes tbf split
  them), and 2 ms of line rate is about what a NIC/switch port absorbs at line rate.
* latency L = 10 ms: the queue then holds R x 10 ms + B (1.5 MB at 1 Gbit/s), comparable to a
  NIC ring plus its qdisc: bursts of gloo's several TCP streams queue instead of dropping,
  and the added delay stays at most 10 ms.
* "unshaped": no qdisc (veth's default, noqueue); the link rate is then whatever the CPUs move.

tbf charges every TCP segment with its headers (1514 bytes on the wire per 1448 of payload at
MTU 1500), so the payload rate is about 95.6 % of R.
IPv6 is disabled inside the namespaces so that no neighbour/router chatter adds to the
byte counters.  Each rate starts with a link check: a 64 MiB ``dist.send``/``recv`` from
rank 0 to rank 1 (0.537 s at 1 Gbit/s for the payload alone, 0.56 s with the headers).

**Ranks** run ``ip netns exec <ns> <python> link_bench.py --worker ...`` with RANK,
WORLD_SIZE, MASTER_ADDR (rank 0's address), MASTER_PORT and GLOO_SOCKET_IFNAME=v<r>; the
torch thread count is the cores divided among the ranks unless --threads is given.  One launch per rate runs
every case; a case that stalls past its allowance is killed, marked and the remaining cases
are relaunched.

**Measurement.**  Per case, each variant (torch.distributed, qlccomm) gets --warmup untimed
calls, then up to --repeat timed repetitions of each, alternating dist, qlccomm, dist, ...
(so that the machine's drifts hit both alike; fewer repetitions once they exceed --budget
seconds per variant); each repetition's time is the SLOWEST rank's wall time (a MAX
all-reduce over a separate gloo group after the timed region); the table shows the median
and the minimum.  Bytes on
the wire: the veth's tx_bytes during the timed repetitions (per repetition, mean over ranks;
veth counts GSO packets of up to 64 KiB, so headers add only ~0.1 %, ACKs and the harness's
own small timing messages included) and qlccomm's own WireStats (sent_bytes / plain_bytes).
Every timed qlccomm result is checked bit for bit (see the case functions).  Exit status 1
when a case failed or was not bit-exact.
"""
from __future__ import annotations

import argparse
import datetime
import hashlib
import inspect
import json
import math
import os
import platform
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

MiB = 1 << 20
GRAD_ELEMS = 16 * MiB           # 32 MiB of bf16: the all_reduce / reduce_scatter gradient
GATHER_ELEMS = 8 * MiB          # 16 MiB of bf16 weights per rank for all_gather
BCAST_ELEMS = 16 * MiB          # 32 MiB of bf16 weights for broadcast
STAGE_ELEMS = 12 * MiB          # 24 MiB of bf16 per p2p message (an activation or its gradient)
MICRO_BATCHES = 2               # p2p: two forward messages and two backward ones per repetition
LINK_CHECK_BYTES = 64 * MiB
ROW = 4096                      # row length of the synthetic tensors (qlccomm.datagen.COLUMNS)
MASTER_PORT = 29500             # free by construction: the namespaces are new
CMD_TIMEOUT_S = 20              # every ip/tc call
STARTUP_S = 150                 # a launch's import, data and first case before its first record
POLL_S = 0.5

CASES = ["all_reduce", "all_reduce_sparse", "reduce_scatter", "all_gather", "broadcast", "ddp", "fsdp", "p2p"]
CASE_ALIASES = {"all_reduce": ["all_reduce", "all_reduce_sparse"]}   # "all_reduce" selects both gradients
LINK_CASE = "link"


# ================================================================================================
# command line
# ================================================================================================
def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--rate", default="1gbit", help="one link rate: tc syntax (1gbit, 500mbit), Gbit/s, or unshaped")
    p.add_argument("--rates", help="comma list in Gbit/s or 'unshaped' (overrides --rate), e.g. 0.5,1,2.5,5,unshaped")
    p.add_argument("--cases", default="all", help=f"comma list of {', '.join(CASES)} or all "
                                                    "('all_reduce' means the dense and the half-zero gradient)")
    p.add_argument("--repeat", type=int, default=5, help="timed repetitions per case and variant")
    p.add_argument("--warmup", type=int, default=2, help="untimed calls before the timed ones")
    p.add_argument("--order", choices=["alternate", "sequential"], default="alternate",
                   help="alternate dist and qlccomm repetitions (default), or all of dist's first")
    p.add_argument("--budget", type=float, default=12.0,
                   help="seconds of timed repetitions per case and variant; stop repeating past it")
    p.add_argument("--threads", type=int,
                   help="torch threads per rank (default: the machine's cores divided among the ranks, at "
                        "least 1: one process's share, as torchrun's OMP_NUM_THREADS=1 gives each rank)")
    p.add_argument("--qlccomm-kwargs", default="{}", help="JSON dict of keywords added to every qlccomm call")
    p.add_argument("--plot", help="write a PNG of time against link speed")
    p.add_argument("--plot-cases", help="comma-separated cases to plot (default: every case run)")
    p.add_argument("--from-json", help="plot a report written by --json instead of measuring (no root needed)")
    p.add_argument("--json", help="write every figure as JSON")
    p.add_argument("--netns-prefix", help="namespace name prefix (default qlcb<pid>)")
    # worker side (set by the controller)
    p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--results", help=argparse.SUPPRESS)
    p.add_argument("--veth", help=argparse.SUPPRESS)
    return p.parse_args(argv)


def parse_rate(text: str) -> tuple[str, int | None]:
    """(label, bits per second) of '1gbit', '500mbit', '2.5' (Gbit/s) or 'unshaped' (None)."""
    t = text.strip().lower()
    if t in ("unshaped", "none", "inf"):
        return "unshaped", None
    for unit, scale in (("gbit", 1e9), ("mbit", 1e6), ("kbit", 1e3)):
        if t.endswith(unit):
            bps = float(t[:-len(unit)]) * scale
            break
    else:
        bps = float(t) * 1e9
    if bps <= 0:
        raise ValueError(f"rate must be positive: {text!r}")
    return f"{bps / 1e9:g}gbit", int(bps)


def parse_cases(text: str) -> list[str]:
    names = CASES if text == "all" else [c.strip() for c in text.split(",") if c.strip()]
    out = []
    for name in names:
        if name not in CASES:
            raise ValueError(f"unknown case {name!r}; choose from {', '.join(CASES)}")
        for c in CASE_ALIASES.get(name, [name]):
            if c not in out:
                out.append(c)
    return out


# ================================================================================================
# network: namespaces, veths, bridge, tbf
# ================================================================================================
def sh(*argv: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run one ip/tc command (CMD_TIMEOUT_S seconds at most); raise on failure when `check`."""
    r = subprocess.run(argv, capture_output=True, text=True, timeout=CMD_TIMEOUT_S)
    if check and r.returncode:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip() or r.returncode}")
    return r


def preflight() -> str | None:
    """Why this machine cannot build the network (None when it can)."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veth, bridge, tc); run it with sudo"
    for tool in ("ip", "tc"):
        if shutil.which(tool) is None:
            return f"'{tool}' (iproute2) is not installed"
    try:
        if sh("ip", "netns", "list", check=False).returncode:
            return "'ip netns' is unavailable"
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"'ip netns' is unavailable ({e})"
    return None


@dataclass(frozen=True)
class Tbf:
    """The tbf parameters for a rate: rate (bit/s), burst (bytes), latency (ms)."""

    rate_bps: int
    burst_bytes: int
    latency_ms: int = 10

    @classmethod
    def for_rate(cls, rate_bps: int) -> "Tbf":
        return cls(rate_bps, max(64 * 1024, int(rate_bps / 8 * 0.002)))

    def tc_args(self) -> list[str]:
        return ["tbf", "rate", f"{self.rate_bps}bit", "burst", str(self.burst_bytes),
                "latency", f"{self.latency_ms}ms"]

    def describe(self) -> str:
        return f"tbf rate {self.rate_bps / 1e9:g}Gbit burst {self.burst_bytes} B latency {self.latency_ms} ms"


class Network:
    """One namespace per rank plus one for the bridge; a context manager that removes them all."""

    def __init__(self, ranks: int, prefix: str):
        self.ranks = ranks
        self.bridge_ns = f"{prefix}br"
        self.rank_ns = [f"{prefix}r{r}" for r in range(ranks)]
        subnet = os.getpid() % 250 + 1
        self.addrs = [f"10.213.{subnet}.{r + 1}" for r in range(ranks)]
        self.prefix = prefix
        self._made: list[str] = []

    def veth(self, rank: int) -> str:
        """The rank's interface name inside its namespace."""
        return f"v{rank}"

    def __enter__(self) -> "Network":
        try:
            self._build()
        except BaseException:
            self.teardown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.teardown()

    def _add_ns(self, name: str) -> None:
        sh("ip", "netns", "add", name)
        self._made.append(name)
        sh("ip", "netns", "exec", name, "sysctl", "-q", "-w", "net.ipv6.conf.all.disable_ipv6=1",
           "net.ipv6.conf.default.disable_ipv6=1")
        sh("ip", "-n", name, "link", "set", "lo", "up")

    def _build(self) -> None:
        self._add_ns(self.bridge_ns)
        sh("ip", "-n", self.bridge_ns, "link", "add", "br0", "type", "bridge")
        sh("ip", "-n", self.bridge_ns, "link", "set", "br0", "up")
        for r, ns in enumerate(self.rank_ns):
            self._add_ns(ns)
            sh("ip", "-n", self.bridge_ns, "link", "add", f"b{r}", "type", "veth",
               "peer", "name", self.veth(r), "netns", ns)
            sh("ip", "-n", self.bridge_ns, "link", "set", f"b{r}", "master", "br0", "up")
            sh("ip", "-n", ns, "addr", "add", f"{self.addrs[r]}/24", "dev", self.veth(r))
            sh("ip", "-n", ns, "link", "set", self.veth(r), "up")
        self._wait_up()

    def _wait_up(self, limit_s: float = 10.0) -> None:
        """Wait (at most `limit_s` s) until every rank's veth reports carrier."""
        for _ in range(int(limit_s / 0.1)):
            if all("LOWER_UP" in sh("ip", "-n", ns, "link", "show", self.veth(r)).stdout
                   for r, ns in enumerate(self.rank_ns)):
                return
            time.sleep(0.1)
        raise RuntimeError(f"veths not up after {limit_s} s")

    def ends(self):
        """(namespace, device) of both ends of every veth."""
        for r, ns in enumerate(self.rank_ns):
            yield ns, self.veth(r)
            yield self.bridge_ns, f"b{r}"

    def shape(self, rate_bps: int | None) -> Tbf | None:
        """Put a tbf of `rate_bps` on both ends of every veth (None: remove shaping)."""
        tbf = Tbf.for_rate(rate_bps) if rate_bps else None
        for ns, dev in self.ends():
            sh("tc", "-n", ns, "qdisc", "del", "dev", dev, "root", check=False)
            if tbf:
                sh("tc", "-n", ns, "qdisc", "add", "dev", dev, "root", *tbf.tc_args())
        return tbf

    def exec_argv(self, rank: int) -> list[str]:
        return ["ip", "netns", "exec", self.rank_ns[rank]]

    def teardown(self) -> None:
        """Kill whatever still runs in our namespaces, then delete them (veths and bridge go with them).

        SIGINT/SIGTERM/SIGHUP are held back meanwhile, so a second Ctrl-C cannot interrupt the cleanup."""
        held = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        signal.pthread_sigmask(signal.SIG_BLOCK, held)
        try:
            self._delete_namespaces()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, held)

    def _delete_namespaces(self) -> None:
        for ns in reversed(self._made):
            try:
                for pid in sh("ip", "netns", "pids", ns, check=False).stdout.split():
                    _kill(int(pid), signal.SIGKILL)
                sh("ip", "netns", "del", ns, check=False)
            except (OSError, subprocess.TimeoutExpired) as e:
                print(f"cleanup: could not delete namespace {ns}: {e}", file=sys.stderr)
        self._made.clear()


def leftovers(prefix: str) -> list[str]:
    """Namespaces whose name starts with `prefix` (there should be none after teardown)."""
    return [line.split()[0] for line in sh("ip", "netns", "list").stdout.splitlines()
            if line.startswith(prefix)]


def _kill(pid: int, sig) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


# ================================================================================================
# controller: launch ranks per rate, collect records
# ================================================================================================
@dataclass
class Launch:
    """The rank processes of one launch and where they write."""

    procs: list
    results: Path
    logs: list[Path]


def start_ranks(net: Network, args, cases: list[str], workdir: Path, tag: str) -> Launch:
    results = workdir / f"{tag}.jsonl"
    results.write_text("")
    worker_args = ["--worker", "--results", str(results), "--cases", ",".join(cases), "--repeat", str(args.repeat),
                   "--warmup", str(args.warmup), "--budget", str(args.budget), "--order", args.order,
                   "--qlccomm-kwargs", args.qlccomm_kwargs]
    if args.threads:
        worker_args += ["--threads", str(args.threads)]
    procs, logs = [], []
    for r in range(net.ranks):
        env = dict(os.environ, RANK=str(r), WORLD_SIZE=str(net.ranks), MASTER_ADDR=net.addrs[0],
                   MASTER_PORT=str(MASTER_PORT), GLOO_SOCKET_IFNAME=net.veth(r), PYTHONUNBUFFERED="1")
        env.pop("OMP_NUM_THREADS", None)
        if args.threads:
            env["OMP_NUM_THREADS"] = str(args.threads)
        log = workdir / f"{tag}.rank{r}.log"
        logs.append(log)
        argv = net.exec_argv(r) + [sys.executable, os.path.abspath(__file__), *worker_args, "--veth", net.veth(r)]
        with open(log, "w") as fh:
            procs.append(subprocess.Popen(argv, env=env, stdout=None if r == 0 else fh, stderr=fh,
                                          start_new_session=True))
    return Launch(procs, results, logs)


def read_records(path: Path) -> list[dict]:
    """The complete lines of rank 0's record file (a line still being written is left for later)."""
    lines = path.read_text().split("\n")[:-1]
    return [json.loads(line) for line in lines if line.strip()]


def stop_ranks(launch: Launch, grace_s: float = 5.0) -> None:
    """SIGTERM every rank still running, SIGKILL after `grace_s`."""
    for p in launch.procs:
        if p.poll() is None:
            _kill(p.pid, signal.SIGTERM)
    for p in launch.procs:
        try:
            p.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            _kill(p.pid, signal.SIGKILL)
            p.wait(timeout=grace_s)


def watch(launch: Launch, n_cases: int, stall_s: float) -> str | None:
    """Wait until every rank has exited 0 (returns None), one has failed, no record has arrived for
    `stall_s` seconds (STARTUP_S more before the first), or STARTUP_S + n_cases * stall_s have passed
    in all; then returns why.  The caller stops the ranks."""
    last, count = time.monotonic(), 0
    limit = STARTUP_S + stall_s
    for _ in range(int((STARTUP_S + n_cases * stall_s) / POLL_S)):
        time.sleep(POLL_S)
        n = len(read_records(launch.results))
        if n > count:
            last, count, limit = time.monotonic(), n, stall_s
        codes = [p.poll() for p in launch.procs]
        if all(c == 0 for c in codes):
            return None
        failed = [r for r, c in enumerate(codes) if c not in (None, 0)]
        if failed:
            return f"rank {failed[0]} exited with {codes[failed[0]]}"
        if time.monotonic() - last > limit:
            return f"no progress for {limit:.0f} s"
    return f"launch took more than {STARTUP_S + n_cases * stall_s:.0f} s"


def log_tail(path: Path, lines: int = 12) -> str:
    return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


def run_rate(net: Network, args, label: str, cases: list[str], workdir: Path) -> dict:
    """Every case at one rate: launch the ranks, relaunch past a stalled or failed case."""
    todo = [LINK_CASE] + cases
    done: dict[str, dict] = {}
    stall_s = 4 * args.budget + 120
    for attempt in range(len(todo)):
        if not todo:
            break
        launch = start_ranks(net, args, todo, workdir, f"{label}.{attempt}")
        try:
            why = watch(launch, len(todo), stall_s)
        finally:
            stop_ranks(launch)
        records = read_records(launch.results)
        for rec in records:
            if "result" in rec:
                done[rec["case"]] = rec["result"]
        if why:
            started = [rec["case"] for rec in records if rec.get("event") == "start"]
            stuck = started[-1] if started and started[-1] not in done else todo[0]
            tails = "\n".join(f"--- rank {r} ---\n{log_tail(log)}" for r, log in enumerate(launch.logs))
            print(f"FAIL {label} {stuck}: {why}\n{tails}", flush=True)
            done[stuck] = {"error": why}
        todo = [c for c in todo if c not in done]
    return done


# ================================================================================================
# controller: report
# ================================================================================================
def median(xs):
    return statistics.median(xs) if xs else float("nan")


def mb(x):
    return x / 1e6


def format_table(label: str, tbf: Tbf | None, ranks: int, res: dict, cases: list[str]) -> str:
    link = res.get(LINK_CASE, {})
    head = f"== {label}: {tbf.describe() if tbf else 'no qdisc'} on both ends of every veth; {ranks} ranks"
    if "gbps" in link:
        head += (f"; link check {LINK_CHECK_BYTES // MiB} MiB rank 0 -> 1 in {link['seconds']:.3f} s = "
                 f"{link['gbps']:.3f} Gbit/s payload")
        if tbf:
            head += f" (payload at line rate: {LINK_CHECK_BYTES * 8 / tbf.rate_bps:.3f} s)"
    rows = [head + " ==",
            f"{'case':<18} {'dist s (min)':>15} {'qlccomm s (min)':>16} {'qlc/dist':>8} "
            f"{'veth MB dist':>12} {'veth MB qlc':>11} {'WireStats MB sent/plain':>23} exact  qlccomm routes (calls)"]
    for case in cases:
        r = res.get(case, {})
        if "error" in r:
            rows.append(f"{case:<18} ERROR: {r['error']}")
            continue
        d, q = r["dist"], r["qlccomm"]
        dm, qm = median(d["times_s"]), median(q["times_s"])
        ws = f"{mb(q['wire_sent_bytes']):.1f}/{mb(q['wire_plain_bytes']):.1f}"
        rows.append(f"{case:<18} {dm:>7.3f} ({min(d['times_s']):.3f}) {qm:>7.3f} ({min(q['times_s']):.3f}) "
                    f"{qm / dm:>8.2f} {mb(d['tx_mean_bytes']):>12.1f} {mb(q['tx_mean_bytes']):>11.1f} "
                    f"{ws:>23} {'yes' if r['exact'] else 'NO':<6} {q.get('route') or '-'}")
        if not r["exact"]:
            rows.append(f"FAIL {label} {case}: qlccomm result not bit-exact ({r.get('exact_detail', '')})")
    reps = sorted({len(res[c][v]["times_s"]) for c in cases if "dist" in res.get(c, {}) for v in ("dist", "qlccomm")})
    rows.append(f"(timed repetitions per variant: {', '.join(map(str, reps))}; veth MB: tx per repetition, "
                f"mean over ranks; WireStats: qlccomm's payload bytes per rank and repetition)")
    return "\n".join(rows)


def machine_facts() -> dict:
    import torch
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor())
    return {"nproc": os.cpu_count(), "cpu_model": model, "kernel": platform.release(),
            "torch": torch.__version__, "python": platform.python_version()}


def write_json(path: str, report: dict) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(report, indent=1) + "\n")
    print(f"wrote {path}")


def break_even(xs: list[float], dist_s: list[float], qlc_s: list[float]) -> float | None:
    """Link speed (Gbit/s) where qlccomm's time first crosses dist's, going up from the slowest link
    (interpolated linearly in log(speed)); None when the curves do not cross."""
    diff = [q - d for q, d in zip(qlc_s, dist_s)]
    for i in range(len(xs) - 1):
        a, b = diff[i], diff[i + 1]
        if a == 0:
            return xs[i]
        if a * b < 0:
            f = a / (a - b)
            return math.exp(math.log(xs[i]) + f * (math.log(xs[i + 1]) - math.log(xs[i])))
    return None


def plot(path: str, report: dict, cases: list[str]) -> None:
    """Time against link speed per case (dist vs qlccomm), break-even marked."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rates = report["rates"]
    shaped = [r["rate_bps"] / 1e9 for r in rates if r["rate_bps"]]
    cases = [c for c in cases if any("dist" in r["cases"].get(c, {}) for r in rates)]
    cols = min(2, len(cases))
    rows_n = math.ceil(len(cases) / cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(6 * cols, 4 * rows_n), squeeze=False)
    for ax, case in zip(axes.flat, cases):
        pts = []
        for r in rates:
            res = r["cases"].get(case, {})
            if "dist" not in res:
                continue
            x = r["rate_bps"] / 1e9 if r["rate_bps"] else unshaped_x(r, shaped)
            pts.append((x, median(res["dist"]["times_s"]), median(res["qlccomm"]["times_s"]), r["label"]))
        pts.sort()
        xs, ds, qs, labels = map(list, zip(*pts))
        ax.plot(xs, ds, "o-", label="torch.distributed")
        ax.plot(xs, qs, "s-", label="qlccomm")
        for x, lab in zip(xs, labels):
            if lab == "unshaped":
                ax.axvline(x, color="grey", lw=0.5, ls=":")
                ax.annotate(f"unshaped\n({x:.1f} Gbit/s measured)", (x, max(ds + qs)), fontsize=7, ha="right", va="top")
        be = break_even(xs, ds, qs)
        if be:
            ax.axvline(be, color="red", ls="--", lw=1)
            ax.annotate(f"break-even {be:.2f} Gbit/s", (be, min(ds + qs)), color="red", fontsize=8)
        else:
            ax.text(0.02, 0.02, "no break-even in range", transform=ax.transAxes, fontsize=8, color="red")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(case, fontsize=10)
        ax.set_xlabel("link speed per rank (Gbit/s, full duplex)")
        ax.set_ylabel("median time (s, slowest rank)")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(cases):]:
        ax.set_visible(False)
    fig.suptitle(f"qlccomm vs torch.distributed over tbf-shaped veths, {report['ranks']} ranks, gloo, "
                 f"{report['date'][:10]}", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.97))
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}")


def unshaped_x(rate: dict, shaped: list[float]) -> float:
    """Where the unshaped point goes: its measured link-check throughput, else right of the fastest rate."""
    link = rate["cases"].get(LINK_CASE, {})
    fastest = max(shaped, default=1.0)
    return max(link.get("gbps", 0.0), 2 * fastest)


def controller(args) -> int:
    if args.from_json:
        report = json.loads(Path(args.from_json).read_text())
        plot(args.plot, report, parse_cases(args.plot_cases) if args.plot_cases else report["cases_run"])
        return 0
    reason = preflight()
    if reason:
        print(f"shaped_link: skipped: {reason}")
        return 0
    rates = [parse_rate(r) for r in args.rates.split(",")] if args.rates else [parse_rate(args.rate)]
    cases = parse_cases(args.cases)
    json.loads(args.qlccomm_kwargs)                 # fail early on bad JSON
    args.threads = args.threads or max(1, (os.cpu_count() or 1) // args.ranks)
    prefix = args.netns_prefix or f"qlcb{os.getpid()}"
    _raise_on_signals()
    threads = args.threads
    if args.ranks * threads > (os.cpu_count() or 1):
        print(f"WARNING: {args.ranks} ranks x {threads} torch threads on {os.cpu_count()} cores: the figures are "
              "CPU-biased against qlccomm (its coding competes for cores that a real node would not share)")
    report = {"date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
              "machine": machine_facts(), "command": shlex.join([sys.argv[0]] + sys.argv[1:]),
              "ranks": args.ranks, "cases_run": cases, "repeat": args.repeat, "warmup": args.warmup,
              "budget_s": args.budget, "qlccomm_kwargs": json.loads(args.qlccomm_kwargs), "rates": []}
    t_start = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="qlcb") as tmp, Network(args.ranks, prefix) as net:
            print(f"network: namespaces {', '.join(net.rank_ns)} (ranks, {', '.join(net.addrs)}) and {net.bridge_ns} "
                  f"(bridge br0); MASTER_ADDR={net.addrs[0]}")
            for label, bps in rates:
                t0 = time.monotonic()
                tbf = net.shape(bps)
                res = run_rate(net, args, label, cases, Path(tmp))
                print(format_table(label, tbf, args.ranks, res, cases), flush=True)
                print(f"({label}: {time.monotonic() - t0:.0f} s)", flush=True)
                report["rates"].append({"label": label, "rate_bps": bps,
                                        "tbf": tbf.__dict__ if tbf else None, "cases": res})
    finally:
        left = leftovers(prefix)
        print(f"cleanup: {'LEFT ' + ', '.join(left) if left else 'no namespace ' + prefix + '* left'}")
    report["elapsed_s"] = round(time.monotonic() - t_start, 1)
    print(f"total {report['elapsed_s']:.0f} s")
    if args.json:
        write_json(args.json, report)
    if args.plot:
        plot(args.plot, report, parse_cases(args.plot_cases) if args.plot_cases else cases)
    failed = any("error" in r or not r.get("exact", True) for rate in report["rates"]
                 for c, r in rate["cases"].items())
    return 1 if failed else 0


def _raise_on_signals() -> None:
    """SIGTERM/SIGHUP raise SystemExit, so the try/finally and context managers clean up."""
    def handler(signum, frame):
        raise SystemExit(128 + signum)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, handler)


# ================================================================================================
# worker: data
# ================================================================================================
def fit_length(x, n: int):
    """The first `n` elements of 1-D `x`, tiled when `x` is shorter."""
    if x.numel() < n:
        x = x.repeat(math.ceil(n / x.numel()))
    return x[:n].contiguous()


def flip_low_bits(g, seed: int):
    """`g` (bf16) with the last mantissa bit of about half of its nonzero elements flipped (seeded)."""
    import torch
    gen = torch.Generator().manual_seed(seed)
    flip = (torch.rand(g.numel(), generator=gen) < 0.5) & (g != 0)
    return (g.view(torch.int16) ^ flip.to(torch.int16)).view(torch.bfloat16)


class RankData:
    """This rank's tensors (bf16, 1-D), made once: real all-MiniLM-L6-v2 data where launch/minilm.py
    works, else qlccomm.datagen's synthetic tensors.

    dense   GRAD_ELEMS gradient elements      sparse  a whole gradient, about half of it zero rows
                                              (MiniLM: all 22.6M elements, 45 MB; synthetic: GRAD_ELEMS)
    gather  GATHER_ELEMS weights (this rank's) bcast   BCAST_ELEMS weights (rank 0's are sent)
    """

    def __init__(self, rank: int):
        import torch
        self.rank = rank
        self.note = ""
        try:
            from minilm import flat_gradient, load_minilm
            dense = flat_gradient(dtype=torch.bfloat16, dense_only=True)
            full = flat_gradient(dtype=torch.bfloat16)
            weights = self._flat_weights(load_minilm(torch.bfloat16))
            self.source = "minilm"
        except Exception as e:      # absent, being written, or failing: the documented fallback
            self.source = "synthetic"
            self.note = f"launch/minilm.py not usable ({type(e).__name__}: {e}); using qlccomm.datagen"
            self._synthetic()
            return
        # the same real gradient on every rank, made to differ a little per rank (last mantissa bits)
        self.dense = flip_low_bits(fit_length(dense, GRAD_ELEMS), seed=rank)
        self.sparse = flip_low_bits(full, seed=rank)      # 45 MB, the word embeddings' zero rows included
        self.gather = fit_length(weights.roll(-rank * GATHER_ELEMS), GATHER_ELEMS)
        self.bcast = fit_length(weights, BCAST_ELEMS)

    @staticmethod
    def _flat_weights(model):
        import torch
        return torch.cat([t.detach().reshape(-1).to(torch.bfloat16) for t in model.state_dict().values()
                          if t.is_floating_point()])

    def _synthetic(self):
        import torch
        from qlccomm.datagen import synthetic
        r = self.rank
        self.dense = synthetic("grad", torch.bfloat16, GRAD_ELEMS, seed=1000 + r)
        self.sparse = synthetic("grad", torch.bfloat16, GRAD_ELEMS, seed=2000 + r)
        rows = GRAD_ELEMS // ROW
        zero = torch.randperm(rows, generator=torch.Generator().manual_seed(7))[:rows // 2]   # same rows everywhere
        self.sparse.view(rows, ROW)[zero] = 0
        self.gather = synthetic("weight", torch.bfloat16, GATHER_ELEMS, seed=3000 + r)
        self.bcast = synthetic("weight", torch.bfloat16, BCAST_ELEMS, seed=4000)


class StageData:
    """What crosses a two-stage pipeline cut, per micro-batch: (activation, activation gradient),
    bf16 [STAGE_ELEMS], the same on every rank.  Real: launch/minilm.py's stage_boundary(m)
    (all-MiniLM-L6-v2 cut after layer 3, 512 sequences of 64 tokens); else synthetic
    activations and gradients of qlccomm.datagen with two thirds of the token rows padding."""

    def __init__(self):
        import torch
        self.note = ""
        try:
            from minilm import stage_boundary
            pairs = [stage_boundary(m) for m in range(MICRO_BATCHES)]
            self.source = "minilm"
        except Exception as e:      # absent, being written, or failing: the documented fallback
            from qlccomm.datagen import synthetic
            self.source = "synthetic"
            self.note = f"launch/minilm.py not usable ({type(e).__name__}: {e}); using qlccomm.datagen"
            pairs = []
            for m in range(MICRO_BATCHES):
                act = synthetic("activation", torch.bfloat16, STAGE_ELEMS, seed=5000 + m)
                grad = synthetic("grad", torch.bfloat16, STAGE_ELEMS, seed=6000 + m).view(-1, 384)
                grad[torch.rand(grad.shape[0], generator=torch.Generator().manual_seed(m)) < 2 / 3] = 0
                pairs.append((act, grad))
        self.acts = [a.reshape(-1).contiguous() for a, _ in pairs]
        self.grads = [g.reshape(-1).contiguous() for _, g in pairs]


# ================================================================================================
# worker: model for ddp / fsdp
# ================================================================================================
VOCAB, D_EMB, D_MODEL, N_LAYERS, N_CLASSES = 30_000, 128, 512, 3, 16
BATCH, SEQ = 4, 32                # 128 tokens per rank and step: < 0.5 % of the embedding rows get gradient


def build_model(dtype):
    """~11.8M parameters, a third (3.84M) in an nn.Embedding(30000, 128), then 3 transformer layers (d 512)."""
    import torch
    import torch.nn as nn

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(VOCAB, D_EMB)
            self.up = nn.Linear(D_EMB, D_MODEL)
            self.layers = nn.ModuleList(nn.TransformerEncoderLayer(D_MODEL, 8, 3 * D_MODEL, dropout=0.0,
                                                                   batch_first=True) for _ in range(N_LAYERS))
            self.head = nn.Linear(D_MODEL, N_CLASSES)

        def forward(self, tokens):
            x = self.up(self.embed(tokens))
            for layer in self.layers:
                x = layer(x)
            return self.head(x.mean(1))

    torch.manual_seed(0)
    return Classifier().to(dtype)


def batch(step: int, rank: int):
    """Token ids and labels of (step, rank): different on every rank."""
    import torch
    g = torch.Generator().manual_seed(step * 1009 + rank)
    return torch.randint(0, VOCAB, (BATCH, SEQ), generator=g), torch.randint(0, N_CLASSES, (BATCH,), generator=g)


class Trainer:
    """One SGD step per call (forward, backward, optimizer step); records the losses."""

    def __init__(self, model, rank: int):
        import torch
        self.model, self.rank, self.step_no, self.losses = model, rank, 0, []
        self.opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def __call__(self) -> None:
        import torch.nn.functional as F
        x, y = batch(self.step_no, self.rank)
        loss = F.cross_entropy(self.model(x).float(), y)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        self.losses.append(loss.item())
        self.step_no += 1


# ================================================================================================
# worker: measurement
# ================================================================================================
@dataclass
class Ctx:
    """What every case needs: this rank, the control group, options."""

    rank: int
    world: int
    ctl: object                  # a separate gloo group for barriers and timing reductions
    veth: str
    repeat: int
    warmup: int
    budget_s: float
    qkw: dict
    order: str = "alternate"
    data: RankData | None = None
    notes: list = field(default_factory=list)


def tx_bytes(veth: str) -> int:
    """Bytes this rank's veth has transmitted (Ethernet frames; this namespace's sysfs)."""
    return int(Path(f"/sys/class/net/{veth}/statistics/tx_bytes").read_text())


def gather(ctx: Ctx, obj) -> list:
    import torch.distributed as dist
    out = [None] * ctx.world
    dist.all_gather_object(out, obj, group=ctx.ctl)
    return out


def slowest(ctx: Ctx, seconds: float) -> float:
    import torch
    import torch.distributed as dist
    t = torch.tensor([seconds], dtype=torch.float64)
    dist.all_reduce(t, op=dist.ReduceOp.MAX, group=ctx.ctl)
    return t.item()


@dataclass
class Variant:
    """One side of a comparison: `step()` is timed, after an untimed `reset()`; `stats` are QLCStats
    whose WireStats totals are reported; `check()` judges each timed repetition's result (untimed)."""

    step: object
    reset: object = lambda: None
    stats: tuple = ()
    check: object = None


def measure_both(ctx: Ctx, plain: Variant, coded: Variant) -> tuple[dict, dict]:
    """Warm both variants up, then time up to ctx.repeat repetitions of each: alternating
    (plain, coded, plain, ...: the machine's drifts hit both alike) or, with
    ctx.order == "sequential", all of plain's first.

    Per variant: times_s (per repetition the slowest rank's seconds), tx_* (veth bytes per
    repetition), wire_* (qlccomm's WireStats totals per repetition, from its QLCStats),
    checks (per rank, `check()`'s verdict on each timed repetition)."""
    import torch.distributed as dist
    variants = (plain, coded)
    for v in variants:
        for _ in range(ctx.warmup):
            v.reset()
            v.step()
        for s in v.stats:
            s.reset()
            s.routes.clear()
    times = ([], [])
    tx = [0, 0]
    checks = ([], [])
    rounds = [variants] * ctx.repeat if ctx.order == "alternate" else [(v,) for v in variants for _ in range(ctx.repeat)]
    for group in rounds:
        for v in group:
            i = variants.index(v)
            v.reset()
            dist.barrier(group=ctx.ctl)
            tx0 = tx_bytes(ctx.veth)
            t0 = time.perf_counter()
            v.step()
            elapsed = time.perf_counter() - t0
            tx[i] += tx_bytes(ctx.veth) - tx0
            times[i].append(slowest(ctx, elapsed))
            if v.check:
                checks[i].append(v.check())
        if ctx.order == "alternate" and sum(times[0]) + sum(times[1]) > 2 * ctx.budget_s:
            break
    dist.barrier(group=ctx.ctl)
    out = []
    for i, v in enumerate(variants):
        n = len(times[i])
        per_rank = gather(ctx, tx[i] / n)
        o = {"times_s": times[i], "tx_bytes_per_rank": per_rank, "tx_mean_bytes": sum(per_rank) / len(per_rank)}
        if v.check:
            o["checks"] = gather(ctx, checks[i])
        if v.stats:
            sent = gather(ctx, sum(s.total["sent_bytes"] for s in v.stats) / n)
            plain_b = gather(ctx, sum(s.total["plain_bytes"] for s in v.stats) / n)
            routes = sum((s.routes for s in v.stats), Counter())
            o.update(wire_sent_bytes=sum(sent) / len(sent), wire_plain_bytes=sum(plain_b) / len(plain_b),
                     routes=dict(routes), route="+".join(f"{k}{c}" for k, c in sorted(routes.items())),
                     last_model=[getattr(s.last, "model", None) for s in v.stats])
        out.append(o)
    return out[0], out[1]


def count_routes(stats):
    """Make QLCStats `stats` also count the route of every call recorded into it (in `stats.routes`)."""
    stats.routes = Counter()
    record = stats.record

    def counting(index, ws):
        stats.routes[getattr(ws, "route", "") or "?"] += 1
        record(index, ws)

    stats.record = counting
    return stats


def qlc_call(fn, qs, *args, **kw):
    """Call qlccomm collective `fn` with the forwarded keywords, recording its WireStats in QLCStats `qs`."""
    from qlccomm.collectives import WireStats
    ws = WireStats()
    fn(*args, stats=ws, **kw)
    qs.record(0, ws)


def accepted(fn, kw: dict, ctx: Ctx) -> dict:
    """The keywords of `kw` that `fn` takes (the others are noted once)."""
    params = inspect.signature(fn).parameters
    if any(p.kind is p.VAR_KEYWORD for p in params.values()):
        return dict(kw)
    dropped = sorted(set(kw) - set(params))
    if dropped:
        ctx.notes.append(f"{fn.__qualname__} does not take {', '.join(dropped)}: not forwarded")
    return {k: v for k, v in kw.items() if k in params}


def digest(t) -> str:
    import torch
    return hashlib.sha256(t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()[:16]


def bits_equal(a, b) -> bool:
    import torch
    return a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8))


def all_true(ctx: Ctx, ok: bool) -> bool:
    return all(gather(ctx, bool(ok)))


# ================================================================================================
# worker: cases (each returns {"dist": ..., "qlccomm": ..., "exact": bool, ...}; all ranks take part)
# ================================================================================================
def case_link(ctx: Ctx) -> dict:
    """Raw link rate: LINK_CHECK_BYTES from rank 0 to rank 1 with dist.send/recv, best of 2."""
    import torch
    import torch.distributed as dist
    buf = torch.ones(LINK_CHECK_BYTES, dtype=torch.uint8)
    times = []
    for n in (MiB, LINK_CHECK_BYTES, LINK_CHECK_BYTES):          # a small warm-up, then two timed
        dist.barrier(group=ctx.ctl)
        tx0 = tx_bytes(ctx.veth)
        t0 = time.perf_counter()
        if ctx.rank == 0:
            dist.send(buf[:n], 1)
        elif ctx.rank == 1:
            dist.recv(buf[:n], 0)
        dt = slowest(ctx, time.perf_counter() - t0)
        if n == LINK_CHECK_BYTES:
            times.append(dt)
            sent = gather(ctx, tx_bytes(ctx.veth) - tx0)[0]
    best = min(times)
    return {"seconds": best, "gbps": LINK_CHECK_BYTES * 8 / best / 1e9, "tx_bytes_rank0": sent,
            "framing_overhead": sent / LINK_CHECK_BYTES - 1}


def verdict(checks: list[list]) -> tuple[bool, str]:
    """(exact, detail) from measure_both()'s per-rank lists of (verdict, digest or None) per repetition:
    exact when no verdict is "WRONG" and in every repetition all ranks agree (same verdict, same digest)."""
    ok = (all(v[0] != "WRONG" for rank in checks for v in rank)
          and all(len({tuple(v) for v in rep}) == 1 for rep in zip(*checks)))
    counts = Counter(v[0] for rank in checks for v in rank)
    return ok, ", ".join(f"{v} x{n}" for v, n in sorted(counts.items()))


def reduction_check(out, ref, dist_out, same_everywhere: bool):
    """A check for measure_both(): is `out` the rank-order reduction `ref` of the uncompressed inputs
    (qlccomm's coded route) or torch.distributed's own result `dist_out` (its dist route)?
    With `same_everywhere` the result's digest is compared across ranks too."""
    def check():
        kind = "rank-order" if bits_equal(out, ref) else "= dist" if bits_equal(out, dist_out) else "WRONG"
        return kind, digest(out) if same_everywhere else None
    return check


def equal_check(out, expected):
    """A check for measure_both(): is `out` bitwise `expected`?  (Then it is the same on every rank.)"""
    return lambda: ("equal" if bits_equal(out, expected) else "WRONG", None)


def _compare(d: dict, q: dict, what: str) -> dict:
    ok, detail = verdict(q["checks"])
    return {"dist": d, "qlccomm": q, "exact": ok, "exact_detail": f"{what}: {detail}"}


def _all_reduce(ctx: Ctx, src) -> dict:
    import torch
    import torch.distributed as dist
    import qlccomm
    from hccl_hooks import QLCStats
    from qlccomm.collectives import reference_all_reduce
    a, b, qs = src.clone(), src.clone(), count_routes(QLCStats())
    inputs = torch.empty(ctx.world * src.numel(), dtype=src.dtype)
    dist.all_gather_into_tensor(inputs, src)
    ref = reference_all_reduce(list(inputs.view(ctx.world, -1)))
    d, q = measure_both(ctx, Variant(lambda: dist.all_reduce(a), lambda: a.copy_(src)),
                        Variant(lambda: qlc_call(qlccomm.all_reduce, qs, b, **ctx.qkw), lambda: b.copy_(src), [qs],
                                check=reduction_check(b, ref, a, same_everywhere=True)))
    return _compare(d, q, "the same lossless sum on every rank")


def case_all_reduce(ctx: Ctx) -> dict:
    """dist.all_reduce vs qlccomm.all_reduce (SUM) of the dense gradient."""
    return _all_reduce(ctx, ctx.data.dense)


def case_all_reduce_sparse(ctx: Ctx) -> dict:
    """The same on the gradient whose rows are half zero (embedding-like)."""
    return _all_reduce(ctx, ctx.data.sparse)


def case_reduce_scatter(ctx: Ctx) -> dict:
    """dist.reduce_scatter_tensor vs qlccomm.reduce_scatter_tensor (SUM) of the dense gradient."""
    import torch
    import torch.distributed as dist
    import qlccomm
    from hccl_hooks import QLCStats
    from qlccomm.collectives import reference_all_reduce
    inp = ctx.data.dense
    n = inp.numel() // ctx.world
    inp = inp[:n * ctx.world]
    a, b, qs = torch.empty(n, dtype=inp.dtype), torch.empty(n, dtype=inp.dtype), count_routes(QLCStats())
    mine = torch.empty(ctx.world * n, dtype=inp.dtype)           # shard `rank` of every rank's input
    dist.all_to_all_single(mine, inp)
    ref = reference_all_reduce(list(mine.view(ctx.world, n)))
    d, q = measure_both(ctx, Variant(lambda: dist.reduce_scatter_tensor(a, inp)),
                        Variant(lambda: qlc_call(qlccomm.reduce_scatter_tensor, qs, b, inp, **ctx.qkw), stats=[qs],
                                check=reduction_check(b, ref, a, same_everywhere=False)))
    return _compare(d, q, "a lossless sum of this rank's shard")


def case_all_gather(ctx: Ctx) -> dict:
    """dist.all_gather_into_tensor vs qlccomm.all_gather_into_tensor of bf16 weights."""
    import torch
    import torch.distributed as dist
    import qlccomm
    from hccl_hooks import QLCStats
    inp = ctx.data.gather
    a = torch.empty(ctx.world * inp.numel(), dtype=inp.dtype)
    b, qs = torch.empty_like(a), count_routes(QLCStats())
    d, q = measure_both(ctx, Variant(lambda: dist.all_gather_into_tensor(a, inp)),
                        Variant(lambda: qlc_call(qlccomm.all_gather_into_tensor, qs, b, inp, **ctx.qkw), stats=[qs],
                                check=equal_check(b, a)))
    return _compare(d, q, "equal to every rank's input (dist's output)")


def case_broadcast(ctx: Ctx) -> dict:
    """dist.broadcast vs qlccomm.broadcast from rank 0 of bf16 weights (other ranks start from zeros)."""
    import torch
    import torch.distributed as dist
    import qlccomm
    from hccl_hooks import QLCStats
    src = ctx.data.bcast if ctx.rank == 0 else torch.zeros(BCAST_ELEMS, dtype=torch.bfloat16)
    a, b, qs = src.clone(), src.clone(), count_routes(QLCStats())
    d, q = measure_both(ctx, Variant(lambda: dist.broadcast(a, 0), lambda: a.copy_(src)),
                        Variant(lambda: qlc_call(qlccomm.broadcast, qs, b, 0, **ctx.qkw), lambda: b.copy_(src), [qs],
                                check=equal_check(b, a)))
    return _compare(d, q, "equal to rank 0's tensor")


def model_digest(model) -> str:
    h = hashlib.sha256()
    for p in model.parameters():
        h.update(digest(p).encode())
    return h.hexdigest()[:16]


def case_ddp(ctx: Ctx) -> dict:
    """One training step, plain DDP vs DDP with qlc_allreduce_hook (QLCState(), plus forwarded keywords)."""
    import torch
    from torch.nn.parallel import DistributedDataParallel as DDP
    from hccl_hooks import QLCState, qlc_allreduce_hook
    plain = Trainer(DDP(build_model(torch.bfloat16)), ctx.rank)
    model = DDP(build_model(torch.bfloat16))
    state = QLCState(**accepted(QLCState, ctx.qkw, ctx))
    model.register_comm_hook(state, qlc_allreduce_hook)
    d, q = measure_both(ctx, Variant(plain), Variant(Trainer(model, ctx.rank), stats=[count_routes(state.stats)]))
    same = len(set(gather(ctx, model_digest(model.module)))) == 1
    return {"dist": d, "qlccomm": q, "exact": same, "exact_detail": "parameters identical on all ranks"}


def fsdp_model(ctx: Ctx, compressed: bool):
    """The model in bf16 under FSDP2 (each transformer layer and the root sharded), SUM reductions;
    with `compressed`, qlccomm's all-gather and reduce-scatter installed.  Returns (model, stats)."""
    import torch
    from torch.distributed.fsdp import FSDPModule, fully_shard
    from hccl_hooks import compress_fsdp_all_gather, compress_fsdp_reduce_scatter
    model = build_model(torch.bfloat16)
    for layer in model.layers:
        fully_shard(layer)
    fully_shard(model)
    for m in model.modules():
        if isinstance(m, FSDPModule):
            m.set_force_sum_reduction_for_comms(True)   # qlccomm has no PREMUL_SUM (docs/distributed.md)
    if not compressed:
        return model, []
    return model, [count_routes(compress_fsdp_all_gather(model, **accepted(compress_fsdp_all_gather, ctx.qkw, ctx))),
                   count_routes(compress_fsdp_reduce_scatter(model, **accepted(compress_fsdp_reduce_scatter, ctx.qkw,
                                                                               ctx)))]


def case_fsdp(ctx: Ctx) -> dict:
    """One training step under FSDP2, plain vs compress_fsdp_all_gather + compress_fsdp_reduce_scatter.

    Exact: the first step's loss (forward on parameters gathered through qlccomm, same initial
    weights and batch) is bitwise the plain run's on every rank."""
    plain_model, _ = fsdp_model(ctx, compressed=False)
    plain = Trainer(plain_model, ctx.rank)
    model, stats = fsdp_model(ctx, compressed=True)
    qlc = Trainer(model, ctx.rank)
    d, q = measure_both(ctx, Variant(plain), Variant(qlc, stats=tuple(stats)))
    ok = qlc.losses[0] == plain.losses[0]
    return {"dist": d, "qlccomm": q, "exact": all_true(ctx, ok),
            "exact_detail": "first-step loss equal to plain FSDP's (all-gather lossless)"}


def case_p2p(ctx: Ctx) -> dict:
    """A two-stage pipeline's traffic between rank pairs (2k, 2k+1), dist.isend/irecv vs qlccomm's:
    stage 0 sends MICRO_BATCHES activations; stage 1 answers each, once it has arrived, with its
    activation gradient (so the backward of micro-batch 0 overlaps the forward of micro-batch 1).
    Exact: every received tensor is bitwise the one sent."""
    import torch
    import torch.distributed as dist
    import qlccomm
    from hccl_hooks import QLCStats
    from qlccomm.wire import WireStats
    if ctx.world % 2:
        raise ValueError("the p2p case pairs ranks: run it with an even --ranks")
    if ctx.rank:
        dist.barrier(group=ctx.ctl)
    data = StageData()
    if not ctx.rank:
        dist.barrier(group=ctx.ctl)
        print(f"p2p data: {data.source}" + (f" ({data.note})" if data.note else ""), flush=True)
    first, peer = ctx.rank % 2 == 0, ctx.rank ^ 1
    expected = data.grads if first else data.acts
    bufs = {v: [torch.empty_like(t) for t in expected] for v in ("dist", "qlccomm")}
    qs = count_routes(QLCStats())

    def pipeline(isend, irecv, out):
        if first:
            works = [isend(a, peer, tag=m) for m, a in enumerate(data.acts)]
            works += [irecv(out[m], peer, tag=m) for m in range(MICRO_BATCHES)]
        else:
            recvs = [irecv(out[m], peer, tag=m) for m in range(MICRO_BATCHES)]
            works = []
            for m, r in enumerate(recvs):
                r.wait()
                works.append(isend(data.grads[m], peer, tag=m))
        for w in works:
            w.wait()

    def qlc_step():
        sent = []

        def isend(t, dst, tag):
            sent.append(WireStats())
            return qlccomm.isend(t, dst, tag=tag, stats=sent[-1], **ctx.qkw)
        pipeline(isend, lambda t, src, tag: qlccomm.irecv(t, src, tag=tag), bufs["qlccomm"])
        for ws in sent:
            qs.record(0, ws)

    def reset(v):
        return lambda: [b.fill_(float("nan")) for b in bufs[v]]

    def check():
        ok = all(bits_equal(b, e) for b, e in zip(bufs["qlccomm"], expected))
        return ("equal" if ok else "WRONG", None)

    d, q = measure_both(ctx, Variant(lambda: pipeline(dist.isend, dist.irecv, bufs["dist"]), reset("dist")),
                        Variant(qlc_step, reset("qlccomm"), [qs], check=check))
    return {**_compare(d, q, "every received tensor equal to the one sent"), "data": data.source}


CASE_FUNCS = {LINK_CASE: case_link, "all_reduce": case_all_reduce, "all_reduce_sparse": case_all_reduce_sparse,
              "reduce_scatter": case_reduce_scatter, "all_gather": case_all_gather, "broadcast": case_broadcast,
              "ddp": case_ddp, "fsdp": case_fsdp, "p2p": case_p2p}
DATA_CASES = {"all_reduce", "all_reduce_sparse", "reduce_scatter", "all_gather", "broadcast"}


def load_data(ctx: Ctx) -> RankData:
    """This rank's RankData, rank 0 first (so that it alone fills launch/minilm.py's on-disk cache)."""
    import torch.distributed as dist
    if ctx.rank:
        dist.barrier(group=ctx.ctl)
    data = RankData(ctx.rank)
    if not ctx.rank:
        dist.barrier(group=ctx.ctl)
    return data


def worker(args) -> int:
    """One rank: every case in --cases; rank 0 appends a start and a result record per case to --results."""
    import warnings
    import torch
    import torch.distributed as dist
    warnings.filterwarnings("ignore", message=".*all_gather_into_tensor.*|.*reduce_scatter_tensor.*")
    if args.threads:
        torch.set_num_threads(args.threads)
    timeout = datetime.timedelta(seconds=4 * args.budget + 120)
    dist.init_process_group("gloo", timeout=timeout)
    rank, world = dist.get_rank(), dist.get_world_size()
    ctx = Ctx(rank, world, dist.new_group(backend="gloo", timeout=timeout), args.veth, args.repeat, args.warmup,
              args.budget, json.loads(args.qlccomm_kwargs), args.order)

    def record(obj):
        if rank == 0:
            with open(args.results, "a") as fh:
                fh.write(json.dumps(obj) + "\n")

    try:
        for case in args.cases.split(","):
            record({"case": case, "event": "start"})
            if case in DATA_CASES and ctx.data is None:
                ctx.data = load_data(ctx)
                if rank == 0:
                    print(f"data: {ctx.data.source}" + (f" ({ctx.data.note})" if ctx.data.note else ""), flush=True)
            t0 = time.monotonic()
            res = CASE_FUNCS[case](ctx)
            if case in DATA_CASES:
                res["data"] = ctx.data.source
            if ctx.notes and rank == 0:
                print("note: " + "; ".join(dict.fromkeys(ctx.notes)), flush=True)
            ctx.notes.clear()
            res["case_seconds"] = round(time.monotonic() - t0, 1)
            record({"case": case, "result": res})
            if rank == 0:
                print(f"  {case}: done in {res['case_seconds']} s", flush=True)
    finally:
        import hccl_hooks
        hccl_hooks.destroy_process_group()
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.worker:
        return worker(args)       # sys.path[0] is launch/, so launch/minilm.py imports as minilm
    return controller(args)


if __name__ == "__main__":
    sys.exit(main())
