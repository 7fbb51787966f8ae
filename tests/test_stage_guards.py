# SPDX-License-Identifier: Apache-2.0
"""What a second run, a changed config, a kill and a stopped launcher do to a stage's
output directory: the lock, the settings check and fresh start, the clean-up of
temporary files, world-size independent batches, and the launcher's process group."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from srum.config import ConfigError, load_config
from srum.distributed import DistInfo
from srum.locking import LOCK_NAME, DirectoryLock, DirectoryLocked
from srum.run_settings import SETTINGS_FILE, SettingsChanged, differences
from srum.stages.common import run_items
from srum.stages.shards import ShardedOutput
from srum.training.config import OptimConfig

REPO = Path(__file__).resolve().parents[1]
KEYS = [f"k{i}" for i in range(7)]


@dataclass
class _Sampling:
    steps: int = 3


@dataclass
class _Config:
    out_dir: str
    seed: int = 0
    sampling: _Sampling = field(default_factory=_Sampling)


def _run(out, settings, fresh=False, batch_size=2, seen=None, info=DistInfo()):
    def process(indices):
        if seen is not None:
            seen.append([KEYS[i] for i in indices])
        return [{"image_id": KEYS[i], "value": settings["seed"]} for i in indices]
    return run_items("test", ShardedOutput(out, KEYS, info), process, batch_size=batch_size, info=info,
                     config=_Config(str(out)), settings=settings, fresh=fresh)


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ---------------------------------------------------------------- the lock
def test_a_live_holder_blocks_a_second_run_naming_pid_and_host(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": holder.pid, "host": socket.gethostname(),
                                                      "stage": "srum generate", "started": "now"}))
        with pytest.raises(DirectoryLocked, match=f"in use by srum generate \\(pid {holder.pid} on host "
                                                  f"{socket.gethostname()}"):
            _run(tmp_path, {"seed": 0})
        assert not (tmp_path / "parts").exists()  # nothing written, nothing cleaned
    finally:
        holder.kill()
        holder.wait()


def test_a_lock_left_by_a_dead_process_is_taken_over(tmp_path, capfd):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": _dead_pid(), "host": socket.gethostname(),
                                                  "stage": "srum judge"}))
    assert _run(tmp_path, {"seed": 0})["complete"]
    assert "took over the lock" in capfd.readouterr().err
    assert not (tmp_path / LOCK_NAME).exists()  # released at the end


def test_a_lock_from_another_host_says_it_cannot_be_checked(tmp_path):
    (tmp_path / LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "node-that-is-not-here", "stage": "srum train"}))
    with pytest.raises(DirectoryLocked, match=f"another host.*delete {tmp_path / LOCK_NAME}"):
        DirectoryLock.acquire(tmp_path, "srum generate")


def test_lock_is_exclusive_and_released(tmp_path):
    with DirectoryLock.acquire(tmp_path, "first"):
        with pytest.raises(DirectoryLocked, match=f"pid {os.getpid()}"):
            DirectoryLock.acquire(tmp_path, "second")
    DirectoryLock.acquire(tmp_path, "third").release()
    assert not (tmp_path / LOCK_NAME).exists()


# ---------------------------------------------------------------- settings and fresh start
def test_resume_with_changed_settings_is_refused_naming_each_field(tmp_path):
    out = tmp_path / "out"
    _run(out, {"seed": 0, "sampling": {"steps": 3}, "model": {"path": "m"}})
    (out / "summary.json").unlink()  # an interrupted run
    with pytest.raises(SettingsChanged) as err:
        _run(out, {"seed": 1, "sampling": {"steps": 4}, "model": {"path": "m"}})
    message = str(err.value)
    assert "seed: 0 before, 1 now" in message and "sampling.steps: 3 before, 4 now" in message
    assert "model.path" not in message and "fresh=true" in message
    # a complete output is refused too: "nothing to do" would hide that the settings differ
    _run(out, {"seed": 0, "sampling": {"steps": 3}, "model": {"path": "m"}})
    with pytest.raises(SettingsChanged):
        _run(out, {"seed": 1, "sampling": {"steps": 3}, "model": {"path": "m"}})


def test_fresh_start_moves_earlier_outputs_aside(tmp_path):
    out = tmp_path / "out"
    _run(out, {"seed": 0})
    (out / "stage.json").write_text("{}")  # the pipeline's own record of the stage stays
    summary = _run(out, {"seed": 5}, fresh=True)
    assert (out / "stage.json").is_file()
    assert summary["complete"] and summary["num_ok"] == len(KEYS)
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert {r["value"] for r in rows} == {5}
    replaced = [p for p in out.iterdir() if p.name.startswith("replaced-")]
    assert len(replaced) == 1 and (replaced[0] / "manifest.jsonl").is_file()
    assert json.loads((out / SETTINGS_FILE).read_text())["settings"] == {"seed": 5}


def test_differences_ignore_prefixes_and_unrecorded_fields():
    old = {"a": {"b": [1, 2]}, "lr": 2e-05, "parallel": {"x": 1}}
    new = {"a": {"b": (1, 2)}, "lr": 2.0e-5, "parallel": {"x": 2}, "added": 3}
    assert differences(old, new, ignore=("parallel",)) == []


# ---------------------------------------------------------------- kills leave no temp files
def test_temp_files_of_a_killed_run_are_removed(tmp_path):
    out = tmp_path / "out"
    (out / "images").mkdir(parents=True)
    left = [out / ".manifest.jsonl.tmp4242", out / "images" / ".p0_1.tmp4242.png", out / ".rewards.jsonl.x1y2.tmp"]
    for path in left:
        path.write_text("partial")
    (out / "images" / "p0.png").write_text("a real image")
    _run(out, {"seed": 0})
    assert not any(p.exists() for p in left) and (out / "images" / "p0.png").exists()


# ---------------------------------------------------------------- batches and world size
def test_batches_hold_the_same_items_on_any_world_size(tmp_path):
    def batches(world):
        got = []
        for rank in range(world):
            so = ShardedOutput(tmp_path, KEYS, DistInfo(rank, world, rank))
            got += [[KEYS[i] for i in batch] for batch, _ in so.my_batches(set(), 2)]
        return sorted(got)
    assert batches(1) == batches(2) == batches(3) == [["k0", "k1"], ["k2", "k3"], ["k4", "k5"], ["k6"]]


def test_only_the_missing_items_of_a_batch_are_run(tmp_path):
    out = tmp_path / "out"
    (out / "parts").mkdir(parents=True)
    (out / "parts" / "rank-00000.jsonl").write_text(json.dumps({"image_id": "k2", "value": 0}) + "\n")
    seen = []
    _run(out, {"seed": 0}, seen=seen)
    assert seen == [["k0", "k1"], ["k3"], ["k4", "k5"], ["k6"]]  # k3 is not re-batched with k4
    rows = [json.loads(line) for line in (out / "parts" / "rank-00000.jsonl").read_text().splitlines()]
    assert sorted(r["image_id"] for r in rows) == KEYS  # k2 once


# ---------------------------------------------------------------- config values
def test_nan_and_infinity_are_refused_for_float_fields():
    for text in (".nan", ".inf", "-.inf", "nan"):
        with pytest.raises(ConfigError, match="lr: expected a finite number"):
            load_config(OptimConfig, None, [f"lr={text}"])
    assert load_config(OptimConfig, None, ["lr=2e-5"]).lr == 2e-5


def test_post_init_errors_name_their_section_once(tmp_path):
    from srum.training.config import load_train_config
    with pytest.raises(ConfigError) as err:
        load_train_config(REPO / "configs/train/tiny.yaml", [f"output_dir={tmp_path}", "train.total_steps=0"])
    assert "train: train:" not in str(err.value) and "train: total_steps" in str(err.value)


# ---------------------------------------------------------------- the launcher's process group
_AGENT = textwrap.dedent("""
    # stands for torchrun: starts a worker in a session of its own, as torchrun does
    import subprocess, sys, time
    worker = subprocess.Popen([sys.executable, "-c",
        "import os, sys, time\\nos.environ['TORCHELASTIC_RUN_ID'] = 'x'\\n"
        "from srum.distributed import die_with_torchrun\\ndie_with_torchrun()\\n"
        "open(sys.argv[1], 'w').write(str(os.getpid()))\\ntime.sleep(120)", sys.argv[1]],
        start_new_session=True)
    time.sleep(120)
