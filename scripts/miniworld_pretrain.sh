#!/usr/bin/env bash
# Train the miniature world's Bagel from scratch (srum miniworld pretrain), optionally
# within a wall-clock budget for the training phase.
#
#   bash scripts/miniworld_pretrain.sh OUT_DIR [TRAIN_SECONDS] [--config FILE] [KEY=VALUE ...]
#
# Without TRAIN_SECONDS (or with 0) training runs to train.total_steps of
# configs/train/miniworld_pretrain.yaml. With it, training is stopped after that many
# seconds and the run is finished at its last checkpoint: the schedule is constant after
# warmup and the weights exported are the EMA's, so a run stopped at step N is the run of
# N steps (TRAIN.md, "The miniature world"); the step count is in OUT_DIR/train/done.json.
# Rerunning with the same arguments continues where it stopped. With a budget, the config's
# train_overrides are replaced (by the step count), so give training settings in its
# train_config YAML instead.
set -euo pipefail
OUT_DIR="${1:?usage: miniworld_pretrain.sh OUT_DIR [TRAIN_SECONDS] [KEY=VALUE ...]}"
BUDGET="${2:-0}"
shift $(( $# >= 2 ? 2 : 1 ))
PY="${PYTHON:-python3}"

run() { "$PY" -m srum miniworld pretrain "$@" out_dir="$OUT_DIR"; }

if [[ "$BUDGET" -gt 0 && ! -f "$OUT_DIR/train/done.json" ]]; then
    # phase by phase: data + init + as much training as the budget allows (a large
    # total_steps; the kill comes first), then finish at the last saved step
    set +e
    timeout --signal=TERM --kill-after=20 "$BUDGET" \
        "$PY" -m srum miniworld pretrain "$@" out_dir="$OUT_DIR" 'train_overrides=["train.total_steps=1000000"]'
    set -e
    last=$(ls -d "$OUT_DIR"/train/checkpoints/step-* 2>/dev/null | sed 's/.*step-0*//' | sort -n | tail -1)
    [[ -n "$last" ]] || { echo "no checkpoint was saved within $BUDGET s" >&2; exit 1; }
    echo "training stopped at the budget; finishing at step $last" >&2
    run "$@" "train_overrides=[\"train.total_steps=$last\"]"
else
    run "$@"
fi
