# SPDX-License-Identifier: Apache-2.0
"""The self-rewarding loop, round by round.

    baseline/eval                       the starting model on the benchmark (eval-think: CoT mode)
    round-01/generate -> propose -> judge -> train -> export -> eval (eval-think) -> report
    round-02/...                        starts from round-01/export

Each stage is a :class:`StagePlan`: its folder, its resolved config, the run ids of the
stages it reads, the files that prove it finished, and how to run it. :meth:`Pipeline.execute`
asks :mod:`.state` whether to skip, resume or start it fresh, runs it, and records the
outcome, so a rerun of a finished run does nothing and a deleted or changed stage reruns
with exactly the stages downstream of it.
"""
from __future__ import annotations

import html
import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import yaml

from ..config import ConfigError, build, config_root, merge, nest_dotted, read_yaml, resolve_paths, to_dict
from ..fileio import atomic_write_text
from ..locking import DirectoryLock
from ..preflight import Preflight
from . import state
from ..stages.status import clear_status, read_status, worst
from ..evaluation.summary import COT_SUFFIX   # a think run's label, as `srum eval compare` writes it
from .config import JUDGED_BENCHMARKS, Layout, PipelineConfig
from .launch import run_logged, srum_command, stage_env


EVAL_DIRS = {"direct": "eval", "think": "eval-think"}   # eval.modes -> the folder in baseline/ and round-NN/


class PipelineError(RuntimeError):
    """A stage failed; the message names it, its log and how to resume."""


@dataclass
class StagePlan:
    name: str                       # generate, propose, ...
    dir: Path
    config: dict                    # resolved; hashed and written to <dir>/config.yaml
    inputs: dict[str, str]          # upstream label -> its run id (or a model path)
    outputs: list[str]              # files (relative to dir) that a finished stage leaves
    run: Callable[["StagePlan"], int] = field(repr=False)
    label: str = ""
    # folders (relative to dir) where the stage's commands write status.json; None: a
    # plain in-pipeline step whose return code is its status (export, report)
    status_dirs: list[str] | None = None
    commands: list[list[str]] = field(default_factory=list)   # what run() launches (dry run, preflight)
    gpus: list[int] = field(default_factory=list)              # GPUs per node of each command


def _file_stamp(path: Path) -> str:
    st = path.stat()
    return f"{path}:{st.st_size}:{int(st.st_mtime)}"


