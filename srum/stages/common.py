# SPDX-License-Identifier: Apache-2.0
"""Pieces every per-item stage shares: the model section of a config (loaded lazily),
reading an image manifest, the set-up of a stage over a manifest's images, and the run
loop (shard -> skip done -> process in batches -> append rows -> merge on rank 0)."""
from __future__ import annotations

import functools
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal, Sequence

from srum import distributed
from srum.config import MODEL, dump_config
from srum.distributed import DistInfo

from srum.fileio import iter_jsonl

from .outdir import take_output_dir
from .shards import ERROR_KEY, ShardedOutput
from .status import clear_status, write_status, write_summary_status


@dataclass
class ModelConfig:
    """Which Bagel to load. ``path``: a BAGEL-7B-MoT directory or a hub id.
    ``dtype``: float32 / bfloat16 / float16 (default bfloat16 on CUDA, float32 on CPU).
    ``device_map: auto`` spreads one process's model over all its visible GPUs
    (single-process runs only; under torchrun each process uses cuda:LOCAL_RANK).
    ``weights``: auto (ema.safetensors, else model.safetensors, else a sharded index) or a
    file name. ``compile``: ``torch.compile`` every decoder layer with ``compile_backend``
    (off by default: it pays off on GPUs over many images, not on a CPU).
    ``gpus_per_process``: under torchrun, each process spreads its model over this many
    GPUs, ``[LOCAL_RANK*g, (LOCAL_RANK+1)*g)`` (launch GPUs / g processes per node)."""

    path: str = field(metadata=MODEL)
    dtype: Literal["float32", "bfloat16", "float16"] | None = None
    device_map: Literal["auto"] | None = None
    weights: str = "auto"
    compile: bool = False
    compile_backend: str = "inductor"
    gpus_per_process: int = 1

    def __post_init__(self):
        if self.gpus_per_process < 1:
            raise ValueError(f"gpus_per_process must be >= 1, got {self.gpus_per_process}")
        if self.device_map is not None and self.gpus_per_process > 1:
            raise ValueError("choose model.device_map=auto (one process, every GPU) or model.gpus_per_process "
                             "(torchrun), not both")
        if self.compile:
            from srum.models.bagel.language_model import check_compile_backend
            check_compile_backend(self.compile_backend, "model.compile_backend")


def load_stage_model(cfg: ModelConfig, info: DistInfo):
    """Load the Bagel of ``cfg`` onto this process's device (or spread it with ``device_map``)."""
    import srum
    if cfg.device_map is not None and info.enabled:
        raise ValueError("model.device_map=auto cannot be combined with torchrun (one GPU per process); "
                         "launch a single process to spread one model over several GPUs")
    device = distributed.local_device(info)
    device_map, max_memory = cfg.device_map, None
    if cfg.gpus_per_process > 1:
        import torch
        gpus = distributed.local_gpus(info, cfg.gpus_per_process)
        device, device_map = torch.device("cuda", gpus[0]), "auto"
        torch.cuda.set_device(gpus[0])   # collectives (NCCL) then use this process's own first GPU
        # room for activations and the CUDA context on each of this process's GPUs
        max_memory = {g: int(torch.cuda.mem_get_info(g)[0] * 0.85) for g in gpus}
    model = srum.load_model(cfg.path, dtype=cfg.dtype, device=device if device_map is None else None,
                            device_map=device_map, weights=cfg.weights, max_memory=max_memory)
    if cfg.compile:
        model.language_model.model.compile_layers(cfg.compile_backend)
    return model


def lazy_model(cfg: ModelConfig | None, info: DistInfo) -> Callable[[], Any]:
    """A loader that loads the stage model on its first call and returns the same model
    afterwards; a process with nothing to do never loads it. ``cfg`` None: the stage runs
    without a model and the loader returns None."""
    if cfg is None:
        return lambda: None
    return functools.cache(lambda: load_stage_model(cfg, info))


