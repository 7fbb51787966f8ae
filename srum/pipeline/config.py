# SPDX-License-Identifier: Apache-2.0
"""The ``srum pipeline`` configuration (``configs/pipeline/<name>.yaml``).

A pipeline config names the starting model, the datasets, how processes are launched,
and for each stage the stage's own YAML plus overrides. The pipeline fills in what
links the stages (model paths, input files, output folders); everything else comes
from the stage configs, so a stage behaves exactly as when run by hand.

``{run_dir}`` in any string value expands to the run directory. Every field is
documented in TRAIN.md ("The pipeline").
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from ..config import MODEL, PATH, ConfigError, load_config

JUDGED_BENCHMARKS = ("compbench", "t2i-reasonbench", "wise")   # eval.benchmark values scored by an MLLM judge
STAGES = ("generate", "propose", "judge", "train", "export", "eval", "report")
LAUNCHED = ("generate", "propose", "judge", "train", "eval")   # run under torchrun when several processes


@dataclass
class BaseModelConfig:
    """path: the model round 1 starts from (a BAGEL-7B-MoT directory or a hub repo id).
    init_tiny: write a random tiny Bagel at ``path`` when it does not exist (the demo).
    tiny_seed: its weight seed."""

    path: str = field(metadata=MODEL)
    init_tiny: bool = False
    tiny_seed: int = 0


@dataclass
class DataSpec:
    """Datasets by registry name (``srum datasets list``).

    registry: registry YAML (default: ``$SRUM_DATASETS`` or ``data/datasets.yaml``).
    generate: prompt datasets for the generate stage of every round.
    eval: prompt datasets for the evaluation (empty: the eval config's own ``prompts``).
    extra_rewards: reward datasets trained on in every round besides the round's own."""

    generate: list[str]
    registry: str | None = field(default=None, metadata=PATH)
    eval: list[str] = field(default_factory=list)
    extra_rewards: list[str] = field(default_factory=list)


@dataclass
class LauncherConfig:
    """How launched stages (generate, propose, judge, train, eval) start.

    nproc_per_node: the GPUs of a node (one process each unless a stage's layout says
        otherwise); 1 with no other setting runs ``python -m srum`` directly, more runs
        ``torchrun --standalone``.
    torchrun_args: extra torchrun arguments; giving ``--nnodes``/``--rdzv-*`` replaces
        ``--standalone`` (multi-node, see CLUSTER.md).
    prefix: command put in front, e.g. ``[srun, --nodes=4, --ntasks-per-node=1]``.
    python: interpreter with srum installed (default: the one running the pipeline).
    env: extra environment variables for every stage.
    dist_timeout_minutes: how long a collective (NCCL/gloo) of any stage waits for the
        slowest rank (``$SRUM_DIST_TIMEOUT_MINUTES``; a training config's
        ``parallel.timeout_minutes`` wins for training).
    rank_logs: every process of a launched stage also writes ``<stage>/logs/rank-N.log``
        (lines prefixed ``[rank N]``), and torchrun writes each failed worker's
        traceback to an error file under ``<stage>/logs/torchrun/``."""

    nproc_per_node: int = 1
    torchrun_args: list[str] = field(default_factory=list)
    prefix: list[str] = field(default_factory=list)
    python: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    dist_timeout_minutes: float = 120.0
    rank_logs: bool = True

    def __post_init__(self):
        if self.nproc_per_node < 1:
            raise ValueError(f"nproc_per_node must be >= 1, got {self.nproc_per_node}")
        if not self.dist_timeout_minutes > 0:
            raise ValueError(f"dist_timeout_minutes must be > 0, got {self.dist_timeout_minutes}")


@dataclass
class Layout:
    """Where one launched step's processes go. gpus_per_process: GPUs each process spans
    (its model is spread over them with a device map; the process takes the visible GPUs
    ``[LOCAL_RANK*g, (LOCAL_RANK+1)*g)``). nproc_per_node: processes per node; null =
    ``launcher.nproc_per_node // gpus_per_process`` (every GPU busy)."""

    gpus_per_process: int = 1
    nproc_per_node: int | None = None

    def __post_init__(self):
        if self.gpus_per_process < 1 or (self.nproc_per_node is not None and self.nproc_per_node < 1):
            raise ValueError("layout: gpus_per_process and nproc_per_node must be >= 1")

    def processes(self, launcher: LauncherConfig) -> int:
        """Processes per node of this step."""
        return self.nproc_per_node or max(1, launcher.nproc_per_node // self.gpus_per_process)


@dataclass
class StageSpec:
    """config: the stage's YAML (fields in TRAIN.md / EVAL.md). overrides: a mapping merged
    on top of it (nested or dotted keys, as on the command line). layout: its processes
    per node and GPUs per process (CLUSTER.md, "Layout")."""

    config: str | None = field(default=None, metadata=PATH)
    overrides: dict[str, Any] = field(default_factory=dict)
    layout: Layout = field(default_factory=Layout)


@dataclass
class ExportSpec:
    """How each round's checkpoint becomes the next round's model (``srum export checkpoint``)."""

    weights: Literal["auto", "ema", "model"] = "auto"
    dtype: Literal["bfloat16", "float32", "float16"] = "bfloat16"
    max_shard_gb: float | None = None   # None: one ema.safetensors (Bagel's own scripts read only that)


@dataclass
class EvalSpec(StageSpec):
    """enabled: evaluate at all. benchmark: which evaluation runs, with ``config`` as its
    YAML: ``compbench``, ``t2i-reasonbench`` or ``wise`` (``srum eval <benchmark>``, an
    MLLM judge: three launches, generate with ``layout``, score with ``judge_layout``,
    summarize) or ``miniworld`` (``srum eval miniworld all``, the miniature world's exact
    oracle). Only compbench takes its prompts from ``data.eval``; the others read their own
    (the eval config's ``data_dir`` or ``prompts`` section), so ``data.eval`` must stay
    empty. baseline: also evaluate the starting model (the table's first row).
    every_round: evaluate each round's export (false: the last round only).
    init_tiny_judge: write a random tiny Qwen2.5-VL at the eval config's ``judge.model``
    when it does not exist (the demo; the MLLM-judged benchmarks only). modes: how every
    evaluated model draws, each its own run directory: ``direct`` (``<round>/eval``) and
    ``think`` (CoT: the plan in ``<think>``, then the image; ``<round>/eval-think``), the
    paper's Table 1 rows "Bagel" and "Bagel (CoT)"; the mode sets ``sampling.think``."""

    enabled: bool = True
    benchmark: Literal["compbench", "t2i-reasonbench", "wise", "miniworld"] = "compbench"
    baseline: bool = True
    every_round: bool = True
    init_tiny_judge: bool = False
    judge_layout: Layout = field(default_factory=Layout)   # the score step (the MLLM judge)
    modes: list[Literal["direct", "think"]] = field(default_factory=lambda: ["direct"])

    def __post_init__(self):
        if not self.modes or len(set(self.modes)) != len(self.modes):
            raise ValueError(f"eval.modes: give direct and/or think, each once; got {self.modes}")


@dataclass
class UnderstandingSpec(StageSpec):
    """The understanding benchmarks through lmms-eval (``srum eval understanding``; needs
    the ``understanding`` extra). enabled: run them (off by default). config: their YAML
    (e.g. ``configs/eval/understanding.yaml``; none: its defaults). tasks: lmms-eval task
    names (empty: the config's). baseline: also the starting model. every_round: each
    round's export (false: the last round only). The numbers go into each round's report
    next to the generation scores. One process; ``overrides: {model.device_map: auto}``
    spreads a 7B model over the visible GPUs."""

    enabled: bool = False
    tasks: list[str] = field(default_factory=list)
    baseline: bool = True
    every_round: bool = True


@dataclass
class ReportSpec:
    """enabled: write each round's HTML report. limit: image cards per report (None: all).
    reward_mode: the reward map drawn (default: the training config's ``rewards.map``).
    grid_rows: rows of the side-by-side picture grid of the evaluated models (base, round
    1, ...: same prompts, same seeds; 0: no grid)."""

    enabled: bool = True
    limit: int | None = 50
    reward_mode: Literal["official", "signed"] | None = None
    grid_rows: int = 24

    def __post_init__(self):
        if self.grid_rows < 0 or (self.limit is not None and self.limit < 0):
            raise ValueError("report.limit and report.grid_rows must be >= 0")


@dataclass
class ThinkPromptsSpec:
    """Think-mode system prompts for every stage of the pipeline (each as text or a file;
    None = the stage's own setting, else srum's built-in wording). ``generation``: the
    generate stage's and the evaluation's ``sampling.think_system_prompt``;
    ``understanding``: the self-judge's ``judge.think_system_prompt`` (backend self). A
    stage config that sets its own wins. The file is read when the stage is planned, so a
    changed text re-runs the stage. BAGEL-7B-MoT was trained with the wording in the Bagel
    repository's ``inferencer.py`` (``GEN_THINK_SYSTEM_PROMPT``, ``VLM_THINK_SYSTEM_PROMPT``)."""

    generation: str | None = None
    generation_file: str | None = None
    understanding: str | None = None
    understanding_file: str | None = None

    def __post_init__(self):
        for kind in ("generation", "understanding"):
            if getattr(self, kind) is not None and getattr(self, f"{kind}_file") is not None:
                raise ValueError(f"think_prompts: give {kind} or {kind}_file, not both")


@dataclass
class PipelineConfig:
    """run_dir: every stage's folder lives under it. rounds: self-iterations; round k+1
    starts from round k's exported model. seed_per_round: round k generates with the
    generate config's seed + k - 1, so rounds draw new candidates. allow_incomplete: stages
    whose items partly failed (exit code 1) still feed the next stage (true) or stop the
    run (false). keep_stale: outputs invalidated by a changed config or input are moved to
    ``<run_dir>/stale/`` (true) or deleted (false). datasets: registry entries added inline."""

    run_dir: str = field(metadata=PATH)
    model: BaseModelConfig
    data: DataSpec
    rounds: int = 1
    seed_per_round: bool = True
    allow_incomplete: bool = False
    keep_stale: bool = True
    datasets: dict[str, Any] = field(default_factory=dict)
    launcher: LauncherConfig = field(default_factory=LauncherConfig)
    generate: StageSpec = field(default_factory=StageSpec)
    propose: StageSpec = field(default_factory=StageSpec)
    judge: StageSpec = field(default_factory=StageSpec)
    train: StageSpec = field(default_factory=StageSpec)
    export: ExportSpec = field(default_factory=ExportSpec)
    eval: EvalSpec = field(default_factory=EvalSpec)
    understanding: UnderstandingSpec = field(default_factory=UnderstandingSpec)
    report: ReportSpec = field(default_factory=ReportSpec)
    think_prompts: ThinkPromptsSpec = field(default_factory=ThinkPromptsSpec)

    def __post_init__(self):
        if self.rounds < 1:
            raise ValueError(f"rounds must be >= 1, got {self.rounds}")
        if not self.data.generate:
            raise ValueError("data.generate: name at least one prompt dataset")
        for name in ("generate", "propose", "judge", "train"):
            if getattr(self, name).config is None:
                raise ValueError(f"{name}.config: give the stage's YAML (e.g. configs/data/{name}.yaml)")
        if self.eval.enabled and self.eval.config is None:
            raise ValueError("eval.config: give the evaluation YAML, or set eval.enabled: false")
        if self.eval.enabled and self.eval.benchmark != "compbench" and self.data.eval:
            own = ("prompts section" if self.eval.benchmark == "miniworld"
                   else "data_dir, the user's copy of the benchmark")
            raise ValueError(f"data.eval: the {self.eval.benchmark} evaluation takes its prompts from its own config "
                             f"(eval.config's {own}); leave data.eval empty")
        if self.eval.init_tiny_judge and self.eval.benchmark not in JUDGED_BENCHMARKS:
            raise ValueError(f"eval.init_tiny_judge: the {self.eval.benchmark} evaluation has no MLLM judge")
        if self.train.layout.gpus_per_process != 1:
            raise ValueError("train.layout.gpus_per_process: training shards with FSDP, one GPU per process")
        for name in ("generate", "propose", "judge", "train", "eval"):
            spec = getattr(self, name)
            layouts = [spec.layout] + ([self.eval.judge_layout] if name == "eval" else [])
            for layout in layouts:
                used = layout.processes(self.launcher) * layout.gpus_per_process
                if used > self.launcher.nproc_per_node and layout.gpus_per_process > 1:
                    raise ValueError(f"{name} layout: {layout.processes(self.launcher)} process(es) x "
                                     f"{layout.gpus_per_process} GPUs > launcher.nproc_per_node="
                                     f"{self.launcher.nproc_per_node} GPUs per node")


def _expand(value: Any, run_dir: str) -> Any:
    if isinstance(value, str):
        return value.replace("{run_dir}", run_dir)
    if isinstance(value, list):
        return [_expand(v, run_dir) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, run_dir) for k, v in value.items()}
    return value


def load_pipeline_config(path: str | None, overrides=()) -> PipelineConfig:
    """Read, override, check, and expand ``{run_dir}`` everywhere."""
    from ..config import build, to_dict
    cfg = load_config(PipelineConfig, path, overrides)
    if "{run_dir}" in cfg.run_dir:
        raise ConfigError(f"{path}: run_dir cannot contain {{run_dir}}")
    return build(PipelineConfig, _expand(to_dict(cfg), cfg.run_dir), where=str(path or ""))