""")
_LAUNCHER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from srum.pipeline.launch import run_logged
    run_logged([sys.executable, sys.argv[1], sys.argv[2]], Path(sys.argv[3]), {})
""")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text() if Path(f"/proc/{pid}/stat").exists() else ""
    return " Z " not in stat  # a zombie has ended


def _wait_for(predicate, timeout=30.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


@pytest.mark.parametrize("how", ["stop_launcher", "kill_agent"])
def test_stopping_the_launcher_or_killing_torchrun_ends_the_workers(tmp_path, how):
    (tmp_path / "agent.py").write_text(_AGENT)
    (tmp_path / "launcher.py").write_text(_LAUNCHER)
    pid_file = tmp_path / "worker.pid"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    launcher = subprocess.Popen([sys.executable, str(tmp_path / "launcher.py"), str(tmp_path / "agent.py"),
                                 str(pid_file), str(tmp_path / "stage.log")], env=env)
    try:
        assert _wait_for(lambda: pid_file.exists() and pid_file.read_text())
        worker = int(pid_file.read_text())
        if how == "stop_launcher":
            launcher.send_signal(signal.SIGTERM)
            launcher.wait(timeout=30)
        else:
            agent = int(subprocess.run(["pgrep", "-P", str(launcher.pid)], capture_output=True,
                                       text=True).stdout.split()[0])
            os.kill(agent, signal.SIGKILL)
        assert _wait_for(lambda: not _alive(worker)), "the worker outlived its launcher"
    finally:
        launcher.kill()
        launcher.wait()


# ---------------------------------------------------------------- rank 0 fails alone
def _torchrun(nproc, args):
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", PYTHONPATH=str(REPO))
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                           f"--nproc_per_node={nproc}", "-m", "srum", *args], env=env, capture_output=True,
                          text=True, timeout=300)


