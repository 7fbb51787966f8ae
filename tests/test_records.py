# SPDX-License-Identifier: Apache-2.0
"""Reward records: validation, reference conversion, JSONL reading/writing, RLE."""
import json
import math
import os

import numpy as np
import PIL.Image
import pytest
import torch

from srum.records import (
    SCHEMA,
    RecordError,
    carries_reward,
    decode_rle,
    encode_rle,
    export_reference,
    from_reference,
    import_reference,
    mask_to_bbox,
    read_records,
    to_reference,
    validate_record,
    write_records,
)


def make_record(image_id="color_00012_0", width=64, height=32, **overrides):
    rec = {
        "schema": SCHEMA,
        "image_id": image_id,
        "prompt_id": "color_00012",
        "sample_index": 0,
        "image_file": f"images/{image_id}.png",
        "reference_image_file": None,
        "prompt": "a red apple to the left of a blue cup",
        "category": "color",
        "width": width,
        "height": height,
        "global": {"score": 0.6, "reason": "layout fine", "status": "ok", "method": "text", "detail": {}},
        "regions": [
            {"region_id": 0, "bbox": [0, 0, 32, 16], "mask": None, "label": "red apple", "score": 0.3,
             "reason": "apple ok", "status": "ok", "method": "text",
             "grounding": {"p_relevant": 0.8, "kept": True}, "detail": {}},
            {"region_id": 1, "bbox": [32.5, 8, 64, 32], "mask": None, "label": "blue cup", "score": -0.7,
             "reason": "cup melted", "status": "ok", "method": "text", "grounding": None, "detail": {}},
        ],
        "judge": {"backend": "self", "model": "tiny", "mode": "text"},
    }
    rec.update(overrides)
    return rec


# --------------------------------------------------------------------------- validation

def test_valid_record_is_normalised():
    rec = make_record()
    rec["regions"][0]["bbox"] = [-0.4, 0, 64.5, 16]  # within 1 px of the frame: clipped
    rec["regions"][1]["score"] = 1.0 + 1e-9
    del rec["regions"][1]["reason"], rec["regions"][1]["detail"]
    del rec["category"], rec["judge"]
    out = validate_record(rec, "f.jsonl:1")
    assert out["regions"][0]["bbox"] == [0.0, 0.0, 64.0, 16.0]
    assert out["regions"][1]["score"] == 1.0
    assert out["regions"][1]["reason"] == "" and out["regions"][1]["detail"] == {}
    assert out["category"] is None and out["judge"] is None
    assert rec["regions"][0]["bbox"] == [-0.4, 0, 64.5, 16]  # input untouched


