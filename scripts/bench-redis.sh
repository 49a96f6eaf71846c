#!/usr/bin/env bash
# redis-benchmark against a 3-node Conclave cluster and against a real redis-server, in one run,
# on this machine, so the figures are comparable. Prints one table with the ratios, then
# `conclave bench writes` (gRPC SDK writers) against each Conclave cluster.
#
#   scripts/bench-redis.sh [requests-per-test]      (default 20000)
#   BASELINE=<git revision> scripts/bench-redis.sh  also measures that revision's binary, in the
#                                                   same run: before/after figures side by side
#
# Targets: redis-server as configured by default (no fsync), redis-server with
# appendfsync always (every write on disk before the reply, as Conclave does), and Conclave's
# RESP port on a follower (writes are forwarded to the leader) and on the leader.
# Tests: SET, GET, INCR, HSET and PUBLISH, 50 clients, without and with -P 16.
# GRPC_WRITERS (default 1,64) and GRPC_SECONDS (default 5) shape the gRPC part; GRPC_WRITERS=""
# skips it.
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${1:-20000}
clients=50
grpc_writers=${GRPC_WRITERS-1,64}
grpc_seconds=${GRPC_SECONDS:-5}
./scripts/setup-test-deps.sh >/dev/null
source scripts/lib/servers.sh
systems=(conclave)
declare -A binary
if [ -n "${BASELINE:-}" ]; then
    source scripts/lib/baseline.sh
    binary[before]=$(baseline_binary "$BASELINE")
    systems+=(before)
fi
cargo build --release --locked --quiet -p conclave
cp target/release/conclave "$work/conclave-bin"
binary[conclave]="$work/conclave-bin"
conclave=${binary[conclave]} # the bench client and delay proxy of servers.sh

redis_port=$(free_port)
redis_aof_port=$(free_port)
mkdir -p "$work/redis" "$work/redis-aof"
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work/redis" --save '' --appendonly no \
    --daemonize no >"$work/redis.log" 2>&1 &
pids+=($!)
redis-server --port "$redis_aof_port" --bind 127.0.0.1 --dir "$work/redis-aof" --save '' \
    --appendonly yes --appendfsync always --daemonize no >"$work/redis-aof.log" 2>&1 &
pids+=($!)
wait_ping "$redis_port"
wait_ping "$redis_aof_port"

# Every Conclave system's cluster runs for the whole run; each is idle while another is measured.
declare -A port grpc_endpoints
targets=(redis redis-fsync)
for system in "${systems[@]}"; do
    conclave=${binary[$system]}
    mkdir -p "$work/$system"
    start_conclave "$work/$system"
    find_roles
    port[$system-follower]=${resp_ports[$follower_index]}
    port[$system-leader]=${resp_ports[$leader_index]}
    grpc_endpoints[$system]=$(printf '127.0.0.1:%s,' "${grpc_ports[@]}")
    targets+=("$system-follower" "$system-leader")
done
conclave=${binary[conclave]}
port[redis]=$redis_port
port[redis-fsync]=$redis_aof_port

results="$work/results.csv"
: >"$results"
run() { # name port pipeline
    local name=$1 port=$2 pipeline=$3
    # Pipelined runs send 5x the requests so they last long enough to measure.
    local n=$((pipeline > 1 ? requests * 5 : requests))
    redis-benchmark -h 127.0.0.1 -p "$port" -c "$clients" -n "$n" -P "$pipeline" \
        -r 100000 -t set,get,incr,hset --csv 2>/dev/null |
        sed 1d | sed "s/^/\"$name\",\"$pipeline\",/" >>"$results"
    redis-benchmark -h 127.0.0.1 -p "$port" -c "$clients" -n "$n" -P "$pipeline" \
        --csv PUBLISH bench:channel payload-of-32-bytes-xxxxxxxxxxxxx 2>/dev/null |
        sed 1d | sed "s/^\"[^\"]*\"/\"PUBLISH\"/" | sed "s/^/\"$name\",\"$pipeline\",/" >>"$results"
}
echo "redis-benchmark: $clients clients, $requests requests per test (5x with -P 16), $(nproc) cores, $(date -u +%F)"
[ -z "${BASELINE:-}" ] || echo "before = $BASELINE ($(git rev-parse --short=12 "$BASELINE")), conclave = this checkout ($(git describe --always --dirty))"
for pipeline in 1 16; do
    for target in "${targets[@]}"; do run "$target" "${port[$target]}" "$pipeline"; done
done

python3 - "$results" "${targets[*]}" <<'PY'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
targets = sys.argv[2].split()
# name, pipeline, test, rps, avg, min, p50, p95, p99, max
table = {}
for r in rows:
    table[(r[0], r[1], r[2])] = (float(r[3]), float(r[6]), float(r[8]))
tests = ["SET", "GET", "INCR", "HSET", "PUBLISH"]
baseline = "before-follower" in targets
for pipeline in ["1", "16"]:
    ratios = "follower / redis (fsync)" + (" [/ before]" if baseline else "")
    print(f"\n-P {pipeline}: requests/s (p50 ms / p99 ms); ratio = conclave {ratios}")
    print(f"{'test':8}" + "".join(f"{t:>28}" for t in targets) + f"{'ratio':>30}")
    for test in tests:
        cells = []
        for t in targets:
            v = table.get((t, pipeline, test))
            cells.append(f"{v[0]:>10.0f} ({v[1]:.2f} / {v[2]:.2f})" if v else "n/a")
        line = f"{test:8}" + "".join(f"{c:>28}" for c in cells)
        redis = table.get(("redis", pipeline, test))
        fsync = table.get(("redis-fsync", pipeline, test))
        ours = table.get(("conclave-follower", pipeline, test))
        before = table.get(("before-follower", pipeline, test))
        if redis and fsync and ours:
            cell = f"{ours[0] / redis[0]:.3f} ({ours[0] / fsync[0]:.2f})"
            if before:
                cell += f" [{ours[0] / before[0]:.2f}x]"
            line += f"{cell:>30}"
        print(line)
PY

if [ -n "$grpc_writers" ]; then
    for system in "${systems[@]}"; do
        echo
        echo "gRPC SDK writers ($system): writer i on node i mod 3, each waiting for its write"
        "$conclave" bench --mode writes --endpoints "${grpc_endpoints[$system]%,}" \
            --writers "$grpc_writers" --seconds "$grpc_seconds"
    done
fi
