# SPDX-License-Identifier: Apache-2.0
"""The ``srum train`` configuration: one dataclass tree, loaded with
:func:`srum.config.load_config` from ``configs/train/<name>.yaml`` plus dotted overrides.

Every field is documented in TRAIN.md; the short form is in each class docstring.
Cross-field rules (token budgets, sharding sizes, the VAE switch) are checked in
``__post_init__`` so a bad value fails before any model is loaded.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..config import MODEL, PATH, ConfigError, load_config
from ..models.bagel.language_model import check_compile_backend
from ..rewards.raster import RewardMapConfig


@dataclass
class ModelConfig:
    """path: checkpoint directory in the BAGEL-7B-MoT layout or a hub repo id.
    weights: which weight file of it to start from ("auto" = ema.safetensors first)."""

    path: str = field(metadata=MODEL)
    weights: Literal["auto", "ema", "model"] = "auto"


@dataclass
class FreezeConfig:
    """Which parts receive no gradient (their parameters stay out of the optimizer).

    vit: the SigLIP tower and its connector; only vqa samples feed it (false: they train
        it). vae: must stay true (the autoencoder runs outside the sharded model, frozen).
        llm: the whole language model (both experts, embeddings, lm_head): only the
        generation heads (time embedder, vae2llm, llm2vae) train. und_expert: the
        understanding expert of every layer plus embeddings, final norm and lm_head, i.e.
        the text path; the generation expert still trains. The lm_head trains only when
        ``data.samples`` is given (vqa/cot cross-entropy) and neither llm nor und_expert
        is frozen; reward records alone compute no logits.
    params: further parameters kept fixed, as ``fnmatch`` patterns over parameter names
        (e.g. ``vit_model.vision_model.embeddings.patch_embedding.*``); each pattern must
        match at least one parameter, so a typo is an error, not a silent no-op."""

    vit: bool = True
    vae: bool = True
    llm: bool = False
    und_expert: bool = False
    params: list[str] = field(default_factory=list)

    def __post_init__(self):
        if not self.vae:
            raise ValueError("freeze.vae=false is not supported: the VAE encodes training images "
                             "outside the sharded model and is never optimised")


@dataclass
class DataConfig:
    """Reward records and sample rows, image transform, token packing and per-sample randomness.

    rewards: reward JSONL file(s) (our srum.reward.v1 schema or the reference format).
    samples: JSONL file(s) of t2i / vqa / cot rows (see srum.training.samples and TRAIN.md
        "Data modes"). At least one of rewards / samples must be given; a run may mix them.
    max_image_size / min_image_size / image_stride: the VAE-path resize (Bagel: 1024/512/16).
    expected_num_tokens: a pack is closed once it holds at least this many tokens.
    max_num_tokens: hard cap on one pack (one rank's micro-batch).
    max_num_tokens_per_sample: cap on one sample; longer samples are an error
        (oversize="error") or are skipped and reported at start (oversize="skip").
    seed: shuffling and per-sample noise seed.
    text_dropout_prob: probability of training a sample without its prompt (keeps the
        text-unconditional branch that CFG needs; Bagel's default 0.1).
    vae_sample: draw the latent from the VAE posterior (Bagel trains this way) instead of
        taking its mean.
    resample_noise_each_epoch: draw new t, noise and text dropout every epoch (true), or
        give each sample the same draws every epoch (false: a fixed batch, for tests).
    num_workers: threads that read and transform the next packs' images ahead of time.
    """

    rewards: list[str] = field(default_factory=list, metadata=PATH)
    samples: list[str] = field(default_factory=list, metadata=PATH)
    max_image_size: int = 1024
    min_image_size: int = 512
    image_stride: int = 16
    expected_num_tokens: int = 8192
    max_num_tokens: int = 9216
    max_num_tokens_per_sample: int = 8192
    oversize: Literal["error", "skip"] = "error"
    seed: int = 42
    text_dropout_prob: float = 0.1
    vae_sample: bool = True
    resample_noise_each_epoch: bool = True
    num_workers: int = 2

    def __post_init__(self):
        if not self.rewards and not self.samples:
            raise ValueError("no training data: give data.rewards (reward JSONL files) and/or data.samples "
                             "(t2i/vqa/cot JSONL files)")
        if not 0 < self.expected_num_tokens <= self.max_num_tokens:
            raise ValueError(f"need 0 < data.expected_num_tokens ({self.expected_num_tokens}) "
                             f"<= data.max_num_tokens ({self.max_num_tokens})")
        if not 0 < self.max_num_tokens_per_sample <= self.max_num_tokens:
            raise ValueError(f"need 0 < data.max_num_tokens_per_sample ({self.max_num_tokens_per_sample}) "
                             f"<= data.max_num_tokens ({self.max_num_tokens})")
        if not 0.0 <= self.text_dropout_prob < 1.0:
            raise ValueError(f"data.text_dropout_prob must be in [0, 1), got {self.text_dropout_prob}")
        if self.num_workers < 0:
            raise ValueError(f"data.num_workers must be >= 0, got {self.num_workers}")


@dataclass
class RewardsConfig:
    """enabled: false trains plain flow matching (every weight 1, lambda_c 0 unless set).
    missing_global: a record whose global judgment failed is skipped at start ("skip",
        counted and logged) or trained with g = 0 ("neutral").
    drop_zero_global: leave out records whose global score is exactly 0 (counted in
        data_report.json), as the reference's formatter does: its parser turns a failed
        judgment into 0.0, so it drops every g = 0 row. Ours tells a failure from a genuine
        neutral 0.0, so by default (false) a 0.0 is trained like any other score.
    map: how a record becomes the per-token weight map (see RewardMapConfig)."""

    enabled: bool = True
    missing_global: Literal["skip", "neutral"] = "skip"
    drop_zero_global: bool = False
    map: RewardMapConfig = field(default_factory=RewardMapConfig)


@dataclass
class LossConfig:
    """lambda_c: weight of the constraint term (None = 0.5 with reward records and rewards
    enabled, else 0.0); it applies to reward records only.
    timestep_shift: t' = s*t / (1 + (s-1)*t) applied to t = sigmoid(n) (SRUM: 1.0).
    mse_weight / ce_weight: total = mse_weight * (flow-matching loss per latent token) +
    ce_weight * (cross-entropy per text-loss token), each normalised by its own global count.
    repel: what a negative reward weight (signed maps) does, kept bounded: "saturate"
        (default: w * repel_scale * (1 - exp(-mse / repel_scale)), the literal w * mse near
        the sample, levelling off at w * repel_scale) or "clamp" (weights below
        -repel_floor * lambda_c are raised to it, so w + lambda_c > 0). The literal w * mse
        has no minimum when w < -lambda_c and is not offered (see srum.training.loss).
    repel_scale: tau of "saturate", in per-token mse units (> 0).
    repel_floor: "clamp" keeps w >= -repel_floor * lambda_c; in [0, 1)."""

    lambda_c: float | None = None
    timestep_shift: float = 1.0
    mse_weight: float = 1.0
    ce_weight: float = 1.0
    repel: Literal["saturate", "clamp"] = "saturate"
    repel_scale: float = 1.0
    repel_floor: float = 0.5

    def __post_init__(self):
        if self.lambda_c is not None and self.lambda_c < 0:
            raise ValueError(f"loss.lambda_c must be >= 0, got {self.lambda_c}")
        if self.mse_weight < 0 or self.ce_weight < 0:
            raise ValueError(f"loss.mse_weight and loss.ce_weight must be >= 0, got {self.mse_weight}, "
                             f"{self.ce_weight}")
        if self.timestep_shift <= 0:
            raise ValueError(f"loss.timestep_shift must be > 0, got {self.timestep_shift}")
        if not self.repel_scale > 0:
            raise ValueError(f"loss.repel_scale must be > 0, got {self.repel_scale}")
        if not 0.0 <= self.repel_floor < 1.0:
            raise ValueError(f"loss.repel_floor must be in [0, 1), got {self.repel_floor}")

    def repel_rule(self, lambda_c: float):
        """The :class:`srum.training.loss.RepelRule` of these settings at constraint weight
        ``lambda_c`` (the one in effect)."""
        from .loss import RepelRule
        if self.repel == "clamp":
            return RepelRule("clamp", floor=-self.repel_floor * lambda_c)
        return RepelRule("saturate", scale=self.repel_scale)


@dataclass
class OptimConfig:
    """AdamW and the learning-rate schedule (linear warmup, then constant or cosine)."""

    lr: float = 2e-5
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = 1e-15
    weight_decay: float = 0.0
    warmup_steps: int = 100
    schedule: Literal["constant", "cosine"] = "constant"
    min_lr: float = 1e-7
    grad_clip: float = 1.0

    def __post_init__(self):
        if self.lr <= 0 or self.warmup_steps < 0 or self.grad_clip <= 0:
            raise ValueError("optim: lr and grad_clip must be > 0 and warmup_steps >= 0")


@dataclass
class TrainLoopConfig:
    """total_steps: optimizer steps to run. grad_accum: packs per rank per step.
    seed: seed of the global RNGs (the data has its own, data.seed).
    max_consecutive_nonfinite: stop after this many skipped steps in a row."""

    total_steps: int
    grad_accum: int = 1
    seed: int = 4396
    max_consecutive_nonfinite: int = 5

    def __post_init__(self):
        if self.total_steps < 1 or self.grad_accum < 1 or self.max_consecutive_nonfinite < 1:
            raise ValueError("train: total_steps, grad_accum and max_consecutive_nonfinite must be >= 1")


@dataclass
class ParallelConfig:
    """sharding: "full" shards over all ranks; "hybrid" shards inside groups of
    shard_size ranks (default: the ranks of one node) and replicates across groups.
    precision: "auto" = bf16 compute with fp32 master weights and gradient reduction on
    CUDA, fp32 on CPU. activation_checkpointing: recompute each decoder layer in
    backward (use_reentrant=False). vae_batch_size: at most this many same-size images
    per VAE encode call (a speed/memory trade; results do not depend on it).
    compile: torch.compile every decoder layer (off by default; worth it on GPU, where
    the first steps pay the compile time). compile_backend: the torch.compile backend.
    timeout_minutes: how long a collective waits for the slowest rank (NCCL/gloo); null =
    ``$SRUM_DIST_TIMEOUT_MINUTES`` or 120. NCCL's own 10 minutes is shorter than a
    checkpoint save of the 7B recipe (~167 GB) or rank 0 fetching the weights."""

    sharding: Literal["full", "hybrid"] = "full"
    shard_size: int | None = None
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    activation_checkpointing: bool = True
    reshard_after_forward: bool = True
    vae_batch_size: int = 8
    compile: bool = False
    compile_backend: str = "inductor"
    timeout_minutes: float | None = None

    def __post_init__(self):
        if self.timeout_minutes is not None and not self.timeout_minutes > 0:
            raise ValueError(f"parallel.timeout_minutes must be > 0, got {self.timeout_minutes}")
        if self.shard_size is not None and self.shard_size < 1:
            raise ValueError(f"parallel.shard_size must be >= 1, got {self.shard_size}")
        if self.vae_batch_size < 1:
            raise ValueError(f"parallel.vae_batch_size must be >= 1, got {self.vae_batch_size}")
        if self.compile:
            check_compile_backend(self.compile_backend, "parallel.compile_backend")


@dataclass
class EMAConfig:
    """enabled: keep an exponential moving average of the trainable (sharded) parameters."""

    enabled: bool = False
    decay: float = 0.9999

    def __post_init__(self):
        if not 0.0 <= self.decay < 1.0:
            raise ValueError(f"ema.decay must be in [0, 1), got {self.decay}")


@dataclass
class CheckpointConfig:
    """every_steps: save every N steps (0 = only at the end); always saved at the end.
    keep_last: how many step-* checkpoints to keep (the newest ones).
    resume: "auto" = continue from the newest whole checkpoint under output_dir/checkpoints
    when there is one (refused if a result-changing setting differs from it); "never" =
    start at step 0 (refused if checkpoints exist); "fresh" = move the earlier outputs of
    output_dir aside into replaced-<time>/ and start at step 0; or a path to one step-*
    directory (see :mod:`srum.training.resume`)."""

    every_steps: int = 0
    keep_last: int = 2
    resume: str = "auto"

    def __post_init__(self):
        if self.every_steps < 0 or self.keep_last < 1:
            raise ValueError("checkpoint: every_steps must be >= 0 and keep_last >= 1")


@dataclass
class LoggingConfig:
    """every_steps: console/TensorBoard/wandb period (metrics.jsonl gets every step).
    wandb: log to Weights & Biases too (the API key comes from WANDB_API_KEY only)."""

    every_steps: int = 1
    tensorboard: bool = True
    progress_bar: bool = True
    wandb: bool = False
    wandb_project: str = "srum"
    run_name: str | None = None


@dataclass
class DebugConfig:
    """Fault injection for the tests of the fault handling; leave empty in real runs.
    nonfinite_steps: step numbers (1-based, as logged) whose loss is replaced by NaN.
    exit_after_step: hard-exit (as a kill would) right after this step and its checkpoint."""

    nonfinite_steps: list[int] = field(default_factory=list)
    exit_after_step: int | None = None


@dataclass
class TrainConfig:
    output_dir: str = field(metadata=PATH)
    model: ModelConfig
    data: DataConfig
    train: TrainLoopConfig
    rewards: RewardsConfig = field(default_factory=RewardsConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    freeze: FreezeConfig = field(default_factory=FreezeConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    debug: DebugConfig = field(default_factory=DebugConfig)

    @property
    def lambda_c(self) -> float:
        """The constraint weight in effect (resolves loss.lambda_c = None)."""
        if self.loss.lambda_c is not None:
            return self.loss.lambda_c
        return 0.5 if self.rewards.enabled and self.data.rewards else 0.0

    @property
    def repel_rule(self):
        """The bounded rule negative reward weights train with (see srum.training.loss)."""
        return self.loss.repel_rule(self.lambda_c)

    @property
    def trains_lm_head(self) -> bool:
        """The lm_head is trainable: sample rows may carry cross-entropy and the text path is not frozen."""
        return bool(self.data.samples) and not (self.freeze.llm or self.freeze.und_expert)


def load_train_config(path, overrides=()) -> TrainConfig:
    """YAML + dotted overrides -> :class:`TrainConfig` (raises :class:`ConfigError`)."""
    return load_config(TrainConfig, path, overrides)


__all__ = ["TrainConfig", "ModelConfig", "FreezeConfig", "DataConfig", "RewardsConfig", "LossConfig",
           "OptimConfig", "TrainLoopConfig", "ParallelConfig", "EMAConfig", "CheckpointConfig",
           "LoggingConfig", "DebugConfig", "load_train_config", "ConfigError"]
