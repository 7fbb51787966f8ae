# SPDX-License-Identifier: Apache-2.0
"""Reward records: the ``srum.reward.v1`` JSONL schema, its checks, and the reference format.

One record per judged image (see ``/work/briefs/schema.md`` for the full layout). Boxes and
masks are in pixels of the *saved* image, whose size the record carries (``width``,
``height``). Box coordinates are continuous: pixel column ``q`` spans ``[q, q + 1]``, so
the tight box of a mask is ``[min_col, min_row, max_col + 1, max_row + 1]``
(:func:`mask_to_bbox`). Masks are COCO *uncompressed* RLE in column-major order, the format
``segment_anything`` emits with ``output_mode="uncompressed_rle"``.

The reference trainer's "formatted" rows (``bad_image_file`` / ``vlm_rewards``) convert both
ways (:func:`from_reference`, :func:`to_reference`). The reference format cannot say "the
global judgment failed"; such records are refused by :func:`to_reference` rather than
silently written as a neutral 0.0.
"""
from __future__ import annotations

import copy
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable, Literal

import numpy as np

from .reference_import import FIX_KEYS, lenient_box, lenient_score, new_fixes, tally_import_fixes

__all__ = [
    "SCHEMA",
    "GLOBAL_OBJECT",
    "RecordError",
    "validate_record",
    "carries_reward",
    "from_reference",
    "to_reference",
    "read_records",
    "write_records",
    "export_reference",
    "import_reference",
    "encode_rle",
    "decode_rle",
    "mask_problem",
    "mask_to_bbox",
]

SCHEMA = "srum.reward.v1"
# The reference format marks its global judgment with this "object" name.
GLOBAL_OBJECT = "global_layout_reward"

STATUSES = ("ok", "failed")
METHODS = ("text", "logits", "imported")
# Keys read_records adds (absolute paths); derived, so never written back.
DERIVED_KEYS = ("image_path", "reference_image_path")
# A box may stick out of the frame by this much (float noise, inclusive SAM boxes) and is clipped.
BBOX_SLACK_PX = 1.0
# Scores a hair outside [-1, 1] (float noise from probability arithmetic) are clipped.
SCORE_SLACK = 1e-6


class RecordError(ValueError):
    """A reward record (or reference row) that does not match the schema.

    The message starts with the location given by the caller, e.g.
    ``"rewards.jsonl:17: region 3: bbox x2 <= x1"``.
    """


# --------------------------------------------------------------------------- small checks

def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _positive_int(value: Any, where: str, name: str) -> int:
    if _is_number(value) and math.isfinite(value) and float(value).is_integer() and value > 0:
        return int(value)
    raise RecordError(f"{where}: {name} must be a positive integer, got {value!r}")


def _optional_str(value: Any, where: str, name: str) -> str | None:
    if value is None or isinstance(value, str):
        return value
    raise RecordError(f"{where}: {name} must be a string or null, got {type(value).__name__}")


def _require(obj: dict, keys: Iterable[str], where: str) -> None:
    missing = [k for k in keys if k not in obj]
    if missing:
        raise RecordError(f"{where}: missing key(s) {', '.join(missing)}")


def _check_judgment(entry: Any, where: str, required: tuple[str, ...]) -> dict:
    """Checks the fields shared by the global entry and regions; returns a normalised copy."""
    if not isinstance(entry, dict):
        raise RecordError(f"{where}: expected an object, got {type(entry).__name__}")
    _require(entry, required, where)
    out = dict(entry)
    status = entry["status"]
    if status not in STATUSES:
        raise RecordError(f"{where}: status must be one of {list(STATUSES)}, got {status!r}")
    if entry["method"] not in METHODS:
        raise RecordError(f"{where}: method must be one of {list(METHODS)}, got {entry['method']!r}")
    score = entry["score"]
    if status == "failed":
        if score is not None:
            raise RecordError(f"{where}: score must be null when status is 'failed', got {score!r}")
    else:
        if not _is_number(score) or not math.isfinite(score):
            raise RecordError(f"{where}: score must be a finite number when status is 'ok', got {score!r}")
        if not -1.0 - SCORE_SLACK <= score <= 1.0 + SCORE_SLACK:
            raise RecordError(f"{where}: score {score!r} outside [-1, 1]")
        out["score"] = min(1.0, max(-1.0, float(score)))
    reason = entry.get("reason", "")
    if not isinstance(reason, str):
        raise RecordError(f"{where}: reason must be a string, got {type(reason).__name__}")
    out["reason"] = reason
    detail = entry.get("detail", {})
    if detail is None:
        detail = {}
    if not isinstance(detail, dict):
        raise RecordError(f"{where}: detail must be an object, got {type(detail).__name__}")
    out["detail"] = detail
    return out


