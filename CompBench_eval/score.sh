#!/usr/bin/env bash
# T2I-CompBench evaluation, step 2 (srum eval compbench score): the MLLM judge scores every image
# of <out_dir>/images into <out_dir>/scores/scores.jsonl. Resumes where it stopped.
# Usage: CompBench_eval/score.sh --config configs/eval/compbench.yaml out_dir=runs/eval/bagel \
#          [judge.model=Qwen/Qwen2.5-VL-32B-Instruct] [KEY=VALUE ...]
# Judge placement (EVAL.md, "Judge choice"):
#   JUDGE_GPUS_PER_PROCESS=g  each process shards the judge over g GPUs; NPROC_PER_NODE defaults to
#                             (visible GPUs / g). 72B in bf16 (~147 GB of weights): g=4 on 80 GB
#                             cards (2 replicas on 8 GPUs), g=2 on 141 GB cards.
#   unset                     one judge per GPU (7B; 32B on 80 GB cards), or NPROC_PER_NODE=1 judge.device_map=auto
#                             for a single process spread over every GPU.
# NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT as in srum_data_infer/_launch.sh.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../srum_data_infer/_launch.sh"
G="${JUDGE_GPUS_PER_PROCESS:-1}"
EXTRA=()
if [ "$G" -gt 1 ]; then
  GPUS=$("${PYTHON:-python}" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
  if [ "$GPUS" -lt "$G" ]; then
    echo "JUDGE_GPUS_PER_PROCESS=$G but only $GPUS GPU(s) are visible" >&2; exit 2
  fi
  export NPROC_PER_NODE="${NPROC_PER_NODE:-$(( GPUS / G ))}"
  EXTRA=("judge.gpus_per_process=$G")
fi
srum_launch eval compbench score "$@" ${EXTRA[@]+"${EXTRA[@]}"}
