# SPDX-License-Identifier: Apache-2.0
"""T2I-CompBench summary arithmetic: failures excluded, reference overall formula, files, compare."""
import csv
import json

import pytest
from PIL import Image

from srum.evaluation.summary import (
    BASE_CATEGORIES, category_stats, compare_runs, complex_composite, plain_8cat_mean, read_scores,
    reference_overall, summarize_scores, write_summary,
)

# The README's Bagel row (no CoT): 3d spatial, color, complex, non-spatial, numeracy, shape, spatial, texture.
BAGEL_README = {"3d_spatial": 77.98, "color": 89.30, "non-spatial": 85.03, "numeracy": 70.40, "shape": 81.94,
                "spatial": 81.52, "texture": 87.93}
BAGEL_COMPLEX = 83.32
BAGEL_OVERALL = 82.18


def _write_csv(path, rows, fields=("image_id", "category", "score", "status")):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow(r)
    return path


@pytest.fixture
def fixed_csv(tmp_path):
    """Two images per category; some judgments failed (empty score)."""
    rows = []
    scores = {  # category -> list of (score or None)
        "3d_spatial": [80, 70], "color": [90, None], "non-spatial": [85, 75], "numeracy": [60, 70],
        "shape": [None, None], "spatial": [100, 50], "texture": [88, 92],
        "complex": [80, 60], "complex_action": [90, None], "complex_spatial": [40, 80],
    }
    for cat, values in scores.items():
        for k, s in enumerate(values):
            rows.append({"image_id": f"{cat}_{k}", "category": cat, "score": "" if s is None else s,
                         "status": "failed" if s is None else "ok"})
    return _write_csv(tmp_path / "results.csv", rows)


def test_summary_arithmetic_on_a_fixed_csv_with_failures(fixed_csv):
    rows = read_scores(fixed_csv)
    s = summarize_scores(rows)
    cats = s["categories"]
    assert s["num_images"] == 20 and s["num_scored"] == 16 and s["num_failed"] == 4
    assert cats["color"] == {"num_images": 2, "num_scored": 1, "num_failed": 1, "mean": 90.0, "std": 0.0}
    assert cats["shape"]["mean"] is None and cats["shape"]["num_failed"] == 2
    assert cats["spatial"]["mean"] == 75.0 and cats["spatial"]["std"] == 25.0
    assert s["complex_composite"] == pytest.approx((70 + 90 + 60) / 3)
    assert s["complex_parts"] == ["complex", "complex_action", "complex_spatial"]
    # shape has no scored image: no overall, and it says why
    assert s["overall"] is None and s["overall_8cat"] is None
    assert s["missing_categories"] == ["shape"]
    assert s["mean_all_images"] == pytest.approx(sum([80, 70, 90, 85, 75, 60, 70, 100, 50, 88, 92, 80, 60, 90, 40, 80])
                                                 / 16)


def test_failures_are_never_averaged_in(tmp_path):
    # the reference wrote failed judgments as -1 and averaged them in: 90 and -1 gave 44.5
    path = _write_csv(tmp_path / "ref.csv", [
        {"question_id": 1, "prompt": "a", "category": "color", "score": 90},
        {"question_id": 2, "prompt": "b", "category": "color", "score": -1},
        {"question_id": 3, "prompt": "c", "category": "color", "score": ""}],
        fields=("question_id", "prompt", "category", "score"))
    rows = read_scores(path)
    assert [r["status"] for r in rows] == ["ok", "failed", "failed"]
    stats = category_stats(rows)["color"]
    assert stats["mean"] == 90.0 and stats["num_failed"] == 2


def test_reference_overall_formula_reproduces_the_readme_row():
    # complex parts chosen so that their mean is the README's complex column
    means = dict(BAGEL_README, complex=80.00, complex_action=85.00, complex_spatial=84.96)
    assert complex_composite(means) == pytest.approx(BAGEL_COMPLEX)
    overall = reference_overall(means)
    assert round(overall, 2) == BAGEL_OVERALL
    # it is the plain mean of the table's 8 columns (complex column = composite) ...
    assert overall == pytest.approx((sum(BAGEL_README.values()) + BAGEL_COMPLEX) / 8)
    # ... and differs from the plain 8-category mean that uses the complex category alone
    assert plain_8cat_mean(means) == pytest.approx((sum(BAGEL_README.values()) + 80.0) / 8)
    # with only "complex" evaluated, both agree
    only_complex = dict(BAGEL_README, complex=BAGEL_COMPLEX)
    assert reference_overall(only_complex) == pytest.approx(plain_8cat_mean(only_complex))
    # a missing base category or no complex category at all: no overall
    assert reference_overall({k: v for k, v in means.items() if k != "texture"}) is None
    assert reference_overall(BAGEL_README) is None
    assert len(BASE_CATEGORIES) == 7


