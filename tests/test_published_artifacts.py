# SPDX-License-Identifier: Apache-2.0
"""The published artifacts (issue 13, item 7): the reward data Wayne-King/SRUM_6k_CompBench_Train
imported through `srum records import-reference --image-root` and named in the registry.
(The paper's rows in `srum eval compare`: tests/test_eval_summary.py.)"""
import json

import PIL.Image

from srum.cli import main
from srum.data.registry import load_registry
from srum.records import read_records


def _published(tmp_path):
    """A download laid out like the published data: a JSONL in the reference's formatted
    schema whose image names are relative to a separate image folder (one row carries
    an absolute path from the authors' machine)."""
    download = tmp_path / "SRUM_6k_CompBench_Train"
    images = download / "images"
    images.mkdir(parents=True)
    rows = []
    for k, name in enumerate(["color_00001.png", "spatial_00002.png"]):
        PIL.Image.new("RGB", (64, 48), (40 * k, 90, 160)).save(images / name)
        written = name if k == 0 else f"/mnt/authors/srum/images/{name}"
        rows.append({"bad_image_file": written, "good_image_file": written, "prompt": f"prompt {k}",
                     "vlm_rewards": [{"object": "global_layout_reward", "bbox": [0, 0, 64, 48], "score": 0.5,
                                      "reason": "ok"},
                                     {"object": "a red cube", "bbox": [2, 3, 30, 40], "score": -0.25}]})
    (download / "data").mkdir()
    (download / "data/train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return download


def test_import_published_rewards_with_an_image_root(tmp_path, capsys):
    download = _published(tmp_path)
    out = tmp_path / "data/srum6k/rewards.jsonl"
    # without --image-root the names are taken from the JSONL's folder: every image is missing, and said so
    assert main(["records", "import-reference", str(download / "data/train.jsonl"), str(tmp_path / "x.jsonl")]) == 0
    assert json.loads(capsys.readouterr().out)["images_missing"] == 2
    assert main(["records", "import-reference", str(download / "data/train.jsonl"), str(out),
                 "--image-root", str(download / "images")]) == 0
    counts = json.loads(capsys.readouterr().out)
    assert (counts["read"], counts["written"], counts["images_missing"]) == (2, 2, 0)
    records, errors = read_records(out)
    assert not errors and all(PIL.Image.open(r["image_path"]).size == (64, 48) for r in records)
    assert [r["regions"][0]["score"] for r in records] == [-0.25, -0.25]
    assert main(["records", "export-reference", str(out), str(tmp_path / "y.jsonl"), "--image-root", "x"]) == 2


def test_the_registry_names_the_published_rewards():
    registry = load_registry()
    dataset = registry.get("srum6k_compbench")
    assert dataset.kind == "rewards" and "Wayne-King/SRUM_6k_CompBench_Train" in dataset.description
    path = registry.resolve("srum6k_compbench", must_exist=False)[0]
    assert path.parts[-3:] == ("data", "srum6k", "rewards.jsonl")
