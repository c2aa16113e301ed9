#!/usr/bin/env bash
# Kernel time per connection of two or more builds, each loaded afresh every round: the BPF
# run time (kernel.bpf_stats_enabled) of every lbctl program per TCP connection through one
# service (connect + accept + close) and per connection to an address that is no service, as in
# tests/kernel-time.sh, for builds compared with each other. A report, not a test.
#
#   tests/kernel-time-ab.sh ROUNDS N DIR_A DIR_B [DIR ...]   (root; each DIR holds lbctl, the
#                                                             first also lb-probe)
#
# Why every round loads the programs again: the same build, loaded twice, measured 20-35 ns per
# connection apart, one load against another, for as long as both stayed loaded (where the JIT
# put the code and where the maps' memory fell: BENCHMARKS.md). A comparison of two loads is a
# comparison of two placements; this compares builds over many placements. Each round starts one
# agent per build (its own cgroup, pin directory, server and service; client pinned to CPU 1,
# servers to CPU 0), runs N connects to the service and N to the server directly through each
# build (the order alternating by round), and removes the agents and their maps. It prints every
# slot, then for each build the medians over the rounds, and for each build after the first the
# median and quartiles of its paired per-round differences from the first.
#
# SERVER=python serves the connections from a Python loop (as tests/kernel-time.sh does: each
# connection then runs through much more code between two connects, so the programs' code and
# data are colder); the default is lb-probe's Rust server (as `cargo xtask bench`'s, warm).
# SERVER_CPU (default 0) is the CPU the servers run on; the client always runs on CPU 1.
# PAUSE_AGENTS=1 stops the agents (SIGSTOP) once the service is programmed, for the slots: no
# keeping pass (a walk of the TCP sockets about once a second while translations happen) then
# runs between the connects, as none does in `cargo xtask bench`, which has no agent.
#
# Everything it creates (cgroups, pin directories, agents, servers, temp dir) is removed on exit,
# also on Ctrl-C, SIGTERM and SIGHUP, and kernel.bpf_stats_enabled is restored.
set -euo pipefail

