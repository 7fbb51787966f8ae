# SPDX-License-Identifier: Apache-2.0
"""srum pipeline with the MLLM-judged benchmarks besides T2I-CompBench (`eval.benchmark`:
t2i-reasonbench, wise): their three launches (generate, score with judge_layout,
summarize), their preflight, and one tiny round of the SRUM paper's WISE protocol on CPU
(train on one domain's prompts, evaluate on the other two)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from srum.config import ConfigError
from srum.pipeline import state
from srum.pipeline.config import load_pipeline_config
from srum.pipeline.runner import Pipeline

from helpers_eval import write_wise

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "pipeline" / "tiny.yaml"


def _wise_overrides(run_dir: Path, data: Path) -> list[str]:
    """tiny.yaml as the WISE protocol: generate from the culture file, evaluate space-time and science."""
    return [f"run_dir={run_dir}", "rounds=1", "data.eval=[]", "data.generate=[wise_culture]",
            f"datasets={{wise_culture: {{kind: prompts, paths: ['{data}/cultural_common_sense_verified.json']}}}}",
            "generate.overrides.limit_per_category=2", "generate.overrides.num_images_per_prompt=1",
            "eval.benchmark=wise", "eval.config=configs/eval/tiny_wise.yaml",
            f"eval.overrides={{judge.model: '{run_dir}/tiny-qwen-vl', data_dir: '{data}', "
            "domains: [space-time, science], categories: [time, biology], judge.retries: 0, "
            "sampling.height: 32, sampling.width: 32, sampling.num_timesteps: 3}",
            "report.grid_rows=4"]


def test_wise_protocol_round_runs_every_step(tmp_path, monkeypatch):
    monkeypatch.chdir(ROOT)
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    data = write_wise(tmp_path / "wise")
    run_dir = tmp_path / "run"
    cfg = load_pipeline_config(str(TINY), _wise_overrides(run_dir, data))
    Pipeline(cfg, str(TINY)).run()
    stages = ["baseline/eval"] + [f"round-01/{s}" for s in ("generate", "propose", "judge", "train", "export",
                                                               "eval", "report")]
    for label in stages:
        marker = state.read_marker(run_dir / label)
        assert marker is not None and marker["status"] in ("complete", "incomplete"), (label, marker)
    # training prompts: the culture file (WISE's "Prompt" / "prompt_id" fields), 2 per its one category
    generated = [json.loads(line) for line in (run_dir / "round-01/generate/manifest.jsonl").read_text().splitlines()]
    assert [r["prompt_id"] for r in generated] == ["1", "2"] and generated[0]["category"] == "Cultural knowledge"
    # evaluation: the other two domains, in WISE's layout, three launches each with their own status
    for ev in (run_dir / "baseline/eval", run_dir / "round-01/eval"):
        rows = [json.loads(line) for line in (ev / "images/manifest.jsonl").read_text().splitlines()]
        assert [r["image_file"] for r in rows] == ["401.png", "641.png"]
        assert {r["domain"] for r in rows} == {"space-time", "science"}
        for sub in ("images", "scores"):
            assert json.loads((ev / sub / "status.json").read_text())["status"] == "complete"
        summary = json.loads((ev / "summary/summary.json").read_text())
        assert summary["table"]["name"] == "WISE" and summary["num_images"] == 2
        config = yaml.safe_load((ev / "config.yaml").read_text())
        assert config["domains"] == ["space-time", "science"] and config["judge"]["gpus_per_process"] == 1
    compare = (run_dir / "round-01/report/compare/compare.md").read_text()
    assert compare.startswith("# WISE comparison (base: base)") and "| round 1 |" in compare
    log = (run_dir / "baseline/eval/stage.log").read_text()
    assert all(f"eval wise {step}" in log for step in ("generate", "score", "summarize"))


def test_reasonbench_and_wise_plans_and_checks(tmp_path, capsys):
    run_dir = tmp_path / "run"
    base = [f"run_dir={run_dir}", "rounds=1", "data.eval=[]", "eval.init_tiny_judge=false",
            "launcher.nproc_per_node=4", "eval.judge_layout.gpus_per_process=2"]
    for benchmark, config in (("t2i-reasonbench", "tiny_t2i_reasonbench.yaml"), ("wise", "tiny_wise.yaml")):
        cfg = load_pipeline_config(str(TINY), [*base, f"eval.benchmark={benchmark}",
                                               f"eval.config=configs/eval/{config}",
                                               f"eval.overrides.data_dir={tmp_path / 'nothing'}"])
        pipeline = Pipeline(cfg, str(TINY), dry_run=True)
        assert pipeline.run() is None
        out = capsys.readouterr().out
        # generate on 4 processes, score with the judge layout (2 processes x 2 GPUs), summarize in one
        assert re.search(rf"--nproc_per_node=4 .*-m srum eval {benchmark} generate --config \S+/baseline/eval/", out)
        assert re.search(rf"--nproc_per_node=2 .*-m srum eval {benchmark} score --config \S+/baseline/eval/", out)
        assert re.search(rf"-m srum eval {benchmark} summarize --config \S+/baseline/eval/config.yaml", out)
        # the missing benchmark files are named before anything runs
        assert any("eval: data_dir" in p for p in pipeline.preflight.problems), pipeline.preflight.problems
    assert not run_dir.exists()
    # only compbench takes data.eval
    with pytest.raises(ConfigError, match="data.eval"):
        load_pipeline_config(str(TINY), [f"run_dir={run_dir}", "eval.benchmark=wise",
                                         "eval.config=configs/eval/tiny_wise.yaml"])
    with pytest.raises(ConfigError, match="eval.benchmark"):
        load_pipeline_config(str(TINY), [f"run_dir={run_dir}", "eval.benchmark=geneval"])


def test_bagel7b_wise_config_resolves_each_split(tmp_path, capsys):
    """configs/pipeline/bagel7b_wise.yaml builds every stage for each training domain (a dry run
    writes nothing); a domain both trained on and evaluated is pointed out."""
    data = write_wise(tmp_path / "wise", suffix="")
    config = ROOT / "configs" / "pipeline" / "bagel7b_wise.yaml"
    registry = ", ".join(f"wise_{name}: {{kind: prompts, paths: ['{data}/{stem}.json']}}" for name, stem in (
        ("culture", "cultural_common_sense"), ("space_time", "spatio-temporal_reasoning"),
        ("science", "natural_science")))
    splits = {"culture": ["space-time", "science"], "space_time": ["culture", "science"],
              "science": ["culture", "space-time"]}
    for trained, evaluated in splits.items():
        cfg = load_pipeline_config(str(config), [
            f"run_dir={tmp_path / 'run'}", f"datasets={{{registry}}}", f"data.generate=[wise_{trained}]",
            f"eval.overrides.domains=[{','.join(evaluated)}]", f"eval.overrides.data_dir={data}"])
        pipeline = Pipeline(cfg, str(config), dry_run=True)
        assert pipeline.run() is None
        out = capsys.readouterr().out
        planned = re.findall(r"^\[([^\]]+)\] would run", out, flags=re.M)
        assert planned == ["baseline/eval"] + [f"round-01/{s}" for s in ("generate", "propose", "judge", "train",
                                                                          "export", "eval", "report")]
        assert re.search(r"--nproc_per_node=2 .*-m srum eval wise score --config \S+/round-01/eval/config.yaml", out)
        assert not any("WISE" in p or "wise_" in p for p in pipeline.preflight.problems), pipeline.preflight.problems
        assert not any("both trained on" in n for n in pipeline.preflight.notes)
    cfg = load_pipeline_config(str(config), [f"run_dir={tmp_path / 'run'}", f"datasets={{{registry}}}",
                                             f"eval.overrides.data_dir={data}", "eval.overrides.domains=[culture]"])
    pipeline = Pipeline(cfg, str(config), dry_run=True)
    pipeline.run()
    assert any("culture are both trained on" in n for n in pipeline.preflight.notes)
    assert not (tmp_path / "run").exists()
