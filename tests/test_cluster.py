# SPDX-License-Identifier: Apache-2.0
"""Cluster launching (issue 13, item 5): the SLURM node script derives torchrun's
arguments from SLURM's variables; per-rank logs with rank-prefixed lines; torchrun's
error files; the model fetched once per node; collective timeouts from the config."""
import datetime
import io
import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from srum.hub import fetch_once_per_node
from srum.ranklog import RankTee

ROOT = Path(__file__).resolve().parents[1]
NODE = ROOT / "scripts" / "slurm" / "torchrun_node.sh"


def _fake_torchrun(tmp_path) -> Path:
    fake = tmp_path / "torchrun"
    fake.write_text("#!/usr/bin/env bash\nfor a in \"$@\"; do echo \"$a\"; done\necho \"LOG=${SRUM_RANK_LOG_DIR:-}\"\n")
    fake.chmod(0o755)
    return fake


def test_slurm_node_script_derives_master_node_rank_and_rendezvous(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "TORCHRUN": str(_fake_torchrun(tmp_path)), "SLURM_JOB_NUM_NODES": "4",
           "SLURM_NODEID": "2", "SLURM_JOB_NODELIST": "gpu[003-006],big7", "SLURM_GPUS_ON_NODE": "8(IDX:0-7)",
           "SLURM_JOB_ID": "4242", "SRUM_LOG_DIR": str(tmp_path / "logs")}
    out = subprocess.run(["bash", str(NODE), "train", "--config", "c.yaml"], env=env, capture_output=True,
                         text=True, check=True).stdout.split("\n")
    assert {"--nnodes=4", "--nproc_per_node=8", "--master_addr=gpu003", "--master_port=29500",
            "--node_rank=2", f"--log-dir={tmp_path / 'logs'}/torchrun/node-2"} <= set(out)
    assert out[out.index("-m"):out.index("-m") + 5] == ["-m", "srum", "train", "--config", "c.yaml"]
    assert f"LOG={tmp_path / 'logs'}" in out
    c10d = subprocess.run(["bash", str(NODE), "eval"], env={**env, "RDZV": "c10d"}, capture_output=True,
                          text=True, check=True).stdout.split("\n")
    assert {"--rdzv-backend=c10d", "--rdzv-endpoint=gpu003:29500", "--rdzv-id=4242"} <= set(c10d)


def test_rank_tee_prefixes_every_line_and_keeps_a_rank_log():
    console, log = io.StringIO(), io.StringIO()
    tee = RankTee(console, log, "[rank 3] ")
    tee.write("first line\nsecond ")
    tee.write("half\n10%\r20%\r")
    assert console.getvalue() == "[rank 3] first line\n[rank 3] second half\n[rank 3] 10%\r[rank 3] 20%\r"
    assert log.getvalue() == console.getvalue()


def test_rank_log_file_from_the_environment(tmp_path):
    env = {**os.environ, "SRUM_RANK_LOG_DIR": str(tmp_path / "logs"), "RANK": "1", "WORLD_SIZE": "2",
           "PYTHONPATH": str(ROOT)}
    code = "import sys; from srum.ranklog import install_from_env; install_from_env(); print('hello'); " \
           "print('oops', file=sys.stderr)"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert proc.stdout == "[rank 1] hello\n" and proc.stderr == "[rank 1] oops\n"
    assert (tmp_path / "logs" / "rank-1.log").read_text().splitlines() == ["[rank 1] hello", "[rank 1] oops"]


def test_worker_error_goes_to_torchruns_error_file(tmp_path, monkeypatch):
    import srum.cli
    from srum.__main__ import entry_point

    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))

    def broken(argv=None):
        raise RuntimeError("CUDA error: an illegal memory access")
    monkeypatch.setattr(srum.cli, "main", broken)
    with pytest.raises(RuntimeError):
        entry_point()()
    message = json.loads(error_file.read_text())["message"]
    assert "illegal memory access" in json.dumps(message)


def test_pipeline_stages_get_rank_logs_error_files_and_the_timeout(tmp_path):
    from srum.pipeline.config import LauncherConfig
    from srum.pipeline.launch import srum_command, stage_env
    launcher = LauncherConfig(nproc_per_node=8, dist_timeout_minutes=90)
    env = stage_env(launcher, tmp_path / "round-01" / "train")
    assert env["SRUM_RANK_LOG_DIR"] == str((tmp_path / "round-01" / "train" / "logs").absolute())
    assert env["SRUM_DIST_TIMEOUT_MINUTES"] == "90"
    cmd = srum_command(launcher, ["train"], True, log_dir=tmp_path / "logs" / "torchrun")
    assert f"--log-dir={tmp_path / 'logs' / 'torchrun'}" in cmd


def test_fetch_once_per_node(tmp_path):
    calls, results = [], {}

    def fetch():
        calls.append(1)
        return "/cache/bagel"

    def rank(r):
        results[r] = fetch_once_per_node("repo", fetch, local_rank=r, group="g1", marker_dir=tmp_path,
                                         timeout_s=30, poll_s=0.01)
    waiters = [threading.Thread(target=rank, args=(r,)) for r in (1, 2, 3)]
    for t in waiters:
        t.start()
    rank(0)
    for t in waiters:
        t.join()
    assert calls == [1] and set(results.values()) == {"/cache/bagel"} and len(results) == 4

    def offline():
        raise OSError("not in the cache (HF_HUB_OFFLINE=1)")
    with pytest.raises(OSError):
        fetch_once_per_node("repo2", offline, local_rank=0, group="g1", marker_dir=tmp_path)
    with pytest.raises(OSError, match="local rank 0 could not fetch it: OSError: not in the cache"):
        fetch_once_per_node("repo2", offline, local_rank=5, group="g1", marker_dir=tmp_path, timeout_s=5)
    assert fetch_once_per_node("repo3", lambda: "alone", group=None) == "alone"   # no torchrun: just fetch


