# SPDX-License-Identifier: Apache-2.0
"""``srum miniworld study`` end to end on a miniature Bagel the test trains itself (a few
steps: the numbers are not meaningful, the bookkeeping is): the table has every variant,
the paired differences are the per-seed differences, a crashed unit is redone and
nothing else, and a rerun of a finished study changes no file."""
import json
import math
from pathlib import Path

import pytest

from srum.miniworld import study as S
from srum.miniworld.study_report import COLUMNS


@pytest.fixture(scope="module")
def mini_model(tmp_path_factory):
    """A miniature Bagel from every phase of ``srum miniworld pretrain`` at minimal sizes."""
    from srum.miniworld.pretrain import load_pretrain_config, pretrain
    out = tmp_path_factory.mktemp("mw-pretrain")
    cfg = load_pretrain_config(S._resolve("configs/miniworld/pretrain_tiny.yaml"), [f"out_dir={out}"])
    return pretrain(cfg)["model"]


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, p.stat().st_size)
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_study_end_to_end(mini_model, tmp_path, monkeypatch, capsys):
    out = tmp_path / "study"
    cfg = S.load_study_config(S.DEFAULT_CONFIG, [f"model={mini_model}", f"out_dir={out}"], quick=True)
    assert cfg.run_variants() == ["base", "sft", "srum_official"]

    # 1) the understanding step of one variant crashes: that unit is failed, the others are done
    real = S._understanding

    def flaky(model_dir, *args):
        if "srum_official" in str(model_dir):
            raise RuntimeError("injected crash")
        return real(model_dir, *args)
    monkeypatch.setattr(S, "_understanding", flaky)
    report = S.run_study(cfg)
    assert [f["unit"] for f in report["failures"]] == ["seed-0/srum_official"]
    assert report["missing"] == ["seed-0/srum_official"] and not report["complete"]
    crashed = out / "seed-0" / "srum_official"
    assert json.loads((crashed / "stage.json").read_text())["status"] == "failed"
    assert not (crashed / "result.json").exists()
    train_done = (crashed / "phase-train.json").stat().st_mtime_ns

    # 2) rerun: only the crashed unit runs again, from the step that crashed
    monkeypatch.setattr(S, "_understanding", real)
    before = _snapshot(out)
    report = S.run_study(cfg)
    assert report["complete"] and not report["failures"]
    assert (crashed / "phase-train.json").stat().st_mtime_ns == train_done
    after = _snapshot(out)
    changed = {k for k in after if before.get(k) != after[k]}
    assert all(k.startswith("seed-0/srum_official/") or k in ("study.json", "study.md") for k in changed), changed
    marker = json.loads((crashed / "stage.json").read_text())
    assert marker["status"] == "complete" and len(marker["attempts"]) == 2

    # 3) the tables: every variant, real numbers, paired differences = per-seed differences
    data = json.loads((out / "study.json").read_text())
    assert data["variants"] == ["base", "sft", "srum_official"]
    for v in data["variants"]:
        for c in COLUMNS:
            acc = data["accuracy"][v][c]
            assert isinstance(acc["mean"], float) and 0.0 <= acc["mean"] <= 100.0 and acc["n"] == 1
        u = data["understanding"][v]
        assert isinstance(u["mean"], float) and 0.0 <= u["mean"] <= 100.0
    for v in ("sft", "srum_official"):
        paired = data["paired_difference"][v]
        for c in COLUMNS:
            d = paired["columns"][c]
            expected = data["per_seed"][v]["0"][c] - data["per_seed"]["base"]["0"][c]
            assert math.isclose(d["per_seed"]["0"], expected, abs_tol=1e-9)
            assert math.isclose(d["mean"], expected, abs_tol=1e-9)
        # equal-sized categories: the overall difference is (gained - lost) / images
        images = len(json.loads((out / "seed-0" / v / "result.json").read_text())["per_image"])
        assert math.isclose(paired["columns"]["overall"]["mean"],
                            100.0 * (paired["images_gained_total"] - paired["images_lost_total"]) / images,
                            abs_tol=1e-9)
        assert data["understanding"][v]["difference"]["mean"] == pytest.approx(
            data["understanding"][v]["mean"] - data["understanding"]["base"]["mean"])
        assert data["train"][v]["0"]["summary"]["step"] == 2
    # the SFT variant trains without reward weights, the SRUM variant with them
    sft_cfg = json.loads((out / "seed-0" / "sft" / "stage.json").read_text())["config"]["train"]
    srum_cfg = json.loads((out / "seed-0" / "srum_official" / "stage.json").read_text())["config"]["train"]
    assert sft_cfg["rewards"]["enabled"] is False and srum_cfg["rewards"]["enabled"] is True
    assert sft_cfg["data"]["rewards"] == srum_cfg["data"]["rewards"]      # the same candidates
    # every variant was evaluated on the same prompts and image seeds
    seeds = {}
    for v in ("base", "seed-0/sft", "seed-0/srum_official"):
        rows = [json.loads(line) for line in (out / v / "eval" / "images" / "manifest.jsonl").read_text().splitlines()]
        seeds[v] = sorted((r["prompt"], r["seed"], r.get("think")) for r in rows)
    assert seeds["base"] == seeds["seed-0/sft"] == seeds["seed-0/srum_official"]
    runtime = data["runtime"]
    assert runtime["total_seconds"] > 0 and set(runtime["units"]) == {"base", "seed-0/sft", "seed-0/srum_official"}
    assert all(u["seconds"] > 0 and u["status"] == "complete" for u in runtime["units"].values())
    assert data["candidates"]["0"]["records"] == 12 and data["prompts"]["also_in_eval"] == 0
    md = (out / "study.md").read_text()
    assert all(f"| {v} |" in md for v in data["variants"])

    # 4) a rerun of the finished study does nothing (here through the command line)
    from srum.cli import main
    before = _snapshot(out)
    assert main(["miniworld", "study", "--quick", f"model={mini_model}", f"out_dir={out}"]) == 0
    assert _snapshot(out) == before
    capsys.readouterr()
    assert main(["miniworld", "study", "--quick", "--report-only", f"model={mini_model}", f"out_dir={out}"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["overall"] == {v: data["accuracy"][v]["overall"]["mean"] for v in data["variants"]}
    assert _snapshot(out) == before

    # 5) a deleted result is rebuilt from the finished steps, nothing is trained again
    result = out / "seed-0" / "sft" / "result.json"
    text = result.read_text()
    result.unlink()
    S.run_study(cfg)
    assert result.read_text() == text
    after = _snapshot(out)
    assert after["seed-0/sft/phase-train.json"] == before["seed-0/sft/phase-train.json"]
    assert after["seed-0/sft/phase-eval.json"] == before["seed-0/sft/phase-eval.json"]
    assert json.loads((out / "study.json").read_text())["accuracy"] == data["accuracy"]


def test_config_errors(tmp_path):
    with pytest.raises(Exception, match="select"):
        S.load_study_config(S.DEFAULT_CONFIG, [f"out_dir={tmp_path}", "select=[nope]"])
    with pytest.raises(Exception, match="baseline"):
        S.load_study_config(S.DEFAULT_CONFIG, [f"out_dir={tmp_path}", "baseline=nope"])
    cfg = S.load_study_config(S.DEFAULT_CONFIG, [f"out_dir={tmp_path}"])
    assert cfg.run_variants() == ["base", "sft", "srum_official", "srum_signed", "no_global", "no_local",
                                  "binary_reward", "no_constraint"]
    assert len(cfg.seeds) >= 3