[ $# -ge 4 ] || { echo "usage: $0 ROUNDS N DIR_A DIR_B [DIR ...]" >&2; exit 2; }
ROUNDS=$1
N=$2
shift 2
DIRS=("$@")
PROBE=${DIRS[0]}/lb-probe
[ "$(id -u)" = 0 ] || { echo "kernel-time-ab: needs root (BPF, cgroups)" >&2; exit 1; }
for d in "${DIRS[@]}"; do
    [ -x "$d/lbctl" ] || { echo "kernel-time-ab: no lbctl in $d" >&2; exit 1; }
done
[ -x "$PROBE" ] || { echo "kernel-time-ab: no lb-probe in ${DIRS[0]}" >&2; exit 1; }
for tool in bpftool jq taskset python3; do
    command -v $tool >/dev/null || { echo "kernel-time-ab: $tool missing" >&2; exit 1; }
done

# shellcheck source=tests/kernel-time-files.sh
. "$(cd "$(dirname "$0")" && pwd)/kernel-time-files.sh"

CG_ROOT=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
[ -n "$CG_ROOT" ] || { echo "kernel-time-ab: no cgroup2 mount in /proc/self/mountinfo" >&2; exit 1; }
# The agent mounts bpffs there when it is not mounted yet.
BPFFS=$(awk '$9 == "bpf" { print $5; exit }' /proc/self/mountinfo)
BPFFS=${BPFFS:-/sys/fs/bpf}
TAG=lbctl-ktab-$$-$RANDOM
TMP=$(mktemp -d)
OLD_STATS=$(sysctl -n kernel.bpf_stats_enabled)
SERVERS=()
AGENTS=()

stop_agents() {
    local p i
    for p in "${AGENTS[@]}"; do
        kill -CONT "$p" 2>/dev/null || true
        kill "$p" 2>/dev/null && wait "$p" 2>/dev/null
    done
    AGENTS=()
    for i in "${!DIRS[@]}"; do
        "${DIRS[$i]}/lbctl" uninstall --pin-dir "$BPFFS/$TAG-$i" >/dev/null 2>&1 || true
    done
}
cleanup() {
    set +e
    stop_agents
    for p in "${SERVERS[@]}"; do kill "$p" 2>/dev/null && wait "$p" 2>/dev/null; done
    for i in "${!DIRS[@]}"; do [ -d "$CG_ROOT/$TAG-$i" ] && rmdir "$CG_ROOT/$TAG-$i"; done
    rm -rf "$TMP"
    sysctl -qw kernel.bpf_stats_enabled="$OLD_STATS"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

# Runs "$@" in cgroup $1 on CPU $2 by exec: call it in a subshell, `(in_cgroup ...) &`, so that `$!`
# is the program's own pid.
in_cgroup() {
    local cg=$1 cpu=$2
    shift 2
    exec taskset -c "$cpu" sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh "$cg" "$@"
}

# One server, service and cgroup per build.
for i in "${!DIRS[@]}"; do
    mkdir "$CG_ROOT/$TAG-$i"
    port=$((20000 + i * 1000 + RANDOM % 1000))
    vip=10.96.$((i + 1)).$((RANDOM % 200 + 1))
    echo "$port" >"$TMP/port-$i"
    echo "$vip" >"$TMP/vip-$i"
    write_server "$port" "$TMP/server-$i.py"
    if [ "${SERVER:-probe}" = python ]; then
        (in_cgroup "$CG_ROOT/$TAG-$i" "${SERVER_CPU:-0}" python3 "$TMP/server-$i.py") >"$TMP/server-$i.out" &
    else
        (in_cgroup "$CG_ROOT/$TAG-$i" "${SERVER_CPU:-0}" "$PROBE" serve tcp b0 "127.0.0.1:$port" <<<go) \
            >"$TMP/server-$i.out" &
    fi
    SERVERS+=($!)
    write_cluster "$vip" "$port" "$TMP/cluster-$i.yaml"
done

start_agents() {
    local i ok
    for i in "${!DIRS[@]}"; do
        "${DIRS[$i]}/lbctl" agent --node node-a --manifests "$TMP/cluster-$i.yaml" \
            --pin-dir "$BPFFS/$TAG-$i" --cgroup "$CG_ROOT/$TAG-$i" \
            --metrics-addr 127.0.0.1:0 >"$TMP/agent-$i.log" 2>&1 &
        AGENTS+=($!)
    done
    for i in "${!DIRS[@]}"; do
        ok=
        for _ in $(seq 100); do
            if grep -qE 'ready|listening' "$TMP/server-$i.out" 2>/dev/null &&
                "${DIRS[$i]}/lbctl" lookup --pin-dir "$BPFFS/$TAG-$i" "$(cat "$TMP/vip-$i"):80/tcp" \
                    2>/dev/null | grep -q "127.0.0.1:$(cat "$TMP/port-$i")"; then
                ok=1
                break
            fi
            sleep 0.1
        done
        [ -n "$ok" ] || { echo "kernel-time-ab: ${DIRS[$i]}: the service was not programmed" >&2; cat "$TMP/agent-$i.log" >&2; exit 1; }
        # Warm-up (first runs fault in map pages and code).
        echo go | (in_cgroup "$CG_ROOT/$TAG-$i" 1 "$PROBE" tcp "$(cat "$TMP/vip-$i"):80" 1000) >/dev/null
    done
    if [ -n "${PAUSE_AGENTS:-}" ]; then
        for p in "${AGENTS[@]}"; do kill -STOP "$p"; done
    fi
}

# "name run_time_ns run_cnt" of every program build $1's agent attached.
snapshot() {
    local link id
    for link in "$BPFFS/$TAG-$1"/links/*; do
        id=$(bpftool -j link show pinned "$link" | jq -r .prog_id)
        bpftool -j prog show id "$id" | jq -r --arg n "$(basename "$link")" '"\($n) \(.run_time_ns // 0) \(.run_cnt // 0)"'
    done | sort
}

# N connects to $2 through build $1: "connect4-ns/run getpeername4-ns/run BPF-ns/connection".
slot() {
    snapshot "$1" >"$TMP/before"
    echo go | (in_cgroup "$CG_ROOT/$TAG-$1" 1 "$PROBE" tcp "$2" "$N") >/dev/null
    snapshot "$1" >"$TMP/after"
    join "$TMP/before" "$TMP/after" | awk -v n="$N" '
        { dt = $4 - $2; dc = $5 - $3; total += dt
          if ($1 == "lb_connect4" && dc) c4 = dt / dc
          if ($1 == "lb_getpeername4" && dc) gp = dt / dc }
        END { printf "%.1f %.1f %.1f", c4, gp, total / n }'
}

sysctl -qw kernel.bpf_stats_enabled=1
echo "# round build | service: connect4 ns/run, getpeername4 ns/run, BPF ns/connection | no service: the same"
# In this shell, not a pipeline's subshell: the EXIT trap must see the agents a round started.
for round in $(seq "$ROUNDS"); do
    start_agents
    order=("${!DIRS[@]}")
    [ $((round % 2)) = 0 ] && order=($(printf '%s\n' "${order[@]}" | tac))
    for i in "${order[@]}"; do
        s=$(slot "$i" "$(cat "$TMP/vip-$i"):80")
        ns=$(slot "$i" "127.0.0.1:$(cat "$TMP/port-$i")")
        echo "$round $i | $s | $ns" | tee -a "$TMP/slots"
    done
    stop_agents
done

python3 - "$TMP/slots" "${DIRS[@]}" <<'PY'
import statistics as st
import sys

rows = [l.replace("|", " ").split() for l in open(sys.argv[1]) if not l.startswith("#")]
dirs = sys.argv[2:]
by = {}
for r in rows:
    by.setdefault(int(r[1]), []).append([float(x) for x in r[2:]])
names = ["service connect4", "service getpeername4", "service BPF/conn",
         "no-service connect4", "no-service getpeername4", "no-service BPF/conn"]
print("\nmedians over the rounds (ns):")
for i, d in enumerate(dirs):
    cols = list(zip(*by[i]))
    print(f"  {d}: " + ", ".join(f"{n} {st.median(c):.1f}" for n, c in zip(names, cols)))
def q(xs, f):
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(f * len(xs)))]
for i, d in enumerate(dirs[1:], 1):
    print(f"\n{d} minus {dirs[0]}, paired by round (ns): median [quartiles]")
    for k in (0, 2, 5):
        diffs = [b[k] - a[k] for a, b in zip(by[0], by[i])]
        print(f"  {names[k]:24} {st.median(diffs):7.1f} [{q(diffs, .25):.1f} .. {q(diffs, .75):.1f}]  ({len(diffs)} rounds)")
PY