def _check_bbox(bbox: Any, width: int, height: int, where: str) -> list[float]:
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        raise RecordError(f"{where}: bbox must be a list [x1, y1, x2, y2], got {bbox!r}")
    if not all(_is_number(v) for v in bbox):
        raise RecordError(f"{where}: bbox values must be numbers, got {bbox!r}")
    x1, y1, x2, y2 = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)):
        raise RecordError(f"{where}: bbox has a non-finite value: {bbox!r}")
    for name, value, limit in (("x1", x1, width), ("x2", x2, width), ("y1", y1, height), ("y2", y2, height)):
        if value < -BBOX_SLACK_PX or value > limit + BBOX_SLACK_PX:
            raise RecordError(f"{where}: bbox {name}={value:g} out of frame [0, {limit}]")
    x1, x2 = min(max(x1, 0.0), width), min(max(x2, 0.0), width)
    y1, y2 = min(max(y1, 0.0), height), min(max(y2, 0.0), height)
    if x2 <= x1:
        raise RecordError(f"{where}: bbox x2 <= x1 ({bbox!r})")
    if y2 <= y1:
        raise RecordError(f"{where}: bbox y2 <= y1 ({bbox!r})")
    return [x1, y1, x2, y2]


def _check_rle(mask: Any, width: int, height: int, where: str) -> dict:
    if not isinstance(mask, dict) or "size" not in mask or "counts" not in mask:
        raise RecordError(f"{where}: mask must be null or an object with 'size' and 'counts'")
    if list(mask["size"]) != [height, width]:
        raise RecordError(f"{where}: mask size {mask['size']!r} != [height, width] = [{height}, {width}]")
    counts = mask["counts"]
    if isinstance(counts, str):
        raise RecordError(f"{where}: mask counts is a compressed RLE string; only uncompressed RLE "
                          "(a list of ints) is supported")
    if not isinstance(counts, list) or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 0
                                               for c in counts):
        raise RecordError(f"{where}: mask counts must be a list of non-negative integers")
    if sum(counts) != width * height:
        raise RecordError(f"{where}: mask counts sum to {sum(counts)}, expected height*width = {width * height}")
    return {"size": [height, width], "counts": list(counts)}


def mask_problem(mask: Any, width: int, height: int) -> str | None:
    """Why a region's mask cannot go into a record of a ``width`` x ``height`` image
    (None when it is fine: null, or an uncompressed RLE of that size)."""
    if mask is None:
        return None
    try:
        _check_rle(mask, width, height, "mask")
    except RecordError as err:
        return str(err)
    return None


# --------------------------------------------------------------------------- validation