@pytest.mark.parametrize("mutate, message", [
    (lambda r: r["regions"][1].__setitem__("bbox", [math.nan, 0, 10, 10]), "f.jsonl:7: region 1: bbox has a non-finite"),
    (lambda r: r["regions"][1].__setitem__("bbox", [-5, 0, 10, 10]), "f.jsonl:7: region 1: bbox x1=-5 out of frame"),
    (lambda r: r["regions"][1].__setitem__("bbox", [20, 0, 10, 10]), "f.jsonl:7: region 1: bbox x2 <= x1"),
    (lambda r: r["regions"][0].__setitem__("bbox", [0, 12, 10, 12]), "f.jsonl:7: region 0: bbox y2 <= y1"),
    (lambda r: r["regions"][1].__setitem__("bbox", [0, 0, 10, 40]), "f.jsonl:7: region 1: bbox y2=40 out of frame [0, 32]"),
    (lambda r: r["regions"][1].__setitem__("bbox", [0, 0, 10]), "f.jsonl:7: region 1: bbox must be a list"),
    (lambda r: r["regions"][1].__setitem__("score", 1.5), "f.jsonl:7: region 1: score 1.5 outside [-1, 1]"),
    (lambda r: r["regions"][1].__setitem__("score", None), "f.jsonl:7: region 1: score must be a finite number"),
    (lambda r: r["regions"][1].__setitem__("score", True), "f.jsonl:7: region 1: score must be a finite number"),
    (lambda r: r["global"].__setitem__("score", math.inf), "f.jsonl:7: global: score must be a finite number"),
    (lambda r: r["global"].update(status="failed"), "f.jsonl:7: global: score must be null when status is 'failed'"),
    (lambda r: r["global"].update(status="maybe"), "f.jsonl:7: global: status must be one of"),
    (lambda r: r.pop("width"), "f.jsonl:7: missing key(s) width"),
    (lambda r: r.pop("global"), "f.jsonl:7: missing key(s) global"),
    (lambda r: r["regions"][0].pop("bbox"), "f.jsonl:7: region 0: missing key(s) bbox"),
    (lambda r: r.__setitem__("height", 0), "f.jsonl:7: height must be a positive integer"),
    (lambda r: r.__setitem__("schema", "srum.reward.v0"), "f.jsonl:7: schema must be"),
    (lambda r: r["regions"][1].__setitem__("region_id", 0), "f.jsonl:7: region 0: duplicate region_id"),
    (lambda r: r["regions"][0].__setitem__("mask", {"size": [32, 63], "counts": [2016]}),
     "f.jsonl:7: region 0: mask size [32, 63] != [height, width] = [32, 64]"),
    (lambda r: r["regions"][0].__setitem__("mask", {"size": [32, 64], "counts": [10, 5]}),
     "f.jsonl:7: region 0: mask counts sum to 15"),
    (lambda r: r["regions"][0].__setitem__("grounding", {"kept": "yes"}), "f.jsonl:7: region 0: grounding.kept"),
])
def test_validation_errors_name_location(mutate, message):
    rec = make_record()
    mutate(rec)
    with pytest.raises(RecordError) as err:
        validate_record(rec, "f.jsonl:7")
    assert str(err.value).startswith(message), str(err.value)


def test_failed_global_is_valid_and_carries_no_reward():
    rec = make_record()
    rec["global"] = {"score": None, "reason": "", "status": "failed", "method": "text", "detail": {"error": "parse"}}
    rec["regions"][0]["grounding"] = {"p_relevant": 0.1, "kept": False}
    out = validate_record(rec, "x")
    assert not carries_reward(out["global"])
    assert [carries_reward(r) for r in out["regions"]] == [False, True]


# --------------------------------------------------------------------------- reference format

def reference_row(**overrides):
    row = {
        "bad_image_file": "color_00012_0.png",
        "good_image_file": "color_00012_0.png",
        "prompt": "a red apple",
        "vlm_rewards": [
            {"object": "global_layout_reward", "bbox": [0, 0, 64, 32], "score": -0.25, "reason": "left/right swapped"},
            {"object": "red apple", "bbox": [1, 2, 30, 20], "score": 0.5, "reason": "fine"},
            {"object": "table", "bbox": [0, 20, 64, 32], "score": -0.9},
        ],
    }
    row.update(overrides)
    return row


def test_from_reference():
    rec = from_reference(reference_row(), "r.jsonl:3", None)
    assert rec["image_id"] == "color_00012_0"
    assert (rec["width"], rec["height"]) == (64, 32)
    assert rec["global"] == {"score": -0.25, "reason": "left/right swapped", "status": "ok",
                             "method": "imported", "detail": {}}
    assert [r["label"] for r in rec["regions"]] == ["red apple", "table"]
    assert [r["bbox"] for r in rec["regions"]] == [[1.0, 2.0, 30.0, 20.0], [0.0, 20.0, 64.0, 32.0]]
    assert [r["score"] for r in rec["regions"]] == [0.5, -0.9]
    assert [r["reason"] for r in rec["regions"]] == ["fine", ""]
    assert all(r["status"] == "ok" and r["method"] == "imported" for r in rec["regions"])
    assert rec["reference_image_file"] is None  # good == bad


