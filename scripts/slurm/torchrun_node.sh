#!/usr/bin/env bash
# One node's share of a multi-node srum command under SLURM: run it once per node
# (srun --ntasks-per-node=1 ...). Everything torchrun needs comes from SLURM's variables:
#   nodes       SLURM_JOB_NUM_NODES (or SLURM_NNODES)
#   node rank   SLURM_NODEID
#   master      the first host of SLURM_JOB_NODELIST (scontrol show hostnames), port MASTER_PORT
#   rendezvous  static (--master_addr/--master_port/--node_rank); RDZV=c10d uses
#               --rdzv-backend=c10d --rdzv-endpoint=MASTER:PORT --rdzv-id=$SLURM_JOB_ID
#   processes   NPROC_PER_NODE, else SLURM_GPUS_ON_NODE, else 1
# SRUM_LOG_DIR=<dir>: rank-N.log per process (lines prefixed [rank N]) and torchrun's
# error files (a failed worker's traceback) under <dir>/torchrun.
#   srun --ntasks-per-node=1 bash scripts/slurm/torchrun_node.sh train --config configs/train/bagel7b_compbench.yaml
set -euo pipefail

first_host() {   # node[001-004],gpu7 -> node001 (without scontrol)
    local list="$1"
    if [[ "$list" =~ ^([^\[,]+)\[([0-9]+) ]]; then echo "${BASH_REMATCH[1]}${BASH_REMATCH[2]}"; else echo "${list%%,*}"; fi
}

NODELIST="${SLURM_JOB_NODELIST:-${SLURM_NODELIST:-localhost}}"
if [[ -z "${MASTER_ADDR:-}" ]]; then
    if command -v scontrol >/dev/null 2>&1; then
        MASTER_ADDR="$(scontrol show hostnames "$NODELIST" | awk 'NR == 1')"  # (not head: under pipefail its early exit kills the pipe)
    else
        MASTER_ADDR="$(first_host "$NODELIST")"
    fi
fi
MASTER_PORT="${MASTER_PORT:-29500}"
NNODES="${SLURM_JOB_NUM_NODES:-${SLURM_NNODES:-1}}"
NODE_RANK="${SLURM_NODEID:-0}"
NPROC="${NPROC_PER_NODE:-${SLURM_GPUS_ON_NODE:-1}}"
NPROC="${NPROC%%(*}"    # SLURM_GPUS_ON_NODE may read "8(IDX:0-7)"

if [[ "${RDZV:-static}" == c10d ]]; then
    RENDEZVOUS=(--rdzv-backend=c10d "--rdzv-endpoint=$MASTER_ADDR:$MASTER_PORT" "--rdzv-id=${SLURM_JOB_ID:-srum}")
else
    RENDEZVOUS=("--master_addr=$MASTER_ADDR" "--master_port=$MASTER_PORT" "--node_rank=$NODE_RANK")
fi
LOGS=()
if [[ -n "${SRUM_LOG_DIR:-}" ]]; then
    export SRUM_RANK_LOG_DIR="$SRUM_LOG_DIR"
    LOGS=("--log-dir=$SRUM_LOG_DIR/torchrun/node-$NODE_RANK")
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
export SRUM_DIST_TIMEOUT_MINUTES="${SRUM_DIST_TIMEOUT_MINUTES:-120}"

exec ${TORCHRUN:-torchrun} "--nnodes=$NNODES" "--nproc_per_node=$NPROC" "${RENDEZVOUS[@]}" "${LOGS[@]}" -m srum "$@"
