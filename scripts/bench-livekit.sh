#!/usr/bin/env bash
# The LiveKit room workload (`conclave bench livekit`) against Conclave and Redis, side by side,
# in one run on this machine:
#   conclave           3 nodes, each simulated media node on its own local node's RESP port;
#   conclave+Nms       the same with N ms of round trip added between the Conclave nodes (as if
#                      each sat on its own media host);
#   redis              one local redis-server, appendonly yes, appendfsync everysec (LiveKit's
#                      usual setup), every media node on it;
#   redis+Nms          the same server reached over N ms of added round trip (the seed report's
#                      remote Redis).
# The round trip is added by `conclave bench delay-proxy` (half each way): in front of the
# remote Redis, and in front of each Conclave node's peer port, its peers listed at the proxies'
# addresses. (This machine's kernel has no qdiscs, so tc netem is not available.)
#
#   scripts/bench-livekit.sh [ROOMS...]          (default 700 2000 5000 10000)
#   DURATION=60s WARMUP=15s DELAYS_MS="1 5" OUT=docs/bench scripts/bench-livekit.sh 700
#
# Writes every report (text and JSON) under OUT, then scripts/livekit-report.py writes OUT/livekit.md
# (rooms x system: deadline misses, errors, p99s, RSS and CPU per server, the bench's own CPU),
# OUT/livekit.png (misses and claim p99 against rooms) and OUT/livekit-results.tsv, and prints
# where each system first misses a deadline.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ $# -gt 0 ]; then rooms_list=("$@"); else rooms_list=(700 2000 5000 10000); fi
duration=${DURATION:-60s}
warmup=${WARMUP:-15s}
read -r -a delays <<<"${DELAYS_MS:-1 5}"
out=${OUT:-docs/bench}
mkdir -p "$out"
out=$(cd "$out" && pwd)
./scripts/setup-test-deps.sh >/dev/null
# The plot's library, beside redis-py in the tests' environment.
.test-env/bin/python -c "import matplotlib" 2>/dev/null ||
    .test-env/bin/pip install --quiet --disable-pip-version-check "matplotlib==3.9.2"
cargo build --release --locked --quiet -p conclave
conclave=target/release/conclave
mkdir -p "$out"

work=$(mktemp -d)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_ping() {
    for _ in $(seq 1 300); do
        if [ "$(redis-cli -p "$1" ping 2>/dev/null)" = PONG ]; then return 0; fi
        sleep 0.1
    done
    echo "port $1 never answered PING" >&2
    exit 1
}

# A proxy adding `rtt` ms of round trip in front of `upstream`; sets proxy_port.
start_proxy() { # rtt upstream-port
    proxy_port=$(free_port)
    "$conclave" bench delay-proxy --listen "127.0.0.1:$proxy_port" --upstream "127.0.0.1:$2" \
        --delay-ms "$(python3 -c "print($1 / 2)")" >/dev/null 2>&1 &
    pids+=($!)
    proxy_pids+=($!)
    for _ in $(seq 1 100); do
        if (exec 3<>"/dev/tcp/127.0.0.1/$proxy_port") 2>/dev/null; then return 0; fi
        sleep 0.05
    done
    echo "the delay proxy on $proxy_port never listened" >&2
    exit 1
}
proxy_pids=()
stop_proxies() {
    for pid in "${proxy_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    proxy_pids=()
}

# Starts a 3-node Conclave cluster, its peers `rtt` ms apart (0: none); sets resp_ports and
# server_pids.
start_conclave() {
    local dir=$1 rtt=${2:-0}
    grpc_ports=() resp_ports=() server_pids=()
    local members=()
    for id in 1 2 3; do
        grpc_ports+=("$(free_port)")
        resp_ports+=("$(free_port)")
        local listed=${grpc_ports[$((id - 1))]}
        if [ "$rtt" != 0 ]; then start_proxy "$rtt" "$listed"; listed=$proxy_port; fi
        members+=("$id=127.0.0.1:$listed")
    done
    local initial
    initial=$(IFS=,; echo "${members[*]}")
    for id in 1 2 3; do
        "$conclave" server --id "$id" --data-dir "$dir/node$id" \
            --listen "127.0.0.1:${grpc_ports[$((id - 1))]}" --initial-cluster "$initial" \
            --resp "127.0.0.1:${resp_ports[$((id - 1))]}" >"$dir/node$id.log" 2>&1 &
        server_pids+=($!)
        pids+=($!)
    done
    for port in "${resp_ports[@]}"; do wait_ping "$port"; done
    # A leader, then a write through every node.
    for _ in $(seq 1 100); do
        if redis-cli -p "${resp_ports[0]}" set bench:ready 1 2>/dev/null | grep -q OK; then break; fi
        sleep 0.2
    done
}

stop_servers() {
    for pid in "${server_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${server_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}

start_redis() {
    local dir=$1
    redis_port=$(free_port)
    mkdir -p "$dir"
    redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --save '' \
        --appendonly yes --appendfsync everysec --daemonize no >"$dir/redis.log" 2>&1 &
    server_pids=($!)
    pids+=($!)
    wait_ping "$redis_port"
}

# One run's reports only: the report is written from every JSON in OUT.
rm -f "$out"/livekit-*.json "$out"/livekit-*.txt
bench() { # rooms system endpoints
    local rooms=$1 system=$2 endpoints=$3
    local json="$out/livekit-$system-$rooms.json"
    local pid_list
    pid_list=$(IFS=,; echo "${server_pids[*]}")
    echo "== $rooms rooms, $system" >&2
    local line
    line=$("$conclave" bench livekit --rooms "$rooms" --duration "$duration" --warmup "$warmup" \
        --resp "$endpoints" --pids "$pid_list" --label "$system" --json "$json" \
        | tee -a "$out/livekit-$system-$rooms.txt" | tail -1)
    echo "$line" >&2
}

for rooms in "${rooms_list[@]}"; do
    start_conclave "$(mktemp -d -p "$work")"
    bench "$rooms" conclave "$(printf '127.0.0.1:%s,' "${resp_ports[@]}" | sed 's/,$//')"
    stop_servers
    for rtt in "${delays[@]}"; do
        start_conclave "$(mktemp -d -p "$work")" "$rtt"
        bench "$rooms" "conclave+${rtt}ms" "$(printf '127.0.0.1:%s,' "${resp_ports[@]}" | sed 's/,$//')"
        stop_servers
        stop_proxies
    done
    start_redis "$(mktemp -d -p "$work")"
    bench "$rooms" redis "127.0.0.1:$redis_port"
    for rtt in "${delays[@]}"; do
        start_proxy "$rtt" "$redis_port"
        bench "$rooms" "redis+${rtt}ms" "127.0.0.1:$proxy_port"
        stop_proxies
    done
    stop_servers
done

echo
.test-env/bin/python scripts/livekit-report.py "$out" \
    "DURATION=$duration WARMUP=$warmup DELAYS_MS=\"${delays[*]}\" scripts/bench-livekit.sh ${rooms_list[*]}"
column -t -s $'\t' "$out/livekit-results.tsv"
echo "wrote $out/livekit.md and $out/livekit.png"
