# SPDX-License-Identifier: Apache-2.0
"""SFT baseline export: generated images + manifest -> parquet with the exact PNG bytes."""
import io
import json

import pyarrow.parquet as pq
import pytest
from PIL import Image

from srum.export.sft_parquet import export_sft_parquet


@pytest.fixture
def generated(tmp_path):
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(5):
        image = Image.new("RGB", (32, 16), (i * 40, 255 - i * 40, 7))
        image.putpixel((3, 4), (1, 2, 3))
        image.save(tmp_path / "images" / f"p{i}.png")
        rows.append({"image_id": f"p{i}", "prompt_id": f"p{i}", "image_file": f"images/p{i}.png",
                     "original_prompt": f"prompt {i} with \"quotes\" & ünïcode", "category": "color", "seed": 100 + i})
    rows.append({"image_id": "gone", "image_file": "images/gone.png", "original_prompt": "x"})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows) + "{broken\n")
    return tmp_path, manifest


def test_parquet_holds_the_png_bytes_and_captions(generated, tmp_path):
    root, manifest = generated
    counts = export_sft_parquet(manifest, tmp_path / "out" / "sft.parquet")
    assert counts["rows"] == 5 and counts["skipped"] == 2
    assert any("gone.png" in e for e in counts["errors"]) and any(":7" in e for e in counts["errors"])
    table = pq.read_table(tmp_path / "out" / "sft.parquet").to_pylist()
    for i, row in enumerate(table):
        assert row["image"] == (root / "images" / f"p{i}.png").read_bytes()  # no re-encode
        assert json.loads(row["captions"]) == {"caption": f"prompt {i} with \"quotes\" & ünïcode"}
        assert (row["image_id"], row["category"], row["seed"]) == (f"p{i}", "color", 100 + i)
        assert Image.open(io.BytesIO(row["image"])).getpixel((3, 4)) == (1, 2, 3)


def test_parquet_is_split_by_rows_per_file(generated, tmp_path):
    _, manifest = generated
    counts = export_sft_parquet(manifest, tmp_path / "sft.parquet", rows_per_file=2)
    names = [p.rsplit("/", 1)[1] for p in counts["files"]]
    assert names == ["sft-00000-of-00003.parquet", "sft-00001-of-00003.parquet", "sft-00002-of-00003.parquet"]
    assert sum(pq.read_table(p).num_rows for p in counts["files"]) == 5
    assert not list(tmp_path.glob(".*tmp*"))
