#!/usr/bin/env bash
# GPU check: one command, under 10 minutes on one GPU, that exercises every CUDA path of srum
# on a width-faithful, depth-reduced Bagel (Bagel-7B-MoT widths, 4 decoder layers, random
# weights; nothing to download) and writes a JSON of figures:
#   - flash-attn and SDPA give the same results in decoding, sampling and training;
#   - bf16 FSDP2 train steps: tokens/s, MFU, peak memory;
#   - batched CFG sampling vs one forward per branch; KV-cache decoding;
#   - the judge: self-judgment (text and logits) and the in-process Qwen2.5-VL judge on the GPU.
#
#   bash scripts/gpu_check.sh                    # cuda:0 -> outputs/gpu_check/gpu_check.json
#   bash scripts/gpu_check.sh --device cuda:1 --layers 8 --out /tmp/gpu_check
#   bash scripts/gpu_check.sh --device cpu       # a dry run of the same steps on the tiny model (about a minute)
#
# Exit code 0 when every check passed; the JSON says which failed and why. Put the figures in
# README.md, "Performance", with the date and the GPU. PYTHON overrides the interpreter.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$ROOT/.venv/bin/python" ]]; then PYTHON="$ROOT/.venv/bin/python"; else PYTHON=python3; fi
fi
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}" HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
exec "$PYTHON" "$ROOT/scripts/gpu_check.py" "$@"
