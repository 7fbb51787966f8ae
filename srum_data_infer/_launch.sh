# Shared by the srum_data_infer/*.sh entry points (sourced, not run).
# srum_launch STAGE [--config FILE] [KEY=VALUE ...]
#   One process when NNODES * NPROC_PER_NODE is 1, otherwise torchrun. Environment:
#   NPROC_PER_NODE  processes on this node (default: number of visible GPUs, or 1 without GPUs)
#   NNODES          number of nodes (default 1)
#   NODE_RANK       this node's rank (default 0)
#   MASTER_ADDR     address of node 0 (default 127.0.0.1)
#   MASTER_PORT     port on node 0 (default 29500)
#   PYTHON          interpreter with srum installed (default: python)
srum_launch() {
  local stage="$1"; shift
  local py="${PYTHON:-python}"
  local gpus
  gpus=$("$py" -c 'import torch; print(torch.cuda.device_count())' 2>/dev/null || echo 0)
  local nproc="${NPROC_PER_NODE:-$(( gpus > 0 ? gpus : 1 ))}"
  local nnodes="${NNODES:-1}"
  if [ "$(( nproc * nnodes ))" -le 1 ]; then
    exec "$py" -m srum "$stage" "$@"
  fi
  exec "$py" -m torch.distributed.run --nnodes "$nnodes" --node_rank "${NODE_RANK:-0}" \
    --nproc_per_node "$nproc" --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
    -m srum "$stage" "$@"
}
