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
# The round trips are added by delay proxies (scripts/lib/servers.sh).
#
#   scripts/bench-livekit.sh [ROOMS...]          (default 700 2000 5000 10000)
#   DURATION=60s WARMUP=15s DELAYS_MS="1 5" OUT=docs/bench scripts/bench-livekit.sh 700
#   SYSTEMS="conclave redis" OUT=/tmp/lk scripts/bench-livekit.sh 350 500   (some systems only)
#   BASELINE=<git revision> ...   adds the system `before`: the 3-node cluster run by that
#                                 revision's binary (scripts/lib/baseline.sh), same bench client
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
only=${SYSTEMS:-}
known=" conclave before redis $(for rtt in "${delays[@]}"; do printf 'conclave+%sms redis+%sms ' "$rtt" "$rtt"; done)"
for system in $only; do
    [[ "$known" == *" $system "* ]] || { echo "SYSTEMS: unknown system $system (known:$known)" >&2; exit 2; }
done
wanted() { [ -z "$only" ] || [[ " $only " == *" $1 "* ]]; }
if [[ " $only " == *" before "* ]] && [ -z "${BASELINE:-}" ]; then
    echo "SYSTEMS: before needs BASELINE=<git revision>" >&2
    exit 2
fi
mkdir -p "$out"
out=$(cd "$out" && pwd)
./scripts/setup-test-deps.sh >/dev/null
# The plot's library, beside redis-py in the tests' environment.
.test-env/bin/python -c "import matplotlib" 2>/dev/null ||
    .test-env/bin/pip install --quiet --disable-pip-version-check "matplotlib==3.9.2"
if [ -n "${BASELINE:-}" ]; then
    source scripts/lib/baseline.sh
    baseline=$(baseline_binary "$BASELINE")
fi
cargo build --release --locked --quiet -p conclave
conclave=target/release/conclave
source scripts/lib/servers.sh

# One run's reports only: the report is written from every run's JSON in OUT.
rm -f "$out"/livekit-*-[0-9]*.json "$out"/livekit-*-[0-9]*.txt
terms() { # endpoints: each Conclave node's Raft term, from INFO (empty for Redis)
    local endpoint
    for endpoint in ${1//,/ }; do
        redis-cli -h "${endpoint%:*}" -p "${endpoint##*:}" INFO 2>/dev/null |
            sed -n 's/^conclave_term:\([0-9]*\).*/\1/p'
    done | paste -sd/
}
bench() { # rooms system endpoints
    local rooms=$1 system=$2 endpoints=$3
    local json="$out/livekit-$system-$rooms.json"
    local pid_list proxy_list
    pid_list=$(IFS=,; echo "${server_pids[*]}")
    proxy_list=$(IFS=,; echo "${proxy_pids[*]}")
    echo "== $rooms rooms, $system" >&2
    local line before
    before=$(terms "$endpoints")
    line=$("$conclave" bench livekit --rooms "$rooms" --duration "$duration" --warmup "$warmup" \
        --resp "$endpoints" --pids "$pid_list" ${proxy_list:+--proxy-pids "$proxy_list"} \
        --label "$system" --json "$json" \
        | tee -a "$out/livekit-$system-$rooms.txt" | tail -1)
    echo "$line" >&2
    # A term that moved during the run is an election the workload caused.
    if [ -n "$before" ]; then
        echo "Raft terms per node: $before before the run, $(terms "$endpoints") after" |
            tee -a "$out/livekit-$system-$rooms.txt" >&2
    fi
}

for rooms in "${rooms_list[@]}"; do
    if wanted conclave; then
        start_conclave "$(mktemp -d -p "$work")"
        bench "$rooms" conclave "$(printf '127.0.0.1:%s,' "${resp_ports[@]}" | sed 's/,$//')"
        stop_servers
    fi
    if [ -n "${BASELINE:-}" ] && wanted before; then
        conclave=$baseline start_conclave "$(mktemp -d -p "$work")"
        bench "$rooms" before "$(printf '127.0.0.1:%s,' "${resp_ports[@]}" | sed 's/,$//')"
        stop_servers
    fi
    for rtt in "${delays[@]}"; do
        wanted "conclave+${rtt}ms" || continue
        start_conclave "$(mktemp -d -p "$work")" "$rtt"
        bench "$rooms" "conclave+${rtt}ms" "$(printf '127.0.0.1:%s,' "${resp_ports[@]}" | sed 's/,$//')"
        stop_servers
        stop_proxies
    done
    if wanted redis || [ "$(for rtt in "${delays[@]}"; do wanted "redis+${rtt}ms" && echo y; done)" ]; then
        start_redis "$(mktemp -d -p "$work")"
        if wanted redis; then bench "$rooms" redis "127.0.0.1:$redis_port"; fi
        for rtt in "${delays[@]}"; do
            wanted "redis+${rtt}ms" || continue
            start_proxy "$rtt" "$redis_port"
            bench "$rooms" "redis+${rtt}ms" "127.0.0.1:$proxy_port"
            stop_proxies
        done
        stop_servers
    fi
done

echo
.test-env/bin/python scripts/livekit-report.py "$out" \
    "${BASELINE:+BASELINE=$BASELINE }${only:+SYSTEMS=\"$only\" }DURATION=$duration WARMUP=$warmup DELAYS_MS=\"${delays[*]}\" scripts/bench-livekit.sh ${rooms_list[*]}"
column -t -s $'\t' "$out/livekit-results.tsv"
echo "wrote $out/livekit.md and $out/livekit.png"
