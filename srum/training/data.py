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

``t2i`` rows of ``data.samples`` are planned and loaded exactly like reward records with
unit weights; ``cot`` rows add a system and a plan segment and ``vqa`` rows have no
generated image (:mod:`.samples`). The dataset's index runs over the reward records
first (files and lines in order), then the sample rows; the packed layout of any mix
is in :mod:`.layout`.

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
from typing import Callable, Iterator

import numpy as np
import PIL.Image
import torch

from ..models.bagel.tokenizer import SpecialTokens, encode_text
from ..models.bagel.transforms import ImageTransform, to_rgb
from ..records import carries_reward, read_records
from ..reference_import import tally_import_fixes
from ..rewards.raster import RewardMapConfig, reward_weights
from .layout import (IMAGE_FRAME_TOKENS, PackedInputs, PackPaths, TextSegment, TrainSample, VitSegment, layout_pack,
                     to_packed_batch)
from .packing import DataPosition, Pack, StepPlanner

__all__ = ["SampleInfo", "TrainSample", "TextSegment", "VitSegment", "RewardDataset", "TrainDataset",
           "build_dataset", "PackedInputs", "PackPaths", "layout_pack", "to_packed_batch", "StepData", "StepLoader",
           "sample_seed", "shifted_timestep", "DatasetReport", "IMAGE_FRAME_TOKENS"]


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
    """What the packer needs to know about a sample with a generated image without
    opening the image: a reward record, a ``t2i`` row or a ``cot`` row (``mode``).
    ``record`` holds ``image_id``, ``image_path``, ``width``, ``height`` (the file's size),
    and for reward records everything the reward map needs."""

    record: dict
    text_ids: list[int]        # framed prompt: [bos] + ids + [eos]
    size: tuple[int, int]      # (width, height) after the training resize
    grid: tuple[int, int]      # (h, w) latent tokens
    mode: str = "reward"
    system_ids: list[int] | None = None   # cot: the framed system prompt
    plan_ids: list[int] | None = None     # cot: the framed plan (cross-entropy)

    @property
    def num_tokens(self) -> int:
        """Upper bound (the prompt counted even when it will be dropped)."""
        extra = len(self.system_ids or ()) + len(self.plan_ids or ())
        return extra + len(self.text_ids) + self.grid[0] * self.grid[1] + IMAGE_FRAME_TOKENS


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
    skipped_zero_global: list[str] = field(default_factory=list)
    kept_by_mode: dict[str, int] = field(default_factory=dict)
    # reference rows read leniently (srum.reference_import): regions dropped, boxes and
    # scores clamped, summed over the records read; the rows themselves are kept
    import_fixes: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"files": self.files, "records_read": self.records_read, "kept": self.kept,
                "bad_lines": self.bad_lines, "skipped_missing_global": self.skipped_missing_global,
                "skipped_oversize": self.skipped_oversize, "skipped_duplicate": self.skipped_duplicate,
                "skipped_zero_global": self.skipped_zero_global, "kept_by_mode": self.kept_by_mode,
                "import_fixes": self.import_fixes}

    def add_import_fixes(self, records: list[dict]) -> None:
        for key, count in tally_import_fixes(records).items():
            self.import_fixes[key] = self.import_fixes.get(key, 0) + count

    def summary(self) -> str:
        text = (f"{self.kept} samples from {self.records_read} records in {len(self.files)} file(s); "
                f"left out: {len(self.bad_lines)} bad line(s), {len(self.skipped_missing_global)} with a failed "
                f"global judgment, {len(self.skipped_oversize)} over the per-sample token cap, "
                f"{len(self.skipped_duplicate)} duplicate image id(s)")
        if self.skipped_zero_global:
            text += f", {len(self.skipped_zero_global)} with a global score of 0 (rewards.drop_zero_global)"
        if self.import_fixes.get("rows_fixed"):
            fixes = self.import_fixes
            text += (f"; reference rows read leniently: {fixes['regions_dropped']} region(s) dropped, "
                     f"{fixes['boxes_clamped']} box(es) and {fixes['scores_clamped'] + fixes['global_scores_clamped']}"
                     f" score(s) clamped in {fixes['rows_fixed']} row(s)")
        if set(self.kept_by_mode) - {"reward"}:
            text += " (kept: " + ", ".join(f"{n} {m}" for m, n in self.kept_by_mode.items()) + ")"
        return text

    def admit(self, info, where: str, max_num_tokens_per_sample: int, oversize: str) -> bool:
        """False (reported) when ``info`` is over the per-sample cap and oversize="skip";
        raises when oversize="error"."""
        if info.num_tokens <= max_num_tokens_per_sample:
            return True
        message = (f"{where} needs {info.num_tokens} tokens, more than "
                   f"data.max_num_tokens_per_sample={max_num_tokens_per_sample}")
        if oversize == "error":
            raise ValueError(message + " (set data.oversize=skip to leave such samples out)")
        self.skipped_oversize.append(message)
        return False


