# Servers for the benchmark scripts, on loopback: a 3-node Conclave cluster (its peers
# optionally a round trip apart), one redis-server, delay proxies. Sourced; expects `conclave`
# (the binary) to be set, and kills everything it started when the script exits.
#
#   start_conclave DIR [RTT_MS]   sets resp_ports, grpc_ports, server_pids
#   start_redis DIR               sets redis_port, server_pids
#   start_proxy RTT_MS PORT       sets proxy_port (a proxy adding RTT_MS of round trip)
#   find_roles                    after start_conclave: sets leader_index and follower_index
#                                 (indexes into resp_ports / grpc_ports) by the nodes' INFO
#   stop_servers, stop_proxies

work=$(mktemp -d)
pids=()
proxy_pids=()
server_pids=()
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
    echo "port $1 never answered PING; the ends of the server logs:" >&2
    find "$work" -name '*.log' -exec tail -n 20 {} + >&2 2>/dev/null || true
    exit 1
}

# `conclave bench delay-proxy`: half the round trip each way. (This machine's kernel has no
# qdiscs, so tc netem is not available.)
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

stop_proxies() {
    for pid in "${proxy_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    proxy_pids=()
}

# Each node lists its peers at proxies in front of their peer ports when rtt is not 0.
start_conclave() { # dir [rtt]
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

find_roles() {
    leader_index="" follower_index=""
    for _ in $(seq 1 100); do
        for i in 0 1 2; do
            case "$(redis-cli -p "${resp_ports[$i]}" info replication | tr -d '\r' |
                sed -n 's/^conclave_raft_role://p')" in
                leader) leader_index=$i ;;
                follower) follower_index=$i ;;
            esac
        done
        if [ -n "$leader_index" ] && [ -n "$follower_index" ]; then return 0; fi
        sleep 0.1
    done
    echo "no leader and follower found" >&2
    exit 1
}

stop_servers() {
    for pid in "${server_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${server_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
}

# appendonly yes, appendfsync everysec: LiveKit's usual setup.
start_redis() { # dir
    local dir=$1
    redis_port=$(free_port)
    mkdir -p "$dir"
    redis-server --port "$redis_port" --bind 127.0.0.1 --dir "$dir" --save '' \
        --appendonly yes --appendfsync everysec --daemonize no >"$dir/redis.log" 2>&1 &
    server_pids=($!)
    pids+=($!)
    wait_ping "$redis_port"
}
