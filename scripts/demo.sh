#!/usr/bin/env bash
# The main job on the built-in tiny model: two rounds of the whole SRUM loop on CPU
# (generate -> propose -> judge -> train -> export -> eval -> report), a few minutes.
#   bash scripts/demo.sh [run dir] [KEY=VALUE ...]   (default: <repo root>/outputs/pipeline-tiny)
# The tiny Bagel and the tiny Qwen2.5-VL judge it creates have random weights.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SRUM_VENV:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
export SRUM_VENV="$VENV"
OUT="${1:-$ROOT/outputs/pipeline-tiny}"
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac   # a given path is relative to the caller's cwd
shift || true

bash "$ROOT/scripts/bootstrap.sh"

cd "$ROOT"
export HF_HUB_OFFLINE=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec "$VENV/bin/srum" pipeline --config configs/pipeline/tiny.yaml "run_dir=$OUT" "$@"
