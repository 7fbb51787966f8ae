#!/usr/bin/env bash
# Multi-node training: run this on every node with the same arguments.
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=10.0.0.1 MASTER_PORT=29500 NPROC_PER_NODE=8 \
#     scripts/train_multinode.sh --config configs/train/bagel7b_compbench.yaml [dotted.key=value ...]
# All nodes must see the same output_dir (checkpoints are written by every rank).
# Uses the torchrun on PATH unless $TORCHRUN is set.
set -euo pipefail

: "${NNODES:?set NNODES (number of nodes)}"
: "${NODE_RANK:?set NODE_RANK (0 .. NNODES-1)}"
: "${MASTER_ADDR:?set MASTER_ADDR (address of node 0)}"
: "${MASTER_PORT:=29500}"
: "${NPROC_PER_NODE:?set NPROC_PER_NODE (processes, i.e. GPUs, per node)}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"

exec "${TORCHRUN:-torchrun}" --nnodes="$NNODES" --node_rank="$NODE_RANK" --master_addr="$MASTER_ADDR" \
  --master_port="$MASTER_PORT" --nproc_per_node="$NPROC_PER_NODE" -m srum train "$@"
