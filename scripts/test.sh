#!/usr/bin/env bash
# The project's one test command (README, CI): formatting, lints, then every test.
# Tests start real `conclave server` processes on loopback ports and drive them with real Redis
# clients (redis-cli, redis-py), which setup-test-deps.sh installs when they are missing. Where a
# Docker engine answers, the image is built first (deploy/build-image.sh) and the deploy tests run
# the compose cluster; without one they say they are skipped. Last, the chaos suite runs a fixed
# seed set (it needs root, for the iptables rules of its partitions).
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== test dependencies"
./scripts/setup-test-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
if docker info >/dev/null 2>&1; then
    echo "== image (deploy/build-image.sh)"
    ./deploy/build-image.sh
else
    echo "== image: skipped, no Docker engine answers (the deploy tests will say they are skipped)"
fi
echo "== cargo test"
cargo test --workspace --locked
# The chaos suite on the debug build the tests just made, a fixed seed set: every nemesis, each
# run checked for lost, duplicated and non-linearizable operations (cluster-tests/README.md).
# Partitions are iptables rules: without root (or iptables) the other nemeses still run.
nemesis=all
if [ "$(id -u)" != 0 ] || ! iptables -w 5 -L INPUT -n >/dev/null 2>&1; then
    nemesis=kill,kill-leader,kill-majority,kill-all,pause,pause-leader,pause-majority,clock-step,clock-skew,wipe,membership,rolling-restart
    echo "== chaos suite: no root or no iptables, so no partitions"
fi
for seed in 1 2 3; do
    echo "== chaos suite, seed $seed (cluster-tests/run.sh --duration 30 --nemesis $nemesis --seed $seed)"
    CHAOS_PROFILE=debug ./cluster-tests/run.sh --duration 30 --nemesis "$nemesis" --seed "$seed"
done
