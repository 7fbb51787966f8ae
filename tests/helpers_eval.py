# SPDX-License-Identifier: Apache-2.0
"""Helpers shared by the evaluation tests (`srum eval compbench`, `t2i-reasonbench`, `wise`).
The tiny random Qwen2.5-VL judge is the session fixture ``tiny_judge_dir`` (conftest.py)."""
import argparse
from pathlib import Path

from srum.evaluation.cli import add_eval_parser
from srum.stages.shards import iter_jsonl

# generation settings that keep a tiny Bagel's evaluation images quick on CPU
TINY_SAMPLING = ["sampling.height=32", "sampling.width=32", "sampling.num_timesteps=3", "sampling.max_think_tokens=4"]


def jsonl_rows(path) -> list[dict]:
    """The parseable rows of a JSONL file (bad lines skipped)."""
    return [obj for _, obj, err in iter_jsonl(Path(path)) if obj is not None]


def eval_parser() -> argparse.ArgumentParser:
    """``srum`` with only its ``eval`` sub-commands, to run them in-process."""
    parser = argparse.ArgumentParser(prog="srum")
    add_eval_parser(parser.add_subparsers(dest="command", required=True))
    return parser