def validate_record(rec: dict, where: str) -> dict:
    """Check one ``srum.reward.v1`` record; return a normalised deep copy.

    Normalisation: scores become floats (clipped into [-1, 1] when off by float noise),
    boxes become floats clipped into the frame (when within 1 px of it), optional keys get
    their defaults (``reason`` "", ``detail`` {}, ``mask``/``label``/``grounding`` null,
    ``prompt_id``/``sample_index``/``reference_image_file``/``category``/``judge`` null).
    Unknown keys are kept. Raises :class:`RecordError` whose message starts with ``where``.
    """
    if not isinstance(rec, dict):
        raise RecordError(f"{where}: a record must be a JSON object, got {type(rec).__name__}")
    _require(rec, ("schema", "image_id", "image_file", "prompt", "width", "height", "global", "regions"), where)
    if rec["schema"] != SCHEMA:
        raise RecordError(f"{where}: schema must be {SCHEMA!r}, got {rec['schema']!r}")
    out = copy.deepcopy(rec)
    for key in ("image_id", "image_file", "prompt"):
        if not isinstance(rec[key], str) or (key != "prompt" and not rec[key]):
            raise RecordError(f"{where}: {key} must be a non-empty string, got {rec[key]!r}")
    width = out["width"] = _positive_int(rec["width"], where, "width")
    height = out["height"] = _positive_int(rec["height"], where, "height")
    for key in ("prompt_id", "reference_image_file", "category"):
        out[key] = _optional_str(rec.get(key), where, key)
    sample_index = rec.get("sample_index")
    if sample_index is not None and (not isinstance(sample_index, int) or isinstance(sample_index, bool)
                                     or sample_index < 0):
        raise RecordError(f"{where}: sample_index must be a non-negative integer or null, got {sample_index!r}")
    out["sample_index"] = sample_index
    judge = rec.get("judge")
    if judge is not None and not isinstance(judge, dict):
        raise RecordError(f"{where}: judge must be an object or null")
    out["judge"] = copy.deepcopy(judge)

    out["global"] = _check_judgment(copy.deepcopy(rec["global"]), f"{where}: global", ("score", "status", "method"))

    if not isinstance(rec["regions"], list):
        raise RecordError(f"{where}: regions must be a list, got {type(rec['regions']).__name__}")
    regions, seen_ids = [], set()
    for index, raw in enumerate(copy.deepcopy(rec["regions"])):
        rid = raw.get("region_id", index) if isinstance(raw, dict) else index
        rwhere = f"{where}: region {rid}"
        region = _check_judgment(raw, rwhere, ("region_id", "bbox", "score", "status", "method"))
        if not isinstance(rid, int) or isinstance(rid, bool):
            raise RecordError(f"{rwhere}: region_id must be an integer")
        if rid in seen_ids:
            raise RecordError(f"{rwhere}: duplicate region_id")
        seen_ids.add(rid)
        region["bbox"] = _check_bbox(raw["bbox"], width, height, rwhere)
        mask = raw.get("mask")
        region["mask"] = None if mask is None else _check_rle(mask, width, height, rwhere)
        region["label"] = _optional_str(raw.get("label"), rwhere, "label")
        grounding = raw.get("grounding")
        if grounding is not None:
            if not isinstance(grounding, dict):
                raise RecordError(f"{rwhere}: grounding must be an object or null")
            if "kept" in grounding and not isinstance(grounding["kept"], bool):
                raise RecordError(f"{rwhere}: grounding.kept must be true or false")
            p = grounding.get("p_relevant")
            if p is not None and not (_is_number(p) and 0.0 <= p <= 1.0):
                raise RecordError(f"{rwhere}: grounding.p_relevant must be a number in [0, 1], got {p!r}")
        region["grounding"] = grounding
        regions.append(region)
    out["regions"] = regions
    return out


def carries_reward(entry: dict) -> bool:
    """Whether a (validated) global entry or region contributes reward.

    Only status "ok" with a numeric score counts; a region the self-grounding filter
    dropped (``grounding.kept == false``) carries none either.
    """
    if entry.get("status") != "ok" or not _is_number(entry.get("score")):
        return False
    grounding = entry.get("grounding")
    return not (isinstance(grounding, dict) and grounding.get("kept") is False)


# --------------------------------------------------------------------------- reference format

