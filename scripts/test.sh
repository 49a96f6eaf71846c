#!/usr/bin/env bash
# The project's one test command (README, CI): formatting, lints, then every test.
# Tests start real `conclave server` processes on loopback ports; nothing else is needed.
set -euo pipefail
cd "$(dirname "$0")/.."

echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo test"
cargo test --workspace --locked
