#!/usr/bin/env bash
# Run the test suite in the project's venv (created/refreshed by bootstrap.sh).
#   bash scripts/test.sh [pytest args...]
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SRUM_VENV:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
export SRUM_VENV="$VENV"

bash "$ROOT/scripts/bootstrap.sh"

cd "$ROOT"
export HF_HUB_OFFLINE=1
export OMP_NUM_THREADS=2
exec "$VENV/bin/python" -m pytest -q tests "$@"