def test_from_reference_missing_global_is_failed_not_zero():
    row = reference_row()
    row["vlm_rewards"] = row["vlm_rewards"][1:]
    rec = from_reference(row, "r.jsonl:3", (64, 32))
    assert rec["global"]["status"] == "failed" and rec["global"]["score"] is None
    with pytest.raises(RecordError, match="r.jsonl:3: image size unknown"):
        from_reference(row, "r.jsonl:3", None)
    with pytest.raises(RecordError, match="global judgment failed"):
        to_reference(rec)


def test_from_reference_is_as_lenient_as_the_reference_trainer():
    """One bad region never costs the row (issue 14): an out-of-frame box is clamped, a
    degenerate or unusable box drops its region only, an out-of-range score is clamped
    (the number as written kept), and every fix is counted in judge.import_fixes."""
    row = reference_row()
    row["vlm_rewards"][0]["score"] = -1.2
    row["vlm_rewards"][2]["bbox"] = [0, 20, 80, 32]                      # beyond the 64 px width: clamped
    row["vlm_rewards"] += [
        {"object": "sliver", "bbox": [10, 5, 10, 9], "score": 0.3},      # x1 == x2: dropped
        {"object": "outside", "bbox": [70, 0, 90, 10], "score": 0.3},    # empty inside the image: dropped
        {"object": "words", "bbox": ["a", 0, 1, 1], "score": 0.3},       # not numbers: dropped
        {"object": "no box", "score": 0.3},                              # missing: dropped
        {"object": "great", "bbox": [2, 2, 8, 8], "score": 1.5},         # clamped to 1.0
    ]
    rec = from_reference(row, "r.jsonl:9", None)
    assert [r["label"] for r in rec["regions"]] == ["red apple", "table", "great"]
    assert [r["region_id"] for r in rec["regions"]] == [0, 1, 2]
    assert rec["regions"][1]["bbox"] == [0.0, 20.0, 64.0, 32.0]
    assert rec["regions"][1]["detail"] == {"raw_bbox": [0, 20, 80, 32]}
    assert rec["regions"][2]["score"] == 1.0 and rec["regions"][2]["detail"] == {"raw_score": 1.5}
    assert rec["global"]["score"] == -1.0 and rec["global"]["detail"] == {"raw_score": -1.2}
    fixes = rec["judge"]["import_fixes"]
    assert {k: fixes[k] for k in ("regions_dropped", "boxes_clamped", "scores_clamped", "global_scores_clamped")} == \
        {"regions_dropped": 4, "boxes_clamped": 1, "scores_clamped": 1, "global_scores_clamped": 1}
    assert len(fixes["dropped"]) == 4 and fixes["dropped"][0].startswith("vlm_rewards[3]: bbox [10, 5, 10, 9] is empty")
    # within a pixel of the frame is float noise: clamped silently, as for our own records
    clean = reference_row()
    clean["vlm_rewards"][2]["bbox"] = [0, 20, 64.5, 32]
    assert "import_fixes" not in from_reference(clean, "r.jsonl:9", None)["judge"]


def test_from_reference_genuine_zero_global_is_a_score():
    row = reference_row()
    row["vlm_rewards"][0]["score"] = 0.0
    rec = from_reference(row, "r.jsonl:3", None)
    assert rec["global"]["status"] == "ok" and rec["global"]["score"] == 0.0 and carries_reward(rec["global"])


def test_reference_round_trip():
    rec = validate_record(make_record(reference_image_file="good/color_00012_0.png"), "x")
    row = to_reference(rec)
    assert row["vlm_rewards"][0] == {"object": "global_layout_reward", "bbox": [0, 0, 64, 32],
                                     "score": 0.6, "reason": "layout fine"}
    assert row["good_image_file"] == "good/color_00012_0.png"
    back = from_reference(json.loads(json.dumps(row)), "y", None)
    assert back["global"]["score"] == rec["global"]["score"]
    assert back["global"]["reason"] == rec["global"]["reason"]
    for a, b in zip(rec["regions"], back["regions"], strict=True):
        assert (a["bbox"], a["score"], a["label"], a["reason"]) == (b["bbox"], b["score"], b["label"], b["reason"])
    assert back["image_file"] == rec["image_file"]
    assert back["reference_image_file"] == rec["reference_image_file"]


