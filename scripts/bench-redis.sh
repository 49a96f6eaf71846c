#!/usr/bin/env bash
# redis-benchmark against a 3-node Conclave cluster and against a real redis-server, in one run,
# on this machine, so the figures are comparable. Prints one table with the ratios.
#
#   scripts/bench-redis.sh [requests-per-test]      (default 20000)
#
# Targets: redis-server as configured by default (no fsync), redis-server with
# appendfsync always (every write on disk before the reply, as Conclave does), and Conclave's
# RESP port on a follower (writes are forwarded to the leader) and on the leader.
# Tests: SET, GET, INCR, HSET and PUBLISH, 50 clients, without and with -P 16.
set -euo pipefail
cd "$(dirname "$0")/.."

requests=${1:-20000}
clients=50
./scripts/setup-test-deps.sh >/dev/null
cargo build --release --locked --quiet
conclave=target/release/conclave

source scripts/lib/servers.sh

redis_port=$(free_port)
redis_aof_port=$(free_port)
mkdir -p "$work/redis" "$work/redis-aof"
redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$work/redis" --save '' --appendonly no \
    --daemonize no >"$work/redis.log" 2>&1 &
pids+=($!)
redis-server --port "$redis_aof_port" --bind 127.0.0.1 --dir "$work/redis-aof" --save '' \
    --appendonly yes --appendfsync always --daemonize no >"$work/redis-aof.log" 2>&1 &
pids+=($!)

grpc_base=$(free_port)
resp_base=$(free_port)
# dev uses base..base+2 for each protocol; make sure the ranges are free.
"$conclave" dev --data-dir "$work/conclave" --base-port "$grpc_base" --resp-base-port "$resp_base" \
    >"$work/conclave.log" 2>&1 &
pids+=($!)

wait_ping "$redis_port"
wait_ping "$redis_aof_port"
for i in 0 1 2; do wait_ping $((resp_base + i)); done
# Wait for a leader, then pick a follower and the leader by their INFO.
leader_port=""
follower_port=""
for _ in $(seq 1 100); do
    for i in 0 1 2; do
        port=$((resp_base + i))
        role=$(redis-cli -p "$port" info replication | tr -d '\r' | sed -n 's/^conclave_raft_role://p')
        case "$role" in
            leader) leader_port=$port ;;
            follower) follower_port=$port ;;
        esac
    done
    if [ -n "$leader_port" ] && [ -n "$follower_port" ]; then break; fi
    sleep 0.1
done
[ -n "$leader_port" ] || { echo "no leader" >&2; exit 1; }

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
for pipeline in 1 16; do
    run redis "$redis_port" "$pipeline"
    run redis-fsync "$redis_aof_port" "$pipeline"
    run conclave-follower "$follower_port" "$pipeline"
    run conclave-leader "$leader_port" "$pipeline"
done

python3 - "$results" <<'EOF'
import csv, sys
rows = list(csv.reader(open(sys.argv[1])))
# name, pipeline, test, rps, avg, min, p50, p95, p99, max
table = {}
for r in rows:
    table[(r[0], r[1], r[2])] = (float(r[3]), float(r[6]), float(r[8]))
tests = ["SET", "GET", "INCR", "HSET", "PUBLISH"]
targets = ["redis", "redis-fsync", "conclave-follower", "conclave-leader"]
for pipeline in ["1", "16"]:
    print(f"\n-P {pipeline}: requests/s (p50 ms / p99 ms); ratio = conclave / redis (fsync)")
    print(f"{'test':8}" + "".join(f"{t:>28}" for t in targets) + f"{'ratio':>22}")
    for test in tests:
        cells = []
        for t in targets:
            v = table.get((t, pipeline, test))
            cells.append(f"{v[0]:>10.0f} ({v[1]:.2f} / {v[2]:.2f})" if v else "n/a")
        line = f"{test:8}" + "".join(f"{c:>28}" for c in cells)
        redis = table.get(("redis", pipeline, test))
        fsync = table.get(("redis-fsync", pipeline, test))
        ours = table.get(("conclave-follower", pipeline, test))
        if redis and fsync and ours:
            line += f"{ours[0] / redis[0]:>11.3f} ({ours[0] / fsync[0]:.2f})"
        print(line)
EOF
