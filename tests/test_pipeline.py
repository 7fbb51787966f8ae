# SPDX-License-Identifier: Apache-2.0
"""srum pipeline: the two-round tiny loop end to end, reruns that do nothing, a deleted
stage that reruns with exactly its dependents, and the skip / resume / fresh rules."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from srum.config import ConfigError
from srum.pipeline import state
from srum.pipeline.config import LauncherConfig, load_pipeline_config
from srum.pipeline.launch import srum_command
from srum.pipeline.runner import Pipeline, PipelineError, StagePlan
from srum.stages.status import write_status

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "pipeline" / "tiny.yaml"
ROUND2_DOWNSTREAM_OF_JUDGE = ["round-02/judge", "round-02/train", "round-02/export", "round-02/eval",
                              "round-02/report"]
ALL_STAGES = ["baseline/eval"] + [f"round-0{r}/{s}" for r in (1, 2)
                                  for s in ("generate", "propose", "judge", "train", "export", "eval", "report")]


def run_pipeline_cli(run_dir: Path, *overrides: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "2"}
    # two categories keep the CPU run short; everything else is the shipped demo config
    cmd = [sys.executable, "-m", "srum", "pipeline", "--config", str(TINY), f"run_dir={run_dir}",
           "generate.overrides.categories=[color,spatial]", "eval.overrides.categories=[color,spatial]", *overrides]
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc


def markers(run_dir: Path) -> dict[str, dict]:
    return {label: state.read_marker(run_dir / label) for label in ALL_STAGES}


def actions(stdout: str) -> dict[str, str]:
    """'[round-01/generate] running (...)' lines -> {label: first word of what happened}."""
    out = {}
    for label, what in re.findall(r"^\[([^\]]+)\] (\w+)", stdout, flags=re.M):
        out.setdefault(label, what)
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("pipeline") / "run"
    proc = run_pipeline_cli(run_dir)
    return run_dir, proc


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        for name, value in attrs:
            if name in ("src", "href") and value and not value.startswith(("#", "data:", "http")):
                self.links.append(value)


# ---------------------------------------------------------------------------- end to end

def test_two_rounds_end_to_end(tiny_run):
    run_dir, proc = tiny_run
    found = markers(run_dir)
    assert all(m is not None and m["status"] in ("complete", "incomplete") for m in found.values()), found
    # the loop: round 2 starts from round 1's export, and round 1 from the tiny base model
    r1 = yaml.safe_load((run_dir / "round-01/generate/config.yaml").read_text())
    r2 = yaml.safe_load((run_dir / "round-02/generate/config.yaml").read_text())
    assert r1["model"]["path"] == f"{run_dir}/tiny-bagel"
    assert r2["model"]["path"] == str(run_dir / "round-01/export")
    assert r2["seed"] == r1["seed"] + 1                       # new candidates each round
    train2 = yaml.safe_load((run_dir / "round-02/train/config.yaml").read_text())
    assert train2["model"]["path"] == str(run_dir / "round-01/export")
    assert train2["data"]["rewards"] == [str(run_dir / "round-02/judge/rewards.jsonl")]
    export2 = json.loads((run_dir / "round-02/export/srum_export.json").read_text())
    assert export2["base_model"] == str(run_dir / "round-01/export") and export2["step"] == 4
    # each round trained on its own rewards: 2 prompts x 2 images
    rewards = [json.loads(line) for line in (run_dir / "round-02/judge/rewards.jsonl").read_text().splitlines()]
    assert len(rewards) == 4 and {r["category"] for r in rewards} == {"color", "spatial"}
    # evaluation of the base and both rounds, compared in the last report
    compare = json.loads((run_dir / "round-02/report/compare/compare.json").read_text())
    assert [r["label"] for r in compare["runs"]] == ["base", "round 1", "round 2"]
    eval_cfg = yaml.safe_load((run_dir / "round-02/eval/config.yaml").read_text())
    assert eval_cfg["model"]["path"] == str(run_dir / "round-02/export")
    # the recorded config and timing
    assert yaml.safe_load((run_dir / "pipeline.yaml").read_text())["rounds"] == 2
    assert all(m["attempts"][-1]["seconds"] > 0 for m in found.values())
    timing = json.loads((run_dir / "timing.json").read_text())
    assert [s["stage"] for s in timing["stages"]] == ALL_STAGES
    report = run_dir / "round-02/report/report.html"
    assert proc.stdout.strip().splitlines()[-1] == f"srum pipeline: report at {report.resolve()}"


def test_report_shows_the_run_and_links_only_existing_files(tiny_run):
    run_dir, _ = tiny_run
    for page in (run_dir / "round-02/report/report.html", run_dir / "round-01/report/report.html",
                 run_dir / "index.html"):
        parser = _Links()
        text = page.read_text()
        parser.feed(text)
        assert parser.links, page
        for link in parser.links:
            assert (page.parent / link).exists(), f"{page}: {link}"
    text = (run_dir / "round-02/report/report.html").read_text()
    for section in ('id="evaluation"', "loss", "round 2"):
        assert section in text
    assert text.count('<article class="card"') == 4                        # one card per judged image


def test_rerun_of_a_finished_run_does_nothing(tiny_run):
    run_dir, _ = tiny_run
    before = markers(run_dir)
    mtimes = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*") if p.is_file() and p.name != "timing.json"
              and p.name != "index.html"}
    proc = run_pipeline_cli(run_dir)
    assert set(actions(proc.stdout).values()) == {"done"}
    assert markers(run_dir) == before
    assert {p: p.stat().st_mtime_ns for p in mtimes} == mtimes


def test_deleted_stage_reruns_with_its_dependents_only(tiny_run):
    run_dir, _ = tiny_run
    before = markers(run_dir)
    import shutil
    shutil.rmtree(run_dir / "round-02/judge")
    proc = run_pipeline_cli(run_dir)
    done = actions(proc.stdout)
    rerun = sorted(label for label, what in done.items() if what != "done")
    assert rerun == sorted(ROUND2_DOWNSTREAM_OF_JUDGE), done
    after = markers(run_dir)
    for label in ALL_STAGES:
        same = after[label]["run_id"] == before[label]["run_id"]
        assert same == (label not in ROUND2_DOWNSTREAM_OF_JUDGE), label
    # the invalidated outputs of the dependents were kept aside, not lost
    stale = sorted(p.name for p in (run_dir / "stale").iterdir())
    assert any(name.startswith("round-02-train-") for name in stale)


# ---------------------------------------------------------------------------- rules

def test_decide_skip_resume_fresh(tmp_path):
    stage = tmp_path / "run" / "judge"
    assert state.decide(stage, "h", {}, ["out.jsonl"]) == ("fresh", "not run yet")
    marker = state.begin(stage, "judge", {"a": 1}, "h", {"up": "1"})
    assert state.decide(stage, "h", {"up": "1"}, ["out.jsonl"])[0] == "resume"       # killed mid-way
    (stage / "out.jsonl").write_text("{}\n")
    state.finish(stage, marker, "complete", 0)
    assert state.decide(stage, "h", {"up": "1"}, ["out.jsonl"]) == ("skip", "complete")
    assert state.decide(stage, "other", {"up": "1"}, ["out.jsonl"]) == ("fresh", "config changed")
    assert state.decide(stage, "h", {"up": "2"}, ["out.jsonl"]) == ("fresh", "input(s) changed: up")
    (stage / "out.jsonl").unlink()
    assert state.decide(stage, "h", {"up": "1"}, ["out.jsonl"]) == ("resume", "output(s) missing: out.jsonl")
    (stage / "stage.json").unlink()
    assert state.decide(stage, "h", {"up": "1"}, ["out.jsonl"])[0] == "fresh"         # a folder we did not write


def test_hash_ignores_speed_settings_only():
    base = {"out_dir": "x", "batch_size": 1, "sampling": {"num_timesteps": 4}}
    assert state.config_hash(base) == state.config_hash({**base, "batch_size": 8})
    assert state.config_hash(base) != state.config_hash({**base, "sampling": {"num_timesteps": 5}})


def test_set_aside_keeps_or_deletes(tmp_path):
    run = tmp_path / "run"
    (run / "round-01" / "train").mkdir(parents=True)
    (run / "round-01" / "train" / "f").write_text("x")
    moved = state.set_aside(run / "round-01" / "train", run, keep=True)
    assert moved.parent == run / "stale" and moved.name.startswith("round-01-train-") and (moved / "f").exists()
    (run / "round-01" / "eval").mkdir()
    assert state.set_aside(run / "round-01" / "eval", run, keep=False) is None
    assert not (run / "round-01" / "eval").exists()


def test_launch_commands():
    args = ["generate", "--config", "c.yaml"]
    assert srum_command(LauncherConfig(), args, True)[1:] == ["-m", "srum", *args]
    cmd = srum_command(LauncherConfig(nproc_per_node=8), args, True)
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--nproc_per_node=8", "--standalone"]
    assert cmd[-5:] == ["-m", "srum", *args]
    multi = LauncherConfig(nproc_per_node=8, prefix=["srun", "--nodes=2"],
                           torchrun_args=["--nnodes=2", "--rdzv-backend=c10d", "--rdzv-endpoint=head:29500"])
    cmd = srum_command(multi, args, True)
    assert cmd[:2] == ["srun", "--nodes=2"] and "--standalone" not in cmd and "--nnodes=2" in cmd
    assert srum_command(multi, ["export", "checkpoint"], False)[1:] == ["-m", "srum", "export", "checkpoint"]


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ConfigError, match="rounds"):
        load_pipeline_config(str(TINY), ["rounds=0"])
    with pytest.raises(ConfigError, match="unknown field.*launcher.nprocs"):
        load_pipeline_config(str(TINY), ["launcher.nprocs=2"])
    bad = _write(tmp_path / "p.yaml", "run_dir: r\nmodel: {path: m}\ndata: {generate: [examples]}\n")
    with pytest.raises(ConfigError, match="generate.config"):
        load_pipeline_config(str(bad))
    cfg = load_pipeline_config(str(TINY), [f"run_dir={tmp_path / 'r'}"])
    assert cfg.model.path == f"{tmp_path / 'r'}/tiny-bagel"                    # {run_dir} expanded
    assert cfg.eval.overrides["judge.model"] == f"{tmp_path / 'r'}/tiny-qwen-vl"


def test_bad_stage_field_fails_before_anything_runs(tmp_path):
    cfg = load_pipeline_config(str(TINY), [f"run_dir={tmp_path / 'r'}", "model.init_tiny=false",
                                           "generate.overrides.sampling.num_stepz=3"])
    with pytest.raises(ConfigError, match=r"generate stage .*sampling\.num_stepz"):
        Pipeline(cfg, str(TINY)).generate(tmp_path / "r" / "round-01", "m", {"model": "m"}, 1)
    assert not (tmp_path / "r" / "round-01").exists()
    cfg = load_pipeline_config(str(TINY), [f"run_dir={tmp_path / 'r'}", "data.generate=[nope]"])
    with pytest.raises(ValueError, match="nope"):
        Pipeline(cfg, str(TINY)).generate(tmp_path / "r" / "round-01", "m", {"model": "m"}, 1)
    cfg = load_pipeline_config(str(TINY), [f"run_dir={tmp_path / 'r'}", "data.generate=[self_rewards]"])
    with pytest.raises(ConfigError, match="kind 'rewards'"):
        Pipeline(cfg, str(TINY)).generate(tmp_path / "r" / "round-01", "m", {"model": "m"}, 1)


def test_failed_stage_names_its_log_and_resumes(tmp_path):
    cfg = load_pipeline_config(str(TINY), [f"run_dir={tmp_path}"])
    pipeline = Pipeline(cfg, str(TINY))
    calls = []

    def flaky(plan):
        calls.append(plan.dir)
        if len(calls) == 1:
            return 3
        (plan.dir / "out.txt").write_text("ok")
        write_status(plan.dir, "complete")
        return 0
    plan = StagePlan("judge", tmp_path / "round-01" / "judge", {"x": 1}, {"up": "1"}, ["out.txt"], flaky,
                     status_dirs=["."])
    with pytest.raises(PipelineError, match=r"round-01/judge.*no status.json.*exit code 3.*stage.log"):
        pipeline.execute(plan)
    assert state.read_marker(plan.dir)["status"] == "failed"
    pipeline.execute(plan)
    marker = state.read_marker(plan.dir)
    assert marker["status"] == "complete" and len(marker["attempts"]) == 2
    assert [a["returncode"] for a in marker["attempts"]] == [3, 0]
    pipeline.execute(plan)
    assert len(calls) == 2                                                     # finished: skipped
    # a stage whose items partly failed (its own status.json says so) stops the run unless allow_incomplete
    pipeline.cfg.allow_incomplete = False

    def partly(plan):
        write_status(plan.dir, "incomplete", "2 items failed")
        return 1
    plan1 = StagePlan("eval", tmp_path / "round-01" / "eval", {"x": 1}, {}, [], partly, status_dirs=["."])
    with pytest.raises(PipelineError, match="allow_incomplete"):
        pipeline.execute(plan1)
    pipeline.cfg.allow_incomplete = True
    pipeline.execute(plan1)
    assert state.read_marker(plan1.dir)["status"] == "incomplete"


def test_bagel7b_config_resolves_every_stage(tmp_path, capsys):
    """The cluster config's stages all build (a dry run writes nothing); the reference prompt
    files are stood in for by the shipped examples."""
    examples = ROOT / "data" / "prompts" / "examples.jsonl"
    config = ROOT / "configs" / "pipeline" / "bagel7b_compbench.yaml"
    cfg = load_pipeline_config(str(config), [
        f"run_dir={tmp_path / 'run'}",
        f"datasets={{srum_train_comp: {{kind: prompts, paths: [{examples}]}}, "
        f"srum_val_comp: {{kind: prompts, paths: [{examples}]}}}}"])
    assert Pipeline(cfg, str(config), dry_run=True).run() is None
    out = capsys.readouterr().out
    planned = re.findall(r"^\[([^\]]+)\] would run", out, flags=re.M)
    assert planned == ["baseline/eval"] + [f"round-01/{s}" for s in ("generate", "propose", "judge", "train",
                                                                      "export", "eval", "report")]
    assert not (tmp_path / "run").exists()
