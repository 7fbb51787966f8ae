# SPDX-License-Identifier: Apache-2.0
"""Understanding benchmarks through lmms-eval ("understanding preserved").

SRUM trains the model that also answers questions about images, so a trained model must
be checked on understanding benchmarks too (the paper's Table 2: MME, MMBench, MM-Vet,
MMMU, MathVista, MMVP). This package plugs srum checkpoints into lmms-eval:

* :mod:`.lmms_adapter`: the lmms-eval model class (``generate_until``,
  ``loglikelihood``, ``generate_until_multi_round``) over :class:`srum.models.bagel.Bagel`;
* :mod:`.registration`: the ``lmms_eval.models`` entry point (``lmms-eval --model srum``);
* :mod:`.benchmarks`: each task's headline metric and the paper's numbers;
* :mod:`.runner`: ``srum eval understanding``: lmms-eval's own results plus a srum
  ``summary.json`` / ``summary.md`` and a truthful ``status.json``.

lmms-eval is an optional dependency (``pip install -e ".[understanding]"``); nothing here
imports it until an evaluation runs.
"""
