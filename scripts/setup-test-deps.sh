#!/usr/bin/env bash
# Installs what the real-client tests, the Redis benchmark and the deploy/ops scripts need,
# idempotently (fast when everything is present): redis-cli, redis-benchmark and redis-server
# and jq from Debian's packages, and redis-py and prometheus_client in a virtual environment at
# .test-env. Run by
# scripts/test.sh before the tests.
set -euo pipefail
cd "$(dirname "$0")/.."

sudo=""
if [ "$(id -u)" != 0 ]; then sudo="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
# apt_install PACKAGE...: the package index may be missing or stale on a fresh machine, so it
# is refreshed only if the first attempt fails.
apt_install() {
    $sudo apt-get install -y --no-install-recommends "$@" >/dev/null ||
        { $sudo apt-get update >/dev/null && $sudo apt-get install -y --no-install-recommends "$@" >/dev/null; }
}

if command -v redis-cli >/dev/null && command -v redis-benchmark >/dev/null \
    && command -v redis-server >/dev/null; then
    echo "redis tools: present ($(redis-cli --version))"
else
    apt_install redis-tools redis-server
    # The package starts a redis-server on 6379; tests and benchmarks start their own.
    $sudo systemctl disable --now redis-server >/dev/null 2>&1 \
        || $sudo service redis-server stop >/dev/null 2>&1 || true
    pkill -x redis-server 2>/dev/null || true
    echo "redis tools: installed ($(redis-cli --version))"
fi

# redis-py for the real-client tests; prometheus_client's text parser reads the metrics endpoint.
if .test-env/bin/python -c "import redis, prometheus_client" 2>/dev/null; then
    echo "redis-py, prometheus_client: present"
else
    [ -x .test-env/bin/python ] || python3 -m venv .test-env
    .test-env/bin/pip install --quiet --disable-pip-version-check "redis==5.2.1" "prometheus_client==0.21.1"
    echo "redis-py, prometheus_client: installed"
fi

if command -v jq >/dev/null; then
    echo "jq: present ($(jq --version))"
else
    apt_install jq
    echo "jq: installed ($(jq --version))"
fi