def from_reference(obj: dict, where: str, image_size: tuple[int, int] | None) -> dict:
    """Reference "formatted" row -> validated ``srum.reward.v1`` record.

    ``image_size`` = (width, height) of the saved image (the caller opens it); None takes it
    from the global entry's bbox ``[0, 0, W, H]``. A missing global entry (or one without a
    numeric score) becomes a *failed* global judgment, never a 0.0; a genuine 0.0 is a
    score like any other. Every other entry becomes a region: method "imported", label =
    its "object" text ("" -> null), status "ok" (or "failed" when it has no numeric score).

    As lenient as the reference trainer (see :mod:`srum.reference_import`): a region with
    an unusable or empty box is dropped, a box beyond the image is clamped to it, a score
    outside [-1, 1] is clamped; the row is kept and ``judge.import_fixes`` counts each fix.
    """
    if not isinstance(obj, dict):
        raise RecordError(f"{where}: a reference row must be a JSON object")
    _require(obj, ("bad_image_file", "vlm_rewards"), where)
    bad = obj["bad_image_file"]
    if not isinstance(bad, str) or not bad:
        raise RecordError(f"{where}: bad_image_file must be a non-empty string")
    good = obj.get("good_image_file")
    if good is not None and not isinstance(good, str):
        raise RecordError(f"{where}: good_image_file must be a string")
    entries = obj["vlm_rewards"]
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise RecordError(f"{where}: vlm_rewards must be a list of objects")
    globals_ = [e for e in entries if e.get("object") == GLOBAL_OBJECT]
    if len(globals_) > 1:
        raise RecordError(f"{where}: {len(globals_)} {GLOBAL_OBJECT} entries, expected at most one")
    glob = globals_[0] if globals_ else None

    if image_size is None:
        box = glob.get("bbox") if glob else None
        if not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box)):
            raise RecordError(f"{where}: image size unknown: no image size given and no "
                              f"{GLOBAL_OBJECT} bbox [0, 0, W, H]")
        image_size = (box[2], box[3])
    width = _positive_int(image_size[0], where, "width")
    height = _positive_int(image_size[1], where, "height")

    fixes = new_fixes()
    if glob is not None and _is_number(glob.get("score")) and math.isfinite(glob["score"]):
        score, clamped = lenient_score(glob["score"], SCORE_SLACK)
        fixes["global_scores_clamped"] += clamped
        global_entry = {"score": score, "reason": glob.get("reason") or "", "status": "ok",
                        "method": "imported", "detail": {"raw_score": glob["score"]} if clamped else {}}
    else:
        why = "no global_layout_reward entry" if glob is None else "global_layout_reward has no numeric score"
        global_entry = {"score": None, "reason": (glob or {}).get("reason") or "", "status": "failed",
                        "method": "imported", "detail": {"error": why}}

    regions = []
    for index, entry in enumerate(entries):
        if entry.get("object") == GLOBAL_OBJECT:
            continue
        region = _lenient_region(entry, len(regions), width, height, fixes)
        if region is None:
            fixes["dropped"].append(f"vlm_rewards[{index}]: " + fixes.pop("_why"))
        else:
            regions.append(region)
    record = {
        "schema": SCHEMA,
        "image_id": Path(bad).stem,
        "prompt_id": None,
        "sample_index": None,
        "image_file": bad,
        "reference_image_file": good if good and good != bad else None,
        "prompt": obj.get("prompt") or "",
        "category": None,
        "width": width,
        "height": height,
        "global": global_entry,
        "regions": regions,
        "judge": {"backend": "imported", "model": None, "mode": None,
                  **({"import_fixes": fixes} if any(fixes[k] for k in FIX_KEYS) else {})},
    }
    return validate_record(record, where)


def _lenient_region(entry: dict, region_id: int, width: int, height: int, fixes: dict) -> dict | None:
    """One reference region entry -> our region (box and score fixed as the reference
    trainer tolerates them, see :mod:`srum.reference_import`), or None when it has to be
    dropped (``fixes["_why"]`` says why; the counters are updated)."""
    box, box_fix = lenient_box(entry.get("bbox"), width, height, BBOX_SLACK_PX)
    if box is None:
        fixes["regions_dropped"] += 1
        fixes["_why"] = box_fix
        return None
    fixes["boxes_clamped"] += box_fix == "clamped"
    raw = entry.get("score")
    has_score = _is_number(raw) and math.isfinite(raw)
    score, score_clamped = lenient_score(raw, SCORE_SLACK) if has_score else (None, False)
    fixes["scores_clamped"] += score_clamped
    detail = {} if has_score else {"error": "entry has no numeric score"}
    if score_clamped:
        detail["raw_score"] = raw
    if box_fix == "clamped":
        detail["raw_bbox"] = list(entry["bbox"])
    label = entry.get("object")
    return {"region_id": region_id, "bbox": box, "mask": None,
            "label": label if isinstance(label, str) and label else None,
            "score": score, "reason": entry.get("reason") or "", "status": "ok" if has_score else "failed",
            "method": "imported", "grounding": None, "detail": detail}


