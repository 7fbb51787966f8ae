#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment. Idempotent; fast when done.
#
#   bash scripts/bootstrap.sh            # venv at <repo root>/.venv
#   SRUM_VENV=/path/to/venv bash scripts/bootstrap.sh
#   SRUM_PYTHON=python3.11 bash scripts/bootstrap.sh   # interpreter for a new venv
#
# Steps (each skipped when already done):
#   1. python3 -m venv, if the venv is missing;
#   2. pip install torch torchvision (no version pin: see PLATFORM_NOTES), unless
#      torch and torchvision's compiled ops already import in the venv;
#   3. pip install -e ".[dev]", unless the stamp file in the venv holds the sha256 of
#      the current pyproject.toml + requirements.txt.
# Progress goes to stderr, one line per step. Never uses sudo.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SRUM_VENV:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac   # relative to the caller's cwd
PYTHON="${SRUM_PYTHON:-python3}"
cd "$ROOT"

say() { echo "[bootstrap] $*" >&2; }
PIP=("$VENV/bin/python" -m pip -q --disable-pip-version-check)

# 1. venv
if [[ -x "$VENV/bin/python" ]]; then
    say "venv: $VENV (exists)"
else
    "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 10))' \
        || { say "error: $PYTHON is older than Python 3.10 (set SRUM_PYTHON)"; exit 1; }
    say "venv: creating $VENV with $("$PYTHON" -V 2>&1)"
    "$PYTHON" -m venv "$VENV"
fi

# 2. torch + torchvision (regular registry build; never pin 2.13.0 here)
if TV="$("$VENV/bin/python" -c 'import torch, torchvision; torchvision.ops.nms
print(f"torch {torch.__version__}, torchvision {torchvision.__version__}")' 2>/dev/null)"; then
    say "torch: $TV (ok)"
else
    say "torch: pip install torch torchvision"
    "${PIP[@]}" install torch torchvision
fi

# 3. the package itself, editable, with test extras
STAMP="$VENV/.srum-bootstrap.sha256"
HASH="$(cat pyproject.toml requirements.txt | sha256sum | cut -d' ' -f1)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then
    say "srum: installed, pyproject.toml/requirements.txt unchanged (ok)"
else
    say "srum: pip install -e \".[dev]\""
    # (PYTHONWARNINGS: hide setuptools' generic "editable installation" banner)
    PYTHONWARNINGS=ignore "${PIP[@]}" install -e ".[dev]"
    echo "$HASH" > "$STAMP"
fi
