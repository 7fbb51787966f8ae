# SPDX-License-Identifier: Apache-2.0
"""Direct and CoT (think) evaluations side by side: `srum eval compare` labels a think run
"<model> (CoT)" as the paper's Table 1 does and computes deltas only within a mode; the
pipeline's `eval.modes: [direct, think]` evaluates every model both ways, each into its own
folder (baseline/eval, baseline/eval-think, round-NN/eval, round-NN/eval-think)."""
from __future__ import annotations

import csv
import json
import re
from pathlib import Path

import pytest

from srum.config import ConfigError
from srum.evaluation.summary import compare_runs
from srum.pipeline.config import load_pipeline_config
from srum.pipeline.runner import Pipeline

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "pipeline" / "tiny.yaml"
COLUMNS = ("3d_spatial", "color", "non-spatial", "numeracy", "shape", "spatial", "texture")
# The paper's Table 1 rows (Bagel, Bagel (CoT), +SRUM, +SRUM (CoT)): per-category means, complex composite.
PAPER = {
    ("Bagel", "false"): ((77.98, 89.30, 85.03, 70.40, 81.94, 81.52, 87.93), 83.32),
    ("Bagel", "true"): ((84.66, 88.85, 85.64, 75.36, 84.33, 82.71, 88.07), 86.10),
    ("SRUM", "false"): ((83.10, 92.90, 88.47, 78.52, 84.23, 86.92, 89.57), 88.69),
    ("SRUM", "true"): ((88.60, 92.90, 90.48, 80.12, 84.47, 89.93, 89.15), 91.31),
}


def _summary(path: Path, model: str, think: str) -> Path:
    means, composite = PAPER[(model, think)]
    overall = (sum(means) + composite) / 8
    path.mkdir(parents=True, exist_ok=True)
    (path / "summary.json").write_text(json.dumps({
        "categories": {c: {"mean": m} for c, m in zip(COLUMNS, means)}, "complex_composite": composite,
        "overall": overall, "overall_8cat": None, "num_scored": 2670, "num_failed": 0,
        "run": {"judge": "Qwen2.5-VL-72B", "think": think}}))
    return path


def test_compare_labels_cot_rows_and_never_mixes_modes(tmp_path):
    runs = [_summary(tmp_path / "bagel", "Bagel", "false"), _summary(tmp_path / "bagel_cot", "Bagel", "true"),
            _summary(tmp_path / "srum", "SRUM", "false"), _summary(tmp_path / "srum_cot", "SRUM", "true")]
    result = compare_runs(runs, tmp_path / "cmp", ["Bagel", "Bagel", "SRUM", "SRUM"], paper=False)
    assert [r["label"] for r in result["runs"]] == ["Bagel", "Bagel (CoT)", "SRUM", "SRUM (CoT)"]
    assert [r["mode"] for r in result["runs"]] == ["direct", "think", "direct", "think"]
    assert result["bases"] == {"direct": "Bagel", "think": "Bagel (CoT)"}
    by_label = {r["label"]: r for r in result["runs"]}
    assert "delta" not in by_label["Bagel"] and "delta" not in by_label["Bagel (CoT)"]   # each mode's own base
    assert by_label["SRUM"]["delta"]["overall"] == pytest.approx(86.55 - 82.18, abs=0.01)
    assert by_label["SRUM (CoT)"]["delta"]["overall"] == pytest.approx(88.37 - 84.46, abs=0.01)
    assert by_label["SRUM (CoT)"]["delta"]["spatial"] == pytest.approx(89.93 - 82.71)
    md = (tmp_path / "cmp" / "compare.md").read_text()
    assert md.startswith("# T2I-CompBench comparison (base: Bagel; CoT base: Bagel (CoT))")
    assert re.search(r"^\| Bagel \(CoT\) \| 84\.66 \| 88\.85 \| 86\.10 \|", md, re.M)
    assert re.search(r"^\| SRUM \(CoT\) \| 88\.60 \(\+3\.94\) \|", md, re.M)
    assert "against the first run of the same mode (direct: Bagel, CoT: Bagel (CoT))" in md
    with open(tmp_path / "cmp" / "compare.csv") as f:
        kinds = [(r[0], r[1]) for r in csv.reader(f)][1:]
    assert kinds == [("Bagel", "score"), ("Bagel (CoT)", "score"), ("SRUM", "score"), ("SRUM", "delta vs Bagel"),
                     ("SRUM (CoT)", "score"), ("SRUM (CoT)", "delta vs Bagel (CoT)")]
    # a label that already says (CoT) is kept; a run without a recorded mode counts as direct
    (tmp_path / "old").mkdir()
    old = json.loads((runs[0] / "summary.json").read_text())
    del old["run"]
    (tmp_path / "old" / "summary.json").write_text(json.dumps(old))
    again = compare_runs([tmp_path / "old", runs[3]], tmp_path / "cmp2", ["base", "SRUM (CoT)"], paper=False)
    assert [r["label"] for r in again["runs"]] == ["base", "SRUM (CoT)"] and "delta" not in again["runs"][1]


