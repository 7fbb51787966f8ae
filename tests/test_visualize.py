# SPDX-License-Identifier: Apache-2.0
"""srum visualize: card pictures (region colours, heat map values), loss plots and the HTML report."""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from srum.records import encode_rle, read_records
from srum.rewards.raster import RewardMapConfig, pixel_reward_map
from srum.visualize import (OFFICIAL_MAP_SCALE, SCORE_SCALE, SIGNED_MAP_SCALE, draw_card, line_plot, read_metrics,
                            render_image_card, render_report)
from srum.visualize.cli import add_visualize_parser
from srum.visualize.pictures import GREEN, NO_MAP, RED, display_size, wrap_text, font
from srum.visualize.plots import Series, nice_ticks
from srum.visualize.report import json_summary_html, markdown_tables_html

W, H = 64, 48
BACKGROUND = (128, 128, 128)
NASTY = 'a <b>bold</b> & "quoted" prompt'


def _region(rid, bbox, score, *, mask=False, kept=None, label="thing"):
    region = {"region_id": rid, "bbox": bbox, "label": label, "score": score,
              "status": "ok" if score is not None else "failed", "method": "text",
              "reason": f"reason {rid} <i>&amp;", "mask": None,
              "grounding": None if kept is None else {"p_relevant": 0.9 if kept else 0.1, "kept": kept}}
    if mask:
        m = np.zeros((H, W), bool)
        m[bbox[1]:bbox[3], bbox[0]:bbox[2]] = True
        region["mask"] = encode_rle(m)
    if score is None:
        region["detail"] = {"error": "no score <in> answer"}
    return region


def _record(image_id, image_file, global_score, regions, prompt="a red apple", category="color"):
    return {"schema": "srum.reward.v1", "image_id": image_id, "prompt_id": image_id, "sample_index": 0,
            "image_file": image_file, "reference_image_file": None, "prompt": prompt, "category": category,
            "width": W, "height": H,
            "global": {"score": global_score, "reason": "layout <ok> & fine",
                       "status": "ok" if global_score is not None else "failed", "method": "text",
                       "detail": {} if global_score is not None else {"error": "unparsable"}},
            "regions": regions, "judge": {"backend": "self", "model": "tiny", "mode": "text"}}


@pytest.fixture()
def run_dir(tmp_path):
    """A judged run: 3 records (one failed global, one odd image id), manifest, metrics, eval files."""
    (tmp_path / "images").mkdir()
    for name in ("a", "b", "c"):
        Image.new("RGB", (W, H), BACKGROUND).save(tmp_path / "images" / f"{name}.png")
    records = [
        _record("a", "images/a.png", 0.6, [
            _region(0, [4, 8, 24, 32], 1.0, mask=True, kept=True, label="apple"),
            _region(1, [36, 12, 60, 40], -1.0, label="cup"),
            _region(2, [26, 36, 34, 46], None, kept=False, label="noise"),
            _region(3, [2, 38, 20, 46], None, label="ghost"),
        ], prompt=NASTY),
        _record("b", "images/b.png", None, [_region(0, [10, 10, 30, 30], 0.5)], category="spatial"),
        _record('c <x>&"1"', "images/c.png", -0.2, [], category=None),
    ]
    with open(tmp_path / "rewards.jsonl", "w") as f:
        for r in records:
            f.write(json.dumps(r) + "\n")
        f.write("{not json\n")
    with open(tmp_path / "manifest.jsonl", "w") as f:
        f.write(json.dumps({"image_id": "a", "image_file": "images/a.png", "prompt": NASTY,
                            "think_output": "<think>plan: apple & cup</think>"}) + "\n")
        f.write(json.dumps({"image_id": "b", "image_file": "images/b.png", "prompt": "x", "think_output": None}) + "\n")
    train = tmp_path / "train"
    train.mkdir()
    with open(train / "metrics.jsonl", "w") as f:
        for step in range(1, 7):
            f.write(json.dumps({"step": step, "loss": 1.0 / step, "reward_term": 0.5 / step,
                                "constraint_term": 0.1, "lr": 1e-4}) + "\n")
        f.write(json.dumps({"event": "step 3: non-finite loss, step skipped"}) + "\n")
        f.write(json.dumps({"step": 6, "loss": 0.05, "reward_term": 0.02, "constraint_term": 0.1}) + "\n")
        f.write("garbage\n")
    (tmp_path / "eval").mkdir()
    (tmp_path / "eval" / "summary.json").write_text(json.dumps(
        {"model": "ckpt <final>", "overall": 0.515, "categories": {"color": 0.61, "shape": 0.42}}))
    Image.new("RGB", (40, 30), (10, 200, 10)).save(tmp_path / "eval" / "bar_chart.png")
    return tmp_path


