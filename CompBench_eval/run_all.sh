#!/usr/bin/env bash
# T2I-CompBench evaluation end to end: generate -> score -> summarize, into RUN_DIR.
# Usage: CompBench_eval/run_all.sh RUN_DIR MODEL [JUDGE]
#   MODEL: the Bagel to evaluate (directory or hub id); JUDGE: Qwen2.5-VL-Instruct directory or hub id
#   (default: the config's, Qwen/Qwen2.5-VL-72B-Instruct).
#   THINK=1 for the chain-of-thought variant; CONFIG (default configs/eval/compbench.yaml);
#   extra settings: GENERATE_ARGS / SCORE_ARGS (space-separated KEY=VALUE).
#   GPUs: NPROC_PER_NODE etc. for generation, JUDGE_GPUS_PER_PROCESS for the judge (see score.sh).
# Every step resumes where it stopped; a finished step is skipped. Results: RUN_DIR/summary/summary.md.
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '2,10p' "$0"; exit 2; fi
RUN_DIR="$1"; MODEL="$2"; JUDGE="${3:-}"
HERE="$(dirname "${BASH_SOURCE[0]}")"
CONFIG="${CONFIG:-configs/eval/compbench.yaml}"
COMMON=(--config "$CONFIG" out_dir="$RUN_DIR")
if [ "${THINK:-0}" = "1" ]; then COMMON+=(sampling.think=true); fi
JUDGE_ARG=()
if [ -n "$JUDGE" ]; then JUDGE_ARG=("judge.model=$JUDGE"); fi
# shellcheck disable=SC2086
bash "$HERE/generate.sh" "${COMMON[@]}" model.path="$MODEL" ${GENERATE_ARGS:-}
SCORE_ENV=()
if [ "${JUDGE_GPUS_PER_PROCESS:-1}" -gt 1 ]; then
  SCORE_ENV=(-u NPROC_PER_NODE)  # one process per JUDGE_GPUS_PER_PROCESS GPUs, not one per GPU
fi
# shellcheck disable=SC2086
env ${SCORE_ENV[@]+"${SCORE_ENV[@]}"} bash "$HERE/score.sh" "${COMMON[@]}" ${JUDGE_ARG[@]+"${JUDGE_ARG[@]}"} ${SCORE_ARGS:-}
"${PYTHON:-python}" -m srum eval compbench summarize "${COMMON[@]}"
echo "summary: $RUN_DIR/summary/summary.md"
echo "compare with another run: srum eval compare BASE_RUN $RUN_DIR --out COMPARE_DIR"
