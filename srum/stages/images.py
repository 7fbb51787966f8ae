# SPDX-License-Identifier: Apache-2.0
"""Drawing the pictures of a prompt-driven stage (``srum generate``, ``srum eval compbench
generate``, ``srum eval geneval-images``): one ``generate_image`` call per batch of jobs,
then each picture saved and turned into a row by the stage.

What stays with each stage: which prompt and seed a job has, where its picture is saved,
and the fields (and field order) of its rows."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from srum.fileio import atomic_save_image

from .status import StageFailure


@dataclass(frozen=True)
class DrawnImage:
    """One job's picture as a stage's row builder receives it."""

    key: str                 # the job's image id
    seed: int                # the noise seed it was drawn with
    image: Any               # PIL.Image.Image, RGB
    thought: str | None      # the chain of thought before drawing (think mode), else None
    image_file: str          # where ``save`` put it, as the row names it


def image_batch_processor(model: Callable[[], Any], sampling, keys: Sequence[str], prompts: Sequence[str],
                          seeds: Sequence[int], *, save: Callable[[int, Any], str],
                          row: Callable[[int, DrawnImage], dict]) -> Callable[[list[int]], list[dict]]:
    """A ``process_batch`` for :func:`~srum.stages.common.run_items` that draws jobs.

    Job ``i`` draws ``prompts[i]`` from ``seeds[i]``; its result row is keyed ``keys[i]``.
    ``model()`` returns the Bagel (called at the first batch: see
    :func:`~srum.stages.common.lazy_model`); ``sampling.generate_kwargs()`` gives the
    rest of ``generate_image``'s arguments. ``save(i, image)`` writes job ``i``'s picture
    and returns its file name as the row gives it; ``row(i, drawn)`` builds the row. A model
    that does not load, or settings it refuses (``ValueError``: a height that is no multiple
    of 16, a NaN guidance scale), stop the stage with a :class:`StageFailure`: they are no
    item's fault, and error rows would make the corrected rerun skip every item."""
    def process(indices: list[int]) -> list[dict]:
        batch_seeds = [seeds[i] for i in indices]
        bagel = model()   # a load error propagates: it stops the stage
        try:
            result = bagel.generate_image([prompts[i] for i in indices], seed=batch_seeds,
                                          **sampling.generate_kwargs())
        except ValueError as err:
            raise StageFailure(f"the model refused the sampling settings: {err}") from err
        rows = []
        for j, i in enumerate(indices):
            image = result.images[j]
            thought = result.thoughts[j] if result.thoughts else None
            rows.append(row(i, DrawnImage(keys[i], batch_seeds[j], image, thought, save(i, image))))
        return rows
    return process


def png_saver(root: Path, file_of: Callable[[int], str]) -> Callable[[int, Any], str]:
    """A ``save`` for :func:`image_batch_processor`: job ``i``'s picture goes atomically to
    ``root / file_of(i)`` (a PNG path relative to ``root``, which the row then names)."""
    def save(i: int, image) -> str:
        image_file = file_of(i)
        atomic_save_image(image, Path(root) / image_file)
        return image_file
    return save
