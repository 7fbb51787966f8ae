#!/usr/bin/env bash
# SRUM measured in the miniature world (srum miniworld study, TRAIN.md "SRUM in the
# miniature world: the study"): SFT, SRUM (official, signed) and the ablations trained
# from one set of self-judged candidates per seed, scored on held-out prompts by the oracle.
#
#   bash scripts/miniworld_study.sh [--quick] [KEY=VALUE ...]
#   bash scripts/miniworld_study.sh out_dir=runs/study seeds=[0,1,2,3] train.steps=300
#   bash scripts/miniworld_study.sh --quick model=/tmp/mw_standin     # CI-sized smoke run
#
# Rerunning the same command resumes: finished units are skipped, a crashed one is redone.
# Results: <out_dir>/study.md (tables) and study.json (every number, runtimes).
# CONFIG picks another YAML (default configs/miniworld/study.yaml; shipped configs are found
# from any working directory); PYTHON the interpreter.
set -euo pipefail
exec "${PYTHON:-python3}" -m srum miniworld study --config "${CONFIG:-configs/miniworld/study.yaml}" "$@"
