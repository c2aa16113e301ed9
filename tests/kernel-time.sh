#!/usr/bin/env bash
# Kernel time per connection: the BPF run time (kernel.bpf_stats_enabled, run_time_ns/run_cnt of
# every lbctl program) that N TCP connections through one service cost (connect + accept +
# close: the client and the server both run in the test cgroup), and N connections to an address
# that is no service. A report, not a test: the kernel's own accounting, free of this VM's
# scheduling noise.
#
#   tests/kernel-time.sh [N] [TARGET_DIR]     (root; TARGET_DIR holds lbctl and lb-probe,
#                                              default target/debug)
#
# AGENT_ARGS (word-split) is passed to the agent, e.g. AGENT_ARGS="--max-affinity 4096" to
# compare map capacities.
#
# PROFILE=1 also samples the whole machine with perf (cpu-clock, PROFILE_HZ per second, default
# 20,000) while each destination's connects run, and prints, for every lbctl program, where its
# samples fell: by the source line of `bpftool prog dump xlated ... linum` that the JIT code came
# from (tests/bpf-jit-lines.py maps JIT offsets to instructions). A sample lands just after the
# instruction that stalled, so a load that misses the cache shows on the line that uses it; loads
# overlap, so one that takes many samples may cost little once it is gone (check with a build
# that leaves it out: BENCHMARKS.md has such knock-outs). The first line (the program's
# attribute) is the prologue every program pays, an empty one too.
# perf's own interrupts slow the programs, so PROFILE's ns/run are not figures to quote.
#
# Everything it creates (cgroup, pin directory, agent, server, temp dir) is removed on exit, also
# on Ctrl-C, SIGTERM and SIGHUP, and kernel.bpf_stats_enabled is restored. The programs are found
# from the pinned links, whatever lbctl attaches. `cargo xtask bench` reports the same figure
# beside its latency ratios.
set -euo pipefail

N=${1:-20000}
BIN=${2:-target/debug}
LBCTL=$BIN/lbctl
PROBE=$BIN/lb-probe
[ "$(id -u)" = 0 ] || { echo "kernel-time: needs root (BPF, cgroups)" >&2; exit 1; }
[ -x "$LBCTL" ] && [ -x "$PROBE" ] || { echo "kernel-time: build first: $LBCTL, $PROBE" >&2; exit 1; }
command -v bpftool >/dev/null || { echo "kernel-time: bpftool missing (cargo xtask setup)" >&2; exit 1; }
command -v jq >/dev/null || { echo "kernel-time: jq missing (Debian: jq)" >&2; exit 1; }
if [ -n "${PROFILE:-}" ]; then
    command -v perf >/dev/null || { echo "kernel-time: PROFILE needs perf (Debian: linux-perf)" >&2; exit 1; }
    command -v python3 >/dev/null || { echo "kernel-time: PROFILE needs python3" >&2; exit 1; }
fi
HERE=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=tests/kernel-time-files.sh
. "$HERE/kernel-time-files.sh"

CG_ROOT=$(awk '$9 == "cgroup2" { print $5; exit }' /proc/self/mountinfo)
[ -n "$CG_ROOT" ] || { echo "kernel-time: no cgroup2 mount in /proc/self/mountinfo" >&2; exit 1; }
# The agent mounts bpffs there when it is not mounted yet.
BPFFS=$(awk '$9 == "bpf" { print $5; exit }' /proc/self/mountinfo)
BPFFS=${BPFFS:-/sys/fs/bpf}

TAG=lbctl-kt-$$-$RANDOM
CG=$CG_ROOT/$TAG
PINS=$BPFFS/$TAG
TMP=$(mktemp -d)
OLD_STATS=$(sysctl -n kernel.bpf_stats_enabled)
AGENT=
SERVER=

cleanup() {
    set +e
    [ -n "$AGENT" ] && kill "$AGENT" 2>/dev/null && wait "$AGENT" 2>/dev/null
    [ -n "$SERVER" ] && kill "$SERVER" 2>/dev/null && wait "$SERVER" 2>/dev/null
    "$LBCTL" uninstall --pin-dir "$PINS" >/dev/null 2>&1
    [ -d "$CG" ] && rmdir "$CG"
    rm -rf "$TMP"
    sysctl -qw kernel.bpf_stats_enabled="$OLD_STATS"
}
trap cleanup EXIT
# On a signal, exit through the EXIT trap (bash skips it when killed by an untrapped SIGTERM).
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP
mkdir "$CG"

# The backend: a TCP server in the test cgroup (so its accepted sockets are the cgroup's too)
# that answers every connection with a name and closes it.
PORT=$((20000 + RANDOM % 20000))
write_server "$PORT" "$TMP/server.py"
sh -c 'echo $$ > "$1/cgroup.procs"; exec python3 "$2"' sh "$CG" "$TMP/server.py" >"$TMP/server.out" &
SERVER=$!

VIP=10.96.$((RANDOM % 200 + 1)).$((RANDOM % 200 + 1))
write_cluster "$VIP" "$PORT" "$TMP/cluster.yaml"
"$LBCTL" agent --node node-a --manifests "$TMP/cluster.yaml" --pin-dir "$PINS" --cgroup "$CG" \
    --metrics-addr 127.0.0.1:0 ${AGENT_ARGS:-} >"$TMP/agent.log" 2>&1 &