@dataclass
class ImageItem:
    """One image listed in a manifest (generation, proposal or reward JSONL)."""

    image_id: str
    image_path: Path          # absolute
    prompt: str
    prompt_id: str | None
    sample_index: int | None
    category: str | None
    row: dict                 # the manifest row as read
    source: str               # "file:line"


def _image_id_from(row: dict, image_file: str) -> str:
    if isinstance(row.get("image_id"), str):
        return row["image_id"]
    return Path(image_file).stem


def read_image_manifest(path: str | os.PathLike) -> tuple[list[ImageItem], list[str]]:
    """Read a JSONL of images: our generation / proposal / reward rows, or the reference's
    ``output.jsonl`` (``prompt_id``, ``image_file``, ``original_prompt``). Relative image
    paths are resolved against the manifest's directory. Returns ``(items, errors)``; bad
    lines (invalid JSON, no image file, no prompt, duplicate image id) are skipped and
    listed as ``file:line: reason``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"manifest not found: {path}")
    items, errors, seen = [], [], {}
    for n, row, err in iter_jsonl(path):
        if err:
            errors.append(err)
            continue
        where = f"{path}:{n}"
        if ERROR_KEY in row:
            continue
        image_file = row.get("image_file")
        prompt = row.get("prompt", row.get("original_prompt"))
        if not isinstance(image_file, str) or not image_file:
            errors.append(f"{where}: no 'image_file'")
            continue
        if not isinstance(prompt, str) or not prompt.strip():
            errors.append(f"{where}: no prompt text ('prompt' or 'original_prompt')")
            continue
        category = row.get("category")
        if category is not None and not isinstance(category, str):
            errors.append(f"{where}: category must be a string or null, got {type(category).__name__}")
            continue
        image_id = _image_id_from(row, image_file)
        if image_id in seen:
            errors.append(f"{where}: duplicate image id {image_id!r} (first at {seen[image_id]})")
            continue
        seen[image_id] = where
        image_path = Path(image_file) if os.path.isabs(image_file) else (path.parent / image_file)
        prompt_id = row.get("prompt_id")
        items.append(ImageItem(image_id, image_path.resolve(), prompt.strip(),
                               str(prompt_id) if prompt_id is not None else None,
                               row.get("sample_index") if isinstance(row.get("sample_index"), int) else None,
                               category, row, where))
    return items, errors


def open_image(item: ImageItem):
    """Open an item's image fully (so a truncated file fails here, with the item named)."""
    from PIL import Image, UnidentifiedImageError
    if not item.image_path.is_file():
        raise FileNotFoundError(f"{item.source}: image not found: {item.image_path}")
    try:
        with Image.open(item.image_path) as im:
            im.load()
            return im.convert("RGB")
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        # a decompression bomb (far more pixels than PIL.Image.MAX_IMAGE_PIXELS) is a bad item, not a crash
        raise ValueError(f"{item.source}: cannot read image {item.image_path}: {err}") from None


def relative_to(path: Path, directory: Path) -> str:
    """``path`` written relative to ``directory`` (how our JSONL files reference images)."""
    return os.path.relpath(Path(path).resolve(), Path(directory).resolve())


def error_row(key_field: str, key: str, message: str) -> dict:
    """The row of an item that failed: ``retry_errors`` redoes it, the merge lists it in ``errors.jsonl``."""
    return {key_field: key, ERROR_KEY: message}


def log(info: DistInfo, message: str) -> None:
    if info.is_main:
        print(message, file=sys.stderr, flush=True)


def log_skipped(info: DistInfo, name: str, input_errors: Sequence[str]) -> None:
    """Name the first 20 unusable input lines (all of them go into ``summary.json``)."""
    for err in input_errors[:20]:
        log(info, f"srum {name}: skipped {err}")


