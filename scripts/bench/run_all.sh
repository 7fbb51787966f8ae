#!/usr/bin/env bash
# SPDX-License-Identifier: Apache-2.0
# Run every benchmark with its CPU-tiny defaults; results go to outputs/bench/<name>.jsonl
# (one JSON line per case) and outputs/bench/<name>.md (the table).
#
#   bash scripts/bench/run_all.sh                    # CPU, 1 torch thread
#   BENCH_THREADS=2 bash scripts/bench/run_all.sh    # more threads
#   bash scripts/bench/run_all.sh --device cuda      # extra flags go to every script
#
# BENCH_THREADS (default 1): torch threads per bench. One thread is the default because
# on a machine shared with other jobs a multi-threaded op waits for its slowest thread,
# which made medians swing by several x; set it to the core count on a quiet machine.
set -euo pipefail
cd "$(dirname "$0")/../.."
PYTHON=${PYTHON:-.venv/bin/python}
OUT=${BENCH_OUT:-outputs/bench}
THREADS=${BENCH_THREADS:-1}
mkdir -p "$OUT"
for name in train_step sampling decode judge rasterizer; do
    rm -f "$OUT/$name.jsonl" "$OUT/$name.md"
    echo "== $name" >&2
    HF_HUB_OFFLINE=1 OMP_NUM_THREADS="$THREADS" "$PYTHON" "scripts/bench/$name.py" --threads "$THREADS" \
        --out "$OUT/$name.jsonl" --md "$OUT/$name.md" "$@" > /dev/null
    cat "$OUT/$name.md"
done
