#!/usr/bin/env bash
# SRUM data stage: prompts -> candidate images (think mode).
# Usage: srum_data_infer/generate.sh [--config configs/data/generate.yaml] [KEY=VALUE ...]
# Multi-GPU / multi-node: set NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT
# (see _launch.sh). Fields and outputs: TRAIN.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
srum_launch generate "$@"