class RewardDataset:
    """Indexable training samples: reward records, then ``data.samples`` rows (t2i, vqa,
    cot; see :mod:`.samples`). ``infos[i]`` is cheap metadata; :meth:`load` reads the
    image(s) and draws the sample's randomness for an epoch."""

    def __init__(self, infos: list, special: SpecialTokens, transform: ImageTransform, *,
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

    def mode_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for info in self.infos:
            counts[info.mode] = counts.get(info.mode, 0) + 1
        return counts

    def pack_paths(self, vit_patch_dim: int) -> PackPaths:
        """The model paths some sample uses, which every pack must then use (see :mod:`.layout`)."""
        modes = self.mode_counts()
        return PackPaths(latent=any(m != "vqa" for m in modes), vit_patch_dim=vit_patch_dim if "vqa" in modes else 0,
                         text_loss="vqa" in modes or "cot" in modes)

    def generator(self, index: int, epoch: int) -> torch.Generator:
        """The sample's own random stream: seeded by (data seed, epoch, index)."""
        return torch.Generator().manual_seed(
            sample_seed(self.seed, epoch if self.resample_noise_each_epoch else 0, index))

    def _read_image(self, path: str, info: SampleInfo, what: str) -> torch.Tensor:
        rec = info.record
        try:
            with PIL.Image.open(path) as image:
                image.load()
                rgb = to_rgb(image)
        except (OSError, ValueError, PIL.Image.DecompressionBombError) as err:
            raise ValueError(f"{path}: cannot read the {what} of record {rec['image_id']!r}: {err}") from err
        if rgb.size != (rec["width"], rec["height"]):
            why = "its boxes are in those pixels" if info.mode == "reward" else "the file changed since the start"
            raise ValueError(f"{path}: {what} of record {rec['image_id']!r} is {rgb.size[0]}x{rgb.size[1]} but the "
                             f"record says {rec['width']}x{rec['height']} ({why})")
        return self.transform(rgb)

    def load(self, index: int, epoch: int) -> TrainSample:
        info = self.infos[index]
        if not isinstance(info, SampleInfo):  # rows without a generated image (vqa) load themselves
            return info.load(self, index, epoch)
        rec = info.record
        image = self._read_image(rec["image_path"], info, "image")
        reference = None
        ref_path = rec.get("reference_image_path")
        if ref_path and os.path.abspath(ref_path) != os.path.abspath(rec["image_path"]):
            reference = self._read_image(ref_path, info, "reference image")
        if tuple(image.shape[1:]) != (info.size[1], info.size[0]):
            raise AssertionError(f"{rec['image_path']}: transform gave {tuple(image.shape[1:])}, planned {info.size}")
        h, w = info.grid
        if self.rewards_enabled and info.mode == "reward":
            # the map is painted in the resized image's pixels (the bilinear rule's frame)
            weights, stats = reward_weights(rec, (h, w), self.map_config, missing_global=self.missing_global,
                                            frame_hw=(info.size[1], info.size[0]))
            weights = weights.reshape(-1)
        else:
            weights, stats = torch.ones(h * w), {}

        gen = self.generator(index, epoch)
        drop_text = bool(torch.rand((), generator=gen) < self.text_dropout_prob)
        n = torch.randn((), generator=gen)
        noise = torch.randn((h * w, self.latent_dim), generator=gen)
        vae_seed = int(torch.randint(0, 2 ** 62, (), generator=gen))
        context = None
        if info.mode == "cot":  # CFG dropout leaves the system prompt, as think-mode inference's uncond branch
            context = [TextSegment(list(info.system_ids))]
            if not drop_text:
                context += [TextSegment(list(info.text_ids)), TextSegment(list(info.plan_ids), loss=True)]
        return TrainSample(
            index=index, image_id=rec["image_id"], image=image, reference=reference,
            text_ids=[] if drop_text else list(info.text_ids), grid=(h, w), weights=weights.float(),
            reward_stats=stats, timestep=float(shifted_timestep(n, self.timestep_shift)), noise=noise,
            vae_seed=vae_seed, mode=info.mode, context=context, text_dropped=drop_text)


TrainDataset = RewardDataset  # the same class: every kind of training sample


def _check_image_header(path: str, rec: dict, what: str) -> None:
    """The file exists and has the record's size (reads the header only), so a bad
    record stops the run at start rather than hours into it."""
    try:
        with PIL.Image.open(path) as image:
            size = image.size
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as err:
        raise ValueError(f"{path}: cannot open the {what} of record {rec['image_id']!r}: {err}") from err
    if size != (rec["width"], rec["height"]):
        raise ValueError(f"{path}: {what} of record {rec['image_id']!r} is {size[0]}x{size[1]} but the record says "
                         f"{rec['width']}x{rec['height']} (its boxes are in those pixels)")


def build_dataset(files: list[str], tokenizer, special: SpecialTokens, *, max_image_size: int, min_image_size: int,
                  image_stride: int, latent_downsample: int, max_latent_size: int, latent_dim: int,
                  max_num_tokens_per_sample: int, oversize: str, rewards_enabled: bool,
                  map_config: RewardMapConfig, missing_global: str, text_dropout_prob: float,
                  timestep_shift: float, seed: int, resample_noise_each_epoch: bool = True,
                  extra_files: list[str] = (), extra_rows: Callable | None = None,
                  drop_zero_global: bool = False) -> tuple[RewardDataset, DatasetReport]:
    """Read every reward file and plan every sample (sizes, grids, token counts).

    ``extra_rows(infos, report, seen, plan)`` appends further samples after the reward
    records (``data.samples``, see :func:`.samples.build_training_dataset`); ``seen`` maps
    ids already taken to their file; ``plan(width, height, where)`` is the training resize
    -> ((width', height'), latent grid). ``extra_files`` are listed in the report.

    Records are left out only for reasons the returned report lists: unreadable lines,
    a failed global judgment when ``missing_global="skip"`` (and the global reward is
    used), more tokens than ``max_num_tokens_per_sample`` when ``oversize="skip"``, an
    image id already seen in an earlier file, a global score of exactly 0 when
    ``drop_zero_global`` (the reference formatter's rule). Raises ValueError when nothing is left, on
    an oversize sample with ``oversize="error"``, or when an image's latent grid exceeds
    the model's position table, or when an image is missing or not the size its record
    says (image headers are read here, so such errors surface before training)."""
    if image_stride % latent_downsample:
        raise ValueError(f"data.image_stride={image_stride} must be a multiple of the latent token size "
                         f"{latent_downsample} px")
    transform = ImageTransform(max_image_size, min_image_size, image_stride)
    report = DatasetReport(files=[os.fspath(f) for f in (*files, *extra_files)])
    infos: list = []

    def plan(width: int, height: int, where: str) -> tuple[tuple[int, int], tuple[int, int]]:
        width, height = transform.resize.target_size(width, height)
        grid = (height // latent_downsample, width // latent_downsample)
        if max(grid) > max_latent_size:
            raise ValueError(f"{where}: the training size {width}x{height} needs a "
                             f"{grid[0]}x{grid[1]} latent grid, beyond the model's {max_latent_size} per side; "
                             "lower data.max_image_size")
        return (width, height), grid

    seen: dict[str, str] = {}
    need_global = rewards_enabled and map_config.use_global and missing_global == "skip"
    for path in files:
        if not os.path.isfile(path):
            raise FileNotFoundError(f"reward file not found: {path}")
        records, errors = read_records(path, on_error="skip")
        report.records_read += len(records) + len(errors)
        report.bad_lines += errors
        report.add_import_fixes(records)
        for rec in records:
            image_id = rec["image_id"]
            if image_id in seen:
                report.skipped_duplicate.append(f"{path}: image_id {image_id!r} already read from {seen[image_id]}")
                continue
            seen[image_id] = os.fspath(path)
            if need_global and not carries_reward(rec["global"]):
                report.skipped_missing_global.append(image_id)
                continue
            if drop_zero_global and carries_reward(rec["global"]) and rec["global"]["score"] == 0.0:
                report.skipped_zero_global.append(image_id)
                continue
            _check_image_header(rec["image_path"], rec, "image")
            if rec.get("reference_image_path"):
                _check_image_header(rec["reference_image_path"], rec, "reference image")
            size, grid = plan(rec["width"], rec["height"], f"{path}: record {image_id!r}")
            info = SampleInfo(rec, encode_text(tokenizer, special, rec["prompt"]), size, grid)
            if report.admit(info, f"{path}: record {image_id!r}", max_num_tokens_per_sample, oversize):
                infos.append(info)
    if extra_rows is not None:
        extra_rows(infos, report, seen, plan)
    report.kept = len(infos)
    for info in infos:
        report.kept_by_mode[info.mode] = report.kept_by_mode.get(info.mode, 0) + 1
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

