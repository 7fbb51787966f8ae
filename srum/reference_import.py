# SPDX-License-Identifier: Apache-2.0
"""Reading the reference's formatted rows as leniently as the reference trainer does.

The reference trainer never drops a row for one bad region: a box that is not four
numbers, or whose corners cross, is skipped; a box beyond the image is clamped to it; a
score outside [-1, 1] is used as it is. Our records keep every score in [-1, 1], so here:

* a region whose box is not four finite numbers, or is empty once clamped to the image,
  is **dropped** (the row is kept);
* a box beyond the image is **clamped** to it (up to ``BBOX_SLACK_PX`` this is silent
  float noise, as for our own records; beyond it, it is counted);
* a score outside [-1, 1] is **clamped** to it (counted; the number as written is kept in
  the entry's ``detail.raw_score``). The reference would use it unclamped (a weight
  above 1 or below 0); we do not, so that every map stays in its documented range.

What was fixed in a row is written to the record's ``judge.import_fixes`` (counts, and a
message per dropped region) and summed into the trainer's ``data_report.json`` and the
``srum records import-reference`` summary (:func:`tally_import_fixes`).
"""
from __future__ import annotations

import math
from typing import Any

__all__ = ["FIX_KEYS", "lenient_box", "lenient_score", "new_fixes", "tally_import_fixes"]

# Counters of import_fixes (each also a data_report.json key under "import_fixes").
FIX_KEYS = ("regions_dropped", "boxes_clamped", "scores_clamped", "global_scores_clamped")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def new_fixes() -> dict:
    return {**dict.fromkeys(FIX_KEYS, 0), "dropped": []}


def lenient_box(bbox: Any, width: int, height: int, slack: float) -> tuple[list[float] | None, str | None]:
    """A reference box -> (box clamped to the image, None) when usable, ``clamped`` set when
    it moved by more than ``slack`` px; (None, why) when the region has to be dropped."""
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4 or not all(_number(v) for v in bbox):
        return None, f"bbox {bbox!r} is not four finite numbers"
    x1, y1, x2, y2 = (float(v) for v in bbox)
    clamped = [min(max(x1, 0.0), width), min(max(y1, 0.0), height),
               min(max(x2, 0.0), width), min(max(y2, 0.0), height)]
    if clamped[2] <= clamped[0] or clamped[3] <= clamped[1]:
        return None, f"bbox {list(bbox)!r} is empty inside the {width}x{height} image"
    moved = max(abs(a - b) for a, b in zip(clamped, (x1, y1, x2, y2)))
    return clamped, ("clamped" if moved > slack else None)


def lenient_score(score: float, slack: float) -> tuple[float, bool]:
    """A numeric score -> (score clamped into [-1, 1], whether it was outside by more than
    ``slack``)."""
    clamped = min(1.0, max(-1.0, float(score)))
    return clamped, abs(clamped - float(score)) > slack


def tally_import_fixes(records: list[dict]) -> dict:
    """Sum the ``judge.import_fixes`` of records -> {key: count for FIX_KEYS} plus
    ``rows_fixed`` (rows with any fix)."""
    total = {**dict.fromkeys(FIX_KEYS, 0), "rows_fixed": 0}
    for record in records:
        fixes = (record.get("judge") or {}).get("import_fixes")
        if not fixes:
            continue
        counts = [int(fixes.get(key, 0)) for key in FIX_KEYS]
        for key, count in zip(FIX_KEYS, counts):
            total[key] += count
        total["rows_fixed"] += any(counts)
    return total
