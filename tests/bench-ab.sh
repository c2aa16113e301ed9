#!/usr/bin/env bash
# BPF time per connection of two or more builds in the bench's own setting: each build's
# lb-bench runs its datapath part at one service (`--arms direct,lbctl --counts 1`), the builds
# taking turns run by run (the order rotating), so every run loads the programs afresh. Prints
# for each build the medians over the runs and, for each build after the first, the median and
# quartiles of its paired per-run differences from the first. A report, not a test.
#
#   tests/bench-ab.sh RUNS LB_BENCH_A LB_BENCH_B [LB_BENCH ...]   (root)
#
# Each LB_BENCH is an lb-bench binary (`cargo build --release -p lbctl-tests --bin lb-bench`,
# copied aside; the kernel programs are built into it). ROUNDS (default 10) is the rounds of
# each run. Figures: `lb_connect4` and all programs per connection to the service and to no
# service, and the empty programs' floor of the same run (BENCHMARKS.md explains each). One
# load of the programs is one draw of where the JIT put them (20-35 ns per connection apart),
# which is why builds are compared over many runs, not one.
#
# lb-bench removes what it creates; this script only keeps its outputs in a temp dir it
# removes on exit (also on Ctrl-C, SIGTERM and SIGHUP).
set -euo pipefail

[ $# -ge 3 ] || { echo "usage: $0 RUNS LB_BENCH_A LB_BENCH_B [LB_BENCH ...]" >&2; exit 2; }
RUNS=$1
shift
BENCHES=("$@")
[ "$(id -u)" = 0 ] || { echo "bench-ab: needs root (BPF, cgroups, network namespaces)" >&2; exit 1; }
for b in "${BENCHES[@]}"; do
    [ -x "$b" ] || { echo "bench-ab: $b is not an executable lb-bench" >&2; exit 1; }
done
command -v python3 >/dev/null || { echo "bench-ab: python3 missing" >&2; exit 1; }

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
trap 'exit 129' HUP

echo "bench-ab: load average $(cut -d' ' -f1-3 /proc/loadavg) at the start"
n=${#BENCHES[@]}
for r in $(seq "$RUNS"); do
    for j in $(seq 0 $((n - 1))); do
        i=$(((j + r) % n))
        out="$TMP/$i-$r"
        "${BENCHES[$i]}" --arms direct,lbctl --counts 1 --rounds "${ROUNDS:-10}" \
            --skip-control-plane --skip-churn --out "$out" >"$out.log" 2>&1 ||
            { echo "bench-ab: ${BENCHES[$i]} failed in run $r:" >&2; tail -20 "$out.log" >&2; exit 1; }
    done
done
echo "bench-ab: load average $(cut -d' ' -f1-3 /proc/loadavg) at the end"

python3 - "$TMP" "$RUNS" "${BENCHES[@]}" <<'PY'
import json, statistics as st, sys

tmp, runs, benches = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
names = ["service: lb_connect4", "service: all", "no service: lb_connect4", "no service: all",
         "floor (empty programs)"]

def figures(path):
    d = json.load(open(path))["datapath"]
    k = d["kernel"][0]
    def per_run(part, prog):
        p = k[part]["programs"][prog]
        return p["run_ns"] / max(p["runs"], 1)
    def per_conn(part):
        c = max(k[part]["connections"], 1)
        return sum(p["run_ns"] for p in k[part]["programs"].values()) / c
    floor = d["floor"]
    floor_conn = sum(p["run_ns"] for p in floor["programs"].values()) / max(floor["connections"], 1)
    return [per_run("service", "lb_connect4"), per_conn("service"),
            per_run("non_service", "lb_connect4"), per_conn("non_service"), floor_conn]

rows = [[figures(f"{tmp}/{i}-{r}/results.json") for r in range(1, runs + 1)]
        for i in range(len(benches))]
q = lambda xs, p: st.quantiles(xs, n=4)[0 if p < .5 else 2] if len(xs) > 1 else xs[0]
print("\nmedians over the runs (ns):")
for b, rs in zip(benches, rows):
    cols = list(zip(*rs))
    print(f"  {b}: " + ", ".join(f"{n} {st.median(c):.1f}" for n, c in zip(names, cols)))
for b, rs in list(zip(benches, rows))[1:]:
    print(f"\n{b} minus {benches[0]}, paired by run (ns): median [quartiles]")
    for k, n in enumerate(names):
        diffs = [x[k] - y[k] for x, y in zip(rs, rows[0])]
        print(f"  {n:24} {st.median(diffs):7.1f} [{q(diffs, .25):.1f} .. {q(diffs, .75):.1f}]  ({len(diffs)} runs)")
PY