def test_to_reference_drops_regions_without_reward():
    rec = make_record()
    rec["regions"][0].update(status="failed", score=None)
    row = to_reference(validate_record(rec, "x"))
    assert [e["object"] for e in row["vlm_rewards"]] == ["global_layout_reward", "blue cup"]


# --------------------------------------------------------------------------- files

def write_lines(path, lines, trailing_newline=True):
    text = "\n".join(lines) + ("\n" if trailing_newline else "")
    path.write_text(text)


def test_read_records_mixed_formats_and_bad_lines(tmp_path):
    path = tmp_path / "rewards.jsonl"
    bad_box = make_record("b_0")
    bad_box["regions"][0]["bbox"] = [10, 0, 5, 5]
    lines = [
        json.dumps(make_record("a_0")),                       # 1 ok
        "",                                                   # 2 empty: silent
        "{not json",                                          # 3 invalid JSON
        json.dumps(bad_box),                                  # 4 invalid record
        json.dumps(reference_row()),                          # 5 ok (reference format)
        json.dumps({"foo": 1}),                               # 6 (made invalid UTF-8 below)
        json.dumps(make_record("a_0")),                       # 7 duplicate id
        json.dumps(make_record("c_0"))[:40],                  # 8 truncated last line
    ]
    write_lines(path, lines, trailing_newline=False)
    path.write_bytes(path.read_bytes().replace(b'{"foo": 1}', b'{"foo": "\xff"}'))
    records, errors = read_records(path)
    assert [r["image_id"] for r in records] == ["a_0", "color_00012_0"]
    assert records[0]["image_file"] == "images/a_0.png"
    assert records[0]["image_path"] == str(tmp_path / "images" / "a_0.png")
    assert records[1]["image_path"] == str(tmp_path / "color_00012_0.png")
    assert records[0]["reference_image_path"] is None
    assert len(errors) == 5
    assert errors[0].startswith(f"{path}:3: invalid JSON")
    assert errors[1].startswith(f"{path}:4: region 0: bbox x2 <= x1")
    assert errors[2].startswith(f"{path}:6: not valid UTF-8")
    assert errors[3].startswith(f"{path}:7: duplicate image_id 'a_0' (first on line 1)")
    assert errors[4].startswith(f"{path}:8: truncated last line")
    with pytest.raises(RecordError, match=":3: invalid JSON"):
        read_records(path, on_error="raise")


def test_read_reference_row_without_global_opens_image(tmp_path):
    PIL.Image.new("RGB", (48, 40)).save(tmp_path / "img.png")
    row = reference_row(bad_image_file="img.png", good_image_file="img.png")
    row["vlm_rewards"] = [{"object": "cat", "bbox": [0, 0, 48, 40], "score": 0.1}]
    (tmp_path / "r.jsonl").write_text(json.dumps(row) + "\n")
    records, errors = read_records(tmp_path / "r.jsonl")
    assert errors == []
    assert (records[0]["width"], records[0]["height"]) == (48, 40)
    assert records[0]["global"]["status"] == "failed"


def test_write_records_atomic_and_round_trip(tmp_path):
    path = tmp_path / "out" / "rewards.jsonl"
    records = [validate_record(make_record("a_0"), "x"), validate_record(make_record("b_0"), "x")]
    records[0]["image_path"] = "/abs/should/not/be/written.png"
    assert write_records(path, records) == 2
    assert os.listdir(path.parent) == ["rewards.jsonl"]  # no temp file left behind
    assert "image_path" not in path.read_text()
    back, errors = read_records(path)
    assert errors == []
    strip = lambda r: {k: v for k, v in r.items() if k not in ("image_path", "reference_image_path")}
    assert [strip(r) for r in back] == [strip(r) for r in records]
    bad = make_record("c_0")
    bad["global"]["score"] = 3.0
    with pytest.raises(RecordError, match="record 1: global: score 3.0 outside"):
        write_records(path, [records[0], bad])
    assert len(path.read_text().splitlines()) == 2  # the old file survives a failed write


