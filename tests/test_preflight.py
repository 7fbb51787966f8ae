# SPDX-License-Identifier: Apache-2.0
"""Preflight (issue 13, item 4): ``srum pipeline --dry-run`` and ``srum <stage> --dry-run``
check every path, hub id (cache only), version and GPU need, print each launch command,
and exit non-zero listing every problem at once."""
import os
import re
import subprocess
import sys
from pathlib import Path

import torch

from srum.preflight import Preflight, flash_attn_error

ROOT = Path(__file__).resolve().parents[1]
PAPER = ROOT / "configs" / "pipeline" / "bagel7b_compbench.yaml"


def _srum(tmp_path, *args, cwd=ROOT):
    env = {**os.environ, "HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "srum", *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300)


def _problems(stdout: str) -> list[str]:
    return re.findall(r"^  - (.*)$", stdout, flags=re.M)


def test_paper_dry_run_lists_exactly_the_missing_downloads(tmp_path):
    proc = _srum(tmp_path, "pipeline", "--config", str(PAPER), f"run_dir={tmp_path / 'run'}", "--dry-run")
    assert proc.returncode == 1, proc.stderr[-3000:]
    problems = _problems(proc.stdout)
    expected = [r"^model\.path .*ByteDance-Seed/BAGEL-7B-MoT is not cached",
                r"^dataset 'srum_train_comp': .*train_comp\.json not found",
                r"^dataset 'srum_val_comp': .*val_comp\.json not found",
                r"^eval: judge\.model: hub id Qwen/Qwen2\.5-VL-72B-Instruct is not cached",
                r"^propose: SAM checkpoint .*sam_vit_h_4b8939\.pth .*not found"]
    if not torch.cuda.is_available():
        expected.append(r"^GPUs: no CUDA GPU is visible here; the layout needs 8 per node")
    assert len(problems) == len(expected), problems
    for pattern in expected:
        assert sum(bool(re.search(pattern, p)) for p in problems) == 1, (pattern, problems)
    # every stage's exact launch command, with its own process count
    assert re.search(r"--nproc_per_node=2 .*-m srum eval compbench score --config \S+/baseline/eval/config.yaml",
                     proc.stdout)
    assert re.search(r"--nproc_per_node=8 .*-m srum train --config \S+/round-01/train/config.yaml", proc.stdout)
    assert not (tmp_path / "run").exists()


def _fake_bagel(path: Path) -> Path:
    path.mkdir(parents=True)
    for name in ("llm_config.json", "vit_config.json", "ae.safetensors", "ema.safetensors"):
        (path / name).write_text("{}")
    return path


def _fake_judge(path: Path) -> Path:
    path.mkdir(parents=True)
    for name in ("config.json", "preprocessor_config.json", "model.safetensors"):
        (path / name).write_text("{}")
    return path


def test_paper_dry_run_with_everything_present_only_misses_gpus(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "1", "prompt": "a cat", "category": "color"}\n')
    sam = tmp_path / "sam.pth"
    sam.write_bytes(b"x")
    proc = _srum(tmp_path, "pipeline", "--config", str(PAPER), f"run_dir={tmp_path / 'run'}",
                 f"model.path={_fake_bagel(tmp_path / 'bagel')}",
                 f"eval.overrides={{judge.model: {_fake_judge(tmp_path / 'judge')}}}",
                 f"propose.overrides={{proposals.sam.checkpoint: {sam}}}",
                 f"datasets={{srum_train_comp: {{kind: prompts, paths: [{prompts}]}}, "
                 f"srum_val_comp: {{kind: prompts, paths: [{prompts}]}}}}", "--dry-run")
    problems = _problems(proc.stdout)
    if torch.cuda.is_available():
        assert proc.returncode in (0, 1)
    else:
        assert proc.returncode == 1 and len(problems) == 1 and problems[0].startswith("GPUs:"), proc.stdout[-2000:]


def test_every_problem_at_once_with_the_folder_a_relative_path_is_relative_to(tmp_path):
    proc = _srum(tmp_path, "pipeline", "--config", str(PAPER), f"run_dir={tmp_path / 'run'}",
                 "model.path=models/no-such-bagel", "data.generate=[no_such_dataset]", "--dry-run")
    assert proc.returncode == 1, proc.stderr[-2000:]
    problems = _problems(proc.stdout)
    assert any(f"models/no-such-bagel is not cached here (~29 GB) (nor is it a folder: models/no-such-bagel "
               f"(relative to {ROOT}))" in p for p in problems), problems
    assert any("dataset 'no_such_dataset': not in the registry" in p for p in problems), problems
    assert len(problems) >= 5


def test_stage_dry_run(tmp_path, tiny_dir):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"id": "1", "prompt": "a cat", "category": "color"}\n')
    ok = _srum(tmp_path, "generate", "--config", "configs/data/tiny_generate.yaml", f"model.path={tiny_dir}",
               f"prompts=[{prompts}]", f"out_dir={tmp_path / 'gen'}", "--dry-run")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "-m srum generate --config configs/data/tiny_generate.yaml" in ok.stdout
    assert not (tmp_path / "gen").exists()
    bad = _srum(tmp_path, "train", "--config", "configs/train/tiny.yaml", f"model.path={tmp_path / 'nope'}",
                f"data.rewards=[{tmp_path / 'r.jsonl'}]", "--dry-run")
    assert bad.returncode == 1
    assert len(_problems(bad.stdout)) == 2 and "nope" in bad.stdout and "r.jsonl" in bad.stdout


