# SPDX-License-Identifier: Apache-2.0
"""``srum miniworld study``: SRUM, its SFT baseline and its ablations, measured in the
miniature world with the exact oracle.

From ONE set of candidates per seed (think-mode images of training-split prompts from
``srum generate``, regions the model proposes itself with ``srum propose``, judged by the
model itself in logits mode with ``srum judge``), every variant is trained with ``srum
train`` from the same base model, exported, and evaluated with ``srum eval miniworld``
on the held-out prompts in direct mode (the same prompts and image seeds for every
variant), plus :func:`~srum.miniworld.abilities.measure_understanding` on held-out
rendered scenes. The stages are the project's own functions, run in this process with
their own YAML configs (``candidates.*``, ``train``, ``eval``); the study only links them.

Layout of ``out_dir``::

    study.yaml                      the resolved study config
    prompts/train.jsonl             the candidates' prompts (the same for every seed)
    base/                           the baseline unit (per seed with eval.vary_with_seed)
    seed-<s>/candidates/            generate/ propose/ judge/ (rewards.jsonl), candidates.json
    seed-<s>/<variant>/             train/ model/ eval/ understanding.json result.json
    study.json, study.md            the tables (rewritten only when they change)
    stale/                          units whose config or inputs changed

Every unit folder (candidates, base, variant) carries the pipeline's marker
``stage.json`` (:mod:`srum.pipeline.state`: config hash, inputs, status, every attempt's
seconds) and ``phase-<name>.json`` per finished step. A rerun skips complete units,
resumes a unit that crashed or was killed (its stages skip what they finished; training
continues from its last checkpoint), and redoes a unit whose config or inputs (the base
model's files, the seed's candidates) changed. A unit is done only when its
``result.json`` is written and its marker says ``complete``.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ..config import ConfigError, build, merge, nest_dotted, parse_overrides, read_yaml, to_dict
from ..fileio import atomic_write_text
from ..pipeline import state
from . import world as W
from .pretrain import _resolve
from .study_report import _read_json, _write_if_changed, aggregate, write_report

log = logging.getLogger("srum.miniworld.study")

__all__ = ["StudyConfig", "QUICK", "load_study_config", "run_study", "write_report", "aggregate"]

DEFAULT_CONFIG = "configs/miniworld/study.yaml"
# ``--quick``: a CI-sized study (1 seed, the baseline + SFT + official SRUM, 6 prompts,
# 2 training steps), applied on top of the YAML and below the command-line overrides.
QUICK: dict[str, Any] = {
    "out_dir": "outputs/miniworld/study-quick",
    "seeds": [0],
    "select": ["sft", "srum_official"],
    "candidates.prompts_per_category": 1,
    "candidates.per_prompt": 2,
    "candidates.generate.overrides": {"sampling.num_timesteps": 6, "sampling.max_think_tokens": 32},
    "candidates.propose.overrides": {"proposals.self_boxes.max_new_tokens": 32},
    "candidates.judge.overrides": {"judge.min_scale_mass": 0.0},   # barely trained models miss the digits
    "train.steps": 2,
    "train.overrides": {"optim.warmup_steps": 1, "data.num_workers": 0, "checkpoint.every_steps": 0},
    "eval.per_category": 1,
    "eval.overrides": {"sampling.num_timesteps": 6},
    "understanding.scenes": 6,
    "understanding.questions_per_scene": 1,
}


# ------------------------------------------------------------------ config
@dataclass
class StageRef:
    """config: a stage YAML (relative paths: the working directory, else the repository).
    overrides: a mapping merged on top (nested or dotted keys)."""

    config: str
    overrides: dict[str, Any] = field(default_factory=dict)


@dataclass
class CandidatesConfig:
    """prompts_per_category: training-split prompts per category (the same set for every
    seed: the first of ``world.eval_prompts("train", ..., prompt_seed)``). exclude_eval_prompts:
    leave out texts that are also evaluation prompts (single-object prompts are in both
    splits). per_prompt: candidates per prompt."""

    prompts_per_category: int = 100
    prompt_seed: int = 1000
    exclude_eval_prompts: bool = True
    per_prompt: int = 2
    generate: StageRef = field(default_factory=lambda: StageRef("configs/data/miniworld_generate.yaml"))
    propose: StageRef = field(default_factory=lambda: StageRef("configs/data/miniworld_propose.yaml"))
    judge: StageRef = field(default_factory=lambda: StageRef("configs/data/miniworld_judge.yaml"))

    def __post_init__(self):
        if self.prompts_per_category < 1 or self.per_prompt < 1:
            raise ValueError("candidates.prompts_per_category and candidates.per_prompt must be >= 1")


@dataclass
class StudyTrainConfig:
    """config / overrides: the ``srum train`` YAML of every variant. steps: its
    ``train.total_steps`` (None: the YAML's; a variant's own overrides still win).
    export_dtype: dtype of each trained model directory."""

    config: str = "configs/train/miniworld_srum.yaml"
    overrides: dict[str, Any] = field(default_factory=lambda: {"freeze.und_expert": False})
    steps: int | None = 150
    export_dtype: str = "float32"

    def __post_init__(self):
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"train.steps must be >= 1, got {self.steps}")
        if self.export_dtype not in ("float32", "bfloat16", "float16"):
            raise ValueError(f"train.export_dtype must be float32, bfloat16 or float16, got {self.export_dtype!r}")


@dataclass
class StudyEvalConfig:
    """config / overrides: the ``srum eval miniworld`` YAML. The study sets the held-out
    split, ``per_category``, ``prompt_seed``, the image ``seed`` and direct mode (no think).
    vary_with_seed: the image seed becomes ``seed + study seed`` (and the baseline is
    evaluated once per seed) instead of one seed for the whole study."""

    config: str = "configs/eval/miniworld.yaml"
    overrides: dict[str, Any] = field(default_factory=dict)
    per_category: int = 50
    prompt_seed: int = 0
    seed: int = 0
    vary_with_seed: bool = False

    def __post_init__(self):
        if self.per_category < 1:
            raise ValueError(f"eval.per_category must be >= 1, got {self.per_category}")


@dataclass
class StudyUnderstandingConfig:
    """measure_understanding on ``scenes`` held-out rendered scenes (``enabled: false`` skips it)."""

    enabled: bool = True
    scenes: int = 300
    questions_per_scene: int = 3
    seed: int = 0
    batch_size: int = 32

    def __post_init__(self):
        if self.scenes < 1 or self.questions_per_scene < 1 or self.batch_size < 1:
            raise ValueError("understanding.scenes, questions_per_scene and batch_size must be >= 1")


def _default_variants() -> dict[str, Any]:
    return {"base": None, "sft": {"rewards.enabled": False},
            "srum_official": {"rewards.map.mode": "official"}, "srum_signed": {"rewards.map.mode": "signed"},
            "no_global": {"rewards.map.use_global": False}, "no_local": {"rewards.map.sample_level": True},
            "binary_reward": {"rewards.map.binarize": True}, "no_constraint": {"loss.lambda_c": 0.0}}


@dataclass
class StudyConfig:
    """Fields documented in TRAIN.md ("SRUM in the miniature world: the study")."""

    out_dir: str
    model: str = "models/miniworld"
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    baseline: str = "base"
    variants: dict[str, Any] = field(default_factory=_default_variants)
    select: list[str] | None = None
    candidates: CandidatesConfig = field(default_factory=CandidatesConfig)
    train: StudyTrainConfig = field(default_factory=StudyTrainConfig)
    eval: StudyEvalConfig = field(default_factory=StudyEvalConfig)
    understanding: StudyUnderstandingConfig = field(default_factory=StudyUnderstandingConfig)
    keep_going: bool = True
    keep_stale: bool = True

    def __post_init__(self):
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds: give one or more distinct seeds, got {self.seeds}")
        for name, value in self.variants.items():
            if not isinstance(name, str) or not name.replace("_", "").replace("-", "").isalnum():
                raise ValueError(f"variants: {name!r} is not a usable name (letters, digits, _ and -)")
            if name in ("candidates", "prompts", "stale"):
                raise ValueError(f"variants: {name!r} is a reserved folder name")
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"variants.{name}: expected a mapping of srum train overrides or null, got {value!r}")
        if self.baseline not in self.variants:
            raise ValueError(f"baseline: {self.baseline!r} is not among the variants {list(self.variants)}")
        unknown = [v for v in self.select or [] if v not in self.variants]
        if unknown:
            raise ValueError(f"select: unknown variant(s) {unknown}; defined: {list(self.variants)}")

    def run_variants(self) -> list[str]:
        """The baseline first, then the selected variants in definition order."""
        chosen = set(self.select) if self.select is not None else set(self.variants)
        return [self.baseline] + [v for v in self.variants if v != self.baseline and v in chosen]


def load_study_config(path: str | None, overrides=(), quick: bool = False) -> StudyConfig:
    """YAML (+ the :data:`QUICK` preset) + dotted overrides -> :class:`StudyConfig`."""
    data = read_yaml(_resolve(path)) if path else {}
    if quick:
        data = merge(data, nest_dotted(QUICK))
    data = merge(data, parse_overrides(overrides))
    try:
        return build(StudyConfig, data)
    except ConfigError as err:
        raise ConfigError(f"{path or 'study'}: {err}") from None


# ------------------------------------------------------------------ helpers
def _stage_data(ref: StageRef, where: str) -> dict:
    try:
        return merge(read_yaml(_resolve(ref.config)), nest_dotted(ref.overrides))
    except ConfigError as err:
        raise ConfigError(f"{where}.config ({ref.config}): {err}") from None


def _checked(cls, data: dict, where: str):
    try:
        return build(cls, data, where)
    except ConfigError as err:
        raise ConfigError(f"study: {err}") from None


def _model_stamp(path: Path) -> str:
    """Names, sizes and modification times of a model directory's files: a replaced model
    (same path, new weights) makes every unit that used it stale."""
    files = sorted(p for p in path.iterdir() if p.is_file() and p.suffix in (".safetensors", ".json"))
    return ";".join(f"{p.name}:{p.stat().st_size}:{int(p.stat().st_mtime)}" for p in files)


@dataclass
class Unit:
    """One resumable piece of the study: a folder, a config (hashed), inputs (upstream
    run ids and file stamps), the files that prove it finished, and its steps."""

    kind: str                                   # candidates | baseline | variant
    label: str                                  # e.g. "seed-0/sft"
    dir: Path
    config: dict
    inputs: dict[str, str]
    outputs: list[str]
    phases: list[tuple[str, Callable[[], dict]]]


class UnitFailed(RuntimeError):
    """A step of a unit finished without doing all its work (the unit is not done)."""


def run_unit(unit: Unit, root: Path, keep_stale: bool) -> dict:
    """Skip, resume or start ``unit`` (see the module docstring); returns its marker."""
    digest = state.config_hash(unit.config)
    action, why = state.decide(unit.dir, digest, unit.inputs, unit.outputs)
    if action == "skip":
        log.info("[%s] done (%s), skipped", unit.label, why)
        return state.read_marker(unit.dir)
    if action == "fresh" and unit.dir.exists():
        moved = state.set_aside(unit.dir, root, keep_stale)
        log.info("[%s] %s: old output %s", unit.label, why, f"moved to {moved}" if moved else "deleted")
    log.info("[%s] %s (%s)", unit.label, "resuming" if action == "resume" else "running", why)
    marker = state.begin(unit.dir, unit.kind, unit.config, digest, unit.inputs)
    if any(not (unit.dir / o).exists() for o in unit.outputs):
        # the last step writes the outputs: redo it when one is gone (e.g. a deleted result.json)
        (unit.dir / f"phase-{unit.phases[-1][0]}.json").unlink(missing_ok=True)
    try:
        for name, fn in unit.phases:
            done = unit.dir / f"phase-{name}.json"
            if done.is_file():
                continue
            t0 = time.perf_counter()
            info = fn() or {}
            atomic_write_text(done, json.dumps({"seconds": round(time.perf_counter() - t0, 3), **info},
                                               indent=1, default=str) + "\n")
            log.info("[%s] %s: %.1f s", unit.label, name, time.perf_counter() - t0)
        missing = [o for o in unit.outputs if not (unit.dir / o).exists()]
        if missing:
            raise UnitFailed(f"{unit.dir}: finished without writing {', '.join(missing)}")
    except BaseException as err:
        marker["error"] = f"{type(err).__name__}: {err}"
        state.finish(unit.dir, marker, "failed", 1)
        raise
    marker.pop("error", None)
    return state.finish(unit.dir, marker, "complete", 0)


# ------------------------------------------------------------------ the units
class Study:
    """The units of one study config: every stage config is built (and checked) here."""

    def __init__(self, cfg: StudyConfig):
        self.cfg = cfg
        self.root = Path(cfg.out_dir)
        self.model = str(_resolve(cfg.model))
        if not (Path(self.model) / "llm_config.json").is_file():
            raise FileNotFoundError(f"model: {self.model} is not a model directory (no llm_config.json)")
        self.prompts_file = self.root / "prompts" / "train.jsonl"
        # stage YAMLs read and checked up front, so a typo fails before anything runs
        self.stage_yamls = {name: _stage_data(getattr(cfg.candidates, name), f"candidates.{name}")
                            for name in ("generate", "propose", "judge")}
        self.train_yaml = _stage_data(StageRef(cfg.train.config, cfg.train.overrides), "train")
        self.eval_yaml = _stage_data(StageRef(cfg.eval.config, cfg.eval.overrides), "eval")
        for seed in cfg.seeds:
            self.candidates_configs(seed)
            for variant in cfg.run_variants():
                if cfg.variants[variant] is not None:
                    self.train_config(variant, seed)
            self.eval_config(self.model, self.root / "check", seed)

    # ---- configs
    def candidates_configs(self, seed: int) -> dict:
        from ..stages.generate import GenerateConfig
        from ..stages.judge import JudgeStageConfig
        from ..stages.propose import ProposeStageConfig
        d = self.root / f"seed-{seed}" / "candidates"
        gen = merge(self.stage_yamls["generate"], {
            "model": {"path": self.model}, "prompts": [str(self.prompts_file)], "out_dir": str(d / "generate"),
            "num_images_per_prompt": self.cfg.candidates.per_prompt, "seed": seed,
            "categories": None, "limit_per_category": None})
        prop = merge(self.stage_yamls["propose"], {"model": {"path": self.model},
                                                   "images": str(d / "generate" / "manifest.jsonl"),
                                                   "out_dir": str(d / "propose")})
        judge = merge(self.stage_yamls["judge"], {"model": {"path": self.model},
                                                  "regions": str(d / "propose" / "regions.jsonl"),
                                                  "out_dir": str(d / "judge"), "seed": seed})
        return {"generate": to_dict(_checked(GenerateConfig, gen, "candidates.generate")),
                "propose": to_dict(_checked(ProposeStageConfig, prop, "candidates.propose")),
                "judge": to_dict(_checked(JudgeStageConfig, judge, "candidates.judge"))}

    def train_config(self, variant: str, seed: int) -> dict:
        from ..training.config import TrainConfig
        d = self.root / f"seed-{seed}" / variant
        data = self.train_yaml
        if self.cfg.train.steps is not None:
            data = merge(data, {"train": {"total_steps": self.cfg.train.steps}})
        data = merge(data, nest_dotted(self.cfg.variants[variant] or {}))
        data = merge(data, {"model": {"path": self.model}, "output_dir": str(d / "train"),
                            "data": {"rewards": [str(self.root / f"seed-{seed}" / "candidates" / "judge" /
                                                     "rewards.jsonl")], "seed": seed},
                            "train": {"seed": seed}})
        return to_dict(_checked(TrainConfig, data, f"variants.{variant} (train)"))

    def eval_seed(self, seed: int) -> int:
        return self.cfg.eval.seed + (seed if self.cfg.eval.vary_with_seed else 0)

    def eval_config(self, model: str, out: Path, seed: int) -> dict:
        from .evaluation import MiniWorldEvalConfig
        e = self.cfg.eval
        data = merge(self.eval_yaml, {
            "model": {"path": model}, "out_dir": str(out), "generator": "model", "images": None,
            "prompts": {"split": "heldout", "per_category": e.per_category, "seed": e.prompt_seed},
            "seed": self.eval_seed(seed), "sampling": {"think": False}})
        return to_dict(_checked(MiniWorldEvalConfig, data, "eval"))

    def understanding_config(self) -> dict:
        return to_dict(self.cfg.understanding)

    # ---- prompts
    def write_prompts(self) -> str:
        c = self.cfg.candidates
        heldout = {s.text for s in W.eval_prompts("heldout", self.cfg.eval.per_category, self.cfg.eval.prompt_seed)}
        specs, excluded = training_prompts(c.prompts_per_category, c.prompt_seed,
                                           heldout if c.exclude_eval_prompts else set())
        seen: dict[str, int] = {}
        lines = []
        for spec in specs:
            k = seen.get(spec.category, 0)
            seen[spec.category] = k + 1
            lines.append(json.dumps({"id": f"mw_train_{spec.category}_{k:04d}", "prompt": spec.text,
                                     "category": spec.category, "spec": spec.to_dict()}) + "\n")
        text = "".join(lines)
        _write_if_changed(self.prompts_file, text)
        self.prompt_info = {"file": str(self.prompts_file), "prompts": len(specs),
                            "excluded_eval_prompts": excluded, "also_in_eval": sum(s.text in heldout for s in specs)}
        import hashlib
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    # ---- units
    def candidates_unit(self, seed: int, prompts_digest: str) -> Unit:
        from ..stages.generate import GenerateConfig, run_generate
        from ..stages.judge import JudgeStageConfig, run_judge
        from ..stages.propose import ProposeStageConfig, run_propose
        configs = self.candidates_configs(seed)
        d = self.root / f"seed-{seed}" / "candidates"

        def stage(name: str, cls, fn):
            def run() -> dict:
                summary = fn(build(cls, configs[name]))
                if not summary.get("complete", True):
                    raise UnitFailed(f"srum {name} left items undone or failed (see {d / name / 'errors.jsonl'}); "
                                     f"set candidates.{name}.overrides.retry_errors=true to redo them")
                return {"summary": summary}
            return run

        def result() -> dict:
            atomic_write_text(d / "candidates.json", json.dumps(candidates_summary(d), indent=1) + "\n")
            return {}

        return Unit("candidates", f"seed-{seed}/candidates", d, {"seed": seed, **configs},
                    {"model": _model_stamp(Path(self.model)), "prompts": prompts_digest},
                    ["judge/rewards.jsonl", "candidates.json"],
                    [("generate", stage("generate", GenerateConfig, run_generate)),
                     ("propose", stage("propose", ProposeStageConfig, run_propose)),
                     ("judge", stage("judge", JudgeStageConfig, run_judge)),
                     ("result", result)])

    def baseline_dir(self, seed: int) -> Path:
        name = self.cfg.baseline
        return self.root / f"seed-{seed}" / name if self.cfg.eval.vary_with_seed else self.root / name

    def variant_unit(self, variant: str, seed: int, candidates_run_id: str | None) -> Unit:
        trained = self.cfg.variants[variant] is not None
        d = self.baseline_dir(seed) if variant == self.cfg.baseline and not trained else \
            self.root / f"seed-{seed}" / variant
        model_dir = d / "model" if trained else Path(self.model)
        eval_cfg = self.eval_config(str(model_dir), d / "eval", seed)
        config = {"variant": variant, "base_model": self.model, "eval": eval_cfg,
                  "understanding": self.understanding_config()}
        inputs = {"model": _model_stamp(Path(self.model))}
        phases: list[tuple[str, Callable[[], dict]]] = []
        if trained:
            train_cfg = self.train_config(variant, seed)
            config.update({"seed": seed, "train": train_cfg, "export_dtype": self.cfg.train.export_dtype})
            inputs["candidates"] = candidates_run_id or "(missing)"
            phases += [("train", lambda: _train(train_cfg)),
                       ("export", lambda: _export(d / "train", self.model, model_dir, self.cfg.train.export_dtype))]
        elif self.cfg.eval.vary_with_seed:
            config["seed"] = seed
        phases.append(("eval", lambda: _evaluate(eval_cfg)))
        if self.cfg.understanding.enabled:
            phases.append(("understanding", lambda: _understanding(model_dir, self.cfg.understanding, eval_cfg,
                                                                   d / "understanding.json")))
        phases.append(("result", lambda: _unit_result(d, variant, seed if trained or self.cfg.eval.vary_with_seed
                                                       else None)))
        label = str(d.relative_to(self.root))
        return Unit("variant" if trained else "baseline", label, d, config, inputs, ["result.json"], phases)

    # ---- the run
    def run(self) -> dict:
        cfg = self.cfg
        self.root.mkdir(parents=True, exist_ok=True)
        _write_if_changed(self.root / "study.yaml", _yaml(to_dict(cfg)))
        digest = self.write_prompts()
        failures: list[dict] = []
        done_baselines: set[Path] = set()

        def attempt(unit: Unit) -> dict | None:
            try:
                return run_unit(unit, self.root, cfg.keep_stale)
            except Exception as err:   # noqa: BLE001 - reported, and the other units go on
                failures.append({"unit": unit.label, "error": f"{type(err).__name__}: {err}"})
                log.error("[%s] failed: %s: %s", unit.label, type(err).__name__, err, exc_info=True)
                if not cfg.keep_going:
                    raise
                return None

        for seed in cfg.seeds:
            # the baseline needs no candidates: evaluated first (once unless eval.vary_with_seed)
            bdir = self.baseline_dir(seed)
            if bdir not in done_baselines:
                done_baselines.add(bdir)
                attempt(self.variant_unit(cfg.baseline, seed, None))
            marker = attempt(self.candidates_unit(seed, digest))
            run_id = (marker or {}).get("run_id")
            for variant in cfg.run_variants():
                if variant == cfg.baseline and cfg.variants[variant] is None:
                    continue
                if run_id is None:
                    failures.append({"unit": f"seed-{seed}/{variant}",
                                     "error": "not run: the seed's candidates failed"})
                    continue
                attempt(self.variant_unit(variant, seed, run_id))
        report = write_report(self)
        report["failures"] = failures
        return report


def training_prompts(per_category: int, seed: int, exclude: set[str]) -> tuple[list[W.PromptSpec], int]:
    """The first ``per_category`` training-split prompts of each category whose text is not
    in ``exclude`` (``world.eval_prompts("train", ...)`` grows by prefix, so a larger
    request extends the same list); returns the prompts and how many were left out."""
    n = per_category
    while True:
        specs = W.eval_prompts("train", n, seed)
        kept: dict[str, list[W.PromptSpec]] = {}
        for spec in specs:
            if spec.text not in exclude:
                kept.setdefault(spec.category, []).append(spec)
        if all(len(kept.get(c, [])) >= per_category for c in W.CATEGORIES):
            out = [s for c in W.CATEGORIES for s in kept[c][:per_category]]
            last = {c: kept[c][per_category - 1] for c in W.CATEGORIES}
            # excluded texts that precede each category's last kept prompt
            excluded = sum(1 for c in W.CATEGORIES for s in specs[:specs.index(last[c])]
                           if s.category == c and s.text in exclude)
            return out, excluded
        n += max(4, per_category // 4)


def _yaml(data: dict) -> str:
    import yaml
    return yaml.safe_dump(data, sort_keys=False)


# ------------------------------------------------------------------ phases
def _train(train_cfg: dict) -> dict:
    from ..distributed import shutdown
    from ..training.config import TrainConfig
    from ..training.trainer import train
    cfg = build(TrainConfig, train_cfg)
    try:
        summary = train(cfg)
    finally:
        shutdown()
    out = Path(cfg.output_dir)
    report = _read_json(out / "data_report.json")
    losses = []
    metrics = out / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text(encoding="utf-8").splitlines():
            row = json.loads(line)
            if "step" in row and row.get("loss") is not None:
                losses.append((row["step"], row["loss"]))
    by_step = dict(losses)          # a resumed run's repeated steps keep the later line
    tail = [by_step[s] for s in sorted(by_step)][-max(1, len(by_step) // 10):]
    return {"summary": summary, "samples_kept": report.get("kept"),
            "records_read": report.get("records_read"),
            "skipped_missing_global": len(report.get("skipped_missing_global") or []),
            "final_loss": float(np.mean(tail)) if tail else None}


def _export(train_dir: Path, base: str, model_dir: Path, dtype: str) -> dict:
    from ..export.checkpoint import export_checkpoint
    tmp = model_dir.with_name(model_dir.name + ".tmp")
    for p in (tmp, model_dir):
        if p.exists():
            shutil.rmtree(p)
    export_checkpoint(train_dir, base, tmp, weights="auto", dtype=dtype, max_shard_bytes=2 ** 40)
    tmp.rename(model_dir)
    return {"model": str(model_dir)}


def _evaluate(eval_cfg: dict) -> dict:
    from .evaluation import MiniWorldEvalConfig, run_miniworld
    cfg = build(MiniWorldEvalConfig, eval_cfg)
    code = run_miniworld("all", cfg)
    if code != 0:
        raise UnitFailed(f"srum eval miniworld in {cfg.out_dir} is incomplete (exit {code}); see its errors.jsonl")
    return {}


def _understanding(model_dir: Path, ucfg: StudyUnderstandingConfig, eval_cfg: dict, out: Path) -> dict:
    import srum
    from .abilities import AbilitiesConfig, measure_understanding
    dtype = (eval_cfg.get("model") or {}).get("dtype")
    model = srum.load_model(model_dir, dtype=dtype)
    acfg = AbilitiesConfig(scenes=ucfg.scenes, questions_per_scene=ucfg.questions_per_scene, seed=ucfg.seed,
                           batch_size=ucfg.batch_size)
    result = measure_understanding(model, acfg)
    atomic_write_text(out, json.dumps(result, indent=1) + "\n")
    return {"accuracy": result["accuracy"]}


def _unit_result(d: Path, variant: str, seed: int | None) -> dict:
    from ..evaluation.compbench import RunLayout
    from .evaluation import table_values
    layout = RunLayout(d / "eval")
    summary = _read_json(layout.summary / "summary.json")
    per_image = {}
    with open(layout.scores_file, encoding="utf-8") as f:
        for line in f:
            if line.strip():
                row = json.loads(line)
                per_image[row["image_id"]] = int(bool(row.get("correct")))
    result = {"variant": variant, "seed": seed, "accuracy": table_values(summary),
              "readable": summary.get("readable"), "num_images": summary.get("num_images"),
              "per_image": dict(sorted(per_image.items())),
              "understanding": _read_json(d / "understanding.json") or None,
              "train": _read_json(d / "phase-train.json") or None}
    atomic_write_text(d / "result.json", json.dumps(result, indent=1) + "\n")
    return {}


def candidates_summary(d: Path) -> dict:
    """Counts of one seed's candidates: images, regions kept, judgments and mean scores."""
    out: dict[str, Any] = {}
    for name in ("generate", "propose", "judge"):
        s = _read_json(d / name / "summary.json")
        out[name] = {k: v for k, v in s.items() if (isinstance(v, (int, float, str, bool)) or v is None)
                     and k not in ("merged_at", "world_size", "seconds")}
    g_scores, l_scores, g_failed, regions = [], [], 0, 0
    with open(d / "judge" / "rewards.jsonl", encoding="utf-8") as f:
        for line in f:
            if not line.strip():
                continue
            rec = json.loads(line)
            g = rec.get("global") or {}
            if g.get("status") == "ok":
                g_scores.append(g["score"])
            else:
                g_failed += 1
            for r in rec.get("regions") or []:
                regions += 1
                if r.get("status") == "ok":
                    l_scores.append(r["score"])
    out["records"] = len(g_scores) + g_failed
    out["global_ok"], out["global_failed"] = len(g_scores), g_failed
    out["global_mean"] = float(np.mean(g_scores)) if g_scores else None
    out["regions"], out["regions_judged"] = regions, len(l_scores)
    out["local_mean"] = float(np.mean(l_scores)) if l_scores else None
    return out


def run_study(cfg: StudyConfig, report_only: bool = False) -> dict:
    """Run (or resume) the study; returns the report plus ``failures`` (units that failed now)."""
    study = Study(cfg)
    if report_only:
        study.root.mkdir(parents=True, exist_ok=True)
        study.write_prompts()
        report = write_report(study)
        report["failures"] = []
        return report
    return study.run()
