#!/usr/bin/env bash
# Runs the fuzz targets in fuzz/ with libFuzzer (cargo-fuzz, on the nightly toolchain, with
# AddressSanitizer), each for SECONDS (default 60), one after the other.
#
#   scripts/fuzz.sh [SECONDS] [TARGET...]     targets: resp_requests peer_messages
#                                             replicas_agree snapshot_file (default: all)
#
# Installs cargo-fuzz if it is missing. The corpus grows in fuzz/corpus/<target> (kept between
# runs, not committed); a crash leaves its input in fuzz/artifacts/<target>/ and stops the run.
# Keep a crashing input as a regression test: copy it to fuzz/regressions/<target>/ under a
# name saying what it broke, fix the bug, and `cargo test -p conclave --test fuzz_regressions`
# replays it on every test run.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=60
if [ $# -gt 0 ] && [[ "$1" =~ ^[0-9]+$ ]]; then
    seconds="$1"
    shift
fi
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
    targets=(resp_requests peer_messages replicas_agree snapshot_file)
fi

if ! rustup run nightly rustc --version >/dev/null 2>&1; then
    echo "fuzz.sh: cargo-fuzz needs a nightly toolchain (rustup toolchain install nightly)" >&2
    exit 1
fi
if ! command -v cargo-fuzz >/dev/null; then
    cargo install cargo-fuzz --locked
fi
# The fuzz crate is a workspace of its own, with its own lock file (fuzz/Cargo.lock, started
# from the project's; refresh it with `cp Cargo.lock fuzz/` when the project's changes).

for target in "${targets[@]}"; do
    mkdir -p "fuzz/corpus/$target"
    echo "== $target: ${seconds}s"
    # The kept regressions seed the corpus; -rss_limit_mb catches runaway allocations that
    # the node would die of.
    mkdir -p fuzz/artifacts
    log="fuzz/artifacts/$target.log"
    set +e
    cargo +nightly fuzz run "$target" "fuzz/corpus/$target" "fuzz/regressions/$target" -- \
        -max_total_time="$seconds" -rss_limit_mb=2048 -max_len=131072 -print_final_stats=1 \
        >"$log" 2>&1
    status=$?
    set -e
    grep -E '^(#[0-9]+.*DONE|stat::(number_of_executed_units|peak_rss_mb|new_units_added)|SUMMARY|==[0-9]+==ERROR)|panicked at|Test unit written' "$log" || true
    if [ "$status" != 0 ]; then
        echo "fuzz.sh: $target failed (status $status); its input is in fuzz/artifacts/$target/, the log in $log" >&2
        exit "$status"
    fi
done
