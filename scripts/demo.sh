#!/usr/bin/env bash
# Build a tiny random Bagel, show understanding and generate an image.
#   bash scripts/demo.sh [output dir]     (default: <repo root>/outputs/demo)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SRUM_VENV:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
export SRUM_VENV="$VENV"
OUT="${1:-$ROOT/outputs/demo}"
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac   # a given path is relative to the caller's cwd

bash "$ROOT/scripts/bootstrap.sh"

cd "$ROOT"
export HF_HUB_OFFLINE=1
export OMP_NUM_THREADS=2
exec "$VENV/bin/srum" demo --out "$OUT"
