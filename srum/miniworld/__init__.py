# SPDX-License-Identifier: Apache-2.0
"""A miniature compositional world in which a tiny Bagel can be trained and evaluated on a CPU.

* :mod:`srum.miniworld.world`: 64x64 scenes of coloured shapes on black (shape, colour,
  size, fill, position), their renderer, T2I-CompBench-style prompts in six categories,
  the train / held-out split by object combination, and the ground truth of a prompt
  on a scene (numpy + Pillow only);
* :mod:`srum.miniworld.oracle`: reads the objects back from a picture (colour
  segmentation, components, fill ratio, shape templates) and checks a prompt against
  them: an exact judge for this world (numpy + Pillow only);
* :mod:`srum.miniworld.evaluation`: ``srum eval miniworld``: images for the held-out
  prompts, scored by the oracle, summarised like T2I-CompBench runs;
* :mod:`srum.miniworld.tasks` / :mod:`srum.miniworld.data`: what the miniature Bagel is
  taught (t2i, cot and vqa rows for ``srum train`` from rendered scenes);
* :mod:`srum.miniworld.pretrain`: ``srum miniworld pretrain`` (data, tokenizer,
  autoencoder, ``srum train``, export); :mod:`srum.miniworld.abilities`: ``srum
  miniworld abilities`` (understanding, generation, judge agreement on held-out data).

Nothing here imports torch at import time except :mod:`srum.miniworld.evaluation`.
"""
from __future__ import annotations

from pathlib import Path

# The embedded default model: the miniature Bagel `srum miniworld pretrain` trained, in the
# BAGEL-7B-MoT layout (TRAIN.md, "The miniature world").
DEFAULT_MODEL_DIR = Path(__file__).resolve().parents[2] / "models" / "miniworld"


def default_model_dir() -> Path:
    """The shipped miniature Bagel; a clear error when this install does not carry it."""
    if not (DEFAULT_MODEL_DIR / "llm_config.json").is_file():
        raise FileNotFoundError(f"{DEFAULT_MODEL_DIR}: the embedded miniature model is not here (it ships in the "
                                "repository's models/miniworld; a wheel install has no copy): pass --model DIR")
    return DEFAULT_MODEL_DIR
