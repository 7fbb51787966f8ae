# SPDX-License-Identifier: Apache-2.0
"""The training data: reward records -> samples -> one packed sequence per micro-batch.

A text-to-image training sample has Bagel's layout, the same one inference builds with
the KV cache (``_prefill_text`` then the image block of ``generate_image``):

====================  =================================  ==========  ==============
segment               tokens                             attention   RoPE position
====================  =================================  ==========  ==============
prompt                ``<|im_start|> prompt <|im_end|>``  causal      0 .. n-1
noised image          ``<|vision_start|>`` h*w latents    noise       n (all tokens)
                      ``<|vision_end|>``
====================  =================================  ==========  ==============

With probability ``text_dropout_prob`` the prompt segment is left out and the image sits
at position 0, which is what the text-unconditional CFG branch sees at inference.

Everything random about a sample (text dropout, flow time, noise, the VAE posterior
draw) comes from a generator seeded by ``(data seed, epoch, sample index)``, so a sample
gets the same draws whichever rank or micro-batch it lands in, and a resumed run repeats
nothing and depends on no saved RNG state.
"""
from __future__ import annotations

import json
import os
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import PIL.Image
import torch

from ..models.bagel.masks import SegmentPlan, packed_attention_mask
from ..models.bagel.model import PackedBatch
from ..models.bagel.tokenizer import SpecialTokens, encode_text
from ..models.bagel.transforms import ImageTransform, flattened_position_ids, to_rgb
from ..records import carries_reward, read_records
from ..rewards.raster import RewardMapConfig, reward_weights
from .packing import DataPosition, Pack, StepPlanner

__all__ = ["SampleInfo", "TrainSample", "RewardDataset", "build_dataset", "PackedInputs", "layout_pack",
           "to_packed_batch", "StepData", "StepLoader", "sample_seed", "shifted_timestep"]

# one text segment's framing adds bos + eos; one image block adds vision_start + vision_end
IMAGE_FRAME_TOKENS = 2


def sample_seed(data_seed: int, epoch: int, index: int) -> int:
    """A 63-bit seed for sample ``index`` in ``epoch`` (stable across platforms)."""
    state = np.random.SeedSequence([int(data_seed), int(epoch), int(index)]).generate_state(1, dtype=np.uint64)
    return int(state[0] >> np.uint64(1))


def shifted_timestep(n: torch.Tensor, shift: float) -> torch.Tensor:
    """Bagel's training time: t = sigmoid(n), then t' = s*t / (1 + (s-1)*t)."""
    t = torch.sigmoid(n)
    return shift * t / (1 + (shift - 1) * t)


@dataclass
class SampleInfo:
    """What the packer needs to know about a record without opening its image."""

    record: dict
    text_ids: list[int]        # framed prompt: [bos] + ids + [eos]
    size: tuple[int, int]      # (width, height) after the training resize
    grid: tuple[int, int]      # (h, w) latent tokens

    @property
    def num_tokens(self) -> int:
        """Upper bound (the prompt counted even when it will be dropped)."""
        return len(self.text_ids) + self.grid[0] * self.grid[1] + IMAGE_FRAME_TOKENS


@dataclass
class TrainSample:
    """One loaded sample, everything on the CPU.

    image / reference: [3, H, W] in [-1, 1] (reference None = the constraint image is the
    sample itself). weights: [h*w] reward weight per latent token, row-major.
    noise: [h*w, p*p*z] the flow-matching noise eps; timestep: t in (0, 1)."""

    index: int
    image_id: str
    image: torch.Tensor
    reference: torch.Tensor | None
    text_ids: list[int]
    grid: tuple[int, int]
    weights: torch.Tensor
    reward_stats: dict
    timestep: float
    noise: torch.Tensor
    vae_seed: int


@dataclass
class DatasetReport:
    """Counts of what the dataset build kept and left out (logged at start, written to
    ``data_report.json``): nothing is dropped without being reported here."""

    files: list[str]
    records_read: int = 0
    kept: int = 0
    bad_lines: list[str] = field(default_factory=list)
    skipped_missing_global: list[str] = field(default_factory=list)
    skipped_oversize: list[str] = field(default_factory=list)
    skipped_duplicate: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"files": self.files, "records_read": self.records_read, "kept": self.kept,
                "bad_lines": self.bad_lines, "skipped_missing_global": self.skipped_missing_global,
                "skipped_oversize": self.skipped_oversize, "skipped_duplicate": self.skipped_duplicate}

    def summary(self) -> str:
        return (f"{self.kept} samples from {self.records_read} records in {len(self.files)} file(s); "
                f"left out: {len(self.bad_lines)} bad line(s), {len(self.skipped_missing_global)} with a failed "
                f"global judgment, {len(self.skipped_oversize)} over the per-sample token cap, "
                f"{len(self.skipped_duplicate)} duplicate image id(s)")