def _records(run_dir):
    records, errors = read_records(run_dir / "rewards.jsonl")
    assert len(records) == 3 and len(errors) == 1
    return {r["image_id"]: r for r in records}


def _px(image, box, x, y):
    return image.getpixel((box[0] + x, box[1] + y))


# --------------------------------------------------------------------------- pictures

def test_display_size():
    assert display_size(64, 48) == (256, 192, 4.0, 4.0)
    assert display_size(1024, 1024) == (512, 512, 0.5, 0.5)
    assert display_size(300, 200) == (300, 200, 1.0, 1.0)
    dw, dh, sx, sy = display_size(2048, 1024)
    assert (dw, dh) == (512, 256) and sx == sy == 0.25


def test_color_scales():
    assert SCORE_SCALE.color(1.0) == GREEN and SCORE_SCALE.color(-1.0) == RED
    assert SCORE_SCALE.color(0.0) == (255, 255, 255)
    assert SIGNED_MAP_SCALE.color(-5.0) == RED  # clipped to the range
    assert OFFICIAL_MAP_SCALE.color(0.0) == (68, 1, 84) and OFFICIAL_MAP_SCALE.color(1.0) == (253, 231, 37)
    assert OFFICIAL_MAP_SCALE.rgb(np.zeros((2, 3))).shape == (2, 3, 3)


def test_card_regions_coloured_by_local_score(run_dir):
    rec = _records(run_dir)["a"]
    card = draw_card(rec, RewardMapConfig())
    img, box = card.image, card.layout.image_box
    assert card.layout.sx == card.layout.sy == 4.0
    assert (box[2] - box[0], box[3] - box[1]) == (4 * W, 4 * H)
    assert img.size == card.layout.size
    # region 0 (score +1): its box [4, 8, 24, 32] is outlined green on the left and bottom edges
    assert _px(img, box, 4 * 4, 20 * 4) == GREEN
    assert _px(img, box, 14 * 4, 32 * 4 - 1) == GREEN
    # region 1 (score -1): box [36, 12, 60, 40] outlined red
    assert _px(img, box, 36 * 4, 26 * 4) == RED
    assert _px(img, box, 60 * 4 - 1, 26 * 4) == RED
    # away from every region the image is untouched
    assert _px(img, box, 62 * 4 + 1, 46 * 4 + 1) == BACKGROUND
    # inside region 0 the mask is tinted green, not left grey
    r, g, b = _px(img, box, 14 * 4, 20 * 4)
    assert g > r and g > b
    # region 2 (filtered by grounding): dashed light grey / white; region 3 (failed): dark grey / white
    left2 = {_px(img, box, 26 * 4, y) for y in range(36 * 4 + 2, 46 * 4 - 2)}
    assert (170, 170, 170) in left2 and (255, 255, 255) in left2
    left3 = {_px(img, box, 2 * 4, y) for y in range(38 * 4 + 2, 46 * 4 - 2)}
    assert (60, 60, 60) in left3 and (255, 255, 255) in left3


