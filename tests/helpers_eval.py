# SPDX-License-Identifier: Apache-2.0
"""Helpers shared by the evaluation tests (`srum eval compbench`, `t2i-reasonbench`, `wise`).
The tiny random Qwen2.5-VL judge is the session fixture ``tiny_judge_dir`` (conftest.py)."""
import argparse
import json
from pathlib import Path

from srum.evaluation.cli import add_eval_parser
from srum.evaluation.wise import DOMAINS
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


# ---------------------------------------------------------------- a small WISE in the upstream format
# per domain: (prompt_id, Category as the files spell it, Subcategory); a scripted judge
# answers the scores named in the prompt text
BENCH = {
    "culture": [(1, "Cultural knowledge", "Festival"), (2, "Cultural knowledge", "Festival"),
                (3, "Cultural knowledge", "Animal")],
    "space-time": [(401, "time", "Horizontal time"), (402, "time", "Longitudinal time"),
                   (521, "Space", "Relative Position")],
    "science": [(641, "Biology", "State"), (761, "Physical Knowledge", "Optics"), (881, "Chemistry", "Combustion")],
}
# the (consistency, realism, aesthetic quality) the scripted judge gives each prompt
LEVELS = {1: (2, 2, 2), 2: (1, 0, 1), 3: (0, 1, 2), 401: (2, 1, 0), 402: (1, 1, 1), 521: (2, 2, 1),
          641: (0, 0, 0), 761: (1, 2, 2), 881: (2, 0, 1)}


def write_wise(root: Path, suffix: str = "_verified", bench=BENCH) -> Path:
    """The three domain files of :data:`BENCH` under ``root`` (``suffix``: "_verified" or "" for
    the original release's names); each prompt's text names the levels of :data:`LEVELS`."""
    root.mkdir(parents=True, exist_ok=True)
    for domain, entries in bench.items():
        rows = [{"Prompt": f"Prompt {pid}: scores {LEVELS.get(pid)}", "Explanation": f"What prompt {pid} means",
                 "Category": cat, "Subcategory": sub, "prompt_id": pid} for pid, cat, sub in entries]
        (root / f"{DOMAINS[domain].file_stem}{suffix}.json").write_text(json.dumps(rows, indent=1))
    return root
