#!/usr/bin/env bash
# torch.distributed vs qlccomm over a private, rate-shaped network (logic: launch/link_bench.py).
#
#   sudo bash launch/shaped_link.sh --ranks 2 --rate 1gbit [--rates 0.5,1,2.5,5,unshaped]
#        [--cases all_reduce,...] [--repeat 5] [--plot docs/link_speed.png] [--json out.json]
#
# Needs root (network namespaces, veth, bridge, tc); without it prints one "skipped" line and exits 0.
# The Python side removes everything it created on exit, error, Ctrl-C and SIGTERM; this script's trap
# is the backstop for a Python that died hard: it deletes any namespace left with this run's prefix.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
PY="${PYTHON:-$root/.venv/bin/python}"
prefix="qlcb$$"
child=""

cleanup() {
    trap - EXIT INT TERM
    if [[ -n "$child" ]] && kill -0 "$child" 2>/dev/null; then
        kill -TERM "$child" 2>/dev/null || true
        timeout 60 tail --pid="$child" -f /dev/null || kill -KILL "$child" 2>/dev/null || true
    fi
    if [[ $EUID -eq 0 ]] && command -v ip >/dev/null; then
        for ns in $(timeout 10 ip netns list 2>/dev/null | awk -v p="$prefix" 'index($1, p) == 1 {print $1}'); do
            for pid in $(timeout 10 ip netns pids "$ns" 2>/dev/null); do kill -KILL "$pid" 2>/dev/null || true; done
            timeout 10 ip netns del "$ns" 2>/dev/null || true
            echo "shaped_link.sh: removed leftover namespace $ns" >&2
        done
    fi
}
trap cleanup EXIT
trap 'cleanup; exit 130' INT
trap 'cleanup; exit 143' TERM

# in the background, so that a SIGTERM to this script reaches the trap (and the trap reaches Python)
"$PY" "$root/launch/link_bench.py" --netns-prefix "$prefix" "$@" &
child=$!
rc=0
wait "$child" || rc=$?
exit "$rc"
