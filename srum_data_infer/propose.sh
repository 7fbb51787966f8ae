#!/usr/bin/env bash
# SRUM data stage: images -> SAM regions filtered by the model.
# Usage: srum_data_infer/propose.sh [--config configs/data/propose.yaml] [KEY=VALUE ...]
# Multi-GPU / multi-node: set NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR, MASTER_PORT
# (see _launch.sh). Fields and outputs: TRAIN.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/_launch.sh"
srum_launch propose "$@"