@dataclass
class ImageStage:
    """A stage with one output row per image of a manifest (propose, judge, eval score)."""

    name: str                    # as in the log lines: "srum <name>: ..."
    info: DistInfo
    items: list[ImageItem]       # the manifest's usable rows, in order
    input_errors: list[str]      # its unusable rows, as "file:line: reason"
    out: ShardedOutput           # keyed by image id

    @classmethod
    def open(cls, name: str, manifest: str | os.PathLike, out_dir: str | os.PathLike,
             manifest_name: str, retryable: Callable[[dict], bool] | None = None,
             timeout_minutes: float | None = None) -> ImageStage:
        """Join the process group, read ``manifest`` (an unusable row is logged and skipped;
        none usable is an error) and prepare the sharded output ``out_dir/manifest_name``
        (``retryable``: which result rows ``retry_errors`` redoes, see ShardedOutput;
        ``timeout_minutes``: of the process group's collectives)."""
        info = distributed.init(timeout_minutes)
        items, input_errors = read_image_manifest(manifest)
        log_skipped(info, name, input_errors)
        if not items:
            raise ValueError(f"{manifest}: no usable image rows")
        out = ShardedOutput(out_dir, [it.image_id for it in items], info, manifest_name=manifest_name,
                            retryable=retryable)
        return cls(name, info, items, input_errors, out)

    def each_image(self, handle: Callable[[ImageItem, Any], dict]) -> Callable[[list[int]], list[dict]]:
        """A ``process_batch`` for :meth:`run` that opens each item's image and returns
        ``handle(item, image)`` (a row, or an :func:`error_row`); an image that cannot be
        read becomes an error row naming the manifest line."""
        def process(indices: list[int]) -> list[dict]:
            rows = []
            for i in indices:
                item = self.items[i]
                try:
                    image = open_image(item)
                except (FileNotFoundError, ValueError) as err:
                    rows.append(error_row("image_id", item.image_id, str(err)))
                    continue
                rows.append(handle(item, image))
            return rows
        return process

    def each_batch(self, handle: Callable[[list[ImageItem], list[Any]], list[dict]]
                   ) -> Callable[[list[int]], list[dict]]:
        """Like :meth:`each_image`, but ``handle(items, images)`` gets every readable image
        of the batch at once and returns one row per item, in order."""
        def process(indices: list[int]) -> list[dict]:
            rows: dict[int, dict] = {}
            items, images, where = [], [], []
            for i in indices:
                item = self.items[i]
                try:
                    images.append(open_image(item))
                except (FileNotFoundError, ValueError) as err:
                    rows[i] = error_row("image_id", item.image_id, str(err))
                    continue
                items.append(item)
                where.append(i)
            if items:
                rows.update(zip(where, handle(items, images)))
            return [rows[i] for i in indices]
        return process

    def run(self, process_batch: Callable[[list[int]], list[dict]], *, config, retry_errors: bool,
            summarize: Callable[[list[dict]], dict] | None = None, batch_size: int = 1,
            settings: dict | None = None, fresh: bool = False) -> dict:
        """:func:`run_items` over the manifest's images; returns the stage summary."""
        return run_items(self.name, self.out, process_batch, batch_size=batch_size, info=self.info, config=config,
                         retry_errors=retry_errors, summarize=summarize, input_errors=self.input_errors,
                         settings=settings, fresh=fresh)


def run_items(name: str, out: ShardedOutput, process_batch: Callable[[list[int]], list[dict]], *, batch_size: int,
              info: DistInfo, config, retry_errors: bool = False, summarize: Callable[[list[dict]], dict] | None = None,
              input_errors: Sequence[str] = (), settings: dict | None = None, fresh: bool = False) -> dict:
    """The loop shared by generate / propose / judge.

    ``process_batch(indices)`` gets indices into ``out.keys`` and returns one row per
    index (a result row, or :func:`error_row` for an item that failed on bad input).
    ``settings``: the result-changing settings (:func:`~srum.stages.outdir.result_settings`),
    recorded with the output; a resume with other ones is refused. ``fresh``: move the
    earlier outputs aside and start over. Returns the summary written to ``summary.json``."""
    started = time.time()
    # retry_errors on a finished run redoes only failed items: other settings are allowed there
    lock = take_output_dir(out.out_dir, name, info, settings, fresh,
                           retry_changes=retry_errors and out.is_complete())
    try:
        return _run_locked(name, out, process_batch, batch_size, info, config, retry_errors, summarize,
                           input_errors, started)
    finally:
        if lock is not None:
            lock.release()