class RewardDataset:
    """Indexable reward samples. ``infos[i]`` is cheap metadata; :meth:`load` reads the
    image(s) and draws the sample's randomness for an epoch."""

    def __init__(self, infos: list[SampleInfo], special: SpecialTokens, transform: ImageTransform, *,
                 latent_dim: int, rewards_enabled: bool, map_config: RewardMapConfig,
                 missing_global: str, text_dropout_prob: float, timestep_shift: float, seed: int,
                 resample_noise_each_epoch: bool = True):
        self.infos = infos
        self.special = special
        self.transform = transform
        self.latent_dim = latent_dim
        self.rewards_enabled = rewards_enabled
        self.map_config = map_config
        self.missing_global = missing_global
        self.text_dropout_prob = text_dropout_prob
        self.timestep_shift = timestep_shift
        self.seed = seed
        self.resample_noise_each_epoch = resample_noise_each_epoch

    def __len__(self) -> int:
        return len(self.infos)

    @property
    def lengths(self) -> list[int]:
        return [info.num_tokens for info in self.infos]

    def _read_image(self, path: str, info: SampleInfo, what: str) -> torch.Tensor:
        rec = info.record
        try:
            with PIL.Image.open(path) as image:
                image.load()
                rgb = to_rgb(image)
        except (OSError, ValueError) as err:
            raise ValueError(f"{path}: cannot read the {what} of record {rec['image_id']!r}: {err}") from err
        if rgb.size != (rec["width"], rec["height"]):
            raise ValueError(f"{path}: {what} of record {rec['image_id']!r} is {rgb.size[0]}x{rgb.size[1]} but the "
                             f"record says {rec['width']}x{rec['height']} (its boxes are in those pixels)")
        return self.transform(rgb)

    def load(self, index: int, epoch: int) -> TrainSample:
        info = self.infos[index]
        rec = info.record
        image = self._read_image(rec["image_path"], info, "image")
        reference = None
        ref_path = rec.get("reference_image_path")
        if ref_path and os.path.abspath(ref_path) != os.path.abspath(rec["image_path"]):
            reference = self._read_image(ref_path, info, "reference image")
        if tuple(image.shape[1:]) != (info.size[1], info.size[0]):
            raise AssertionError(f"{rec['image_path']}: transform gave {tuple(image.shape[1:])}, planned {info.size}")
        h, w = info.grid
        if self.rewards_enabled:
            weights, stats = reward_weights(rec, (h, w), self.map_config, missing_global=self.missing_global)
            weights = weights.reshape(-1)
        else:
            weights, stats = torch.ones(h * w), {}

        gen = torch.Generator().manual_seed(
            sample_seed(self.seed, epoch if self.resample_noise_each_epoch else 0, index))
        drop_text = bool(torch.rand((), generator=gen) < self.text_dropout_prob)
        n = torch.randn((), generator=gen)
        noise = torch.randn((h * w, self.latent_dim), generator=gen)
        vae_seed = int(torch.randint(0, 2 ** 62, (), generator=gen))
        return TrainSample(
            index=index, image_id=rec["image_id"], image=image, reference=reference,
            text_ids=[] if drop_text else list(info.text_ids), grid=(h, w), weights=weights.float(),
            reward_stats=stats, timestep=float(shifted_timestep(n, self.timestep_shift)), noise=noise,
            vae_seed=vae_seed)


def _check_image_header(path: str, rec: dict, what: str) -> None:
    """The file exists and has the record's size (reads the header only), so a bad
    record stops the run at start rather than hours into it."""
    try:
        with PIL.Image.open(path) as image:
            size = image.size
    except (OSError, ValueError) as err:
        raise ValueError(f"{path}: cannot open the {what} of record {rec['image_id']!r}: {err}") from err
    if size != (rec["width"], rec["height"]):
        raise ValueError(f"{path}: {what} of record {rec['image_id']!r} is {size[0]}x{size[1]} but the record says "
                         f"{rec['width']}x{rec['height']} (its boxes are in those pixels)")