@pytest.mark.parametrize("mode, scale, inside0, inside1", [
    ("official", OFFICIAL_MAP_SCALE, 0.8, 0.4),   # alpha 0.8; (s+1)/2 with background floor 0.5
    ("signed", SIGNED_MAP_SCALE, 0.8, -0.8),
])
def test_heat_map_matches_pixel_reward_map(run_dir, mode, scale, inside0, inside1):
    rec = _records(run_dir)["a"]
    config = RewardMapConfig(mode=mode)
    card = draw_card(rec, config)
    expected = pixel_reward_map(rec, config)
    np.testing.assert_array_equal(card.reward_map, expected)
    assert expected[20, 10] == pytest.approx(inside0) and expected[25, 45] == pytest.approx(inside1)
    colours = scale.rgb(expected)
    box = card.layout.map_box
    for x, y in ((10, 20), (45, 25), (62, 2), (0, 0), (30, 40), (4, 8), (23, 31)):
        assert _px(card.image, box, 4 * x + 2, 4 * y + 2) == tuple(colours[y, x]), (x, y)
    assert card.map_stats["alpha"] == pytest.approx(0.8)


def test_large_image_map_on_panel_grid(tmp_path):
    """A shrunk panel rasterises the map on its own grid (no full-resolution buffers)."""
    from srum.records import validate_record
    from srum.rewards.raster import reward_weights
    Image.new("RGB", (600, 520), BACKGROUND).save(tmp_path / "big.png")
    rec = validate_record({"schema": "srum.reward.v1", "image_id": "big", "image_file": "big.png", "prompt": "p",
                           "width": 600, "height": 520,
                           "global": {"score": 1.0, "status": "ok", "method": "text"},
                           "regions": [{"region_id": 0, "bbox": [60, 52, 300, 260], "score": 1.0, "status": "ok",
                                        "method": "text"}]}, "t")
    rec["image_path"] = str(tmp_path / "big.png")
    card = draw_card(rec)
    dw, dh, sx, _ = display_size(600, 520)
    assert card.reward_map.shape == (dh, dw) == (444, 512)
    expected, _ = reward_weights(rec, (dh, dw), RewardMapConfig(), frame_hw=(dh, dw))
    np.testing.assert_array_equal(card.reward_map, expected.numpy())
    box = card.layout.map_box
    assert _px(card.image, box, 100, 100) == OFFICIAL_MAP_SCALE.color(1.0)
    assert _px(card.image, box, 400, 400) == OFFICIAL_MAP_SCALE.color(0.5)
    assert _px(card.image, card.layout.image_box, round(60 * sx), 150) == GREEN


def test_failed_global_map_skip_or_neutral(run_dir):
    rec = _records(run_dir)["b"]
    card = draw_card(rec, RewardMapConfig(), missing_global="skip")
    assert card.reward_map is None and card.map_stats is None
    assert _px(card.image, card.layout.map_box, 200, 150) == NO_MAP
    assert any("global judgment failed" in n for n in card.notes)
    card = draw_card(rec, RewardMapConfig(), missing_global="neutral")
    expected = pixel_reward_map(rec, RewardMapConfig(), missing_global="neutral")
    np.testing.assert_array_equal(card.reward_map, expected)
    assert expected[20, 20] == pytest.approx(0.5 * 0.75)
    assert _px(card.image, card.layout.map_box, 4 * 20 + 1, 4 * 20 + 1) == OFFICIAL_MAP_SCALE.color(expected[20, 20])
    assert render_image_card(rec, None).size == card.image.size
    # the training config's rewards section works as the config (its missing_global applies)
    from srum.training.config import RewardsConfig
    section = RewardsConfig(missing_global="neutral", map=RewardMapConfig(mode="signed"))
    np.testing.assert_array_equal(draw_card(rec, section).reward_map,
                                  pixel_reward_map(rec, RewardMapConfig(mode="signed"), missing_global="neutral"))