def test_broken_flash_attn_is_reported_with_its_error(tmp_path, monkeypatch):
    pkg = tmp_path / "flash_attn"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("raise OSError('undefined symbol: _ZN3c10 (built for another torch)')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "flash_attn", raising=False)
    assert flash_attn_error() == "OSError: undefined symbol: _ZN3c10 (built for another torch)"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    pf = Preflight()
    pf.check_versions()
    assert any(p.startswith("flash-attn: installed but broken (OSError: undefined symbol") for p in pf.problems)


def test_hub_id_check_uses_the_cache_only(tmp_path, monkeypatch):
    import srum.preflight as preflight
    monkeypatch.setattr(preflight, "_cached", lambda repo, name: repo == "org/cached")
    pf = Preflight()
    pf.model("a", "org/cached")
    pf.model("b", "org/missing")
    assert len(pf.problems) == 1 and "org/missing is not cached" in pf.problems[0]


def test_every_eval_command_takes_dry_run_and_runs_nothing(tmp_path):
    out = tmp_path / "mw"
    proc = _srum(tmp_path, "eval", "miniworld", "all", "--config", "configs/eval/miniworld.yaml",
                 f"model.path={tmp_path / 'none'}", f"out_dir={out}", "--dry-run")
    assert proc.returncode == 1 and "none" in proc.stdout and not out.exists()
    proc = _srum(tmp_path, "eval", "geneval-images", f"model.path={tmp_path / 'none'}",
                 f"metadata={tmp_path / 'meta.jsonl'}", f"out_dir={out}", "--dry-run")
    assert proc.returncode == 1 and len(_problems(proc.stdout)) == 2 and not out.exists()


def test_a_judge_that_does_not_fit_its_gpus_is_a_problem(tmp_path, monkeypatch):
    from types import SimpleNamespace
    judge = tmp_path / "qwen72b"
    judge.mkdir()
    for name in ("config.json", "preprocessor_config.json"):
        (judge / name).write_text("{}")
    with open(judge / "model.safetensors", "wb") as f:
        f.truncate(147 * 10**9)                                   # sparse: the 72B judge's size, no disk used
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 8)
    monkeypatch.setattr(torch.cuda, "get_device_properties", lambda i: SimpleNamespace(total_memory=80 * 10**9))
    one = Preflight()
    one.model("eval: judge.model", str(judge), kind="judge", gpus_per_process=1)
    assert one.problems == ["eval: judge.model: 147 GB of weights over 1 GPU(s) of 80 GB does not fit: give this "
                            "step's layout gpus_per_process >= 3"]
    four = Preflight()
    four.model("eval: judge.model", str(judge), kind="judge", gpus_per_process=4)
    assert four.problems == []