def test_export_and_import_reference(tmp_path):
    src = tmp_path / "run" / "rewards.jsonl"
    failed = make_record("f_0")
    failed["global"] = {"score": None, "reason": "", "status": "failed", "method": "text", "detail": {}}
    write_records(src, [make_record("a_0"), failed])
    dst = tmp_path / "export" / "formatted.jsonl"
    counts = export_reference(src, dst)
    assert {k: counts[k] for k in ("read", "written", "skipped_failed_global", "regions_written", "invalid")} == \
        {"read": 2, "written": 1, "skipped_failed_global": 1, "regions_written": 2, "invalid": 0}
    row = json.loads(dst.read_text())
    assert row["bad_image_file"] == "../run/images/a_0.png"
    counts = import_reference(dst, tmp_path / "run" / "imported.jsonl")
    assert counts["written"] == 1 and counts["failed_global"] == 0 and counts["zero_global"] == 0
    assert counts["import_fixes"] == {"regions_dropped": 0, "boxes_clamped": 0, "scores_clamped": 0,
                                      "global_scores_clamped": 0, "rows_fixed": 0}
    back, errors = read_records(tmp_path / "run" / "imported.jsonl")
    assert errors == []
    assert back[0]["image_file"] == "images/a_0.png"
    assert back[0]["image_path"] == str(tmp_path / "run" / "images" / "a_0.png")
    assert [r["bbox"] for r in back[0]["regions"]] == [[0.0, 0.0, 32.0, 16.0], [32.5, 8.0, 64.0, 32.0]]


# --------------------------------------------------------------------------- RLE

def test_rle_round_trip_and_layout():
    rng = np.random.default_rng(0)
    for shape in [(5, 7), (32, 48), (1, 1)]:
        for density in (0.0, 0.3, 1.0):
            mask = rng.random(shape) < density
            rle = encode_rle(mask)
            assert rle["size"] == list(shape) and sum(rle["counts"]) == mask.size
            assert np.array_equal(decode_rle(rle), mask)
    # Column-major, first run counts zeros.
    mask = np.array([[1, 1, 0], [1, 0, 0]], dtype=bool)  # row-major would give [0, 2, 1, 1, 2]
    assert encode_rle(mask) == {"size": [2, 3], "counts": [0, 3, 3]}
    assert encode_rle(~mask) == {"size": [2, 3], "counts": [3, 3]}


def test_rle_matches_segment_anything():
    from segment_anything.utils.amg import mask_to_rle_pytorch, rle_to_mask

    rng = np.random.default_rng(1)
    masks = rng.random((4, 20, 30)) < 0.4
    masks[1] = True
    masks[2] = False
    masks[3, 0, 0] = True
    theirs = mask_to_rle_pytorch(torch.from_numpy(masks))
    for mask, rle in zip(masks, theirs):
        assert encode_rle(mask) == rle
        assert np.array_equal(decode_rle(rle), mask)
        assert np.array_equal(rle_to_mask(encode_rle(mask)), mask)


def test_decode_rle_rejects_bad_counts():
    with pytest.raises(RecordError):
        decode_rle({"size": [2, 2], "counts": [1, 2]})
    with pytest.raises(RecordError):
        decode_rle({"size": [2, 2], "counts": [5, -1]})


def test_mask_to_bbox_exclusive_end():
    mask = np.zeros((10, 12), dtype=bool)
    mask[2:5, 3:9] = True
    assert mask_to_bbox(mask) == [3.0, 2.0, 9.0, 5.0]
    assert mask_to_bbox(np.zeros((3, 3), dtype=bool)) is None


def test_read_records_unknown_format(tmp_path):
    (tmp_path / "r.jsonl").write_text('{"foo": 1}\n[1, 2]\n')
    records, errors = read_records(tmp_path / "r.jsonl")
    assert records == []
    assert [e.split(": ", 1)[0] for e in errors] == [f"{tmp_path}/r.jsonl:1", f"{tmp_path}/r.jsonl:2"]
    assert all("neither a srum.reward.v1 record" in e for e in errors)
