#!/usr/bin/env bash
# All three SRUM data stages in a row: generate -> propose -> judge, into RUN_DIR.
# Usage: srum_data_infer/run_all.sh RUN_DIR MODEL [SAM_CHECKPOINT]
#   MODEL: BAGEL-7B-MoT directory or hub id; SAM_CHECKPOINT: sam_vit_h_4b8939.pth.
#   Extra settings: GENERATE_ARGS / PROPOSE_ARGS / JUDGE_ARGS (space-separated KEY=VALUE).
#   With CONFIG_PREFIX=configs/data/tiny_ the tiny configs are used (no SAM checkpoint).
# Each stage resumes where it stopped and is skipped when complete.
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '2,8p' "$0"; exit 2; fi
RUN_DIR="$1"; MODEL="$2"; SAM="${3:-}"
HERE="$(dirname "${BASH_SOURCE[0]}")"
PREFIX="${CONFIG_PREFIX:-configs/data/}"
SAM_ARG=()
if [ -n "$SAM" ]; then SAM_ARG=("proposals.sam.checkpoint=$SAM"); fi
# shellcheck disable=SC2086
bash "$HERE/generate.sh" --config "${PREFIX}generate.yaml" model.path="$MODEL" out_dir="$RUN_DIR/generate" ${GENERATE_ARGS:-}
# shellcheck disable=SC2086
bash "$HERE/propose.sh" --config "${PREFIX}propose.yaml" model.path="$MODEL" images="$RUN_DIR/generate/manifest.jsonl" \
  out_dir="$RUN_DIR/propose" "${SAM_ARG[@]}" ${PROPOSE_ARGS:-}
# shellcheck disable=SC2086
bash "$HERE/judge.sh" --config "${PREFIX}judge.yaml" model.path="$MODEL" regions="$RUN_DIR/propose/regions.jsonl" \
  out_dir="$RUN_DIR/judge" ${JUDGE_ARGS:-}
echo "reward records: $RUN_DIR/judge/rewards.jsonl"
