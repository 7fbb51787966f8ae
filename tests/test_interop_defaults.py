# SPDX-License-Identifier: Apache-2.0
"""Interop and defaults a cluster user meets first (issue 13, item 6): config paths from any
directory, the dataset registry from any directory and from a regular install, a single
ema.safetensors from export, true dependency floors, the attention backend reported (a
broken flash-attn too), and a `srum --help` that does not import torch."""
import ast
import inspect
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from srum.config import ConfigError, config_root, load_config, nest_dotted

REPO = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


def _run(code: str, cwd: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([PYTHON, "-c", code], cwd=cwd, env=full_env, capture_output=True, text=True, timeout=300)


# ------------------------------------------------------------------ config paths
def test_shipped_config_paths_resolve_from_any_directory(tmp_path, monkeypatch):
    from srum.stages.generate import GenerateConfig
    from srum.stages.propose import ProposeStageConfig
    monkeypatch.delenv("SRUM_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    assert config_root(REPO / "configs/data/generate.yaml") == REPO
    cfg = load_config(GenerateConfig, REPO / "configs/data/generate.yaml")
    assert cfg.prompts == [str(REPO / "data/prompts/train_comp.json")]
    assert cfg.out_dir == str(REPO / "runs/srum/generate")
    assert cfg.model.path == "ByteDance-Seed/BAGEL-7B-MoT"           # a hub id stays a hub id
    propose = load_config(ProposeStageConfig, REPO / "configs/data/propose.yaml")
    assert propose.proposals.sam.checkpoint == str(REPO / "checkpoints/sam_vit_h_4b8939.pth")
    # a path typed on the command line keeps meaning the current directory
    cfg = load_config(GenerateConfig, REPO / "configs/data/generate.yaml", ["out_dir=mine", "prompts=[p.jsonl]"])
    assert cfg.out_dir == "mine" and cfg.prompts == ["p.jsonl"]


def test_own_config_paths_are_relative_to_the_file_or_srum_root(tmp_path, monkeypatch):
    from srum.judge.scoring import JudgeConfig  # noqa: F401  (MODEL fields inside the stage)
    from srum.stages.judge import JudgeStageConfig
    monkeypatch.delenv("SRUM_ROOT", raising=False)
    exp = tmp_path / "experiments"
    (exp / "models/judge").mkdir(parents=True)
    (exp / "judge.yaml").write_text("regions: out/propose/regions.jsonl\nout_dir: out/judge\n"
                                    "judge: {backend: qwen2_5_vl, judge_model: models/judge}\n"
                                    "model: {path: ~/bagel}\n")
    monkeypatch.chdir(REPO)
    cfg = load_config(JudgeStageConfig, exp / "judge.yaml")
    assert cfg.regions == str(exp / "out/propose/regions.jsonl") and cfg.out_dir == str(exp / "out/judge")
    assert cfg.judge.judge_model == str(exp / "models/judge")        # exists there: a directory
    assert cfg.model.path == "~/bagel"                                # ~, $VAR, {run_dir}: left as written
    monkeypatch.setenv("SRUM_ROOT", str(tmp_path / "root"))
    assert load_config(JudgeStageConfig, exp / "judge.yaml").out_dir == str(tmp_path / "root/out/judge")
    with pytest.raises(ConfigError, match="unknown field"):           # checks still apply
        (exp / "bad.yaml").write_text("regions: r\nout_dir: o\nmodel: {path: m}\ntypo: 1\n")
        load_config(JudgeStageConfig, exp / "bad.yaml")


def test_pipeline_config_and_stage_configs_resolve_from_any_directory(tmp_path, monkeypatch):
    from srum.pipeline.config import load_pipeline_config
    from srum.pipeline.runner import Pipeline
    monkeypatch.delenv("SRUM_ROOT", raising=False)
    monkeypatch.chdir(tmp_path)
    path = REPO / "configs/pipeline/bagel7b_compbench.yaml"
    cfg = load_pipeline_config(str(path))
    assert cfg.run_dir == str(REPO / "runs/srum-bagel7b-compbench")
    assert cfg.generate.config == str(REPO / "configs/data/generate.yaml")
    pipeline = Pipeline(cfg, str(path), dry_run=True)
    propose = pipeline._stage_yaml("propose")
    assert propose["proposals"]["sam"]["checkpoint"] == str(REPO / "checkpoints/sam_vit_h_4b8939.pth")
    assert pipeline._stage_yaml("eval")["prompts"] == [str(REPO / "data/prompts/val_comp.json")]


# ------------------------------------------------------------------ the dataset registry
def test_registry_answers_the_same_from_any_directory(tmp_path):
    code = ("from srum.data.registry import load_registry; r = load_registry(); "
            "print(r.path); print(r.resolve('examples')[0])")
    here, there = _run(code, REPO), _run(code, tmp_path)
    assert here.returncode == 0 and there.returncode == 0, there.stderr
    assert here.stdout == there.stdout and str(REPO / "data/prompts/examples.jsonl") in there.stdout


def _installed_files() -> list[tuple[Path, str]]:
    """What a wheel of srum holds: the package's .py files plus pyproject's package-data."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    files = [(p, str(p.relative_to(REPO))) for p in (REPO / "srum").rglob("*.py") if "shipped" not in p.parts]
    for package, patterns in config["tool"]["setuptools"]["package-data"].items():
        folder = REPO / package.replace(".", "/")
        for pattern in patterns:
            files += [(p, str(Path(package.replace(".", "/")) / p.relative_to(folder))) for p in folder.glob(pattern)]
    return files


def test_registry_works_from_a_regular_install(tmp_path):
    """No repository next to the package: the registry and its shipped prompts come from
    package data (the wheel's contents, emulated from pyproject's package-data)."""
    site = tmp_path / "site-packages"
    for source, rel in _installed_files():
        (site / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, site / rel)   # a wheel holds copies, not links
    code = ("import srum.data.registry as m; from srum.data.registry import load_registry, read_dataset_prompts; "
            "r = load_registry(); items, _ = read_dataset_prompts(r, 'examples'); "
            "print(m.__file__); print(r.path); print(len(items))")
    env = {"PYTHONPATH": str(site), "SRUM_DATASETS": ""}
    out = subprocess.run([PYTHON, "-c", code], cwd=tmp_path, env={**os.environ, **env}, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    module, registry, count = out.stdout.split()
    assert module.startswith(str(site)) and registry.startswith(str(site)) and int(count) == 16


# ------------------------------------------------------------------ export: one ema.safetensors
def test_export_writes_one_ema_safetensors_by_default():
    from srum.cli import build_parser
    from srum.export.checkpoint import _shard_plan, export_checkpoint
    from srum.pipeline.config import ExportSpec
    assert inspect.signature(export_checkpoint).parameters["max_shard_bytes"].default is None
    args = build_parser().parse_args(["export", "checkpoint", "ckpt", "--base", "b", "--out", "o"])
    assert args.max_shard_gb is None
    assert ExportSpec().max_shard_gb is None
    sizes = {f"t{i}": 6 * 2 ** 30 for i in range(5)}                 # 30 GB, more than any shard size
    assert _shard_plan(sorted(sizes), sizes, None) == [sorted(sizes)]
    assert len(_shard_plan(sorted(sizes), sizes, 10 * 2 ** 30)) == 5  # sharded on request


# ------------------------------------------------------------------ dependency floors
def _floor(requirements: list[str], name: str) -> tuple[int, ...]:
    spec = next(r for r in requirements if re.match(rf"{name}\b", r))
    return tuple(int(x) for x in re.search(r">=\s*([\d.]+)", spec).group(1).split("."))


def test_transformers_floor_is_where_the_dtype_argument_exists():
    """from_pretrained(dtype=...) / _from_config(dtype=...) arrived in transformers 4.56."""
    calls = []
    for path in (REPO / "srum").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") in ("from_pretrained", "_from_config") \
                    and any(k.arg == "dtype" for k in node.keywords):
                calls.append(path.name)
    assert calls, "no dtype= call left: the floor can be revisited"
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["dependencies"]
    requirements = [line.strip() for line in (REPO / "requirements.txt").read_text().splitlines()
                    if line.strip() and not line.startswith("#")]
    assert _floor(pyproject, "transformers") >= (4, 56) and _floor(requirements, "transformers") >= (4, 56)
    assert sorted(pyproject) == sorted(requirements)                  # the two lists say the same


# ------------------------------------------------------------------ attention backend
def _fake_flash(root: Path, body: str) -> Path:
    (root / "flash_attn").mkdir(parents=True)
    (root / "flash_attn/__init__.py").write_text(body)
    return root


@pytest.mark.parametrize("body, shown", [
    ("raise OSError('libc10_cuda.so: undefined symbol: _ZN3c104cuda9SetDeviceEi')", "OSError: libc10_cuda.so"),
    ("raise RuntimeError('FlashAttention only supports Ampere GPUs or newer')", "RuntimeError: FlashAttention only"),
    ("import flash_attn_2_cuda_missing", "ModuleNotFoundError: No module named 'flash_attn_2_cuda_missing'"),
])
def test_broken_flash_attn_is_reported_not_fatal(tmp_path, body, shown):
    fake = _fake_flash(tmp_path / "fake", body)
    code = ("import torch; from srum.models.bagel import attention as a; "
            "print(a.attention_backend('cuda', torch.bfloat16)); print(a.use_flash(torch.zeros(1)))")
    out = _run(code, tmp_path, {"PYTHONPATH": f"{fake}{os.pathsep}{REPO}"})
    assert out.returncode == 0, out.stderr                            # SDPA still works
    assert "flash-attn is installed but BROKEN" in out.stdout and shown in out.stdout


def test_attention_backend_is_logged_when_a_model_loads(tmp_path, capsys):
    import srum
    from srum.models.bagel.attention import attention_backend, log_attention_backend
    import torch
    assert attention_backend("cpu", torch.float32) == "sdpa (cpu)"
    log_attention_backend.cache_clear()
    srum.write_tiny_checkpoint(tmp_path / "tiny")
    capsys.readouterr()
    srum.load_model(tmp_path / "tiny", device="cpu")
    assert "srum: attention backend on cpu (float32): sdpa (cpu)" in capsys.readouterr().err


# ------------------------------------------------------------------ srum --help without torch
def test_cli_parser_does_not_import_torch(tmp_path):
    code = ("import sys, json; import srum.cli; srum.cli.build_parser(); import srum; srum.__version__; "
            "print(json.dumps(sorted(m for m in ('torch', 'transformers', 'torchvision', 'accelerate') "
            "if m in sys.modules)))")
    out = _run(code, tmp_path)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == []
    help_out = subprocess.run([PYTHON, "-m", "srum", "--help"], cwd=tmp_path, capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=300)
    assert help_out.returncode == 0 and "pipeline" in help_out.stdout
    # the lazy names still work
    lazy = _run("import srum; print(srum.load_model.__name__, srum.CheckpointError.__name__)", tmp_path)
    assert lazy.stdout.split() == ["load_model", "CheckpointError"]


# ------------------------------------------------------------------ default stage paths chain
@pytest.mark.parametrize("generate, propose, judge, train", [
    ("generate", "propose", "judge", "configs/train/bagel7b_compbench.yaml"),
    ("tiny_generate", "tiny_propose", "tiny_judge", "configs/train/tiny.yaml"),
    ("miniworld_generate", "miniworld_propose", "miniworld_judge", "configs/train/miniworld_srum.yaml"),
])
def test_default_stage_paths_chain(generate, propose, judge, train):
    """Run by hand with their defaults, each stage reads what the previous one wrote."""
    import yaml
    read = lambda name: yaml.safe_load((REPO / "configs/data" / f"{name}.yaml").read_text())  # noqa: E731
    g, p, j = read(generate), read(propose), read(judge)
    t = yaml.safe_load((REPO / train).read_text())
    assert p["images"] == f"{g['out_dir']}/manifest.jsonl"
    assert j["regions"] == f"{p['out_dir']}/regions.jsonl"
    assert t["data"]["rewards"] == [f"{j['out_dir']}/rewards.jsonl"]


# ------------------------------------------------------------------ CUDA errors: a clear message
def test_cuda_errors_end_a_command_with_a_clear_message(monkeypatch, capsys):
    import torch

    import srum.cli as cli
    from srum.judge.errors import JudgeBackendFatal

    def oom(args):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(cli, "cmd_demo", oom)
    assert cli.main(["demo"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("srum demo: error: CUDA out of memory, the stage stopped") and "Lower the batch" in err
    monkeypatch.setattr(cli, "cmd_demo", lambda args: (_ for _ in ()).throw(JudgeBackendFatal("judge gone")))
    assert cli.main(["demo"]) == 2 and "judge gone" in capsys.readouterr().err
    monkeypatch.setattr(cli, "cmd_demo", lambda args: (_ for _ in ()).throw(RuntimeError("a bug")))
    with pytest.raises(RuntimeError, match="a bug"):   # anything else keeps its traceback
        cli.main(["demo"])


def test_dotted_overrides_of_a_yaml_mapping_nest_and_merge():
    # the pipeline's and the study's `overrides:` mappings mix dotted keys and sections
    assert nest_dotted({"a.b": 1, "c": {"d.e": 2}, "a.f": 3, "a": {"g": 4}}) == {
        "a": {"b": 1, "f": 3, "g": 4}, "c": {"d": {"e": 2}}}
    assert nest_dotted({"a.b": 1, "a.b.c": 2}) == {"a": {"b": {"c": 2}}}   # the later key wins
