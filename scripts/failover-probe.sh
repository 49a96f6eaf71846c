#!/usr/bin/env bash
# Measures failover: starts a fresh 3-node cluster on 127.0.0.1:7101-7103, kills the leader with
# SIGKILL, and prints how long until a write sent to a survivor is acknowledged (the write is
# held by the survivor during the election), then the median, p99 and maximum over the rounds.
# Usage: [SERVER_ARGS="--election-min-ms 150 ..."] scripts/failover-probe.sh [ROUNDS]
set -euo pipefail
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
cd "$(dirname "$0")/.."
[ -x target/release/conclave ] || cargo build --release -p conclave
bin=$(realpath target/release/conclave)
rounds=${1:-5}
read -r -a server_args <<<"${SERVER_ARGS:-}"
times=$(mktemp)
cluster="1=127.0.0.1:7101,2=127.0.0.1:7102,3=127.0.0.1:7103"
for round in $(seq "$rounds"); do
  data=$(mktemp -d)
  pids=()
  for i in 1 2 3; do
    "$bin" server --id "$i" --data-dir "$data/n$i" --listen "127.0.0.1:710$i" \
      --initial-cluster "$cluster" "${server_args[@]}" 2>"$data/log$i" &
    pids+=($!)
  done
  leader=""
  until [[ "$leader" =~ ^[0-9]+$ ]]; do
    sleep 0.2
    leader=$("$bin" ctl --endpoint 127.0.0.1:7101 status 2>/dev/null |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["leader"])' 2>/dev/null || true)
  done
  survivor=$((leader % 3 + 1))
  BIN="$bin" TIMES="$times" python3 - "${pids[$((leader - 1))]}" "$survivor" "$round" <<'PY'
import os, signal, subprocess, sys, time
pid, survivor, round_ = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
start = time.time()
os.kill(pid, signal.SIGKILL)
while time.time() - start < 10:
    put = subprocess.run([os.environ["BIN"], "ctl", "--endpoint", f"127.0.0.1:710{survivor}",
                          "put", "probe", "x"], capture_output=True)
    if put.returncode == 0:
        took = time.time() - start
        print(f"round {round_}: write through node {survivor} acknowledged "
              f"{took:.3f} s after SIGKILL of the leader")
        with open(os.environ["TIMES"], "a") as times:
            times.write(f"{took}\n")
        break
else:
    print(f"round {round_}: no write acknowledged within 10 s")
PY
  kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  rm -rf "$data"
done
python3 - "$times" "$rounds" <<'PY'
import math, sys
times = sorted(float(line) for line in open(sys.argv[1]) if line.strip())
if times:
    rank = lambda q: times[min(len(times) - 1, math.ceil(q * len(times)) - 1)]
    print(f"failover over {len(times)} of {sys.argv[2]} rounds: median {rank(0.5):.3f} s, "
          f"p99 {rank(0.99):.3f} s, max {times[-1]:.3f} s")
PY
rm -f "$times"
