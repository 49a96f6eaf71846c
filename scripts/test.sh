#!/usr/bin/env bash
# The project's one test command (README, CI): formatting, lints, then every test.
# Tests start real `conclave server` processes on loopback ports and drive them with real Redis
# clients (redis-cli, redis-py), which setup-test-deps.sh installs when they are missing.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== test dependencies"
./scripts/setup-test-deps.sh

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
