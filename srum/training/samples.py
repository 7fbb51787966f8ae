# SPDX-License-Identifier: Apache-2.0
"""``data.samples``: general Bagel training rows (t2i, vqa, cot) for ``srum train``.

One JSON object per line; relative image paths resolve against the JSONL file's
directory; ``meta`` may hold anything (ignored); any other unknown field is an error
(a misspelt ``system`` would otherwise be dropped silently)::

    {"mode": "t2i", "id": str, "prompt": str, "image": path}
    {"mode": "vqa", "id": str, "image": path | [path, ...], "question": str, "answer": str,
     "system": str (optional)}
    {"mode": "cot", "id": str, "prompt": str, "plan": str, "image": path,
     "system": str (optional; default prompts.GENERATION_THINK_PROMPT)}

Layouts (segments in order; see :mod:`.layout` for attention and RoPE positions), each
the one inference builds in :mod:`srum.models.bagel.inference`:

* ``t2i``: ``[prompt][noised image]``, exactly a reward record with unit weights
  (``generate_image``, think=False). Text dropout leaves ``[noised image]``.
* ``vqa``: ``[system]`` (only when given) ``[ViT image] ... [question][answer]``, one ViT
  block per image in the row's order, cross-entropy on the answer's tokens and its
  closing ``<|im_end|>`` (``understand`` with think=True and that system prompt, or
  think=False without one). No text dropout.
* ``cot``: ``[system][prompt][plan][noised image]``, cross-entropy on the plan, flow
  matching on the image (``generate_image`` with think=True: the plan is what the
  model writes, re-read as its own segment). Text dropout leaves ``[system][noised image]``,
  think-mode inference's text-unconditional branch.

ViT images are preprocessed as inference does: the VAE-path resize of the model's
config, then the ViT transform (``vit_transform(config)(vae_transform(config).resize(im))``).
Generated images use the training resize (``data.max_image_size`` ...), as reward records.

Rows that cannot be used are reported, never dropped silently: malformed lines go to
``DatasetReport.bad_lines`` as ``file:line: reason``, repeated ids (across all files,
reward image ids included) to ``skipped_duplicate``; a missing or unreadable image
stops the build with ``file:line`` in the message.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass

import PIL.Image
import torch

from ..models.bagel.config import BagelConfig
from ..models.bagel.prompts import GENERATION_THINK_PROMPT
from ..models.bagel.tokenizer import SpecialTokens, encode_text
from ..models.bagel.transforms import flattened_position_ids, patchify, to_rgb, vae_transform, vit_transform
from .data import DatasetReport, RewardDataset, SampleInfo, build_dataset
from .layout import IMAGE_FRAME_TOKENS, TextSegment, TrainSample, VitSegment

__all__ = ["MODES", "read_sample_rows", "VitPreprocess", "VqaInfo", "build_training_dataset"]

MODES = ("t2i", "vqa", "cot")
_REQUIRED = {"t2i": ("prompt", "image"), "vqa": ("image", "question", "answer"), "cot": ("prompt", "plan", "image")}
_OPTIONAL = {"t2i": (), "vqa": ("system",), "cot": ("system",)}
_COMMON = ("mode", "id", "meta")


class RowError(ValueError):
    pass


def _text(obj: dict, key: str) -> str:
    value = obj[key]
    if not isinstance(value, str) or not value.strip():
        raise RowError(f"field {key!r} must be a non-empty string, got {value!r}")
    return value


def _images(obj: dict, many: bool, base_dir: str) -> list[str]:
    value = obj["image"]
    items = value if (many and isinstance(value, list)) else [value]
    if not items:
        raise RowError("field 'image' is an empty list")
    out = []
    for item in items:
        if not isinstance(item, str) or not item:
            kind = "a path or a non-empty list of paths" if many else "a path"
            raise RowError(f"field 'image' must be {kind}, got {value!r}")
        out.append(os.path.normpath(os.path.join(base_dir, os.path.expanduser(item))))
    return out


def parse_row(obj, base_dir: str) -> dict:
    """Validate one decoded JSON line -> ``{"mode", "id", "images", texts...}`` (absolute
    image paths; ``system`` None when absent). Raises :class:`RowError`."""
    if not isinstance(obj, dict):
        raise RowError(f"expected a JSON object, got {type(obj).__name__}")
    mode = obj.get("mode")
    if mode not in MODES:
        raise RowError(f"field 'mode' must be one of {', '.join(MODES)}, got {mode!r}")
    unknown = sorted(set(obj) - set(_COMMON) - set(_REQUIRED[mode]) - set(_OPTIONAL[mode]))
    if unknown:
        allowed = ", ".join((*_COMMON[:2], *_REQUIRED[mode], *_OPTIONAL[mode]))
        raise RowError(f"unknown field(s) {', '.join(map(repr, unknown))} for mode {mode!r} (allowed: {allowed}; "
                       "put anything else under 'meta')")
    for key in ("id", *_REQUIRED[mode]):
        if key not in obj:
            raise RowError(f"mode {mode!r} needs field {key!r}")
    row = {"mode": mode, "id": _text(obj, "id"), "images": _images(obj, mode == "vqa", base_dir)}
    for key in _REQUIRED[mode]:
        if key != "image":
            row[key] = _text(obj, key)
    for key in _OPTIONAL[mode]:
        row[key] = _text(obj, key) if obj.get(key) is not None else None
    return row


def read_sample_rows(path: str | os.PathLike) -> tuple[list[tuple[int, dict]], list[str]]:
    """Read a samples JSONL -> ``([(line number, row), ...], ["path:line: reason", ...])``.
    Empty lines are skipped silently."""
    path = os.fspath(path)
    base_dir = os.path.dirname(os.path.abspath(path))
    rows, errors = [], []
    with open(path, "rb") as handle:
        lines = handle.readlines()
    for number, raw in enumerate(lines, start=1):
        where = f"{path}:{number}"
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as err:
            errors.append(f"{where}: not valid UTF-8 ({err.reason} at byte {err.start})")
            continue
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            last = number == len(lines) and not line.endswith("\n")
            errors.append(f"{where}: " + ("truncated last line (no newline, invalid JSON: an interrupted write?)"
                                          if last else f"invalid JSON ({err.msg} at column {err.colno})"))
            continue
        try:
            rows.append((number, parse_row(obj, base_dir)))
        except RowError as err:
            errors.append(f"{where}: {err}")
    return rows, errors


def _image_size(path: str, where: str, row_id: str) -> tuple[int, int]:
    """(width, height) from the header, so a missing image stops the run at start."""
    try:
        with PIL.Image.open(path) as image:
            return image.size
    except (OSError, ValueError, PIL.Image.DecompressionBombError) as err:
        raise ValueError(f"{where}: cannot open the image {path} of row {row_id!r}: {err}") from err


class VitPreprocess:
    """Understanding-image preprocessing exactly as inference (``_prefill_images`` and
    ``embed_vit_images``): VAE-path resize, ViT transform, patches and position ids."""

    def __init__(self, config: BagelConfig):
        self.vae_resize = vae_transform(config).resize
        self.vit = vit_transform(config)
        self.patch = config.vit.patch_size
        self.side = config.vit_max_patches_per_side
        self.num_positions = config.vit.num_positions

    @property
    def patch_dim(self) -> int:
        return 3 * self.patch ** 2

    def num_patches(self, width: int, height: int, where: str) -> int:
        w, h = self.vit.resize.target_size(*self.vae_resize.target_size(width, height))
        gh, gw = h // self.patch, w // self.patch
        if max(gh, gw) > self.side or (gh - 1) * self.side + gw > self.num_positions:
            raise ValueError(f"{where}: a {width}x{height} image becomes a {gh}x{gw} ViT patch grid, beyond the "
                             f"model's position tables ({self.side} per side)")
        return gh * gw

    def __call__(self, image: PIL.Image.Image) -> VitSegment:
        pixels = self.vit(self.vae_resize(to_rgb(image)))
        return VitSegment(patchify(pixels, self.patch),
                          flattened_position_ids(pixels.shape[1], pixels.shape[2], self.patch, self.side))


@dataclass
class VqaInfo:
    """A planned vqa row: ``record`` has image_id, image_paths and sizes (from the headers)."""

    record: dict
    system_ids: list[int] | None
    question_ids: list[int]
    answer_ids: list[int]
    vit_patches: list[int]
    preprocess: VitPreprocess
    mode: str = "vqa"

    @property
    def num_tokens(self) -> int:
        return (len(self.system_ids or ()) + sum(n + IMAGE_FRAME_TOKENS for n in self.vit_patches)
                + len(self.question_ids) + len(self.answer_ids))

    def load(self, dataset: RewardDataset, index: int, epoch: int) -> TrainSample:
        rec = self.record
        context = [TextSegment(list(self.system_ids))] if self.system_ids else []
        for path, size in zip(rec["image_paths"], rec["sizes"]):
            try:
                with PIL.Image.open(path) as image:
                    image.load()
                    rgb = to_rgb(image)
            except (OSError, ValueError, PIL.Image.DecompressionBombError) as err:
                raise ValueError(f"{path}: cannot read an image of row {rec['image_id']!r}: {err}") from err
            if rgb.size != tuple(size):
                raise ValueError(f"{path}: image of row {rec['image_id']!r} is {rgb.size[0]}x{rgb.size[1]}, "
                                 f"was {size[0]}x{size[1]} at the start (the file changed)")
            context.append(self.preprocess(rgb))
        context += [TextSegment(list(self.question_ids)), TextSegment(list(self.answer_ids), loss=True)]
        return TrainSample(index=index, image_id=rec["image_id"], image=None, reference=None, text_ids=[], grid=None,
                           weights=torch.zeros(0), reward_stats={}, timestep=0.0,
                           noise=torch.zeros(0, dataset.latent_dim), vae_seed=0, mode="vqa", context=context,
                           text_dropped=False)


def _plan_rows(files: list[str], tokenizer, special: SpecialTokens, preprocess: VitPreprocess,
               max_num_tokens_per_sample: int, oversize: str):
    """The ``extra_rows`` hook of :func:`build_dataset` for ``data.samples`` files."""

    def encode(text: str) -> list[int]:
        return encode_text(tokenizer, special, text)

    def extra_rows(infos: list, report: DatasetReport, seen: dict, plan) -> None:
        for path in files:
            if not os.path.isfile(path):
                raise FileNotFoundError(f"samples file not found: {path}")
            rows, errors = read_sample_rows(path)
            report.records_read += len(rows) + len(errors)
            report.bad_lines += errors
            for number, row in rows:
                where, row_id = f"{path}:{number}", row["id"]
                if row_id in seen:
                    report.skipped_duplicate.append(f"{where}: id {row_id!r} already read from {seen[row_id]}")
                    continue
                seen[row_id] = where
                sizes = [_image_size(p, where, row_id) for p in row["images"]]
                if row["mode"] == "vqa":
                    info = VqaInfo(
                        {"image_id": row_id, "image_paths": row["images"], "sizes": sizes},
                        encode(row["system"]) if row["system"] else None, encode(row["question"]),
                        encode(row["answer"]), [preprocess.num_patches(w, h, where) for w, h in sizes], preprocess)
                else:
                    (width, height), = sizes
                    size, grid = plan(width, height, f"{where}: row {row_id!r}")
                    record = {"image_id": row_id, "prompt": row["prompt"], "image_path": row["images"][0],
                              "width": width, "height": height}
                    info = SampleInfo(record, encode(row["prompt"]), size, grid, mode=row["mode"])
                    if row["mode"] == "cot":
                        info.system_ids = encode(row["system"] or GENERATION_THINK_PROMPT)
                        info.plan_ids = encode(row["plan"])
                if report.admit(info, f"{where}: row {row_id!r}", max_num_tokens_per_sample, oversize):
                    infos.append(info)

    return extra_rows


def build_training_dataset(reward_files: list[str], sample_files: list[str], tokenizer, special: SpecialTokens,
                           model_config: BagelConfig, **kwargs) -> tuple[RewardDataset, DatasetReport]:
    """Reward records (``data.rewards``) then sample rows (``data.samples``) as one dataset.

    ``kwargs`` are :func:`.data.build_dataset`'s keywords (sizes, token caps, reward and
    noise settings). Index order: reward files in order (their lines in order), then the
    sample files in order (their lines in order); left-out rows are reported."""
    preprocess = VitPreprocess(model_config)
    extra = _plan_rows([os.fspath(f) for f in sample_files], tokenizer, special, preprocess,
                       kwargs["max_num_tokens_per_sample"], kwargs["oversize"])
    return build_dataset([os.fspath(f) for f in reward_files], tokenizer, special,
                         extra_files=[os.fspath(f) for f in sample_files], extra_rows=extra if sample_files else None,
                         **kwargs)