def test_rank_0_failing_alone_gives_one_line_on_the_others(tiny_dir, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"id": f"p{i}", "prompt": f"cube {i}"}) + "\n" for i in range(2)))
    out = tmp_path / "gen"
    (out / "summary.json").mkdir(parents=True)  # the merge (rank 0 only) cannot write it
    run = _torchrun(2, ["generate", f"model.path={tiny_dir}", f"prompts=[{prompts}]", f"out_dir={out}",
                        "sampling.height=32", "sampling.width=32", "sampling.num_timesteps=2", "sampling.think=false"])
    assert run.returncode != 0
    assert f"cannot write {out / 'summary.json'}" in run.stderr  # the failing write names its file
    assert "srum generate: rank 1: stopped because another rank failed (its error is above)" in run.stderr
    # no worker prints a traceback; torchrun's failure summary shows the root cause, rank 0,
    # with the traceback rank 0 put in its error file (record_for_torchrun)
    workers, _, summary = run.stderr.partition("srum FAILED")
    assert "/srum/" not in workers and "gloo" not in run.stderr
    root = summary.partition("Root Cause")[2]
    assert "rank      : 0" in root and "IsADirectoryError" in root
    # the lock went with the run: a corrected rerun goes ahead
    (out / "summary.json").rmdir()
    again = _torchrun(2, ["generate", f"model.path={tiny_dir}", f"prompts=[{prompts}]", f"out_dir={out}",
                          "sampling.height=32", "sampling.width=32", "sampling.num_timesteps=2",
                          "sampling.think=false"])
    assert again.returncode == 0, again.stderr[-3000:]


def test_retry_errors_on_a_finished_run_may_change_settings_but_not_on_an_unfinished_one(tmp_path):
    out = tmp_path / "out"
    keys = ShardedOutput(out, KEYS, DistInfo())
    _run(out, {"seed": 0})
    assert keys.is_complete()
    info = DistInfo()
    summary = run_items("test", keys, lambda idx: [{"image_id": KEYS[i]} for i in idx], batch_size=2, info=info,
                        config=_Config(str(out)), settings={"seed": 1}, retry_errors=True)
    assert summary["complete"]
    record = json.loads((out / SETTINGS_FILE).read_text())
    assert record["settings"] == {"seed": 1} and record["earlier"] == [{"seed": 0}]
    (out / "summary.json").unlink()  # unfinished: a retry would mix settings for ordinary items too
    with pytest.raises(SettingsChanged, match="seed: 1 before, 2 now"):
        run_items("test", keys, lambda idx: [], batch_size=2, info=info, config=_Config(str(out)),
                  settings={"seed": 2}, retry_errors=True)


def test_rows_that_only_record_failures_do_not_bind_the_settings(tmp_path):
    # e.g. a wrong model path made every item an error row: the corrected rerun is not refused
    out = tmp_path / "out"
    so = ShardedOutput(out, KEYS, DistInfo())
    run_items("test", so, lambda idx: [{"image_id": KEYS[i], "_error": "no such model"} for i in idx], batch_size=2,
              info=DistInfo(), config=_Config(str(out)), settings={"model": {"path": "wrong"}})
    (out / "summary.json").unlink()  # unfinished, and no retry_errors: only the settings check is at play
    run_items("test", so, lambda idx: [{"image_id": KEYS[i]} for i in idx], batch_size=2, info=DistInfo(),
              config=_Config(str(out)), settings={"model": {"path": "right"}})
    assert json.loads((out / SETTINGS_FILE).read_text())["settings"] == {"model": {"path": "right"}}


def test_a_second_pipeline_on_the_same_run_directory_is_refused(tmp_path):
    from srum.pipeline.config import load_pipeline_config
    from srum.pipeline.runner import run_pipeline
    run_dir = tmp_path / "run"
    cfg = load_pipeline_config(REPO / "configs/pipeline/tiny.yaml", [f"run_dir={run_dir}"])
    with DirectoryLock.acquire(run_dir, "srum pipeline"):
        with pytest.raises(DirectoryLocked, match=f"in use by srum pipeline \\(pid {os.getpid()}"):
            run_pipeline(cfg)
    assert sorted(p.name for p in run_dir.iterdir()) == []  # nothing written, the lock released
