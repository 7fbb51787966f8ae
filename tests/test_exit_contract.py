# SPDX-License-Identifier: Apache-2.0
"""The exit contract (issue 13, item 3; issue 16, item 1): every stage writes its own
status, the pipeline reads it (not torchrun's exit code), a crashed training run is
never exported, a stage in which every item failed fails, and a model or settings
error stops a stage once without error rows that would block the corrected rerun."""
import json
from pathlib import Path

import pytest

from srum.config import ConfigError, load_config
from srum.pipeline import state
from srum.pipeline.config import load_pipeline_config
from srum.pipeline.runner import Pipeline, PipelineError, StagePlan
from srum.stages.generate import GenerateConfig, run_generate
from srum.stages.status import StageFailure, read_status, run_stage, status_of_summary, write_status

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "pipeline" / "tiny.yaml"
TINY_SAMPLING = ["sampling.height=32", "sampling.width=32", "sampling.num_timesteps=2", "sampling.think=false"]


def _pipeline(tmp_path, *overrides):
    cfg = load_pipeline_config(str(TINY), [f"run_dir={tmp_path}", *overrides])
    return Pipeline(cfg, str(TINY))


def _train_plan(tmp_path, run):
    return StagePlan("train", tmp_path / "round-01" / "train", {"x": 1}, {"judge": "j"},
                     ["checkpoints/latest", "metrics.jsonl"], run, status_dirs=["."])


def _crashed_training(plan):
    """torchrun after one rank died: exit 1, a checkpoint of step 100 on disk, no status."""
    (plan.dir / "checkpoints" / "latest").mkdir(parents=True, exist_ok=True)
    (plan.dir / "metrics.jsonl").write_text("{}\n")
    return 1


def test_crashed_training_fails_even_with_allow_incomplete_and_resumes(tmp_path):
    pipeline = _pipeline(tmp_path, "allow_incomplete=true")
    plan = _train_plan(tmp_path, _crashed_training)
    with pytest.raises(PipelineError, match=r"train\] failed: .*no status.json.*killed or crashed"):
        pipeline.execute(plan)
    marker = state.read_marker(plan.dir)
    assert marker["status"] == "failed" and "run_id" not in marker          # nothing downstream can start
    assert state.decide(plan.dir, state.config_hash(plan.config), plan.inputs, plan.outputs)[0] == "resume"


def test_old_status_never_answers_for_a_new_attempt(tmp_path):
    pipeline = _pipeline(tmp_path)
    plan = _train_plan(tmp_path, _crashed_training)
    write_status(plan.dir, "complete", step=309, total_steps=309)             # left by an earlier run
    with pytest.raises(PipelineError, match="no status.json"):
        pipeline.execute(plan)
    assert read_status(plan.dir) is None


def test_training_stopped_early_is_not_complete(tmp_path):
    from srum.training.main import write_train_status

    class Cfg:
        output_dir = str(tmp_path)

        class train:
            total_steps = 309
    assert write_train_status(Cfg, {"step": 100}, rank=0) == 2
    assert read_status(tmp_path)["status"] == "failed"
    assert write_train_status(Cfg, {"step": 309}, rank=0) == 0
    assert read_status(tmp_path) == {**read_status(tmp_path), "status": "complete",
                                     "counts": {"step": 309, "total_steps": 309}}


def test_status_of_summary():
    base = {"num_items": 4, "num_ok": 4, "num_errors": 0, "num_missing": 0, "num_retryable": 0}
    assert status_of_summary(base)[0] == "complete"
    assert status_of_summary({**base, "num_ok": 3, "num_errors": 1})[0] == "incomplete"
    assert status_of_summary({**base, "num_ok": 4, "num_retryable": 1}) [0] == "complete"   # counted result
    status, reason = status_of_summary({**base, "num_ok": 0, "num_errors": 4})
    assert status == "failed" and "every item failed" in reason
    assert status_of_summary({**base, "num_ok": 2, "num_missing": 2})[0] == "failed"


def test_incomplete_stage_goes_on_only_with_allow_incomplete_and_never_for_training(tmp_path):
    def partly(plan):
        (plan.dir / "out.txt").write_text("x")
        write_status(plan.dir, "incomplete", "1 item failed")
        return 1
    pipeline = _pipeline(tmp_path, "allow_incomplete=true")
    judge = StagePlan("judge", tmp_path / "j", {"x": 1}, {}, ["out.txt"], partly, status_dirs=["."])
    pipeline.execute(judge)
    assert state.read_marker(judge.dir)["status"] == "incomplete"
    train = StagePlan("train", tmp_path / "t", {"x": 1}, {}, ["out.txt"], partly, status_dirs=["."])
    with pytest.raises(PipelineError, match="1 item failed"):
        pipeline.execute(train)


def _gen_cfg(tmp_path, prompt_file, model, *extra):
    return load_config(GenerateConfig, None, [f"model.path={model}", f"prompts=[{prompt_file}]",
                                              f"out_dir={tmp_path / 'gen'}", *TINY_SAMPLING, *extra])


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"a red cube {i}", "category": "color"}) + "\n"
                            for i in range(3)))
    return path


def test_missing_model_stops_once_and_the_fixed_rerun_generates_everything(tmp_path, prompt_file, tiny_dir, capsys):
    bad = _gen_cfg(tmp_path, prompt_file, tmp_path / "no-such-bagel")
    assert run_stage("generate", lambda: run_generate(bad)) == 2
    err = capsys.readouterr().err
    assert err.count("no-such-bagel") == 1                                    # once, not once per item
    out = tmp_path / "gen"
    assert read_status(out)["status"] == "failed" and "no-such-bagel" in read_status(out)["reason"]
    assert not (out / "summary.json").exists()
    assert all(p.read_text() == "" for p in (out / "parts").glob("*.jsonl"))  # no error rows
    good = _gen_cfg(tmp_path, prompt_file, tiny_dir)
    assert run_stage("generate", lambda: run_generate(good)) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["num_ok"] == 3 and summary["num_errors"] == 0
    assert read_status(out)["status"] == "complete"


