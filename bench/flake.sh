#!/usr/bin/env bash
# Flakiness check: run the test suite N times (default 10), each in a new random order (pytest-random-order,
# seed printed), while busy processes load the CPU (LOAD of them, default: one per CPU). Stops at the first red
# run and prints its seed, so the order can be replayed with: python -m pytest --random-order-bucket=global --random-order-seed=SEED
#   bash bench/flake.sh [N] [extra pytest args...]
set -uo pipefail
cd "$(dirname "$0")/.."
runs=${1:-10}; shift || true
load=${LOAD:-$(nproc)}
busy=()
for _ in $(seq "$load"); do (while :; do :; done) & busy+=($!); done
trap 'kill "${busy[@]}" 2>/dev/null' EXIT
log=$(mktemp -d)/flake
green=0
for run in $(seq "$runs"); do
  seed=$((RANDOM * 32768 + RANDOM))
  started=$(date +%s)
  python -m pytest -q -p no:cacheprovider --random-order-bucket=global \
      --random-order-seed="$seed" "$@" > "$log.$run.txt" 2>&1
  rc=$?
  echo "run $run/$runs seed=$seed rc=$rc $(( $(date +%s) - started ))s: $(tail -n 1 "$log.$run.txt")"
  if [ "$rc" -ne 0 ]; then
    grep -E '^(FAILED|ERROR)' "$log.$run.txt" | head -20
    echo "red after $green consecutive green runs (log: $log.$run.txt)"
    exit 1
  fi
  green=$((green + 1))
done
echo "$green consecutive green runs in random order with $load busy processes"
