#!/usr/bin/env bash
# TLS on and off, side by side in one run: two 3-node clusters of this checkout's release
# binary, one plaintext and one with TLS everywhere (gRPC, mutual TLS between the nodes, RESP
# over TLS), and redis-benchmark through a follower of each (50 clients; SET, GET, PUBLISH,
# with and without -P 16; --tls for the second). Prints requests/s and the ratio TLS / plain.
#
#   scripts/bench-tls.sh [REQUESTS]     (default 20000; 5x with -P 16)
set -euo pipefail
cd "$(dirname "$0")/.."
requests=${1:-20000}
./scripts/setup-test-deps.sh >/dev/null
cargo build --release --locked --quiet -p conclave
conclave=target/release/conclave
work=$(mktemp -d)
pids=()
trap 'for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null; rm -rf "$work"' EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

"$conclave" certs --dir "$work/certs" ca >/dev/null
"$conclave" certs --dir "$work/certs" node node --host 127.0.0.1 >/dev/null
tls_args=(--tls-cert "$work/certs/node.pem" --tls-key "$work/certs/node-key.pem" --tls-ca "$work/certs/ca.pem")
cli_tls=(--tls --cacert "$work/certs/ca.pem")

# start NAME TLS(0|1): a cluster; sets follower_port (RESP of node 2, a follower or leader).
start() {
    local name=$1 tls=$2 members=() grpc=() resp=()
    for id in 1 2 3; do grpc+=("$(free_port)"); resp+=("$(free_port)"); members+=("$id=127.0.0.1:${grpc[$((id - 1))]}"); done
    local initial extra=() cli=()
    initial=$(IFS=,; echo "${members[*]}")
    if [ "$tls" = 1 ]; then extra=("${tls_args[@]}" --resp-tls); cli=("${cli_tls[@]}"); fi
    for id in 1 2 3; do
        "$conclave" server --id "$id" --data-dir "$work/$name/n$id" --listen "127.0.0.1:${grpc[$((id - 1))]}" \
            --initial-cluster "$initial" --resp "127.0.0.1:${resp[$((id - 1))]}" "${extra[@]}" \
            >"$work/$name-n$id.log" 2>&1 &
        pids+=($!)
    done
    for port in "${resp[@]}"; do
        for _ in $(seq 1 200); do
            if redis-cli -p "$port" "${cli[@]}" set bench:ready 1 2>/dev/null | grep -q OK; then break; fi
            sleep 0.1
        done
    done
    # A follower: the first node whose INFO names another node leader.
    follower_port=${resp[0]}
    for port in "${resp[@]}"; do
        if redis-cli -p "$port" "${cli[@]}" info replication | grep -q 'conclave_raft_role:follower'; then
            follower_port=$port
            break
        fi
    done
}

start plain 0
plain_port=$follower_port
start tls 1
tls_port=$follower_port

run() { # port pipeline test [tls args...]
    local port=$1 pipeline=$2 test=$3
    shift 3
    local n=$requests
    [ "$pipeline" = 1 ] || n=$((requests * 5))
    if [ "$test" = publish ]; then
        redis-benchmark -p "$port" "$@" -c 50 -n "$n" -P "$pipeline" --csv \
            PUBLISH bench:channel payload-of-32-bytes-xxxxxxxxxxxxx 2>/dev/null
    else
        redis-benchmark -p "$port" "$@" -c 50 -n "$n" -P "$pipeline" -t "$test" -d 100 -r 100000 --csv 2>/dev/null
    fi | awk -F'"' 'NR==2 {print $4}'
}

echo "TLS on and off, one run: redis-benchmark through a follower, 50 clients, $requests requests (5x with -P 16), $(date +%F)"
echo "conclave = $(git describe --always --dirty)"
printf '%-14s %12s %12s %8s\n' test plain tls ratio
for pipeline in 1 16; do
    for test in set get publish; do
        plain=$(run "$plain_port" "$pipeline" "$test")
        tls=$(run "$tls_port" "$pipeline" "$test" "${cli_tls[@]}")
        ratio=$(python3 -c "print(f'{float(\"$tls\") / float(\"$plain\"):.2f}')")
        printf '%-14s %12s %12s %8s\n' "$test -P $pipeline" "$plain" "$tls" "$ratio"
    done
done
