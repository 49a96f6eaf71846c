#!/usr/bin/env bash
# A CPU profile of the three Conclave nodes under redis-benchmark writes through a follower:
# a fresh 3-node cluster, `redis-benchmark -c 50 -t TEST` against a follower's RESP port, and
# `perf record` of the three node processes meanwhile. Writes OUT/profile-writes-TEST.md (self
# time per component, its biggest symbols, time per thread: scripts/perf-components.py) with
# redis-benchmark's figures under the profiler (perf slows the nodes: they are not benchmark
# figures; scripts/bench-redis.sh gives those).
#
#   scripts/profile-writes.sh [TEST...]          (default: set)
#   PERF_SECONDS=10 PIPELINE=16 OUT=/tmp/profiles scripts/profile-writes.sh set hset
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -gt 0 ]; then tests=("$@"); else tests=(set); fi
perf_seconds=${PERF_SECONDS:-10}
pipeline=${PIPELINE:-1}
out=${OUT:-docs/bench}
mkdir -p "$out"
out=$(cd "$out" && pwd)
./scripts/setup-test-deps.sh >/dev/null
cargo build --release --locked --quiet -p conclave
conclave=target/release/conclave
source scripts/lib/servers.sh
source scripts/lib/perf.sh
require_perf

for test in "${tests[@]}"; do
    start_conclave "$(mktemp -d -p "$work")"
    find_roles
    follower=${resp_ports[$follower_index]}
    pid_list=$(IFS=,; echo "${server_pids[*]}")
    echo "== profiling $test through the follower on $follower (nodes $pid_list)" >&2
    # Enough requests to outlast the profile.
    redis-benchmark -p "$follower" -c 50 -P "$pipeline" -t "$test" -n 10000000 -r 100000 -d 100 \
        -q >"$work/benchmark-$test.txt" 2>&1 &
    benchmark_pid=$!
    pids+=("$benchmark_pid")
    sleep 2
    record_nodes "$test" "$perf_seconds" "$pid_list"
    kill "$benchmark_pid" 2>/dev/null || true
    wait "$benchmark_pid" 2>/dev/null || true
    {
        echo "# CPU profile: Conclave's three nodes under redis-benchmark $test through a follower"
        echo
        echo "\`PERF_SECONDS=$perf_seconds PIPELINE=$pipeline scripts/profile-writes.sh $test\`:"
        echo "\`redis-benchmark -c 50 -P $pipeline -t $test -d 100\` against a follower, \`perf record -F 999\`"
        echo "(event: $(perf_event "$test")) of the three"
        echo "node processes for $perf_seconds s. redis-benchmark under the profiler:"
        echo "\`$(tr '\r' '\n' <"$work/benchmark-$test.txt" | grep -a 'overall' | tail -1 | sed 's/^ *//')\`"
        echo
        perf_components "$test"
    } >"$out/profile-writes-$test.md"
    stop_servers
    echo "wrote $out/profile-writes-$test.md" >&2
done