def to_reference(rec: dict) -> dict:
    """Validated record -> reference "formatted" row.

    Only entries that carry reward are written (failed or filtered-out regions are
    dropped; masks, grounding and details are lost). A failed global judgment raises
    :class:`RecordError`: the reference format would read it as a genuine score.
    """
    glob = rec["global"]
    if not carries_reward(glob):
        raise RecordError(f"{rec['image_id']}: global judgment failed; the reference format cannot express that")
    width, height = rec["width"], rec["height"]
    entries = [{"object": GLOBAL_OBJECT, "bbox": [0, 0, width, height], "score": glob["score"],
                "reason": glob.get("reason", "")}]
    for region in rec["regions"]:
        if carries_reward(region):
            entries.append({"object": region.get("label") or "", "bbox": list(region["bbox"]),
                            "score": region["score"], "reason": region.get("reason", "")})
    return {
        "bad_image_file": rec["image_file"],
        "good_image_file": rec.get("reference_image_file") or rec["image_file"],
        "prompt": rec["prompt"],
        "vlm_rewards": entries,
    }


# --------------------------------------------------------------------------- files

def _resolve(base_dir: str, file: str | None) -> str | None:
    if file is None:
        return None
    return os.path.normpath(file if os.path.isabs(file) else os.path.join(base_dir, file))


def _image_size(path: str | None) -> tuple[int, int] | None:
    if path is None or not os.path.isfile(path):
        return None
    import PIL.Image  # only needed for reference rows without a usable global bbox

    with PIL.Image.open(path) as image:
        return image.size


def _reference_needs_size(obj: dict) -> bool:
    for entry in obj.get("vlm_rewards") or []:
        if isinstance(entry, dict) and entry.get("object") == GLOBAL_OBJECT:
            box = entry.get("bbox")
            return not (isinstance(box, list) and len(box) == 4 and all(_is_number(v) for v in box))
    return True


def read_records(path: str | os.PathLike, *, on_error: Literal["skip", "raise"] = "skip"
                 ) -> tuple[list[dict], list[str]]:
    """Read a JSONL of reward records in our schema or the reference format (per line).

    Returns ``(records, errors)``: validated records in file order, each with an absolute
    ``image_path`` (and ``reference_image_path``, null when there is none) resolved against
    the JSONL's directory, and ``"path:line: ..."`` messages for lines that were skipped:
    invalid JSON, a truncated last line, records that fail validation, duplicate image ids.
    Empty lines are skipped silently. ``on_error="raise"`` raises the first error as
    :class:`RecordError` instead.
    """
    if on_error not in ("skip", "raise"):
        raise ValueError(f"on_error must be 'skip' or 'raise', got {on_error!r}")
    path = os.fspath(path)
    base_dir = os.path.dirname(os.path.abspath(path))
    records: list[dict] = []
    errors: list[str] = []
    first_line: dict[str, int] = {}

    def fail(message: str) -> None:
        if on_error == "raise":
            raise RecordError(message)
        errors.append(message)

    with open(path, "rb") as handle:
        lines = handle.readlines()
    for number, raw in enumerate(lines, start=1):
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            fail(f"{where}: not valid UTF-8 ({err.reason} at byte {err.start})")
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            if number == len(lines) and not line.endswith("\n"):
                fail(f"{where}: truncated last line (no newline, invalid JSON: an interrupted write?)")
            else:
                fail(f"{where}: invalid JSON: {err.msg} at column {err.colno}")
            continue
        try:
            if isinstance(obj, dict) and "schema" in obj:
                record = validate_record(obj, where)
            elif isinstance(obj, dict) and "vlm_rewards" in obj:
                size = None
                if _reference_needs_size(obj) and isinstance(obj.get("bad_image_file"), str):
                    size = _image_size(_resolve(base_dir, obj["bad_image_file"]))
                record = from_reference(obj, where, size)
            else:
                raise RecordError(f"{where}: neither a {SCHEMA} record ('schema' key) nor a reference "
                                  "row ('vlm_rewards' key)")
        except RecordError as err:
            fail(str(err))
            continue
        image_id = record["image_id"]
        if image_id in first_line:
            fail(f"{where}: duplicate image_id {image_id!r} (first on line {first_line[image_id]})")
            continue
        first_line[image_id] = number
        record["image_path"] = _resolve(base_dir, record["image_file"])
        record["reference_image_path"] = _resolve(base_dir, record.get("reference_image_file"))
        records.append(record)
    return records, errors