def _run_locked(name: str, out: ShardedOutput, process_batch: Callable[[list[int]], list[dict]], batch_size: int,
                info: DistInfo, config, retry_errors: bool, summarize: Callable[[list[dict]], dict] | None,
                input_errors: Sequence[str], started: float) -> dict:
    if out.is_complete() and not retry_errors:
        summary = json.loads(out.summary_path.read_text())
        if summary.get("num_ok", 0) or not summary.get("num_items"):
            log(info, f"srum {name}: {out.out_dir} is complete ({summary['num_ok']} rows, "
                      f"{summary['num_errors']} errors); nothing to do")
            if info.is_main:
                summary["status"] = write_summary_status(out.out_dir, summary)["status"]
            return summary
        # every item failed last time: nothing was produced, so a rerun redoes them all
        # (the cause was most likely fixed in between)
        log(info, f"srum {name}: every item of {out.out_dir} failed last time; redoing them")
        retry_errors = True
    if info.is_main:
        out.out_dir.mkdir(parents=True, exist_ok=True)
        dump_config(config, out.out_dir / "config.yaml")
        clear_status(out.out_dir)   # an earlier run's status must not outlive a crash of this one
    done = out.done_keys(retry_errors)
    batches = out.my_batches(done, batch_size)
    log(info, f"srum {name}: {len(out.keys)} items, {len(out.keys) - len(done)} to do over "
              f"{info.world_size} process(es)")
    try:
        if batches:
            _process_batches(name, out, process_batch, batches, info)
    except Exception as err:
        # not an item's failure (those are rows): the stage stops here, once, and a rerun
        # with the cause fixed goes on from the rows already written
        write_status(out.out_dir, "failed", f"rank {info.rank}: {type(err).__name__}: {err}", rank=info.rank)
        raise
    distributed.barrier()
    summary = {}
    if info.is_main:
        summary = _merge_and_report(name, out, info, input_errors, started, summarize)
    distributed.barrier()
    return summary


def _process_batches(name: str, out: ShardedOutput, process_batch: Callable[[list[int]], list[dict]],
                     batches: list[tuple[list[int], set[int]]], info: DistInfo) -> None:
    """Run the items of each batch not done yet together and append their rows (only
    what is missing is computed: a retry asks exactly the failed items again)."""
    from tqdm import tqdm
    writer = out.writer()
    bar = tqdm(total=sum(len(todo) for _, todo in batches), desc=f"{name} (rank {info.rank})",
               disable=not info.is_main, dynamic_ncols=True)
    try:
        for batch, todo in batches:
            indices = [i for i in batch if i in todo]
            for row in process_batch(indices):
                writer.write(row)
            bar.update(len(indices))
    finally:
        bar.close()
        writer.close()


def _merge_and_report(name: str, out: ShardedOutput, info: DistInfo, input_errors: Sequence[str], started: float,
                      summarize: Callable[[list[dict]], dict] | None) -> dict:
    extra = {"input_errors": list(input_errors)[:100], "num_input_errors": len(input_errors)}
    result = out.merge(extra, started, summarize)
    for line in result.bad_lines[:20]:
        log(info, f"srum {name}: ignored {line}")
    summary = json.loads(out.summary_path.read_text())
    retry = summary.get("num_retryable", 0)
    log(info, f"srum {name}: {summary['num_ok']} done"
              f"{f' ({retry} of them failed judgments that retry_errors would redo)' if retry else ''}"
              f", {summary['num_errors']} failed"
              f"{', ' + str(summary['num_missing']) + ' missing' if summary['num_missing'] else ''}"
              f" -> {out.manifest_path}")
    for err in result.errors[:20]:
        log(info, f"srum {name}: failed {err.get(out.key_field)}: {err[ERROR_KEY]}")
    record = write_summary_status(out.out_dir, summary)
    summary["status"] = record["status"]
    if record["reason"]:
        log(info, f"srum {name}: {record['status']}: {record['reason']}")
    return summary