def test_collective_timeouts_are_configurable(monkeypatch):
    import torch.distributed as dist

    from srum.config import load_config
    from srum.distributed import DEFAULT_TIMEOUT_MINUTES, timeout_minutes
    from srum.training.config import TrainConfig
    from srum.training.parallel import init_process_group

    monkeypatch.delenv("SRUM_DIST_TIMEOUT_MINUTES", raising=False)
    assert timeout_minutes() == DEFAULT_TIMEOUT_MINUTES >= 60
    monkeypatch.setenv("SRUM_DIST_TIMEOUT_MINUTES", "45")
    assert timeout_minutes() == 45 and timeout_minutes(200) == 200
    cfg = load_config(TrainConfig, str(ROOT / "configs" / "train" / "tiny.yaml"), ["parallel.timeout_minutes=240"])
    assert cfg.parallel.timeout_minutes == 240
    seen = {}
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **kw: seen.update(kw))
    init_process_group(cfg.parallel.timeout_minutes)
    assert seen["timeout"] == datetime.timedelta(minutes=240)


def test_data_stage_timeouts_are_config_fields(monkeypatch, tmp_path):
    import torch.distributed as dist

    from srum import distributed
    from srum.config import load_config
    from srum.evaluation.compbench import CompBenchConfig
    from srum.stages.generate import GenerateConfig
    from srum.stages.judge import JudgeStageConfig
    from srum.stages.propose import ProposeStageConfig

    for cls, extra in ((GenerateConfig, ["model.path=m", "prompts=[p]"]), (ProposeStageConfig, ["images=i"]),
                       (JudgeStageConfig, ["regions=r", "model.path=m"]), (CompBenchConfig, [])):
        cfg = load_config(cls, None, ["out_dir=o", "timeout_minutes=300", *extra] +
                          (["proposals.grounding.enabled=false"] if cls is ProposeStageConfig else []))
        assert cfg.timeout_minutes == 300
    seen = {}
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setattr(dist, "is_initialized", lambda: False)
    monkeypatch.setattr(dist, "init_process_group", lambda *a, **kw: seen.update(kw))
    distributed.init(300)
    assert seen["timeout"] == datetime.timedelta(minutes=300)


def test_handled_stage_error_reaches_torchruns_error_file(tmp_path, monkeypatch):
    from srum.stages.status import StageFailure, run_stage
    error_file = tmp_path / "error.json"
    monkeypatch.setenv("TORCHELASTIC_ERROR_FILE", str(error_file))

    def broken():
        raise StageFailure("the model refused the sampling settings: height 50 is not a multiple of 16")
    assert run_stage("generate", broken) == 2
    assert "height 50" in error_file.read_text()


def test_pipeline_sbatch_launches_stages_on_every_node(tmp_path):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "scontrol").write_text("#!/usr/bin/env bash\nprintf 'gpu003\\ngpu004\\n'\n")
    (bin_dir / "python").write_text("#!/usr/bin/env bash\nfor a in \"$@\"; do echo \"$a\"; done\n")
    for f in bin_dir.iterdir():
        f.chmod(0o755)
    env = {"PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_NUM_NODES": "2", "SLURM_JOB_NODELIST": "gpu[003-004]",
           "SLURM_GPUS_ON_NODE": "8", "SLURM_JOB_ID": "77", "SLURM_SUBMIT_DIR": str(ROOT)}
    out = subprocess.run(["bash", str(ROOT / "scripts" / "slurm" / "pipeline.sbatch"), "configs/pipeline/x.yaml",
                          "rounds=2"], env=env, capture_output=True, text=True, check=True).stdout.split("\n")
    assert out[:5] == ["-m", "srum", "pipeline", "--config", "configs/pipeline/x.yaml"]
    assert "launcher.nproc_per_node=8" in out and "rounds=2" in out
    assert "launcher.prefix=[srun,--nodes=2,--ntasks-per-node=1,--kill-on-bad-exit=1]" in out
    assert ("launcher.torchrun_args=[--nnodes=2,--rdzv-backend=c10d,--rdzv-endpoint=gpu003:29500,"
            "--rdzv-id=srum-77]") in out


def test_external_judge_is_fetched_once_per_node_not_per_rank(tmp_path, monkeypatch):
    """``srum judge``'s qwen2_5_vl backend resolves a hub id through the once-per-node fetch;
    a local folder is used as it is."""
    import srum.hub
    import srum.judge.backends as backends
    from srum.judge.scoring import JudgeConfig
    fetched, built = [], []
    monkeypatch.setattr(srum.hub, "snapshot", lambda repo, **kw: fetched.append(repo) or tmp_path / "cache")
    monkeypatch.setattr(backends, "QwenVLJudge", lambda path, **kw: built.append(str(path)))
    backends.load_judge_backend(JudgeConfig(backend="qwen2_5_vl", judge_model="Qwen/Qwen2.5-VL-72B-Instruct"))
    assert fetched == ["Qwen/Qwen2.5-VL-72B-Instruct"] and built == [str(tmp_path / "cache")]
    backends.load_judge_backend(JudgeConfig(backend="qwen2_5_vl", judge_model=str(tmp_path)))
    assert fetched == ["Qwen/Qwen2.5-VL-72B-Instruct"] and built[-1] == str(tmp_path)
