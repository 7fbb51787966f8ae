# SPDX-License-Identifier: Apache-2.0
"""Think-mode system prompts: settable in every place that runs think mode (issue 14)."""
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from srum.config import ConfigError
from srum.models.bagel import prompts
from srum.models.bagel.prompts import GENERATION_THINK_PROMPT, UNDERSTANDING_THINK_PROMPT, read_think_prompt
from srum.stages.generate import SamplingConfig

ROOT = Path(__file__).resolve().parents[1]
FAST = dict(height=32, width=48, num_timesteps=3)
PUBLISHED = SimpleNamespace(llm=SimpleNamespace(hidden_size=3584, num_hidden_layers=28))
TINY = SimpleNamespace(llm=SimpleNamespace(hidden_size=64, num_hidden_layers=2))


@pytest.fixture
def fresh_warnings(monkeypatch):
    monkeypatch.setattr(prompts, "_warned", set())


def test_read_think_prompt_text_or_file(tmp_path):
    assert read_think_prompt(None, None, "x") is None
    assert read_think_prompt("Plan first.", None, "x") == "Plan first."
    path = tmp_path / "think.txt"
    path.write_text("Line one.\nLine two.\n", encoding="utf-8")
    assert read_think_prompt(None, str(path), "x") == "Line one.\nLine two."
    with pytest.raises(ConfigError, match="not both"):
        read_think_prompt("a", str(path), "x")
    with pytest.raises(ConfigError, match="cannot read"):
        read_think_prompt(None, str(tmp_path / "missing.txt"), "x")
    (tmp_path / "blank.txt").write_text("\n")
    with pytest.raises(ConfigError, match="empty"):
        read_think_prompt(None, str(tmp_path / "blank.txt"), "x")


def test_builtin_wording_on_a_published_size_model_warns_once_per_kind(fresh_warnings, caplog):
    caplog.set_level(logging.WARNING, logger="srum.think_prompt")
    assert prompts.warn_if_builtin_think_prompt(PUBLISHED, GENERATION_THINK_PROMPT)
    assert not prompts.warn_if_builtin_think_prompt(PUBLISHED, GENERATION_THINK_PROMPT)   # once
    assert prompts.warn_if_builtin_think_prompt(PUBLISHED, UNDERSTANDING_THINK_PROMPT)
    assert [r.getMessage().count("GEN_THINK_SYSTEM_PROMPT") + r.getMessage().count("VLM_THINK_SYSTEM_PROMPT")
            for r in caplog.records] == [1, 1]
    # the trained text given, think mode off, or a model of another size: no warning
    assert not prompts.warn_if_builtin_think_prompt(PUBLISHED, "the trained wording")
    assert not prompts.warn_if_builtin_think_prompt(PUBLISHED, None)
    prompts._warned.clear()
    assert not prompts.warn_if_builtin_think_prompt(TINY, GENERATION_THINK_PROMPT)


def test_inference_uses_the_given_think_prompt(tiny_model, fresh_warnings, monkeypatch):
    """The system text reaches the context: another wording gives another chain of
    thought / image from the same seed; the built-in wording is checked for the warning."""
    seen = []
    monkeypatch.setattr("srum.models.bagel.inference.warn_if_builtin_think_prompt",
                        lambda config, system: seen.append(system))
    ours = tiny_model.generate_image(["a cat"], seed=0, think=True, max_think_tokens=6, output_type="latent", **FAST)
    given = tiny_model.generate_image(["a cat"], seed=0, think=True, max_think_tokens=6, output_type="latent",
                                      think_system_prompt="Think step by step about the layout, then draw.", **FAST)
    assert not torch.allclose(ours.images, given.images, atol=1e-5)
    assert seen == [GENERATION_THINK_PROMPT, "Think step by step about the layout, then draw."]
    tiny_model.understand(None, "What is 2 + 2?", think=True, max_new_tokens=2, think_system_prompt="Reason first.")
    assert seen[-1] == "Reason first."


def test_sampling_config_reads_the_file_and_records_the_text(tmp_path):
    path = tmp_path / "gen_think.txt"
    path.write_text("Plan the layout inside think tags, then draw.\n")
    kwargs = SamplingConfig(think_system_prompt_file=str(path)).generate_kwargs()
    assert kwargs["think_system_prompt"] == "Plan the layout inside think tags, then draw."
    assert "think_system_prompt_file" not in kwargs
    assert SamplingConfig().generate_kwargs()["think_system_prompt"] is None
    with pytest.raises(ValueError, match="not both"):
        SamplingConfig(think_system_prompt="a", think_system_prompt_file=str(path))
    # the evaluation's sampling has the same fields
    from srum.evaluation.compbench import EvalSamplingConfig
    assert EvalSamplingConfig(think=True, think_system_prompt="x").generate_kwargs()["think_system_prompt"] == "x"


def test_judge_config_takes_a_file(tmp_path):
    from srum.judge.scoring import JudgeConfig
    with pytest.raises(ValueError, match="not both"):
        JudgeConfig(think_system_prompt="a", think_system_prompt_file="b")
    assert JudgeConfig(think_system_prompt_file=str(tmp_path / "x.txt")).think_system_prompt_file


def test_pipeline_passes_think_prompts_to_generate_judge_and_eval(tmp_path):
    from srum.pipeline.config import load_pipeline_config
    from srum.pipeline.runner import Pipeline
    gen_file = tmp_path / "gen.txt"
    gen_file.write_text("Trained generation wording.\n")
    examples = ROOT / "data" / "prompts" / "examples.jsonl"
    config = ROOT / "configs" / "pipeline" / "bagel7b_compbench.yaml"
    cfg = load_pipeline_config(str(config), [
        f"run_dir={tmp_path / 'run'}", f"think_prompts.generation_file={gen_file}",
        "think_prompts.understanding=Trained understanding wording.",
        f"datasets={{srum_train_comp: {{kind: prompts, paths: [{examples}]}}, "
        f"srum_val_comp: {{kind: prompts, paths: [{examples}]}}}}"])
    pipeline = Pipeline(cfg, str(config), dry_run=True)
    rd = tmp_path / "run" / "round-01"
    generate = pipeline.generate(rd, "BAGEL-7B-MoT", {}, 1)
    assert generate.config["sampling"]["think_system_prompt"] == "Trained generation wording."
    evaluation = pipeline.evaluate(tmp_path / "run" / "baseline" / "eval", "BAGEL-7B-MoT", {})
    assert evaluation.config["sampling"]["think_system_prompt"] == "Trained generation wording."
    judge = pipeline.judge(rd, "BAGEL-7B-MoT", pipeline.propose(rd, "BAGEL-7B-MoT", generate))
    assert judge.config["judge"]["think_system_prompt"] == "Trained understanding wording."
    # a stage that sets its own keeps it
    cfg.generate.overrides = {"sampling.think_system_prompt": "stage wording"}
    assert Pipeline(cfg, str(config), dry_run=True).generate(rd, "m", {}, 1).config["sampling"][
        "think_system_prompt"] == "stage wording"


def test_cli_flags_reach_the_model(tmp_path):
    from srum.cli import build_parser
    path = tmp_path / "t.txt"
    path.write_text("From a file.")
    args = build_parser().parse_args(["t2i", "m", "a cat", "--think", "--think-system-prompt-file", str(path)])
    from srum.cli import _sampling_kwargs
    assert _sampling_kwargs(args)["think_system_prompt"] == "From a file."
    args = build_parser().parse_args(["understand", "m", "img.png", "--prompt", "q",
                                      "--think-system-prompt", "Inline."])
    assert args.think_system_prompt == "Inline."
