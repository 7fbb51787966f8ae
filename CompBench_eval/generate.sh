#!/usr/bin/env bash
# T2I-CompBench evaluation, step 1 (srum eval compbench generate): one image per val prompt
# into <out_dir>/images/<category>/<id>.png. Resumes where it stopped.
# Usage: CompBench_eval/generate.sh --config configs/eval/compbench.yaml model.path=/ckpt/BAGEL-7B-MoT \
#          out_dir=runs/eval/bagel [sampling.think=true] [KEY=VALUE ...]
# Multi-GPU / multi-node (one model per GPU): NPROC_PER_NODE, NNODES, NODE_RANK, MASTER_ADDR,
# MASTER_PORT (see srum_data_infer/_launch.sh). Fields and outputs: EVAL.md.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/../srum_data_infer/_launch.sh"
srum_launch eval compbench generate "$@"