class Pipeline:
    def __init__(self, cfg: PipelineConfig, config_path: str | None = None, dry_run: bool = False):
        self.cfg = cfg
        self.config_path = config_path
        self.dry_run = dry_run   # print what would run and why; write nothing
        self.preflight = Preflight() if dry_run else None   # what a dry run found missing
        self.run_dir = Path(cfg.run_dir)
        self.timing: list[dict] = []
        from ..data.registry import load_registry, registry_from_dict
        registry = load_registry(cfg.data.registry)
        if cfg.datasets:
            registry = registry.merged(registry_from_dict({"datasets": cfg.datasets},
                                                          source=f"{config_path or 'pipeline'}: datasets",
                                                          base_dir=Path(config_path).parent if config_path else None))
        self.registry = registry

    # ------------------------------------------------------------------ helpers
    def _stage_yaml(self, name: str) -> dict:
        """The stage's YAML with its overrides. Relative paths in the stage YAML are taken
        from that file's config root, those in ``overrides`` from the pipeline file's."""
        spec = getattr(self.cfg, name)
        cls = self._stage_class(name)
        root = config_root(self.config_path) if self.config_path else Path.cwd()
        try:
            return merge(resolve_paths(cls, read_yaml(spec.config), config_root(spec.config)),
                         resolve_paths(cls, nest_dotted(spec.overrides), root))
        except ConfigError as err:
            raise ConfigError(f"{name}.config: {err}") from None

    def _stage_class(self, name: str):
        if name == "eval":
            return eval_config_class(self.cfg.eval.benchmark)
        if name == "understanding":
            from ..understanding.runner import UnderstandingConfig
            return UnderstandingConfig
        from ..stages.generate import GenerateConfig
        from ..stages.judge import JudgeStageConfig
        from ..stages.propose import ProposeStageConfig
        from ..training.config import TrainConfig
        return {"generate": GenerateConfig, "propose": ProposeStageConfig, "judge": JudgeStageConfig,
                "train": TrainConfig}[name]

    def _checked(self, cls, data: dict, name: str) -> dict:
        """Build the stage's dataclass now, so a bad field fails before any stage runs.
        Paths still relative (command-line overrides) are made absolute from the current
        directory: the stage reads its config from its own folder, where they would
        mean something else."""
        try:
            return to_dict(build(cls, resolve_paths(cls, data, Path.cwd())))
        except ConfigError as err:
            raise ConfigError(f"{self.config_path or 'pipeline'}: {name} stage ({getattr(self.cfg, name).config}): "
                              f"{err}") from None

    def _with_think_prompt(self, data: dict, section: str, kind: str) -> dict:
        """``data`` with the pipeline's ``think_prompts.<kind>`` text as
        ``<section>.think_system_prompt``, unless the stage sets its own."""
        from ..models.bagel.prompts import read_think_prompt
        spec = self.cfg.think_prompts
        text = read_think_prompt(getattr(spec, kind), getattr(spec, f"{kind}_file"), f"think_prompts.{kind}")
        own = data.get(section) or {}
        if text is None or own.get("think_system_prompt") is not None or own.get("think_system_prompt_file"):
            return data
        return merge(data, {section: {"think_system_prompt": text}})

    def _datasets(self, names: list[str], kind: str) -> tuple[list[str], dict]:
        files, selection = [], {}
        for name in names:
            if self.preflight is not None and name not in self.registry:
                self.preflight.problem(f"dataset {name!r}: not in the registry {self.registry.source}")
                files.append(f"<dataset {name}>")
                continue
            ds = self.registry.get(name)
            if ds.kind != kind:
                raise ConfigError(f"dataset {name!r} is of kind {ds.kind!r}, expected {kind!r}")
            files += [str(p) for p in self._resolve(name)]
            for key in ("categories", "limit_per_category"):
                value = getattr(ds, key)
                if value is not None:
                    value = list(value) if isinstance(value, tuple) else value
                    if key in selection and selection[key] != value:
                        raise ConfigError(f"datasets {names}: different {key} ({selection[key]} vs {value})")
                    selection[key] = value
        return files, selection

    def _command(self, plan_dir: Path, command: str, layout: Layout | None) -> list[str]:
        args = command.split() + ["--config", str(plan_dir / "config.yaml")]
        launcher = self.cfg.launcher
        if layout is None:   # a step that needs one process (e.g. summarize)
            return srum_command(launcher, args, distributed=False)
        log_dir = plan_dir / "logs" / "torchrun" if launcher.rank_logs else None
        return srum_command(launcher, args, distributed=True, nproc=layout.processes(launcher), log_dir=log_dir)

    def _resolve(self, name: str) -> list[Path]:
        """A dataset's files; a dry run lists the missing ones as problems instead of stopping."""
        if self.preflight is None:
            return self.registry.resolve(name, self.run_dir)
        found = self.registry.resolve(name, self.run_dir, must_exist=False)
        for p in found:
            self.preflight.file(f"dataset {name!r}", p, "see `srum datasets check` and the README, \"On a GPU cluster\"")
        if not found:
            self.preflight.problem(f"dataset {name!r}: its pattern matches no file")
            return [Path(f"<dataset {name}>")]
        return found

    def _launched_steps(self, steps: list[tuple[str, Layout | None]],
                        status_dirs: list[str | None]) -> Callable[[StagePlan], int]:
        """Run the commands one after the other (each with its own layout) into the stage's
        log; stops at the first that failed (its status, or its code when it writes none)."""
        def run(plan: StagePlan) -> int:
            code = 0
            for (command, layout), sub in zip(steps, status_dirs):
                cmd = self._command(plan.dir, command, layout)
                code = run_logged(cmd, plan.dir / "stage.log", stage_env(self.cfg.launcher, plan.dir))
                record = read_status(plan.dir / sub) if sub is not None else None
                if (record is None and (sub is not None or code != 0)) or (record or {}).get("status") == "failed":
                    break
            return code
        return run

    def _plan_commands(self, plan: StagePlan, steps: list[tuple[str, Layout | None]]) -> StagePlan:
        plan.commands = [self._command(plan.dir, command, layout) for command, layout in steps]
        plan.gpus = [layout.processes(self.cfg.launcher) * layout.gpus_per_process if layout else 0
                     for _, layout in steps]
        return plan

    @staticmethod
    def _run_id(plan: StagePlan) -> str:
        marker = state.read_marker(plan.dir) or {}
        return marker.get("run_id", "(pending)")   # pending only in a dry run

    # ------------------------------------------------------------------ execution
    def execute(self, plan: StagePlan) -> StagePlan:
        plan.label = str(plan.dir.relative_to(self.run_dir)) if plan.dir.is_relative_to(self.run_dir) else str(plan.dir)
        digest = state.config_hash(plan.config)
        action, why = state.decide(plan.dir, digest, plan.inputs, plan.outputs)
        if self.dry_run:
            print(f"[{plan.label}] would {dict(fresh='run').get(action, action)} ({why})", flush=True)
            for cmd, gpus in zip(plan.commands, plan.gpus or [0] * len(plan.commands)):
                print(f"    $ {shlex.join(cmd)}", flush=True)
                self.preflight.launch(plan.label, cmd, gpus)
            return plan
        if action == "skip":
            print(f"[{plan.label}] done ({why}), skipped", flush=True)
            self.timing.append({"stage": plan.label, "action": "skipped", "seconds": 0.0})
            return plan
        if action == "fresh" and plan.dir.exists():
            moved = state.set_aside(plan.dir, self.run_dir, self.cfg.keep_stale)
            print(f"[{plan.label}] {why}: old output {'moved to ' + str(moved) if moved else 'deleted'}", flush=True)
        print(f"[{plan.label}] {'resuming' if action == 'resume' else 'running'} ({why})", flush=True)
        marker = state.begin(plan.dir, plan.name, plan.config, digest, plan.inputs)
        atomic_write_text(plan.dir / "config.yaml", yaml.safe_dump(plan.config, sort_keys=False))
        for sub in plan.status_dirs or []:   # an old status never answers for this attempt
            clear_status(plan.dir / sub)
        t0 = time.time()
        returncode = plan.run(plan)
        status, reason = stage_status(plan, returncode)
        if status == "incomplete" and (plan.name == "train" or not self.cfg.allow_incomplete):
            reason = (f"{reason}; set allow_incomplete: true to go on with the rest" if plan.name != "train"
                      else reason)
            status = "failed"
        marker["reason"] = reason
        state.finish(plan.dir, marker, status, returncode)
        seconds = round(time.time() - t0, 1)
        self.timing.append({"stage": plan.label, "action": action, "status": status, "seconds": seconds})
        if status == "failed":
            raise PipelineError(f"[{plan.label}] failed: {reason}. Log: {plan.dir / 'stage.log'}"
                                f"{' (one per rank: ' + str(plan.dir / 'logs') + '/)' if plan.status_dirs else ''}. "
                                "Run the same command again to resume from here.")
        if status == "incomplete":
            print(f"[{plan.label}] incomplete: {reason}", flush=True)
        missing = [o for o in plan.outputs if not (plan.dir / o).exists()]
        if missing:
            raise PipelineError(f"[{plan.label}] finished but did not write {', '.join(missing)} "
                                f"(log: {plan.dir / 'stage.log'})")
        print(f"[{plan.label}] {status} in {seconds:.1f}s", flush=True)
        return plan

    # ------------------------------------------------------------------ stages
    def generate(self, rd: Path, model: str, model_inputs: dict, round_index: int) -> StagePlan:
        from ..stages.generate import GenerateConfig
        data = self._stage_yaml("generate")
        files, selection = self._datasets(self.cfg.data.generate, "prompts")
        seed = int(data.get("seed", 0)) + (round_index - 1 if self.cfg.seed_per_round else 0)
        data = merge(data, {"model": {"path": model}, "prompts": files, "out_dir": str(rd / "generate"),
                            "seed": seed, **selection})
        data = self._with_think_prompt(data, "sampling", "generation")
        data = merge(data, {"model": {"gpus_per_process": self.cfg.generate.layout.gpus_per_process}})
        return self._launch_plan("generate", rd / "generate", self._checked(GenerateConfig, data, "generate"),
                                 model_inputs, ["manifest.jsonl", "summary.json"])

    def propose(self, rd: Path, model: str, generate: StagePlan) -> StagePlan:
        from ..stages.propose import ProposeStageConfig
        data = merge(self._stage_yaml("propose"), {"images": str(generate.dir / "manifest.jsonl"),
                                                   "out_dir": str(rd / "propose")})
        grounding = ((data.get("proposals") or {}).get("grounding") or {}).get("enabled", True)
        if grounding:
            data = merge(data, {"model": {"path": model,
                                          "gpus_per_process": self.cfg.propose.layout.gpus_per_process}})
        config = self._checked(ProposeStageConfig, data, "propose")
        sam = config["proposals"]["sam"]
        if self.preflight is not None and config["proposals"]["backend"] == "sam" and sam["model_type"] != "tiny":
            self.preflight.file("propose: SAM checkpoint (proposals.sam.checkpoint)", sam["checkpoint"] or "<unset>",
                                "download sam_vit_h_4b8939.pth from the segment-anything release (2.4 GB)")
        return self._launch_plan("propose", rd / "propose", config,
                                 {generate.label: self._run_id(generate)}, ["regions.jsonl", "summary.json"])

    def judge(self, rd: Path, model: str, propose: StagePlan) -> StagePlan:
        from ..stages.judge import JudgeStageConfig
        data = merge(self._stage_yaml("judge"), {"regions": str(propose.dir / "regions.jsonl"),
                                                 "out_dir": str(rd / "judge")})
        if ((data.get("judge") or {}).get("backend") or "self") == "self":
            data = merge(data, {"model": {"path": model, "gpus_per_process": self.cfg.judge.layout.gpus_per_process}})
            data = self._with_think_prompt(data, "judge", "understanding")
        config = self._checked(JudgeStageConfig, data, "judge")
        if self.preflight is not None and config["judge"]["backend"] != "self" and config["judge"]["judge_model"]:
            self.preflight.model("judge: judge.judge_model", config["judge"]["judge_model"], kind="judge")
        return self._launch_plan("judge", rd / "judge", config,
                                 {propose.label: self._run_id(propose)}, ["rewards.jsonl", "summary.json"])

    def train(self, rd: Path, model: str, judge: StagePlan) -> StagePlan:
        from ..training.config import TrainConfig
        extra = []
        for name in self.cfg.data.extra_rewards:
            extra += [str(p) for p in self._datasets([name], "rewards")[0]]
        data = merge(self._stage_yaml("train"), {"model": {"path": model}, "output_dir": str(rd / "train")})
        data = merge(data, {"data": {"rewards": [str(judge.dir / "rewards.jsonl"), *extra]}})
        config = self._checked(TrainConfig, data, "train")
        inputs = {judge.label: self._run_id(judge), **{f"rewards:{p}": _file_stamp(Path(p)) for p in extra}}
        return self._launch_plan("train", rd / "train", config, inputs, ["checkpoints/latest", "metrics.jsonl"])

    def export(self, rd: Path, model: str, train: StagePlan) -> StagePlan:
        spec = self.cfg.export
        config = {"checkpoint": str(train.dir), "base": model, "out": str(rd / "export"), **to_dict(spec)}

        def export_args() -> list[str]:
            args = ["export", "checkpoint", config["checkpoint"], "--base", model, "--out", config["out"],
                    "--weights", spec.weights, "--dtype", spec.dtype]
            if spec.max_shard_gb is not None:   # null: one ema.safetensors (what Bagel's own scripts open)
                args += ["--max-shard-gb", str(spec.max_shard_gb)]
            return args

        def run(plan: StagePlan) -> int:
            log = plan.dir.parent / "export.log"   # not inside: the export folder is a model directory
            return run_logged(srum_command(self.cfg.launcher, export_args(), distributed=False), log,
                              self.cfg.launcher.env)
        plan = StagePlan("export", rd / "export", config, {train.label: self._run_id(train)},
                         ["srum_export.json", "llm_config.json"], run,
                         commands=[srum_command(self.cfg.launcher, export_args(), distributed=False)], gpus=[0])
        return self.execute(plan)

    def evaluations(self, parent: Path, model: str, model_inputs: dict, label: str) -> list[tuple[str, StagePlan]]:
        """The model evaluated in each of ``eval.modes``, each into its own folder, labelled
        as the paper's Table 1 rows ("base", "base (CoT)")."""
        return [(label + (COT_SUFFIX if mode == "think" else ""),
                 self.evaluate(parent / EVAL_DIRS[mode], model, model_inputs, think=mode == "think"))
                for mode in self.cfg.eval.modes]

    def evaluate(self, out: Path, model: str, model_inputs: dict, think: bool = False) -> StagePlan:
        benchmark = self.cfg.eval.benchmark
        data = self._stage_yaml("eval")
        if (data.get("sampling") or {}).get("think") is True and not think:
            # a think run in the direct mode's folder would be mislabelled in every table
            raise ConfigError(f"eval.config ({self.cfg.eval.config}) / eval.overrides: sampling.think: true; the "
                              "pipeline sets think per mode: use eval.modes: [think] or [direct, think]")
        data = merge(data, {"model": {"path": model}, "out_dir": str(out), "sampling": {"think": think}})
        data = self._with_think_prompt(data, "sampling", "generation")
        if self.cfg.data.eval:   # compbench only (checked with the config)
            files, selection = self._datasets(self.cfg.data.eval, "prompts")
            data = merge(data, {"prompts": files, **selection})
        spec = self.cfg.eval
        judged = benchmark in JUDGED_BENCHMARKS
        if judged:
            # generation and the judge each get their own layout: a 72B judge spans several
            # GPUs per process, so it runs with fewer processes than the generator
            data = merge(data, {"model": {"gpus_per_process": spec.layout.gpus_per_process},
                                "judge": {"gpus_per_process": spec.judge_layout.gpus_per_process}})
            steps = [(f"eval {benchmark} generate", spec.layout), (f"eval {benchmark} score", spec.judge_layout),
                     (f"eval {benchmark} summarize", None)]
            step_status = ["images", "scores", None]
        else:
            steps, step_status = [(f"eval {benchmark} all", spec.layout)], ["scores"]
        cls = eval_config_class(benchmark)
        config = self._checked(cls, data, "eval")
        if benchmark == "wise":
            self._check_wise_split(build(cls, config))
        if self.preflight is not None and judged:
            if config["judge"]["backend"] == "openai":
                self.preflight.note(f"eval: judge served at {config['judge']['server']['base_url']} (not checked)")
            elif not spec.init_tiny_judge:
                self.preflight.model("eval: judge.model", config["judge"]["model"], kind="judge",
                                     gpus_per_process=spec.judge_layout.gpus_per_process)
            if benchmark == "compbench" and not self.cfg.data.eval:
                for prompts in config["prompts"]:
                    self.preflight.file("eval: prompts", prompts)
            from ..preflight import benchmark_data_problems
            for text in benchmark_data_problems(benchmark, build(cls, config)):
                self.preflight.problem(f"eval: {text}")
        plan = StagePlan("eval", out, config, model_inputs,
                         ["summary/summary.json", "summary/summary.md"], self._launched_steps(steps, step_status),
                         status_dirs=["images", "scores"])
        return self.execute(self._plan_commands(plan, steps))

    def _check_wise_split(self, cfg) -> None:
        """The SRUM paper's WISE protocol trains on one domain's prompts and evaluates on the
        other two: say so when a prompt file of an evaluated domain is also trained on (the
        evaluation would then measure seen prompts). A note in a dry run, a warning otherwise."""
        from ..evaluation.wise import DOMAINS
        trained = set()
        for name in self.cfg.data.generate:
            if name in self.registry:
                trained.update(Path(p).name for p in self.registry.resolve(name, self.run_dir, must_exist=False))
        overlap = [d for d in cfg.domains if any(f.startswith(DOMAINS[d].file_stem) for f in trained)]
        if overlap:
            text = (f"eval: WISE domain(s) {', '.join(overlap)} are both trained on (data.generate) and evaluated "
                    "(eval domains); the paper's protocol evaluates the other domains only (eval.overrides.domains)")
            if self.preflight is not None:
                self.preflight.note(text)
            else:
                print(f"warning: {text}", flush=True)

    def understanding(self, out: Path, model: str, model_inputs: dict) -> StagePlan:
        """``srum eval understanding`` (lmms-eval) on ``model``: one process, its own status."""
        from ..understanding.runner import UnderstandingConfig
        spec = self.cfg.understanding
        if spec.config is not None:
            data = self._stage_yaml("understanding")
        else:   # no YAML: the command's defaults plus the overrides
            root = config_root(self.config_path) if self.config_path else Path.cwd()
            data = resolve_paths(UnderstandingConfig, nest_dotted(spec.overrides), root)
        data = merge(data, {"model": {"path": model}, "out_dir": str(out)})
        if spec.tasks:
            data = merge(data, {"tasks": list(spec.tasks)})
        config = self._checked(UnderstandingConfig, data, "understanding")
        if self.preflight is not None:
            import importlib.util
            if importlib.util.find_spec("lmms_eval") is None:
                from ..understanding.runner import INSTALL_HINT
                self.preflight.problem(f"understanding: lmms-eval is not installed; {INSTALL_HINT}")
        steps = [("eval understanding", None)]
        plan = StagePlan("understanding", out, config, model_inputs, ["summary.json", "summary.md"],
                         self._launched_steps(steps, ["."]), status_dirs=["."])
        return self.execute(self._plan_commands(plan, steps))

    def _launch_plan(self, name: str, out: Path, config: dict, inputs: dict, outputs: list[str]) -> StagePlan:
        """A stage run as one ``srum <name>`` launch with its layout; it writes its status in ``out``."""
        steps = [(name, getattr(self.cfg, name).layout)]
        plan = StagePlan(name, out, config, inputs, outputs, self._launched_steps(steps, ["."]), status_dirs=["."])
        return self.execute(self._plan_commands(plan, steps))

    def report(self, rd: Path, round_index: int, generate: StagePlan, judge: StagePlan, train: StagePlan,
               evals: list[tuple[str, StagePlan]], understanding: list[tuple[str, StagePlan]] = ()) -> StagePlan:
        spec = self.cfg.report
        config = {"rewards": str(judge.dir / "rewards.jsonl"), "manifest": str(generate.dir / "manifest.jsonl"),
                  "metrics": str(train.dir / "metrics.jsonl"), "train_config": str(train.dir / "config.yaml"),
                  "evals": [[label, str(p.dir)] for label, p in evals], **to_dict(spec)}
        if understanding:   # only then: an existing run's report config (and hash) stays the same
            config["understanding"] = [[label, str(p.dir)] for label, p in understanding]
        inputs = {p.label: self._run_id(p) for p in (generate, judge, train)}
        inputs.update({p.label: self._run_id(p) for _, p in [*evals, *understanding]})
        title = f"SRUM run {self.run_dir.resolve().name}, round {round_index}"
        plan = StagePlan("report", rd / "report", config, inputs, ["report.html"],
                         lambda plan: write_round_report(plan.dir, config, title))
        return self.execute(plan)

    # ------------------------------------------------------------------ the loop
    def prepare(self) -> None:
        if self.dry_run:
            return
        self.run_dir.mkdir(parents=True, exist_ok=True)
        base = Path(self.cfg.model.path)
        if self.cfg.model.init_tiny and not (base / "llm_config.json").exists():
            from ..models.bagel import write_tiny_checkpoint
            write_tiny_checkpoint(base, seed=self.cfg.model.tiny_seed)
            print(f"[setup] wrote a random tiny Bagel to {base} (random weights: a smoke run, not the method)")
        if self.cfg.eval.enabled and self.cfg.eval.init_tiny_judge:
            judge_path = Path(((self._stage_yaml("eval").get("judge") or {}).get("model")) or "")
            if str(judge_path) and not (judge_path / "config.json").exists():
                from ..judge.tiny_qwen_vl import write_tiny_qwen_vl
                write_tiny_qwen_vl(judge_path)
                print(f"[setup] wrote a random tiny Qwen2.5-VL judge to {judge_path}")
        resolved = yaml.safe_dump(to_dict(self.cfg), sort_keys=False)
        path = self.run_dir / "pipeline.yaml"
        if not path.is_file() or path.read_text() != resolved:   # a rerun with the same config touches nothing
            atomic_write_text(path, resolved)

    def run(self) -> Path | None:
        cfg = self.cfg
        started = time.time()
        self.prepare()
        model, model_inputs = cfg.model.path, {"model": cfg.model.path}
        if self.preflight is not None and not cfg.model.init_tiny:
            g = min(getattr(cfg, n).layout.gpus_per_process for n in ("generate", "propose", "judge", "eval"))
            self.preflight.model("model.path (the starting model)", cfg.model.path, gpus_per_process=g)
        evals: list[tuple[str, StagePlan]] = []
        if cfg.eval.enabled and cfg.eval.baseline:
            evals += self.evaluations(self.run_dir / "baseline", model, model_inputs, "base")
        understood: list[tuple[str, StagePlan]] = []   # lmms-eval understanding benchmarks
        if cfg.understanding.enabled and cfg.understanding.baseline:
            understood.append(("base", self.understanding(self.run_dir / "baseline" / "understanding", model,
                                                          model_inputs)))
        report = None
        for r in range(1, cfg.rounds + 1):
            rd = self.run_dir / f"round-{r:02d}"
            print(f"== round {r}/{cfg.rounds}: starting from {model}", flush=True)
            generate = self.generate(rd, model, model_inputs, r)
            propose = self.propose(rd, model, generate)
            judge = self.judge(rd, model, propose)
            train = self.train(rd, model, judge)
            export = self.export(rd, model, train)
            model, model_inputs = str(export.dir), {export.label: self._run_id(export)}
            if cfg.eval.enabled and (cfg.eval.every_round or r == cfg.rounds):
                evals += self.evaluations(rd, model, model_inputs, f"round {r}")
            if cfg.understanding.enabled and (cfg.understanding.every_round or r == cfg.rounds):
                understood.append((f"round {r}", self.understanding(rd / "understanding", model, model_inputs)))
            if cfg.report.enabled:
                report = self.report(rd, r, generate, judge, train, evals, understood).dir / "report.html"
        if self.dry_run:
            self.preflight.check_versions()
            self.preflight.check_gpus()
            return None
        self.write_summary(time.time() - started)
        return report

    def write_summary(self, seconds: float) -> None:
        """``timing.json`` and ``index.html`` (links to each round's report) in the run directory."""
        atomic_write_text(self.run_dir / "timing.json",
                          json.dumps({"seconds": round(seconds, 1), "stages": self.timing}, indent=2) + "\n")
        rows = []
        for stage in self.timing:
            marker = state.read_marker(self.run_dir / stage["stage"]) or {}
            rows.append(f"<tr><td>{html.escape(stage['stage'])}</td><td>{html.escape(marker.get('status', ''))}</td>"
                        f"<td>{marker.get('seconds', '')}</td><td>{stage['action']}</td></tr>")
        links = [f'<li><a href="{html.escape(p.relative_to(self.run_dir).as_posix())}">'
                 f'{html.escape(p.parent.parent.name)}</a></li>'
                 for p in sorted(self.run_dir.glob("round-*/report/report.html"))]
        page = ("<!doctype html><meta charset='utf-8'><title>SRUM run</title>"
                f"<h1>SRUM run {html.escape(self.run_dir.resolve().name)}</h1><h2>Reports</h2><ul>{''.join(links)}</ul>"
                "<h2>Stages</h2><table border=1 cellpadding=4><tr><th>stage</th><th>status</th>"
                f"<th>seconds (all attempts)</th><th>this run</th></tr>{''.join(rows)}</table>")
        atomic_write_text(self.run_dir / "index.html", page)
        for stage in self.timing:
            print(f"  {stage['stage']:<24} {stage['action']:<8} {stage['seconds']:>8.1f}s")


