#!/usr/bin/env bash
# Single-node training with torchrun (one process per GPU; gloo processes on a CPU box).
#   scripts/train.sh [NPROC] --config configs/train/bagel7b_compbench.yaml [dotted.key=value ...]
# NPROC: first argument if it is a number, else $NPROC_PER_NODE, else the number of
# visible GPUs (1 without GPUs). Uses the torchrun on PATH unless $TORCHRUN is set.
set -euo pipefail

NPROC="${NPROC_PER_NODE:-}"
if [[ $# -gt 0 && "$1" =~ ^[0-9]+$ ]]; then
  NPROC="$1"
  shift
fi
if [[ -z "$NPROC" ]]; then
  NPROC="$(python -c 'import torch; print(max(torch.cuda.device_count(), 1))')"
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

exec "${TORCHRUN:-torchrun}" --standalone --nnodes=1 --nproc_per_node="$NPROC" -m srum train "$@"
