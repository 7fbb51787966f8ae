#!/usr/bin/env bash
# Training checkpoint -> a BAGEL-7B-MoT directory (ema.safetensors, configs, tokenizer, VAE, model card).
# Usage: tool/trans2hf.sh CHECKPOINT BASE_MODEL OUT_DIR [--weights auto|ema|model] [--dtype bfloat16|float32]
#   CHECKPOINT: a step-NNNNNN directory, or a run directory (its latest checkpoint is used).
set -euo pipefail
if [ $# -lt 3 ]; then sed -n '2,4p' "$0"; exit 2; fi
CKPT="$1"; BASE="$2"; OUT="$3"; shift 3
exec "${PYTHON:-python}" -m srum export checkpoint "$CKPT" --base "$BASE" --out "$OUT" "$@"
