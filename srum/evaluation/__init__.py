# SPDX-License-Identifier: Apache-2.0
"""Benchmark evaluation: T2I-CompBench, T2I-ReasonBench and WISE with an MLLM judge, GenEval image generation and scoring.

* :mod:`srum.evaluation.compbench`: images for the T2I-CompBench val prompts in a
  ``<category>/<id>[_<k>].png`` layout, and an export to the official
  ``samples/<prompt>_<index>.png`` layout;
* :mod:`srum.evaluation.scoring`: the 0-100 alignment rubric, its answer parser and the
  sharded, resumable judge stage;
* :mod:`srum.evaluation.summary`: per-category means, the reference overall formula,
  CSV / JSON / markdown / bar chart, side-by-side comparison of runs;
* :mod:`srum.evaluation.reasonbench` (with :mod:`~srum.evaluation.reasonbench_judge`):
  T2I-ReasonBench's prompts in its own layout, the describe-then-score judge conversation
  against each prompt's question-criterion pairs, its accuracy / quality arithmetic;
* :mod:`srum.evaluation.wise` (with :mod:`~srum.evaluation.wise_judge`): WISE's prompt
  files, one image per prompt in its ``<prompt_id>.png`` layout, the consistency / realism /
  aesthetic-quality judge, WiScore per category, subcategory, domain and overall;
* :mod:`srum.evaluation.geneval`: images for GenEval's ``evaluation_metadata.jsonl`` in
  the folder layout its detector-based scorer reads;
* :mod:`srum.evaluation.geneval_score`: that scorer run in the user's GenEval environment,
  its ``results.jsonl`` summarized per task as ``summary_scores.py`` does;
* :mod:`srum.evaluation.cli`: ``srum eval ...``.
"""
