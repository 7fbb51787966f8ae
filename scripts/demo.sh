#!/usr/bin/env bash
# The main job: SRUM measured in the miniature world. Two rounds of the whole loop
# (generate -> propose -> judge -> train -> export -> eval -> report) with the shipped
# miniature Bagel (models/miniworld) on CPU, scored by the world's exact oracle on
# held-out prompts: configs/pipeline/miniworld.yaml. A few minutes on 2 cores.
#   bash scripts/demo.sh [run dir] [KEY=VALUE ...]          (default: <repo root>/outputs/pipeline-miniworld)
#   bash scripts/demo.sh --tiny [run dir] [KEY=VALUE ...]   random tiny Bagel + random tiny Qwen2.5-VL judge
#                                                           (configs/pipeline/tiny.yaml: the machinery only)
# KEY=VALUE are pipeline overrides, e.g. model.path=/path/to/another/miniature/model rounds=3.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${SRUM_VENV:-$ROOT/.venv}"
case "$VENV" in /*) ;; *) VENV="$PWD/$VENV" ;; esac
export SRUM_VENV="$VENV"

CONFIG=configs/pipeline/miniworld.yaml
DEFAULT_OUT="$ROOT/outputs/pipeline-miniworld"
if [[ "${1:-}" == "--tiny" ]]; then
    CONFIG=configs/pipeline/tiny.yaml
    DEFAULT_OUT="$ROOT/outputs/pipeline-tiny"
    shift
fi
OUT="$DEFAULT_OUT"
if [[ $# -gt 0 && "$1" != *=* ]]; then OUT="$1"; shift; fi
case "$OUT" in /*) ;; *) OUT="$PWD/$OUT" ;; esac   # a given path is relative to the caller's cwd

bash "$ROOT/scripts/bootstrap.sh"

cd "$ROOT"
if [[ "$CONFIG" == configs/pipeline/miniworld.yaml && ! -f models/miniworld/llm_config.json ]] \
        && ! printf '%s\n' "$@" | grep -q '^model\.path='; then
    echo "demo: models/miniworld (the miniature Bagel) is not here; train one with" >&2
    echo "  bash scripts/miniworld_pretrain.sh outputs/miniworld/pretrain   (then copy its model/ to models/miniworld)" >&2
    echo "or pass model.path=DIR, or run the random-weights variant: bash scripts/demo.sh --tiny" >&2
    exit 2
fi
export HF_HUB_OFFLINE=1
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec "$VENV/bin/srum" pipeline --config "$CONFIG" "run_dir=$OUT" "$@"