def test_write_summary_files(tmp_path, fixed_csv):
    rows = read_scores(fixed_csv)
    rows = [r for r in rows if r["category"] != "shape"] + [
        {"image_id": "shape_x", "category": "shape", "score": 81.0, "status": "ok"}]
    s = write_summary(rows, tmp_path / "summary", title="unit", run_info={"judge": "j"})
    means = {c: st["mean"] for c, st in s["categories"].items()}
    expected = (sum(means[c] for c in BASE_CATEGORIES) + (70 + 90 + 60) / 3) / 8
    assert s["overall"] == pytest.approx(expected)
    assert s["overall_8cat"] == pytest.approx((sum(means[c] for c in BASE_CATEGORIES) + 70) / 8)
    on_disk = json.loads((tmp_path / "summary" / "summary.json").read_text())
    assert on_disk["overall"] == pytest.approx(expected) and on_disk["run"]["judge"] == "j"
    with open(tmp_path / "summary" / "results.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == len(rows)
    assert sum(r["status"] == "failed" for r in csv_rows) == 2  # color_1, complex_action_1
    # the CSV reads back to the same numbers
    assert summarize_scores(read_scores(tmp_path / "summary" / "results.csv"))["overall"] == pytest.approx(expected)
    md = (tmp_path / "summary" / "summary.md").read_text()
    assert "| 3d spatial | Color | Complex | Nonspatial | Numeracy | Shape | Spatial | Texture | Overall |" in md
    assert f"| {means['3d_spatial']:.2f} | {means['color']:.2f} | {(70 + 90 + 60) / 3:.2f} |" in md
    assert f"{expected:.2f}" in md and "2 failed" in md
    with Image.open(tmp_path / "summary" / "scores.png") as im:
        assert im.format == "PNG" and im.width > 400 and im.height > 300


def test_bad_score_rows_are_named(tmp_path):
    path = _write_csv(tmp_path / "bad.csv", [{"image_id": "a", "category": "color", "score": "", "status": "ok"}])
    with pytest.raises(ValueError, match=r"bad.csv:2: status ok without a score"):
        read_scores(path)
    path = _write_csv(tmp_path / "bad2.csv", [{"image_id": "a", "category": "color", "score": 150, "status": "ok"}])
    with pytest.raises(ValueError, match=r"bad2.csv:2: score 150 is outside 0-100"):
        read_scores(path)
    jl = tmp_path / "scores.jsonl"
    jl.write_text('{"image_id": "a", "category": "color", "score": 10, "status": "ok"}\n'
                  '{"image_id": "b", "score": 10, "status": "ok"}\n')
    with pytest.raises(ValueError, match=r"scores.jsonl:2: no 'category'"):
        read_scores(jl)


def _summary_file(path, base_means, composite):
    cats = {c: {"mean": m} for c, m in base_means.items()}
    s = {"categories": cats, "complex_composite": composite,
         "overall": reference_overall(dict(base_means, complex=composite)), "overall_8cat": None,
         "num_scored": 10, "num_failed": 1}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(s))
    return path


def test_compare_two_runs_with_deltas(tmp_path):
    base = _summary_file(tmp_path / "base" / "summary" / "summary.json", BAGEL_README, BAGEL_COMPLEX)
    srum_means = {c: v + 1.5 for c, v in BAGEL_README.items()}
    _summary_file(tmp_path / "srum" / "summary" / "summary.json", srum_means, BAGEL_COMPLEX - 0.5)
    result = compare_runs([tmp_path / "base", tmp_path / "srum"], tmp_path / "cmp", labels=["Bagel", "Bagel+SRUM"])
    srum = result["runs"][1]
    assert result["base"] == "Bagel" and "delta" not in result["runs"][0]
    assert srum["delta"]["color"] == pytest.approx(1.5)
    assert srum["delta"]["complex_composite"] == pytest.approx(-0.5)
    assert srum["delta"]["overall"] == pytest.approx((7 * 1.5 - 0.5) / 8)
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert "| Bagel | 77.98 | 89.30 | 83.32 |" in md
    assert "| Bagel+SRUM | 79.48 (+1.50) | 90.80 (+1.50) | 82.82 (-0.50) |" in md
    with open(tmp_path / "cmp" / "compare.csv") as f:
        rows = list(csv.reader(f))
    assert rows[0][:3] == ["run", "kind", "3d_spatial"] and rows[3][1] == "delta vs Bagel"
    assert float(rows[3][rows[0].index("overall")]) == pytest.approx((7 * 1.5 - 0.5) / 8)
    assert (tmp_path / "cmp" / "compare.png").stat().st_size > 0
    assert json.loads((tmp_path / "cmp" / "compare.json").read_text())["runs"][1]["label"] == "Bagel+SRUM"
    # a summary.json path works as well as a run folder
    again = compare_runs([base, tmp_path / "srum"], tmp_path / "cmp2", labels=["a", "b"])
    assert again["runs"][1]["delta"]["color"] == pytest.approx(1.5)


