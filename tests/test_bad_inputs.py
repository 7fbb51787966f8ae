# SPDX-License-Identifier: Apache-2.0
"""Small reliability defects, one test each: a bad file costs its line or item (named),
never the run, and nothing finished is lost."""
import errno
import json
import os

import PIL.Image
import pytest

from srum.data.prompts import read_prompts
from srum.distributed import DistInfo
from srum.fileio import atomic_write_text
from srum.models.bagel.config import CheckpointError
from srum.records import encode_rle
from srum.stages.common import ImageStage
from srum.stages.judge import region_problem, summarize_rewards
from srum.stages.shards import PartWriter, ShardedOutput


def test_a_complete_last_row_without_newline_survives_a_resume(tmp_path):
    part = tmp_path / "parts" / "rank-00000.jsonl"
    part.parent.mkdir()
    part.write_text('{"image_id": "a"}\n{"image_id": "b"}')  # killed between the row and its newline
    writer = PartWriter(part)
    writer.write({"image_id": "c"})
    writer.close()
    assert [json.loads(line)["image_id"] for line in part.read_text().splitlines()] == ["a", "b", "c"]
    so = ShardedOutput(tmp_path, ["a", "b", "c"], DistInfo())
    assert so.done_keys() == {"a", "b", "c"}
    # a partial row is still cut
    part.write_text('{"image_id": "a"}\n{"image_id": "b", "x": ')
    PartWriter(part).close()
    assert part.read_text() == '{"image_id": "a"}\n'


def test_a_decompression_bomb_is_an_error_row(tmp_path, monkeypatch):
    PIL.Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "small.png")
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps({"image_id": n, "image_file": f"{n}.png", "prompt": "p"}) + "\n"
                                for n in ("big", "small")))
    monkeypatch.setattr(PIL.Image, "MAX_IMAGE_PIXELS", 1000)  # 64x64 is over twice the limit: a "bomb"
    stage = ImageStage.open("test", manifest, tmp_path / "out", manifest_name="rows.jsonl")
    rows = stage.each_image(lambda item, image: {"image_id": item.image_id, "size": image.size})([0, 1])
    assert "decompression bomb" in rows[0]["_error"] and "big.png" in rows[0]["_error"]
    assert rows[1] == {"image_id": "small", "size": (8, 8)}


def test_invalid_utf8_costs_its_line_only_and_is_named(tmp_path):
    txt = tmp_path / "color_val.txt"
    txt.write_bytes(b"a red cube\nbad \xff byte\na blue ball\n")
    jsonl = tmp_path / "p.jsonl"
    jsonl.write_bytes(b'{"id": "x", "prompt": "ok"}\n{"id": "y", "prompt": "\xfe"}\n{"id": "z", "prompt": "ok"}\n')
    items, errors = read_prompts([txt, jsonl])
    assert [i.id for i in items] == ["color_val_00000", "color_val_00002", "x", "z"]  # later ids do not move
    assert any(e.startswith(f"{txt}:2: not valid UTF-8") for e in errors)
    assert any(e.startswith(f"{jsonl}:2: not valid UTF-8") for e in errors)
    whole = tmp_path / "ref.json"
    whole.write_bytes(b'[{"Question": "a", "Question_id": 1},\n {"Question": "\xff", "Question_id": 2}]')
    with pytest.raises(ValueError, match=f"{whole}:2: not valid UTF-8"):
        read_prompts(whole)


def test_a_non_string_category_is_refused_not_turned_into_its_repr(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text(json.dumps({"id": "a", "prompt": "x", "category": {"k": 1}}) + "\n"
                    + json.dumps({"id": "b", "prompt": "y", "category": "color"}) + "\n")
    items, errors = read_prompts(path)
    assert [(i.id, i.category) for i in items] == [("b", "color")]
    assert errors == [f"{path}:1: category must be a string, got dict {{'k': 1}}"]


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_disk_full_names_the_file_and_leaves_no_temp_file(tmp_path, monkeypatch):
    monkeypatch.setattr(os, "fsync", _disk_full)
    target = tmp_path / "summary.json"
    with pytest.raises(OSError, match=f"cannot write {target}: No space left on device"):
        atomic_write_text(target, "{}")
    assert list(tmp_path.iterdir()) == []
    writer = PartWriter(tmp_path / "parts" / "rank-00000.jsonl")
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'parts' / 'rank-00000.jsonl'}"):
        writer.write({"image_id": "a"})


def test_a_bad_mask_drops_its_region_only(tmp_path):
    good_mask = encode_rle(__import__("numpy").ones((4, 6), dtype=bool))
    assert region_problem({"bbox": [0, 0, 3, 3], "mask": good_mask}, 6, 4) is None
    bad = region_problem({"bbox": [0, 0, 3, 3], "mask": {"size": [4, 6], "counts": [1, 2]}}, 6, 4)
    assert "mask counts sum to 3" in bad
    assert "size" in region_problem({"bbox": [0, 0, 3, 3], "mask": {"size": [9, 9], "counts": [81]}}, 6, 4)


def test_clamped_scores_are_counted_in_the_summary():
    def entry(clamped):
        return {"score": 1.0, "status": "ok", "detail": {"clamped": clamped}}
    records = [{"global": entry(True), "regions": [entry(True), entry(False)]},
               {"global": entry(False), "regions": [entry(True)]}]
    summary = summarize_rewards(records)
    assert summary["global_clamped"] == 1 and summary["regions_clamped"] == 2


def test_a_missing_relative_model_folder_is_named_as_such(tmp_path, monkeypatch):
    import huggingface_hub
    from srum.models.bagel.checkpoint import resolve_model_dir

    def offline(*args, **kwargs):
        raise ConnectionError("Cannot reach https://huggingface.co\nmore detail")

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError) as err:
        resolve_model_dir("outputs/no-such-bagel")
    message = str(err.value)
    assert f"no folder outputs/no-such-bagel (relative to {tmp_path})" in message
    assert "could not fetch it from the hub or its cache" in message and "more detail" not in message


def test_a_manifest_row_with_a_non_string_category_is_named_and_skipped(tmp_path):
    from srum.stages.common import read_image_manifest
    PIL.Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    manifest = tmp_path / "m.jsonl"
    rows = [{"image_id": "a", "image_file": "a.png", "prompt": "p", "category": 7},
            {"image_id": "b", "image_file": "a.png", "prompt": "p", "category": "color"}]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    items, errors = read_image_manifest(manifest)
    assert [(i.image_id, i.category) for i in items] == [("b", "color")]
    assert errors == [f"{manifest}:1: category must be a string or null, got int"]


def test_metrics_write_failure_names_the_file(tmp_path, monkeypatch):
    from srum.training.metrics import MetricsLogger
    logger = MetricsLogger(tmp_path, enabled=True, total_steps=2, start_step=0, tensorboard=False,
                           progress_bar=False)
    monkeypatch.setattr(logger.jsonl, "flush", _disk_full)
    with pytest.raises(OSError, match=f"cannot write {tmp_path / 'metrics.jsonl'}"):
        logger.log(1, {"loss": 1.0})