AGENT=$!

for _ in $(seq 100); do
    grep -q ready "$TMP/server.out" 2>/dev/null && "$LBCTL" lookup --pin-dir "$PINS" "$VIP:80/tcp" \
        2>/dev/null | grep -q "127.0.0.1:$PORT" && break
    sleep 0.1
done
"$LBCTL" lookup --pin-dir "$PINS" "$VIP:80/tcp" | grep -q "127.0.0.1:$PORT" ||
    { echo "kernel-time: the service was not programmed" >&2; cat "$TMP/agent.log" >&2; exit 1; }

# "name id" of every pinned link's program.
programs() {
    for link in "$PINS"/links/*; do
        id=$(bpftool -j link show pinned "$link" | jq -r .prog_id)
        echo "$(basename "$link") $id"
    done
}
# "name run_time_ns run_cnt" of every lbctl program.
snapshot() {
    programs | while read -r name id; do
        bpftool -j prog show id "$id" | jq -r --arg n "$name" '"\($n) \(.run_time_ns // 0) \(.run_cnt // 0)"'
    done
}
# Runs N connects to $1 from the cgroup and prints each program's ns/run and the total per
# connection.
measure() {
    local label=$1 target=$2
    snapshot >"$TMP/before"
    local perf=()
    [ -n "${PROFILE:-}" ] &&
        perf=(perf record -q -a -e cpu-clock -F "${PROFILE_HZ:-20000}" -o "$TMP/perf.data" --)
    echo go | "${perf[@]}" sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh "$CG" "$PROBE" tcp "$target" "$N" >"$TMP/probe.out"
    snapshot >"$TMP/after"
    local ok
    ok=$(grep -c ' ok \|^ok ' "$TMP/probe.out" || true)
    echo "== $label: $N connects to $target ($ok answered)"
    join "$TMP/before" "$TMP/after" | awk -v n="$N" '
        { dt = $4 - $2; dc = $5 - $3; total += dt
          if (dc > 0) printf "  %-16s %8d runs %8.1f ns/run\n", $1, dc, dt / dc }
        END { printf "  BPF time per connection: %.1f ns\n", total / n }'
    [ -z "${PROFILE:-}" ] || profile
}

# Where each program's perf samples of the last measure() fell, by source line (see PROFILE).
profile() {
    perf script -i "$TMP/perf.data" -F ip,sym,symoff 2>/dev/null | awk '{ print $2 }' \
        | grep '^bpf_prog_' >"$TMP/samples" || true
    programs | while read -r _ id; do
        local name
        name=$(bpftool -j prog show id "$id" | jq -r .name)
        python3 "$HERE/bpf-jit-lines.py" "$id" >"$TMP/lines"
        bpftool prog dump xlated id "$id" linum >"$TMP/xlated"
        grep "_$name+0x" "$TMP/samples" | sed 's/.*+0x//' >"$TMP/offsets" || true
        awk -v name="$name" -v hz="${PROFILE_HZ:-20000}" '
            function hex(h,   v, i) {
                v = 0
                for (i = 1; i <= length(h); i++) v = v * 16 + index("0123456789abcdef", substr(h, i, 1)) - 1
                return v
            }
            FILENAME == ARGV[1] { rec_off[nrec] = hex($1); rec_insn[nrec++] = $2; next }
            FILENAME == ARGV[2] {
                if ($0 ~ /^; /) {
                    code = $0; sub(/^; /, "", code); sub(/ \[file:.*/, "", code)
                    file = $0; sub(/.*\[file:/, "", file); sub(/ line_num:.*/, "", file)
                    sub(/.*\//, "", file)
                    line = $0; sub(/.*line_num:/, "", line); sub(/ .*/, "", line)
                    src = file ":" line "  " code
                } else if ($1 ~ /^[0-9]+:$/) { insn = $1; sub(/:/, "", insn); at[insn] = src }
                next
            }
            {
                off = hex($1); best = 0
                for (i = 0; i < nrec; i++) if (rec_off[i] <= off) best = i; else break
                hits[at[rec_insn[best]]]++; total++
            }
            END {
                if (!total) exit
                printf "  %s: %d samples (%.1f ms at %d Hz), by source line:\n", name, total, total * 1000 / hz, hz
                n = 0; for (s in hits) keys[n++] = s
                for (i = 0; i < n && i < 12; i++) {
                    m = i; for (j = i + 1; j < n; j++) if (hits[keys[j]] > hits[keys[m]]) m = j
                    t = keys[i]; keys[i] = keys[m]; keys[m] = t
                    printf "    %5d %5.1f%%  %s\n", hits[keys[i]], 100 * hits[keys[i]] / total, substr(keys[i], 1, 100)
                }
            }' "$TMP/lines" "$TMP/xlated" "$TMP/offsets"
    done
}

sysctl -qw kernel.bpf_stats_enabled=1
# Warm-up (first runs fault in map pages and code).
echo go | sh -c 'echo $$ > "$1/cgroup.procs"; shift; exec "$@"' sh "$CG" "$PROBE" tcp "$VIP:80" 500 >/dev/null
measure "service" "$VIP:80"
measure "no service" "127.0.0.1:$PORT"