def test_wrap_text_respects_width():
    fnt = font(12)
    lines = wrap_text("word " * 40 + "x" * 200, fnt, 150)
    assert len(lines) > 3 and all(fnt.getlength(line) <= 150 for line in lines)
    cut = wrap_text("word " * 40, fnt, 150, max_lines=2)
    assert len(cut) == 2 and cut[-1].endswith("...")


# --------------------------------------------------------------------------- plots

def test_nice_ticks():
    assert nice_ticks(0, 1) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(1, 309, 8) == [0, 50, 100, 150, 200, 250, 300, 350]
    ticks = nice_ticks(-0.013, 0.27)
    assert ticks[0] <= -0.013 and ticks[-1] >= 0.27 and 0.1 in ticks
    assert len(nice_ticks(5, 5)) >= 2


def test_line_plot_draws_rising_series():
    colour = (200, 0, 0)
    image = line_plot([Series("up", [0, 1, 2, 3, 4], [0.0, 1.0, 2.0, None, 4.0], color=colour)],
                      title="t", y_label="v", size=(400, 300))
    arr = np.asarray(image)
    ys, xs = np.nonzero(np.all(arr == colour, axis=-1))
    body = xs > 60  # leave out the legend swatch at the bottom left
    ys, xs = ys[body & (ys < 240)], xs[body & (ys < 240)]
    assert len(xs) > 50
    assert ys[xs == xs.min()].mean() > ys[xs == xs.max()].mean()  # rises to the right (image y grows down)
    with pytest.raises(ValueError, match="nothing to plot"):
        line_plot([Series("empty", [1, 2], [None, None])])


def test_read_metrics_keeps_later_duplicates(run_dir):
    run = read_metrics(run_dir / "train" / "metrics.jsonl")
    assert run.name == "train"
    assert [r["step"] for r in run.rows] == [1, 2, 3, 4, 5, 6]
    assert run.rows[-1]["loss"] == 0.05 and run.duplicate_steps == 1
    assert run.events == ["step 3: non-finite loss, step skipped"]
    assert len(run.errors) == 1 and ":9:" in run.errors[0]
    with pytest.raises(FileNotFoundError):
        read_metrics(run_dir / "nope.jsonl")


# --------------------------------------------------------------------------- the report

class _Collector(HTMLParser):
    VOID = {"meta", "img", "br", "hr", "link", "input", "col", "source", "wbr"}

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.refs, self.ids, self.text, self.stack, self.errors = [], set(), [], [], []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        for key in ("src", "href"):
            if key in attrs:
                self.refs.append(attrs[key])
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag not in self.VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        if not self.stack or self.stack[-1] != tag:
            self.errors.append(f"unexpected </{tag}> with open {self.stack[-3:]}")
        else:
            self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)


def _parse(path: Path) -> _Collector:
    parser = _Collector()
    parser.feed(path.read_text(encoding="utf-8"))
    parser.close()
    return parser


def _check_refs(report: Path, parser: _Collector) -> None:
    from urllib.parse import unquote, urlparse
    root = report.parent.resolve()
    assert parser.refs
    for ref in parser.refs:
        if ref.startswith("#"):
            assert ref[1:] in parser.ids, ref
            continue
        parsed = urlparse(ref)
        assert not parsed.scheme and not parsed.netloc, ref  # relative only: no file://, no http
        target = (root / unquote(parsed.path)).resolve()
        assert target.is_file(), ref
        assert root in target.parents, ref