def test_compare_input_errors(tmp_path):
    base = _summary_file(tmp_path / "base" / "summary.json", BAGEL_README, BAGEL_COMPLEX)
    with pytest.raises(ValueError, match="at least two"):
        compare_runs([base], tmp_path / "out", paper=False)
    with pytest.raises(ValueError, match="labels"):
        compare_runs([base, base], tmp_path / "out", labels=["one"])
    with pytest.raises(FileNotFoundError, match="no summary.json"):
        compare_runs([base, tmp_path / "nothing"], tmp_path / "out")


def test_compare_uses_a_benchmarks_own_table_when_every_run_has_it(tmp_path):
    def own(path, values):
        table = {"name": "Toy world", "columns": ["a", "b", "overall"], "headers": {"a": "A", "b": "B"},
                 "values": values, "note": "Toy note."}
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"categories": {}, "overall": values["overall"], "num_scored": 4, "num_failed": 0,
                                    "table": table}))
        return path
    base = own(tmp_path / "base/summary/summary.json", {"a": 10.0, "b": 20.0, "overall": 15.0})
    trained = own(tmp_path / "r1/summary/summary.json", {"a": 30.0, "b": 20.0, "overall": 25.0})
    result = compare_runs([base, trained], tmp_path / "cmp", labels=["base", "round 1"])
    assert result["benchmark"] == "Toy world" and result["columns"] == ["a", "b", "overall"]
    assert result["runs"][1]["delta"] == {"a": 20.0, "b": 0.0, "overall": 10.0}
    md = (tmp_path / "cmp/compare.md").read_text()
    assert md.startswith("# Toy world comparison (base: base)") and "| run | A | B | Overall |" in md
    assert "| round 1 | 30.00 (+20.00) | 20.00 (+0.00) | 25.00 (+10.00) | 4 | 0 |" in md and "Toy note." in md
    # a run without the table (a CompBench summary): the CompBench columns for all
    plain = _summary_file(tmp_path / "plain/summary.json", BAGEL_README, BAGEL_COMPLEX)
    mixed = compare_runs([plain, trained], tmp_path / "cmp2")
    assert mixed["benchmark"] == "T2I-CompBench" and "3d_spatial" in mixed["columns"]


def test_compare_lists_the_papers_rows(tmp_path):
    """One run is checked against the paper's reported table (86.55 for Bagel+SRUM)."""
    run = _summary_file(tmp_path / "published/summary/summary.json", BAGEL_README, BAGEL_COMPLEX)
    result = compare_runs([run], tmp_path / "cmp", labels=["SRUM_BAGEL_7B_MoT (ours)"])
    rows = result["paper"]["rows"]
    assert list(rows) == ["Bagel", "Bagel (CoT)", "Bagel+SRUM", "Bagel+SRUM (CoT)"]
    assert rows["Bagel+SRUM"]["overall"] == 86.55 and rows["Bagel"]["overall"] == 82.18
    for values in rows.values():   # the reported overall is the mean of the 8 columns
        assert values["overall"] == pytest.approx(sum(v for c, v in values.items() if c != "overall") / 8, abs=0.01)
    md = (tmp_path / "cmp/compare.md").read_text()
    assert "## Reported in the paper" in md and "| Bagel+SRUM | 83.10 | 92.90 | 88.69 |" in md
    with open(tmp_path / "cmp/compare.csv") as f:
        assert ["paper: Bagel+SRUM", "paper"] == next(r for r in csv.reader(f) if r[0] == "paper: Bagel+SRUM")[:2]
    plain = compare_runs([run, run], tmp_path / "cmp2", labels=["a", "b"], paper=False)
    assert "paper" not in plain and "Reported in the paper" not in (tmp_path / "cmp2/compare.md").read_text()
