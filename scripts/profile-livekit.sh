#!/usr/bin/env bash
# CPU profiles of the three Conclave nodes under the LiveKit room workload: for each room count,
# a fresh 3-node cluster (colocated, as the `conclave` system of scripts/bench-livekit.sh),
# `conclave bench livekit` against it, and `perf record` of the three node processes over the
# middle of the measured part. Writes, per room count, under OUT:
#   profile-livekit-ROOMS.md     self time per component, its biggest symbols, time per thread
#                                (scripts/perf-components.py), and the bench's result line;
#   profile-livekit-ROOMS.txt    perf report's top symbols, and the bench's report.
# perf slows the nodes down: the figures of a profiled run are not the benchmark's.
#
#   scripts/profile-livekit.sh ROOMS...
#   DURATION=45s WARMUP=15s PERF_SECONDS=20 OUT=/tmp/profiles scripts/profile-livekit.sh 700 2000
set -euo pipefail
cd "$(dirname "$0")/.."

[ $# -gt 0 ] || { echo "usage: scripts/profile-livekit.sh ROOMS..." >&2; exit 2; }
duration=${DURATION:-45s}
warmup=${WARMUP:-15s}
perf_seconds=${PERF_SECONDS:-20}
out=${OUT:-docs/bench}
mkdir -p "$out"
out=$(cd "$out" && pwd)
./scripts/setup-test-deps.sh >/dev/null
cargo build --release --locked --quiet -p conclave
conclave=target/release/conclave
source scripts/lib/servers.sh
source scripts/lib/perf.sh
require_perf

# 15s, 500ms, 2m or 15 (seconds), as the bench's flags take them.
seconds() {
    python3 -c '
import re, sys
number, unit = re.fullmatch(r"([\d.]+)(ms|s|m|h)?", sys.argv[1]).groups()
print(float(number) * {"ms": 0.001, "s": 1, None: 1, "m": 60, "h": 3600}[unit])' "$1"
}

for rooms in "$@"; do
    start_conclave "$(mktemp -d -p "$work")"
    pid_list=$(IFS=,; echo "${server_pids[*]}")
    echo "== profiling $rooms rooms (nodes $pid_list)" >&2
    report="$work/bench-$rooms.txt"
    "$conclave" bench livekit --rooms "$rooms" --duration "$duration" --warmup "$warmup" \
        --resp "$(printf '127.0.0.1:%s,' "${resp_ports[@]}" | sed 's/,$//')" \
        --pids "$pid_list" --label conclave-profiled >"$report" &
    bench_pid=$!
    pids+=("$bench_pid")
    # Start in the measured part, a few seconds in.
    sleep "$(python3 -c "print($(seconds "$warmup") + 5)")"
    record_nodes "$rooms" "$perf_seconds" "$pid_list"
    wait "$bench_pid" || { echo "the bench failed:" >&2; cat "$report" >&2; exit 1; }
    {
        echo "# CPU profile: Conclave's three nodes at $rooms LiveKit rooms"
        echo
        echo "\`DURATION=$duration WARMUP=$warmup PERF_SECONDS=$perf_seconds scripts/profile-livekit.sh $rooms\`:"
        echo "\`perf record -F 999\` (event: $(perf_event "$rooms")) of the three node"
        echo "processes for $perf_seconds s of the measured part."
        echo "Bench under the profiler: \`$(tail -1 "$report")\`"
        echo
        perf_components "$rooms"
    } >"$out/profile-livekit-$rooms.md"
    {
        perf_top "$rooms"
        echo
        cat "$report"
    } >"$out/profile-livekit-$rooms.txt"
    stop_servers
    echo "wrote $out/profile-livekit-$rooms.md" >&2
done
