# SPDX-License-Identifier: Apache-2.0
"""Which number of an lmms-eval task is its headline, and what the SRUM paper reports.

lmms-eval reports each task's metrics on the task's own scale (MMMU, MMVP and POPE as a
fraction, MMBench, MM-Vet and MathVista in percent, MME as a sum of per-category scores).
A :class:`Headline` names the metric and the factor that puts it on the paper's scale
(percent, MME as a score out of 2000 / 800), so our rows read beside the paper's.

Paper: SRUM (arXiv 2510.12784), Table 2 ("understanding benchmarks"), Bagel / SFT /
SRUM. POPE is not in that table (the brief's seventh benchmark; measured, no paper row).
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Headline:
    task: str        # lmms-eval task name (a leaf task, as in results["results"])
    metric: str      # metric key without the ",<filter>" suffix
    column: str      # our summary column
    header: str      # table header
    scale: float = 1.0   # multiply lmms-eval's value by this to get the paper's scale


HEADLINES: tuple[Headline, ...] = (
    Headline("mme", "mme_perception_score", "mme_p", "MME-P"),
    Headline("mme", "mme_cognition_score", "mme_c", "MME-C"),
    Headline("mmbench_en_dev", "gpt_eval_score", "mmbench", "MMBench"),
    Headline("mmvet", "gpt_eval_score", "mmvet", "MM-Vet"),
    Headline("mmmu_val", "mmmu_acc", "mmmu", "MMMU", 100.0),
    # mathvista_testmini is a group of three prompt styles; "format" (answer in the asked
    # format) is the one the other MathVista rows are usually quoted with
    Headline("mathvista_testmini_format", "llm_as_judge_eval", "mathvista", "MathVista"),
    Headline("mmvp", "mmvp_accuracy", "mmvp", "MMVP", 100.0),
    Headline("pope", "pope_f1_score", "pope_f1", "POPE F1", 100.0),
)

# the command line / pipeline default: the paper's benchmarks plus POPE
DEFAULT_TASKS = ("mme", "mmbench_en_dev", "mmmu_val", "mmvet", "mathvista_testmini", "mmvp", "pope")

# tasks whose score needs an LLM judge configured the way lmms-eval documents it (API
# key in the environment): without one they fail or fall back to rule matching
JUDGED_TASKS = ("mmbench_en_dev", "mmvet", "mathvista_testmini", "mathvista_testmini_format",
                "mathvista_testmini_cot", "mathvista_testmini_solution")

PAPER = "SRUM paper (arXiv 2510.12784), Table 2"
_PAPER_COLUMNS = ("mme_p", "mme_c", "mmbench", "mmvet", "mmmu", "mathvista", "mmvp")
_PAPER_ROWS = {
    "Bagel": (1687, 701, 85.0, 67.2, 55.3, 73.1, 69.3),
    "Bagel+SFT": (1682, 683, 84.6, 66.5, 55.0, 72.8, 68.7),
    "Bagel+SRUM": (1673, 677, 84.8, 67.0, 55.2, 73.0, 70.0),
}
PAPER_ROWS: dict[str, dict[str, float]] = {label: dict(zip(_PAPER_COLUMNS, values))
                                           for label, values in _PAPER_ROWS.items()}


def headlines_for(task: str) -> list[Headline]:
    return [h for h in HEADLINES if h.task == task]