def test_refused_sampling_settings_stop_the_stage_without_rows(tmp_path, prompt_file, tiny_dir):
    cfg = _gen_cfg(tmp_path, prompt_file, tiny_dir, "sampling.height=50")
    with pytest.raises(StageFailure, match="height"):
        run_generate(cfg)
    assert not list((tmp_path / "gen" / "parts").glob("*.jsonl")) or \
        all(p.read_text() == "" for p in (tmp_path / "gen" / "parts").glob("*.jsonl"))
    # a NaN setting is refused earlier still: when the config is read, naming the field
    # (the CLI prints it and exits 2, before anything runs)
    with pytest.raises(ConfigError, match="sampling.cfg_text_scale"):
        _gen_cfg(tmp_path, prompt_file, tiny_dir, "sampling.cfg_text_scale=.nan")


def test_every_item_failed_is_a_failed_stage_and_a_rerun_redoes_them(tmp_path):
    from srum.distributed import DistInfo
    from srum.stages.common import error_row, run_items
    from srum.stages.shards import ShardedOutput

    keys = ["a", "b"]
    out = ShardedOutput(tmp_path / "s", keys, DistInfo())
    calls = []

    def broken(indices):
        calls.append(len(indices))
        return [error_row("image_id", keys[i], "unreadable") for i in indices]
    summary = run_items("x", out, broken, batch_size=2, info=DistInfo(), config={})
    assert summary["status"] == "failed" and read_status(out.out_dir)["status"] == "failed"

    def fixed(indices):
        return [{"image_id": keys[i]} for i in indices]
    summary = run_items("x", out, fixed, batch_size=2, info=DistInfo(), config={})
    assert summary["status"] == "complete" and summary["num_ok"] == 2


def test_eval_runs_as_steps_and_stops_at_the_first_failed_one(tmp_path):
    """The pipeline's eval launches generate, score and summarize one by one; a generate
    step that failed (its images/status.json) stops the stage before the judge loads."""
    fake = tmp_path / "fake-python"
    calls = tmp_path / "calls.txt"
    # stands in for `python -m srum eval compbench STEP --config DIR/config.yaml`
    fake.write_text(f"""#!/usr/bin/env bash
step="$5"; dir="$(dirname "$7")"
echo "$step" >> {calls}
mkdir -p "$dir/images" "$dir/scores"
if [ "$step" = generate ]; then
  echo '{{"status": "failed", "reason": "rank 0: CheckpointError: no weights"}}' > "$dir/images/status.json"; exit 2
fi
""")
    fake.chmod(0o755)
    pipeline = _pipeline(tmp_path / "run", f"launcher.python={fake}", "eval.init_tiny_judge=false")
    with pytest.raises(PipelineError, match=r"baseline/eval\] failed: images: rank 0: CheckpointError: no weights"):
        pipeline.evaluate(tmp_path / "run" / "baseline" / "eval", "m", {"model": "m"})
    assert calls.read_text().split() == ["generate"]


def test_model_error_under_torchrun_stops_every_rank_once_without_rows(tmp_path, prompt_file):
    import os
    import subprocess
    import sys
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT),
           "SRUM_RANK_LOG_DIR": str(tmp_path / "gen" / "logs")}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           f"--log-dir={tmp_path / 'gen' / 'logs' / 'torchrun'}", "-m", "srum", "generate",
           "--config", str(ROOT / "configs" / "data" / "tiny_generate.yaml"), f"model.path={tmp_path / 'no-bagel'}",
           f"prompts=[{prompt_file}]", f"out_dir={tmp_path / 'gen'}",
           "batch_size=1"]   # 2 items (limit_per_category 1): a batch for each rank, so both load the model
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    out = tmp_path / "gen"
    assert read_status(out)["status"] == "failed" and "no-bagel" in read_status(out)["reason"]
    assert all(p.read_text() == "" for p in (out / "parts").glob("*.jsonl"))           # no error rows
    for rank in (0, 1):
        log = (out / "logs" / f"rank-{rank}.log").read_text()
        assert log.count("not a checkpoint directory") == 1, log                       # once per rank
        assert f"[rank {rank}] srum generate: error" in log
    assert "error_file: " + str(out / "logs" / "torchrun") in proc.stderr              # torchrun names the cause


def test_a_rerun_that_crashes_leaves_no_earlier_status(tmp_path):
    from srum.distributed import DistInfo
    from srum.stages.common import run_items
    from srum.stages.shards import ShardedOutput

    from srum.stages.common import error_row
    keys = ["a", "b"]
    out = ShardedOutput(tmp_path / "s", keys, DistInfo())
    run_items("x", out, lambda idx: [{"image_id": "a"} if keys[i] == "a" else error_row("image_id", "b", "bad")
                                     for i in idx], batch_size=2, info=DistInfo(), config={})
    assert read_status(out.out_dir)["status"] == "incomplete"

    def killed(indices):
        assert read_status(out.out_dir) is None      # gone while the retry runs
        raise KeyboardInterrupt                      # a kill: nothing written on the way out
    with pytest.raises(KeyboardInterrupt):
        run_items("x", out, killed, batch_size=1, info=DistInfo(), config={}, retry_errors=True)
    assert read_status(out.out_dir) is None
