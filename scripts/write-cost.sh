#!/usr/bin/env bash
# What one write costs the three nodes: redis-benchmark through a follower's RESP port, and the
# nodes' CPU time and context switches (all threads, from /proc) per command over a measured
# window. Each binary gets a fresh cluster; ROUNDS alternate them, so a noisy machine hits all.
#
#   scripts/write-cost.sh [BINARY...]      (default: this checkout's release build)
#   TEST=hset SECONDS_MEASURED=5 ROUNDS=2 scripts/write-cost.sh target/baseline/*/conclave target/release/conclave
set -euo pipefail
cd "$(dirname "$0")/.."
test=${TEST:-set}
measured=${SECONDS_MEASURED:-5}
rounds=${ROUNDS:-2}
./scripts/setup-test-deps.sh >/dev/null
if [ $# -eq 0 ]; then
    cargo build --release --locked --quiet -p conclave
    set -- target/release/conclave
fi
source scripts/lib/servers.sh

switches() { for p in "$@"; do cat /proc/"$p"/task/*/status; done | awk '/ctxt_switches/ { s += $2 } END { print s }'; }
ticks() { for p in "$@"; do awk '{ print $14 + $15 }' /proc/"$p"/stat; done | awk '{ s += $1 } END { print s }'; }
hz=$(getconf CLK_TCK)
processed() { redis-cli -p "$1" info stats | tr -d '\r' | sed -n 's/^total_commands_processed://p'; }

echo "redis-benchmark -c 50 -t $test -d 100 through a follower; ${measured} s measured per run; $(nproc) cores, $(date -u +%F)"
printf '%-50s %10s %12s %16s\n' binary "$test/s" "switches/cmd" "CPU ms/1000 cmd"
for _ in $(seq 1 "$rounds"); do
    for binary in "$@"; do
        conclave=$binary
        dir=$(mktemp -d -p "$work")
        start_conclave "$dir"
        find_roles
        follower=${resp_ports[$follower_index]}
        redis-benchmark -p "$follower" -c 50 -t "$test" -n 100000000 -r 100000 -d 100 -q >/dev/null 2>&1 &
        benchmark=$!
        pids+=("$benchmark")
        sleep 2
        s0=$(switches "${server_pids[@]}") t0=$(ticks "${server_pids[@]}") c0=$(processed "$follower")
        sleep "$measured"
        s1=$(switches "${server_pids[@]}") t1=$(ticks "${server_pids[@]}") c1=$(processed "$follower")
        kill "$benchmark" 2>/dev/null || true
        wait "$benchmark" 2>/dev/null || true
        stop_servers
        python3 -c "
c = ($c1 - $c0) or 1
print(f'{\"$binary\":<50} {c / $measured:>10.0f} {($s1 - $s0) / c:>12.2f} {($t1 - $t0) * 1000 / $hz / (c / 1000):>16.1f}')"
    done
done