def test_report_is_self_contained_and_escaped(run_dir):
    out = run_dir / "report"
    report = render_report(run_dir / "rewards.jsonl", out, manifest=run_dir / "manifest.jsonl",
                           metrics=[run_dir / "train" / "metrics.jsonl"],
                           eval_summary=run_dir / "eval" / "summary.json",
                           eval_chart=run_dir / "eval" / "bar_chart.png", title='run <1> & "x"')
    assert report == out / "report.html"
    parser = _parse(report)
    assert not parser.errors and not parser.stack
    _check_refs(report, parser)
    raw = report.read_text(encoding="utf-8")
    text = "".join(parser.text)
    # data texts reach the reader intact but are never raw markup
    for s in (NASTY, "<think>plan: apple & cup</think>", "layout <ok> & fine", "reason 0 <i>&amp;",
              'run <1> & "x"', "ckpt <final>", 'c <x>&"1"', "no score <in> answer"):
        assert s in text, s
    assert "<b>bold</b>" not in raw and "<think>" not in raw and "<final>" not in raw and "<i>" not in raw
    assert "a &lt;b&gt;bold&lt;/b&gt; &amp; &quot;quoted&quot; prompt" in raw
    assert "<script" not in raw and "http://" not in raw and "https://" not in raw
    # pictures: one card per record, the loss plot, the copied chart
    cards = sorted(p.name for p in (out / "images").iterdir())
    assert cards == ["a.png", "b.png", "c__x___1_.png"]
    assert Image.open(out / "images" / "a.png").size == draw_card(_records(run_dir)["a"]).image.size
    assert Image.open(out / "plots" / "loss_0.png").size == (760, 380)
    assert (out / "eval" / "bar_chart.png").read_bytes() == (run_dir / "eval" / "bar_chart.png").read_bytes()
    # summary, training and evaluation content
    assert "Chain of thought" in text and "unreadable reward lines" in text
    assert "0.61" in text and "color" in text and "step 3: non-finite loss, step skipped" in text
    assert raw.count('<article class="card"') == 3


def test_report_limit_missing_image_and_records_input(run_dir):
    records = list(_records(run_dir).values())
    os.remove(run_dir / "images" / "b.png")
    report = render_report(records, run_dir / "r2", limit=2, reward_config=RewardMapConfig(mode="signed"))
    raw = report.read_text(encoding="utf-8")
    assert raw.count('<article class="card"') == 2
    assert sorted(p.name for p in (run_dir / "r2" / "images").iterdir()) == ["a.png"]
    assert "no picture: FileNotFoundError" in raw
    parser = _parse(report)
    _check_refs(report, parser)
    with pytest.raises(FileNotFoundError, match="metrics file not found"):
        render_report(records, run_dir / "r3", metrics=[run_dir / "missing.jsonl"])


def test_generic_eval_tables():
    html_text = json_summary_html({"n": 3, "categories": {"a": 0.5, "b<": 0.25},
                                   "rows": {"x": {"mean": 0.1, "n": 2}}, "odd": [1, [2]]})
    assert "b&lt;" in html_text and 'class="bar"' in html_text and "<th>mean</th>" in html_text
    md = markdown_tables_html("# Results\n| cat | mean |\n|---|---:|\n| color <x> | 0.61 |\ntext & more\n")
    assert "<h4>Results</h4>" in md and "<td>color &lt;x&gt;</td>" in md and "<p>text &amp; more</p>" in md
    assert "---" not in md


def test_cli_writes_report(run_dir, tmp_path):
    parser = argparse.ArgumentParser()
    add_visualize_parser(parser.add_subparsers(dest="command"))
    train_yaml = tmp_path / "train.yaml"
    train_yaml.write_text("rewards:\n  missing_global: neutral\n  map:\n    mode: signed\n    region_shape: mask\n")
    args = parser.parse_args(["visualize", str(run_dir / "rewards.jsonl"), "--out", str(tmp_path / "cli"),
                              "--metrics", str(run_dir / "train" / "metrics.jsonl"), "--limit", "2",
                              "--train-config", str(train_yaml), "--overlap", "mean"])
    assert args.func(args) == 0
    raw = (tmp_path / "cli" / "report.html").read_text(encoding="utf-8")
    assert "signed, mask, overlap mean" in raw and "missing_global=neutral" in raw
    assert sorted(p.name for p in (tmp_path / "cli" / "images").iterdir()) == ["a.png", "b.png"]


def _browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "chrome"):
        path = shutil.which(name)
        if path:
            return path
    return None