def test_compare_refuses_a_run_that_mixes_modes(tmp_path):
    mixed = _summary(tmp_path / "mixed", "Bagel", "false")
    data = json.loads((mixed / "summary.json").read_text())
    data["run"]["think"] = "false, true"
    (mixed / "summary.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match=r"mixed.*mix think modes"):
        compare_runs([_summary(tmp_path / "bagel", "Bagel", "false"), mixed], tmp_path / "cmp", paper=False)


def test_pipeline_plans_both_modes_for_every_model(tmp_path, capsys):
    cfg = load_pipeline_config(str(TINY), [f"run_dir={tmp_path / 'run'}", "rounds=1", "eval.modes=[direct, think]"])
    assert Pipeline(cfg, str(TINY), dry_run=True).run() is None
    planned = re.findall(r"^\[([^\]]+)\] would run", capsys.readouterr().out, flags=re.M)
    assert planned == ["baseline/eval", "baseline/eval-think", "round-01/generate", "round-01/propose",
                       "round-01/judge", "round-01/train", "round-01/export", "round-01/eval", "round-01/eval-think",
                       "round-01/report"]
    # the default stays direct only, in the folders earlier runs used
    cfg = load_pipeline_config(str(TINY), [f"run_dir={tmp_path / 'run'}", "rounds=1"])
    assert cfg.eval.modes == ["direct"]
    with pytest.raises(ConfigError, match="eval.modes"):
        load_pipeline_config(str(TINY), [f"run_dir={tmp_path / 'run'}", "eval.modes=[think, think]"])
    with pytest.raises(ConfigError, match="eval.modes"):
        load_pipeline_config(str(TINY), [f"run_dir={tmp_path / 'run'}", "eval.modes=[cot]"])
    # a think eval config in the direct mode's folder would be mislabelled: refused, naming the fix
    cfg = load_pipeline_config(str(TINY), [f"run_dir={tmp_path / 'run'}", "eval.overrides={sampling.think: true}"])
    with pytest.raises(ConfigError, match=r"sampling.think: true.*eval.modes: \[think\]"):
        Pipeline(cfg, str(TINY), dry_run=True).run()


def test_pipeline_evaluates_the_model_in_both_modes(tmp_path, monkeypatch):
    """The tiny models for real: the starting model evaluated direct and with CoT, as the
    pipeline's loop does for the baseline and every round; then the round report's table."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    run_dir = tmp_path / "run"
    cfg = load_pipeline_config(str(TINY), [f"run_dir={run_dir}", "eval.modes=[direct, think]",
                                           "eval.overrides.categories=[color]"])
    pipeline = Pipeline(cfg, str(TINY))
    pipeline.prepare()
    evals = pipeline.evaluations(run_dir / "baseline", cfg.model.path, {"model": cfg.model.path}, "base")
    assert [(label, plan.dir.relative_to(run_dir).as_posix()) for label, plan in evals] == [
        ("base", "baseline/eval"), ("base (CoT)", "baseline/eval-think")]
    for (label, plan), think in zip(evals, (False, True)):
        config = json.loads(json.dumps(plan.config))
        assert config["sampling"]["think"] is think
        rows = [json.loads(line) for line in (plan.dir / "images" / "manifest.jsonl").read_text().splitlines()]
        assert rows and all(r["think"] is think for r in rows)
        summary = json.loads((plan.dir / "summary" / "summary.json").read_text())
        assert summary["run"]["think"] == str(think).lower()
    result = compare_runs([p.dir for _, p in evals], tmp_path / "cmp", [label for label, _ in evals])
    assert [(r["label"], r["mode"]) for r in result["runs"]] == [("base", "direct"), ("base (CoT)", "think")]
    assert all("delta" not in r for r in result["runs"])
