# SPDX-License-Identifier: Apache-2.0
"""``srum train`` resumes only the same run: a changed result-changing setting is
refused (each field named with both values), ``checkpoint.resume=fresh`` starts over,
a second run on the same output directory is refused, and metrics of the steps a resume
repeats are not written twice."""
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from helpers_train import write_reward_dataset
from srum.locking import LOCK_NAME
from srum.run_settings import SettingsChanged
from srum.training.config import load_train_config
from srum.training.metrics import MetricsLogger, truncate_metrics
from srum.training.resume import check_resume_settings, resume_target

REPO = Path(__file__).resolve().parents[1]


def _cfg(out, *extra):
    return load_train_config(REPO / "configs/train/tiny.yaml", [f"output_dir={out}", "model.path=m",
                                                                "data.rewards=[r.jsonl]", *extra])


def _fake_checkpoint(out, cfg_overrides=(), world_size=1):
    path = out / "checkpoints" / "step-000002"
    path.mkdir(parents=True)
    from srum.config import to_dict
    (path / "config.yaml").write_text(yaml.safe_dump(to_dict(_cfg(out, *cfg_overrides))))
    (path / "trainer_state.json").write_text(json.dumps({"step": 2, "data_position": {}, "world_size": world_size}))
    (path / ".metadata").write_bytes(b"")
    return path


def test_changed_settings_are_named_with_both_values(tmp_path):
    ckpt = _fake_checkpoint(tmp_path, ["optim.lr=1e-4", "data.seed=42"])
    with pytest.raises(SettingsChanged) as err:
        check_resume_settings(_cfg(tmp_path, "optim.lr=3e-4", "data.seed=7"), ckpt, world_size=1)
    text = str(err.value)
    assert "optim.lr: 0.0001 before, 0.0003 now" in text and "data.seed: 42 before, 7 now" in text
    assert "checkpoint.resume=fresh" in text


def test_operational_settings_may_change_but_not_the_packs_per_step(tmp_path):
    ckpt = _fake_checkpoint(tmp_path, ["train.grad_accum=2"], world_size=2)
    check_resume_settings(_cfg(tmp_path, "train.total_steps=9", "train.grad_accum=4", "parallel.compile=true",
                               "logging.every_steps=5", "checkpoint.every_steps=3", "data.num_workers=1"),
                          ckpt, world_size=1)
    with pytest.raises(SettingsChanged, match=r"packs per step .*: 4 \(2 x 2\) before, 2 \(1 x 2\) now"):
        check_resume_settings(_cfg(tmp_path, "train.grad_accum=2"), ckpt, world_size=1)


def test_resume_fresh_starts_at_step_0(tmp_path):
    _fake_checkpoint(tmp_path)
    assert resume_target(_cfg(tmp_path, "checkpoint.resume=fresh"), tmp_path / "checkpoints") is None
    with pytest.raises(ValueError, match="resume=fresh"):
        resume_target(_cfg(tmp_path, "checkpoint.resume=never"), tmp_path / "checkpoints")


def test_metrics_of_repeated_steps_are_cut(tmp_path):
    rows = [{"step": 1}, {"step": 2}, {"event": "saved checkpoint step-000002"}, {"step": 3}, {"event": "x"}]
    path = tmp_path / "metrics.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + '{"step": 4, "lo')
    truncate_metrics(path, 2)
    assert [json.loads(line) for line in path.read_text().splitlines()] == rows[:3]
    logger = MetricsLogger(tmp_path, enabled=True, total_steps=4, start_step=2, tensorboard=False,
                           progress_bar=False)
    logger.log(3, {"loss": 1.0})
    logger.close()
    assert [json.loads(line).get("step") for line in path.read_text().splitlines()] == [1, 2, None, 3]


def _train(out, rewards, tiny_dir, *extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    args = ["--config", str(REPO / "configs/train/tiny.yaml"), f"output_dir={out}", f"model.path={tiny_dir}",
            f"data.rewards=[{rewards}]", "train.total_steps=2", "checkpoint.every_steps=1",
            "logging.progress_bar=false", "logging.tensorboard=false", *extra]
    return subprocess.run([sys.executable, "-m", "srum.training.main", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)


def test_train_refuses_a_changed_config_and_a_second_run_then_starts_fresh(tmp_path, tiny_dir):
    rewards = write_reward_dataset(tmp_path / "data", [(32, 32), (32, 48)])
    out = tmp_path / "run"
    first = _train(out, rewards, tiny_dir, "debug.exit_after_step=1")  # killed after step 1
    assert first.returncode == 3, first.stderr[-3000:]
    # a live holder (this test's own process) blocks a second run
    (out / LOCK_NAME).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                                             "stage": "srum train"}))
    second = _train(out, rewards, tiny_dir)
    assert second.returncode == 2 and f"in use by srum train (pid {os.getpid()}" in second.stderr
    (out / LOCK_NAME).unlink()
    changed = _train(out, rewards, tiny_dir, "optim.lr=5e-4", "loss.timestep_shift=3.0")
    assert changed.returncode == 2
    assert "optim.lr: 0.0001 before, 0.0005 now" in changed.stderr
    assert "loss.timestep_shift: 1.0 before, 3.0 now" in changed.stderr
    fresh = _train(out, rewards, tiny_dir, "optim.lr=5e-4", "checkpoint.resume=fresh")
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    assert "resumed from" not in fresh.stderr
    replaced = [p for p in out.iterdir() if p.name.startswith("replaced-")]
    assert len(replaced) == 1 and (replaced[0] / "checkpoints" / "step-000001").is_dir()
    steps = [json.loads(line).get("step") for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [s for s in steps if s is not None] == [1, 2]
    assert not (out / LOCK_NAME).exists()