def _write_lines_atomic(path: str | os.PathLike, lines: Iterable[str]) -> None:
    path = os.path.abspath(os.fspath(path))
    directory = os.path.dirname(path)
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            for line in lines:
                handle.write(line)
                handle.write("\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_records(path: str | os.PathLike, records: Iterable[dict]) -> int:
    """Validate and write records as JSONL, atomically (temp file in the same directory,
    then ``os.replace``). Derived keys (``image_path``, ``reference_image_path``) are not
    written. Returns the number of records written."""
    lines = []
    for index, record in enumerate(records):
        clean = validate_record({k: v for k, v in record.items() if k not in DERIVED_KEYS},
                                f"record {index}")
        lines.append(json.dumps(clean, ensure_ascii=False))
    _write_lines_atomic(path, lines)
    return len(lines)


def _relative_to(path: str | None, directory: str) -> str | None:
    return None if path is None else os.path.relpath(path, directory)


def export_reference(src: str | os.PathLike, dst: str | os.PathLike) -> dict:
    """Convert a reward JSONL (either format) to the reference format at ``dst``.

    Image paths are rewritten relative to ``dst``'s directory. Records whose global
    judgment failed are skipped and counted. Returns counts: ``read`` (valid records),
    ``written``, ``skipped_failed_global``, ``regions_written``, ``regions_dropped``
    (no reward), ``invalid`` (bad lines) and ``errors`` (their messages).
    """
    records, errors = read_records(src)
    dst_dir = os.path.dirname(os.path.abspath(os.fspath(dst)))
    rows, skipped, regions_written = [], 0, 0
    for record in records:
        try:
            row = to_reference(record)
        except RecordError:
            skipped += 1
            continue
        row["bad_image_file"] = _relative_to(record["image_path"], dst_dir)
        row["good_image_file"] = _relative_to(record["reference_image_path"] or record["image_path"], dst_dir)
        regions_written += len(row["vlm_rewards"]) - 1
        rows.append(json.dumps(row, ensure_ascii=False))
    _write_lines_atomic(dst, rows)
    regions_total = sum(len(r["regions"]) for r in records if carries_reward(r["global"]))
    return {"read": len(records), "written": len(rows), "skipped_failed_global": skipped,
            "regions_written": regions_written, "regions_dropped": regions_total - regions_written,
            "invalid": len(errors), "errors": errors}


def _under_root(written: str | None, image_root: str) -> str | None:
    """Where an image named in a published row lies under ``image_root``: a relative name
    below it; an absolute path as is when it exists, else its file name below the root
    (published rows can carry the authors' own absolute paths)."""
    if written is None:
        return None
    if not os.path.isabs(written):
        return os.path.normpath(os.path.join(image_root, written))
    return written if os.path.exists(written) else os.path.join(image_root, os.path.basename(written))


def import_reference(src: str | os.PathLike, dst: str | os.PathLike, image_root: str | os.PathLike | None = None
                     ) -> dict:
    """Convert a reward JSONL (either format) to ``srum.reward.v1`` records at ``dst``.

    Image names are taken from ``src``'s folder, or from ``image_root`` when given (the
    published ``Wayne-King/SRUM_6k_CompBench_Train`` keeps its images apart from its
    JSONL, as the reference trainer's ``image_dirs`` do); they are rewritten relative to
    ``dst``'s directory. Sizes come from the global entry's bbox, or from the image file
    when that is missing. Returns counts: ``read``, ``written``, ``failed_global`` (rows
    without a usable global score, kept as failed), ``zero_global`` (rows whose global
    score is a genuine 0.0, kept), ``import_fixes`` (regions dropped, boxes and scores
    clamped: :func:`srum.reference_import.tally_import_fixes`), ``images_missing`` (rows
    whose image is not where it was resolved to: check ``image_root``), ``invalid`` and
    ``errors``.
    """
    records, errors = read_records(src)
    dst_dir = os.path.dirname(os.path.abspath(os.fspath(dst)))
    if image_root is not None:
        root = os.path.abspath(os.fspath(image_root))
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image root not found: {root}")
        for record in records:
            record["image_path"] = _under_root(record["image_file"], root)
            record["reference_image_path"] = _under_root(record.get("reference_image_file"), root)
    missing = [r["image_path"] for r in records if not os.path.isfile(r["image_path"])]
    for record in records:
        record["image_file"] = _relative_to(record["image_path"], dst_dir)
        if record.get("reference_image_path"):
            record["reference_image_file"] = _relative_to(record["reference_image_path"], dst_dir)
    written = write_records(dst, records)
    failed = sum(1 for r in records if r["global"]["status"] == "failed")
    zero = sum(1 for r in records if carries_reward(r["global"]) and r["global"]["score"] == 0.0)
    return {"read": len(records), "written": written, "failed_global": failed, "zero_global": zero,
            "import_fixes": tally_import_fixes(records), "images_missing": len(missing),
            "first_missing": missing[:3], "invalid": len(errors), "errors": errors}


# --------------------------------------------------------------------------- masks

def encode_rle(mask: np.ndarray) -> dict:
    """Boolean mask ``[H, W]`` -> COCO uncompressed RLE ``{"size": [H, W], "counts": [...]}``.

    Column-major runs, alternating starting with zeros (a mask whose first pixel is set
    starts with a 0 count) -- identical to ``segment_anything``'s ``mask_to_rle_pytorch``.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"mask must be 2-D [H, W], got shape {mask.shape}")
    height, width = mask.shape
    flat = mask.astype(bool).ravel(order="F")
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    bounds = np.concatenate(([0], change, [flat.size]))
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts.insert(0, 0)
    return {"size": [int(height), int(width)], "counts": [int(c) for c in counts]}


def decode_rle(rle: dict) -> np.ndarray:
    """COCO uncompressed RLE -> boolean mask ``[H, W]`` (vectorised; no per-run loop)."""
    try:
        height, width = (int(v) for v in rle["size"])
        counts = np.asarray(rle["counts"], dtype=np.int64)
    except (KeyError, TypeError, ValueError) as err:
        raise RecordError(f"not an uncompressed RLE: {err}") from None
    if counts.ndim != 1 or (counts < 0).any() or counts.sum() != height * width:
        raise RecordError(f"RLE counts must be non-negative and sum to {height}*{width}")
    values = (np.arange(counts.size) % 2).astype(bool)
    flat = np.repeat(values, counts)
    return flat.reshape(width, height).T.copy()


def mask_to_bbox(mask: np.ndarray) -> list[float] | None:
    """Tight box ``[x1, y1, x2, y2]`` of a boolean mask ``[H, W]`` in continuous pixel
    coordinates (exclusive end: ``x2 = max_col + 1``); None for an empty mask."""
    mask = np.asarray(mask, dtype=bool)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return [float(cols[0]), float(rows[0]), float(cols[-1] + 1), float(rows[-1] + 1)]
