#!/usr/bin/env bash
# The chaos suite's entry point: builds `conclave` and the `chaos` runner, then runs one seeded
# schedule of faults against a fresh cluster and checks the history (see cluster-tests/README.md).
#
#   cluster-tests/run.sh --duration SECONDS --nemesis LIST|all --seed N [--harness local|docker]
#                        [--consistency linearizable|session|local]
#
# CHAOS_PROFILE=debug uses the debug build (what `cargo test` already built) instead of release.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${CHAOS_PROFILE:-release}
build=(--locked -p conclave -p conclave-cluster-tests --bins)
if [ "$profile" = release ]; then build+=(--release); fi
cargo build "${build[@]}" >&2
# The docker harness runs deploy/'s image (built from the release binaries).
if [[ " $* " == *" --harness docker "* ]]; then ./deploy/build-image.sh >&2; fi
exec "target/$profile/chaos" --binary "target/$profile/conclave" "$@"
