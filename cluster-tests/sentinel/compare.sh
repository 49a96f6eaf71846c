#!/usr/bin/env bash
# Conclave against Redis with Sentinel, side by side: one seed and one list of faults, the RESP
# workloads (register, set, counter), run in turn against
#   conclave          deploy/'s three-node compose cluster;
#   sentinel-default  three hosts of redis-server + Sentinel with Redis's default timeouts
#                     (down-after-milliseconds 30000, failover-timeout 180000);
#   sentinel-tuned    the same with the timeouts operators lower them to (2000, 10000).
# Prints one table (acknowledged writes lost, duplicates, linearizability, failed and unknown
# operations, per kind of fault the time to the first acknowledged write) and writes it to
# OUT/table.md. Takes about 4 x DURATION plus image builds; a command, not a CI step.
#
#   cluster-tests/sentinel/compare.sh [--duration S] [--seed N] [--nemesis LIST] [--out DIR]
set -euo pipefail
cd "$(dirname "$0")/../.."

duration=120
seed=7
nemesis=kill,kill-leader,pause-leader,partition-leader,partition-halves
out=cluster-tests/out/compare-$(date +%s)
while [ $# -gt 0 ]; do
    case "$1" in
        --duration) duration=$2; shift 2 ;;
        --seed) seed=$2; shift 2 ;;
        --nemesis) nemesis=$2; shift 2 ;;
        --out) out=$2; shift 2 ;;
        *) echo "unknown option $1 (see the head of $0)" >&2; exit 2 ;;
    esac
done
command -v jq >/dev/null || ./scripts/setup-test-deps.sh >&2

cargo build --release --locked -p conclave -p conclave-cluster-tests --bins >&2
./deploy/build-image.sh >&2
./cluster-tests/sentinel/build-image.sh >&2
mkdir -p "$out"

systems=(conclave sentinel-default sentinel-tuned)
run() {
    local system=$1
    local harness=(--harness docker)
    case "$system" in
        sentinel-default) harness=(--harness sentinel) ;;
        sentinel-tuned) harness=(--harness sentinel --sentinel-down-after-ms 2000
            --sentinel-failover-timeout-ms 10000) ;;
    esac
    echo "== $system" >&2
    # A run whose checks fail exits 1: that is a finding here, not an error of the script.
    target/release/chaos "${harness[@]}" --duration "$duration" --seed "$seed" \
        --nemesis "$nemesis" --workloads register,set,counter --out "$out/$system" \
        > "$out/$system.log" 2>&1 || true
    grep '^RESULT' "$out/$system.log" >&2 || tail -5 "$out/$system.log" >&2
}
for system in "${systems[@]}"; do run "$system"; done

report() { cat "$out/$1"/*/report.json 2>/dev/null; }
kinds=$(for system in "${systems[@]}"; do report "$system" | jq -r '.unavailability_ms | keys[]'; done | sort -u)
{
    echo "Seed $seed, $duration s, faults from $nemesis; workloads register,set,counter."
    echo "Command: cluster-tests/sentinel/compare.sh --duration $duration --seed $seed --nemesis $nemesis"
    echo
    echo "| | $(IFS='|'; echo "${systems[*]}" | sed 's/|/ | /g') |"
    echo "|---|$(for _ in "${systems[@]}"; do printf -- '---|'; done)"
    row() {
        local label=$1 filter=$2
        printf '| %s |' "$label"
        for system in "${systems[@]}"; do
            printf ' %s |' "$(report "$system" | jq -r "$filter" 2>/dev/null || echo -)"
        done
        echo
    }
    row "operations (ok / failed / unknown)" '"\(.ops.total) (\(.ops.ok) / \(.ops.failed) / \(.ops.unknown))"'
    row "acknowledged set adds lost" '"\(.sets.lost | length) of \(.sets.acknowledged)"'
    row "acknowledged increments lost" '.counters.lost'
    row "increments applied twice" '.counters.duplicated'
    row "register reads" '.registers'
    row "faults (not recovered in 30 s)" '"\(.faults | length) (\(.unrecovered_faults))"'
    for kind in $kinds; do
        row "$kind: to first acked write, p50 / max ms" \
            ".unavailability_ms[\"$kind\"] | if . == null then \"-\" else \"\(.p50 | round) / \(.max | round) (\(.faults))\" end"
    done
} | tee "$out/table.md"
