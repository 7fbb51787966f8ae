#!/usr/bin/env bash
# Generated images + manifest -> parquet for the plain fine-tuning (SFT) baseline (PNG bytes kept as written).
# Usage: tool/trans2parquet.sh MANIFEST OUT.parquet [--rows-per-file N]
set -euo pipefail
if [ $# -lt 2 ]; then sed -n '2,3p' "$0"; exit 2; fi
exec "${PYTHON:-python}" -m srum export sft-parquet "$@"
