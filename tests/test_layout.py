# SPDX-License-Identifier: Apache-2.0
"""Per-stage process layout (issue 13, item 1): each launched step has its processes per
node and GPUs per process; a judge spans several GPUs of its process (the visible GPUs
sliced by local rank) with nproc = GPUs / g; the shipped paper config fits 8 x 80 GB."""
import re
from pathlib import Path

import pytest
import torch

from srum.config import ConfigError
from srum.distributed import DistInfo, local_gpus
from srum.pipeline.config import LauncherConfig, Layout, load_pipeline_config
from srum.pipeline.runner import Pipeline

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "pipeline" / "bagel7b_compbench.yaml"
TINY = ROOT / "configs" / "pipeline" / "tiny.yaml"
EXAMPLES = ROOT / "data" / "prompts" / "examples.jsonl"
GPU_GB = 80
# parameter counts (published model cards) -> bf16 weights in GB
WEIGHTS_GB = {"bagel": 14.1e9 * 2 / 1e9, "judge": 73.4e9 * 2 / 1e9}


def _paper(tmp_path, *overrides):
    return load_pipeline_config(str(PAPER), [
        f"run_dir={tmp_path / 'run'}",
        f"datasets={{srum_train_comp: {{kind: prompts, paths: [{EXAMPLES}]}}, "
        f"srum_val_comp: {{kind: prompts, paths: [{EXAMPLES}]}}}}", *overrides])


def _nproc(cmd: list[str]) -> int:
    found = [int(m.group(1)) for a in cmd for m in [re.fullmatch(r"--nproc_per_node=(\d+)", a)] if m]
    return found[0] if found else 1


def test_layout_processes_divide_the_gpus():
    launcher = LauncherConfig(nproc_per_node=8)
    assert Layout().processes(launcher) == 8
    assert Layout(gpus_per_process=4).processes(launcher) == 2
    assert Layout(gpus_per_process=4, nproc_per_node=1).processes(launcher) == 1
    assert Layout(gpus_per_process=2).processes(LauncherConfig(nproc_per_node=1)) == 1


def test_layout_errors_name_the_stage(tmp_path):
    with pytest.raises(ConfigError, match="eval layout.*3 process.*4 GPUs"):
        _paper(tmp_path, "eval.judge_layout.nproc_per_node=3")
    with pytest.raises(ConfigError, match="train.layout.gpus_per_process"):
        _paper(tmp_path, "train.layout.gpus_per_process=2")


def test_paper_config_every_stage_fits_8x80gb(tmp_path, capsys):
    cfg = _paper(tmp_path)
    pipeline = Pipeline(cfg, str(PAPER), dry_run=True)
    plans = {}
    original = pipeline.execute

    def record(plan):
        plans[str(plan.dir.relative_to(tmp_path / "run"))] = plan
        return original(plan)
    pipeline.execute = record
    pipeline.run()
    gen, score, summarize = plans["baseline/eval"].commands
    assert gen[-4:-2] == ["compbench", "generate"] and _nproc(gen) == 8
    assert score[-4:-2] == ["compbench", "score"] and _nproc(score) == 2
    assert "torch.distributed.run" not in summarize and summarize[-4:-2] == ["compbench", "summarize"]
    config = plans["baseline/eval"].config
    assert config["judge"]["gpus_per_process"] == 4 and config["model"]["gpus_per_process"] == 1
    # the judge's bf16 weights over its 4 GPUs leave room on each 80 GB card; on one they do not fit
    assert WEIGHTS_GB["judge"] / 4 < 0.6 * GPU_GB < WEIGHTS_GB["judge"]
    for stage in ("generate", "propose", "judge", "train"):
        cmd = plans[f"round-01/{stage}"].commands[0]
        assert _nproc(cmd) == 8, stage
        assert WEIGHTS_GB["bagel"] < 0.5 * GPU_GB
    assert "--standalone" in gen and any(a.startswith("--log-dir=") for a in gen)


def test_stage_gpus_are_the_visible_gpus_sliced_by_local_rank(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    assert local_gpus(DistInfo(0, 2, 0), 4) == [0, 1, 2, 3]
    assert local_gpus(DistInfo(1, 2, 1), 4) == [4, 5, 6, 7]
    with pytest.raises(ValueError, match=r"needs GPUs \[8, 9, 10, 11\].*launch 2 process"):
        local_gpus(DistInfo(2, 8, 2), 4)


def test_eval_all_refuses_a_judge_that_cannot_fit_before_generating(monkeypatch):
    from srum.evaluation.cli import check_all_steps_fit
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "8")
    with pytest.raises(ValueError, match=r"needs 32 GPUs, 8 visible.*nproc_per_node=2 -m srum eval compbench score"):
        check_all_steps_fit(4)
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    check_all_steps_fit(4)


def test_model_gpus_per_process_conflicts_with_device_map():
    from srum.stages.common import ModelConfig
    with pytest.raises(ValueError, match="not both"):
        ModelConfig(path="m", device_map="auto", gpus_per_process=2)


def test_stage_model_spans_its_process_gpus(monkeypatch):
    import srum
    from srum.stages.common import ModelConfig, load_stage_model
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda g: (80 * 2**30, 80 * 2**30))
    current = []
    monkeypatch.setattr(torch.cuda, "set_device", current.append)
    seen = {}
    monkeypatch.setattr(srum, "load_model", lambda path, **kw: seen.update(kw) or object())
    load_stage_model(ModelConfig(path="m", gpus_per_process=4), DistInfo(1, 2, 1))
    assert seen["device_map"] == "auto" and seen["device"] is None
    assert sorted(seen["max_memory"]) == [4, 5, 6, 7] and current == [4]
    load_stage_model(ModelConfig(path="m"), DistInfo(1, 2, 1))
    assert seen["device"] == torch.device("cuda", 1) and seen["device_map"] is None and seen["max_memory"] is None