def stage_status(plan: StagePlan, returncode: int | None = None) -> tuple[str, str | None]:
    """(status, reason) of a stage after a run: what its commands wrote in ``status.json``
    (its worst step's), never torchrun's exit code, which says "1" for a crashed rank and
    for a few failed items alike. No status written means the stage did not end on its
    own terms (killed, crashed): failed. Plain steps (export, report) go by their code."""
    if plan.status_dirs is None:
        if returncode == 0:
            return "complete", None
        return "failed", f"exit code {returncode}"
    found, reasons = [], []
    for sub in plan.status_dirs:
        record = read_status(plan.dir / sub)
        where = plan.dir / sub
        if record is None:
            found.append("failed")
            reasons.append(f"{where} has no status.json: the stage was killed or crashed before it could write one"
                           + (f" (exit code {returncode})" if returncode is not None else ""))
            break
        found.append(record["status"])
        if record.get("reason"):
            reasons.append(f"{where.name if sub != '.' else plan.name}: {record['reason']}")
    return worst(found), "; ".join(reasons) or None


def eval_config_class(benchmark: str):
    """The config dataclass of ``srum eval <benchmark>`` (the pipeline's ``eval.benchmark``)."""
    if benchmark == "compbench":
        from ..evaluation.compbench import CompBenchConfig
        return CompBenchConfig
    if benchmark == "t2i-reasonbench":
        from ..evaluation.reasonbench import ReasonBenchConfig
        return ReasonBenchConfig
    if benchmark == "wise":
        from ..evaluation.wise import WiseConfig
        return WiseConfig
    if benchmark == "miniworld":
        from ..miniworld.evaluation import MiniWorldEvalConfig
        return MiniWorldEvalConfig
    raise ConfigError(f"eval.benchmark: unknown benchmark {benchmark!r} (compbench, t2i-reasonbench, wise or "
                      "miniworld)")