@pytest.mark.skipif(_browser() is None, reason="no chromium on PATH (apt-get install chromium)")
def test_report_renders_in_headless_browser(run_dir, tmp_path):
    report = render_report(run_dir / "rewards.jsonl", tmp_path / "browser", limit=1)
    shot = tmp_path / "shot.png"
    cmd = [_browser(), "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", "--no-first-run",
           "--disable-dev-shm-usage", f"--user-data-dir={tmp_path / 'profile'}", "--window-size=1280,2400",
           f"--screenshot={shot}", report.resolve().as_uri()]
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    except subprocess.TimeoutExpired:
        pytest.skip("the browser did not finish within 120 s (overloaded machine?)")
    if not shot.is_file():  # the browser itself could not start here: an environment problem
        pytest.skip(f"the browser wrote no screenshot (exit {result.returncode}): {result.stderr[-500:]}")
    arr = np.asarray(Image.open(shot).convert("RGB")).astype(int)
    assert len(np.unique(arr.reshape(-1, 3), axis=0)) > 50  # not blank
    # the card picture (loaded through its relative path) shows the +1 region's green outline
    near_green = (np.abs(arr - np.array(GREEN)).max(axis=-1) <= 6).sum()
    assert near_green > 100


# ---------------------------------------------------------------------------- evaluation grid

def _eval_run(root: Path, scores: dict[str, object], colour) -> Path:
    """A fake evaluation run: images/manifest.jsonl (+ scores/scores.jsonl for scored ids)."""
    (root / "images").mkdir(parents=True)
    rows = []
    for k, image_id in enumerate(["color_0000", "color_0001", "shape_0000", "shape_0001", "spatial_0000"]):
        Image.new("RGB", (64, 64), colour).save(root / "images" / f"{image_id}.png")
        rows.append({"image_id": image_id, "image_file": f"{image_id}.png", "prompt": f"prompt {k}",
                     "category": image_id.split("_")[0], "seed": k})
    (root / "images" / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (root / "scores").mkdir()
    lines = [{"image_id": i, "score": s, "status": "failed" if s is None else "ok"} for i, s in scores.items()]
    (root / "scores" / "scores.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines))
    return root


def test_eval_grid_pairs_images_by_id_and_counts_changes(tmp_path):
    from srum.visualize.grid import eval_grid, read_eval_run
    base = _eval_run(tmp_path / "base", {"color_0000": 0, "color_0001": 100, "shape_0000": 0, "shape_0001": None},
                     (200, 0, 0))
    last = _eval_run(tmp_path / "last", {"color_0000": 100, "color_0001": 0, "shape_0000": 0, "shape_0001": 100,
                                         "spatial_0000": 100}, (0, 0, 200))
    run = read_eval_run(base)
    assert run["shape_0001"]["status"] == "failed" and run["shape_0001"]["score"] is None
    assert run["spatial_0000"]["status"] is None                       # not scored
    out = eval_grid([("base", base), ("round 1", last)], tmp_path / "g" / "grid.png", limit=3, cell=32, width=200)
    # categories in turn: color, shape, spatial; only pairs scored in both are counted
    assert out["rows"] == 3 and out["columns"] == ["base", "round 1"]
    assert out["changed"] == {"better": 1, "worse": 1, "same": 1}
    assert json.loads((tmp_path / "g" / "grid.json").read_text()) == out
    with Image.open(tmp_path / "g" / "grid.png") as im:
        pixels = np.asarray(im.convert("RGB")).reshape(-1, 3)
    assert ((pixels == (200, 0, 0)).all(1)).any() and ((pixels == (0, 0, 200)).all(1)).any()   # both runs drawn
    with pytest.raises(ValueError, match="at least two"):
        eval_grid([("base", base)], tmp_path / "x.png")
    with pytest.raises(FileNotFoundError, match="not an evaluation run"):
        eval_grid([("base", base), ("none", tmp_path / "none")], tmp_path / "x.png")