def build_dataset(files: list[str], tokenizer, special: SpecialTokens, *, max_image_size: int, min_image_size: int,
                  image_stride: int, latent_downsample: int, max_latent_size: int, latent_dim: int,
                  max_num_tokens_per_sample: int, oversize: str, rewards_enabled: bool,
                  map_config: RewardMapConfig, missing_global: str, text_dropout_prob: float,
                  timestep_shift: float, seed: int, resample_noise_each_epoch: bool = True
                  ) -> tuple[RewardDataset, DatasetReport]:
    """Read every reward file and plan every sample (sizes, grids, token counts).

    Records are left out only for reasons the returned report lists: unreadable lines,
    a failed global judgment when ``missing_global="skip"`` (and the global reward is
    used), more tokens than ``max_num_tokens_per_sample`` when ``oversize="skip"``, an
    image id already seen in an earlier file. Raises ValueError when nothing is left, on
    an oversize sample with ``oversize="error"``, or when an image's latent grid exceeds
    the model's position table, or when an image is missing or not the size its record
    says (image headers are read here, so such errors surface before training)."""
    if image_stride % latent_downsample:
        raise ValueError(f"data.image_stride={image_stride} must be a multiple of the latent token size "
                         f"{latent_downsample} px")
    transform = ImageTransform(max_image_size, min_image_size, image_stride)
    report = DatasetReport(files=[os.fspath(f) for f in files])
    infos: list[SampleInfo] = []
    seen: dict[str, str] = {}
    need_global = rewards_enabled and map_config.use_global and missing_global == "skip"
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"reward file not found: {path}")
        records, errors = read_records(path, on_error="skip")
        report.records_read += len(records) + len(errors)
        report.bad_lines += errors
        for rec in records:
            image_id = rec["image_id"]
            if image_id in seen:
                report.skipped_duplicate.append(f"{path}: image_id {image_id!r} already read from {seen[image_id]}")
                continue
            seen[image_id] = os.fspath(path)
            if need_global and not carries_reward(rec["global"]):
                report.skipped_missing_global.append(image_id)
                continue
            _check_image_header(rec["image_path"], rec, "image")
            if rec.get("reference_image_path"):
                _check_image_header(rec["reference_image_path"], rec, "reference image")
            width, height = transform.resize.target_size(rec["width"], rec["height"])
            grid = (height // latent_downsample, width // latent_downsample)
            if max(grid) > max_latent_size:
                raise ValueError(f"{path}: record {image_id!r}: the training size {width}x{height} needs a "
                                 f"{grid[0]}x{grid[1]} latent grid, beyond the model's {max_latent_size} per side; "
                                 "lower data.max_image_size")
            info = SampleInfo(rec, encode_text(tokenizer, special, rec["prompt"]), (width, height), grid)
            if info.num_tokens > max_num_tokens_per_sample:
                message = (f"{path}: record {image_id!r} needs {info.num_tokens} tokens, more than "
                           f"data.max_num_tokens_per_sample={max_num_tokens_per_sample}")
                if oversize == "error":
                    raise ValueError(message + " (set data.oversize=skip to leave such samples out)")
                report.skipped_oversize.append(message)
                continue
            infos.append(info)
    report.kept = len(infos)
    if not infos:
        raise ValueError(f"no usable training samples: {report.summary()}"
                         + (f"; first problem: {report.bad_lines[0]}" if report.bad_lines else ""))
    dataset = RewardDataset(infos, special, transform, latent_dim=latent_dim, rewards_enabled=rewards_enabled,
                            map_config=map_config, missing_global=missing_global,
                            text_dropout_prob=text_dropout_prob, timestep_shift=timestep_shift, seed=seed,
                            resample_noise_each_epoch=resample_noise_each_epoch)
    return dataset, report


def write_report(report: DatasetReport, path: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(report.to_dict(), f, indent=1)
    os.replace(tmp, path)


# --------------------------------------------------------------------------- packed sequence

@dataclass
class PackedInputs:
    """One micro-batch laid out as a packed sequence, all but the latents (CPU tensors).

    S = sequence_length tokens, Ng latent tokens, D = p*p*z numbers per latent token.
    ``samples`` are in sequence order; their latent tokens are consecutive in that order."""

    sequence_length: int
    split_lens: list[list[int]]
    attn_modes: list[list[str]]
    position_ids: torch.Tensor          # [S]
    text_ids: torch.Tensor              # [Nt]
    text_index: torch.Tensor            # [Nt]
    latent_index: torch.Tensor          # [Ng]
    latent_position_ids: torch.Tensor   # [Ng]
    latent_timesteps: torch.Tensor      # [Ng]
    noise: torch.Tensor                 # [Ng, D]
    weights: torch.Tensor               # [Ng]
    samples: list[TrainSample]

    @property
    def num_latent_tokens(self) -> int:
        return int(self.latent_index.numel())


def layout_pack(samples: list[TrainSample], special: SpecialTokens, latent_downsample: int,
                max_latent_size: int) -> PackedInputs:
    """Lay the samples of one pack out one after another (see the module docstring)."""
    if not samples:
        raise ValueError("layout_pack: empty pack")
    split_lens, attn_modes, positions = [], [], []
    text_ids, text_index, latent_index, latent_pos, timesteps = [], [], [], [], []
    curr = 0
    for s in samples:
        lens, modes, rope = [], [], 0
        if s.text_ids:
            n = len(s.text_ids)
            text_ids += s.text_ids
            text_index += range(curr, curr + n)
            positions += range(n)
            lens.append(n)
            modes.append("causal")
            curr, rope = curr + n, n
        h, w = s.grid
        block = h * w + IMAGE_FRAME_TOKENS
        text_ids += [special.vision_start, special.vision_end]
        text_index += [curr, curr + block - 1]
        latent_index += range(curr + 1, curr + block - 1)
        positions += [rope] * block
        lens.append(block)
        modes.append("noise")
        curr += block
        latent_pos.append(flattened_position_ids(h * latent_downsample, w * latent_downsample, latent_downsample,
                                                 max_latent_size))
        timesteps.append(torch.full((h * w,), s.timestep))
        split_lens.append(lens)
        attn_modes.append(modes)
    return PackedInputs(
        sequence_length=curr, split_lens=split_lens, attn_modes=attn_modes,
        position_ids=torch.tensor(positions, dtype=torch.long),
        text_ids=torch.tensor(text_ids, dtype=torch.long), text_index=torch.tensor(text_index, dtype=torch.long),
        latent_index=torch.tensor(latent_index, dtype=torch.long), latent_position_ids=torch.cat(latent_pos),
        latent_timesteps=torch.cat(timesteps), noise=torch.cat([s.noise for s in samples]),
        weights=torch.cat([s.weights for s in samples]), samples=list(samples))


def to_packed_batch(inputs: PackedInputs, latent_tokens: torch.Tensor, device: torch.device) -> PackedBatch:
    """The model input: ``latent_tokens`` [Ng, D] are the noised latents x_t."""
    if latent_tokens.shape[0] != inputs.num_latent_tokens:
        raise ValueError(f"{latent_tokens.shape[0]} latent tokens for a layout of {inputs.num_latent_tokens}")
    return PackedBatch(
        sequence_length=inputs.sequence_length, position_ids=inputs.position_ids.to(device),
        attention_mask=packed_attention_mask(inputs.split_lens, inputs.attn_modes, device=device),
        attention_segments=SegmentPlan.from_splits(inputs.split_lens, inputs.attn_modes, device=device),
        text_ids=inputs.text_ids.to(device), text_index=inputs.text_index.to(device),
        latent_tokens=latent_tokens.to(device), latent_timesteps=inputs.latent_timesteps.to(device),
        latent_position_ids=inputs.latent_position_ids.to(device), latent_index=inputs.latent_index.to(device))


# --------------------------------------------------------------------------- loading ahead

@dataclass
class StepData:
    """One optimizer step of one rank: its packs (micro-batches), every pack of the step
    (all ranks), the loaded samples per micro-batch and the data position after the step."""

    packs: list[Pack]
    all_packs: list[Pack]
    samples: list[list[TrainSample]]
    position_after: DataPosition

    @property
    def global_samples(self) -> int:
        return sum(len(p.indices) for p in self.all_packs)


class StepLoader:
    """Yields :class:`StepData` from a position on, reading the next step's images in
    ``num_workers`` threads while the current step trains (0 = read in the caller)."""

    def __init__(self, dataset: RewardDataset, planner: StepPlanner, num_workers: int = 2):
        self.dataset = dataset
        self.planner = planner
        self.pool = ThreadPoolExecutor(num_workers, thread_name_prefix="srum-data") if num_workers > 0 else None

    def _submit(self, position: DataPosition):
        mine, all_packs, after = self.planner.step(position)
        if self.pool is None:
            loads = [[(self.dataset.load, i, p.epoch) for i in p.indices] for p in mine]
        else:
            loads = [[self.pool.submit(self.dataset.load, i, p.epoch) for i in p.indices] for p in mine]
        return mine, all_packs, after, loads

    def _resolve(self, pending) -> StepData:
        mine, all_packs, after, loads = pending
        if self.pool is None:
            samples = [[fn(i, e) for fn, i, e in pack] for pack in loads]
        else:
            samples = [[f.result() for f in pack] for pack in loads]
        return StepData(mine, all_packs, samples, after)

    def steps(self, position: DataPosition) -> Iterator[StepData]:
        queue = deque([self._submit(position)])
        while True:
            current = queue.popleft()
            queue.append(self._submit(current[2]))  # read the next step ahead
            yield self._resolve(current)

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown(wait=False, cancel_futures=True)

