#!/usr/bin/env bash
# Memory and disk of a 3-node cluster through a load and a delete of everything, per binary,
# side by side: RSS per node and the data directories' size when empty, after redis-benchmark
# wrote ~260,000 keys (hashes and strings, 100-byte values, through a follower), right after
# every key was deleted, and 70 s later (past the 60 s de-duplication window).
#
#   scripts/memory-churn.sh BINARY...
#   scripts/memory-churn.sh "$(. scripts/lib/baseline.sh; baseline_binary cb4536a)" target/release/conclave
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -gt 0 ] || { echo "usage: $0 BINARY..." >&2; exit 2; }
command -v redis-benchmark >/dev/null || ./scripts/setup-test-deps.sh >&2
source scripts/lib/servers.sh
state() { # data dir
    local pid rss=()
    for pid in "${server_pids[@]}"; do rss+=("$(($(awk '/VmRSS/{print $2}' "/proc/$pid/status") / 1024))"); done
    echo "RSS $(IFS=/; echo "${rss[*]}") MiB, disk $(du -sm "$1" | cut -f1) MiB"
}
for bin in "$@"; do
    conclave=$bin
    dir=$(mktemp -d -p "$work")
    start_conclave "$dir"
    echo "$bin"
    echo "  empty:               $(state "$dir")"
    for test in hset set; do
        redis-benchmark -p "${resp_ports[1]}" -t "$test" -r 300000 -n 600000 -P 16 -c 20 -d 100 -q >/dev/null 2>&1
    done
    echo "  $(redis-cli -p "${resp_ports[0]}" dbsize) keys:        $(state "$dir")"
    redis-cli -p "${resp_ports[1]}" --scan | xargs -n 1000 redis-cli -p "${resp_ports[1]}" del >/dev/null
    sleep 2
    echo "  all deleted:         $(state "$dir")"
    sleep 70
    redis-cli -p "${resp_ports[1]}" set after-the-window x >/dev/null
    sleep 5
    echo "  70 s later:          $(state "$dir")"
    stop_servers
done