def write_round_report(out: Path, config: dict, title: str) -> int:
    """One round's HTML report: its images, regions, scores and reward maps, its loss
    curves, and the evaluation table of every model evaluated so far."""
    from ..evaluation.summary import compare_runs
    from ..rewards.raster import RewardMapConfig
    from ..visualize.cli import reward_settings_from_train_config
    from ..visualize.report import render_report

    fields, missing = reward_settings_from_train_config(config["train_config"])
    if config.get("reward_mode"):
        fields["mode"] = config["reward_mode"]
    eval_summary = eval_chart = None
    evals = config["evals"]
    if len(evals) >= 2:
        compare_runs([p for _, p in evals], out / "compare", [label for label, _ in evals])
        eval_summary, eval_chart = out / "compare" / "compare.md", out / "compare" / "compare.png"
    elif evals:
        eval_summary = Path(evals[0][1]) / "summary" / "summary.md"
        eval_chart = Path(evals[0][1]) / "summary" / "scores.png"
    if config.get("understanding"):
        eval_summary = understanding_beside(out, eval_summary, config["understanding"])
    figures = []
    # the picture grid compares models drawing the same way: the direct runs (or else the CoT ones)
    same_mode = [(label, p) for label, p in evals if not label.endswith(COT_SUFFIX)] or evals
    if len(same_mode) >= 2 and config.get("grid_rows", 0) > 0:
        from ..visualize.grid import eval_grid
        grid = eval_grid([(label, p) for label, p in same_mode], out / "compare" / "grid.png",
                         limit=config["grid_rows"])
        c = grid["changed"]
        figures.append((f"Pictures side by side: {', '.join(grid['columns'])}",
                        grid["path"], f"{grid['rows']} prompts, the same prompts and seeds in every column. Over all "
                        f"evaluation images, {grid['columns'][-1]} vs {grid['columns'][0]}: {c['better']} better, "
                        f"{c['worse']} worse, {c['same']} the same score."))
    metrics = [config["metrics"]] if Path(config["metrics"]).exists() else []
    render_report(config["rewards"], out, manifest=config["manifest"], metrics=metrics, eval_summary=eval_summary,
                  eval_chart=eval_chart if eval_chart and Path(eval_chart).exists() else None,
                  reward_config=RewardMapConfig(**fields), missing_global=missing, limit=config.get("limit"),
                  title=title, progress=False, figures=figures)
    return 0


def understanding_beside(out: Path, eval_summary: Path | None, runs: list[list[str]]) -> Path:
    """The generation table (if any) with the understanding table (lmms-eval, base and
    rounds side by side with deltas and the paper's rows) under it, as one markdown file."""
    from ..evaluation.summary import compare_runs
    compare_runs([p for _, p in runs], out / "understanding", [label for label, _ in runs])
    parts = [eval_summary.read_text(encoding="utf-8")] if eval_summary is not None and eval_summary.exists() else []
    parts.append((out / "understanding" / "compare.md").read_text(encoding="utf-8"))
    path = out / "evaluation.md"
    atomic_write_text(path, "\n".join(parts))
    return path


def run_pipeline(cfg: PipelineConfig, config_path: str | None = None, dry_run: bool = False) -> Path | None:
    pipeline = Pipeline(cfg, config_path, dry_run)
    if dry_run:
        return pipeline.run()
    # a second pipeline on the same run directory would move a live run's stage folders
    # to stale/ when it sees other settings: one at a time (each stage locks its own too)
    with DirectoryLock.acquire(pipeline.run_dir, "srum pipeline"):
        return pipeline.run()
