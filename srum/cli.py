# SPDX-License-Identifier: Apache-2.0
"""The ``srum`` command line.

Subcommands (each documented by ``srum <command> --help``):

* ``init-tiny OUT_DIR``: write a random tiny Bagel in the BAGEL-7B-MoT layout;
* ``understand MODEL IMAGE PROMPT``: answer a question about an image;
* ``t2i MODEL PROMPT``: generate images from text;
* ``demo``: build a tiny model, show understanding and generate an image;
* ``generate`` / ``propose`` / ``judge``: the self-rewarding data stages (YAML + overrides);
* ``records``: convert reward records to / from the reference's formatted schema;
* ``train``: the reward-weighted FSDP2 trainer (launch with torchrun);
* ``export``: checkpoint -> BAGEL-7B-MoT directory, or generated data -> SFT parquet;
* ``visualize``: pictures of regions, scores and reward maps, and an HTML run report;
* ``eval``: T2I-CompBench generation, MLLM scoring, summaries and comparisons; GenEval images;
* ``pipeline``: the whole loop (generate -> ... -> eval -> report) for one or more rounds;
* ``datasets``: list and check the named datasets of the registry (``data/datasets.yaml``);
* ``miniworld``: the miniature world: pretrain its Bagel from scratch, measure its abilities, run the SRUM study.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def _positive_int(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def _add_model_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", help="checkpoint directory in the BAGEL-7B-MoT layout, or a hub repo id "
                                 "(e.g. ByteDance-Seed/BAGEL-7B-MoT; HF_HUB_OFFLINE=1 uses the local cache only)")
    p.add_argument("--dtype", choices=["float32", "bfloat16", "float16"], default=None,
                   help="weight dtype (default: bfloat16 on CUDA, float32 on CPU)")
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--device-map", choices=["auto"], default=None,
                   help="'auto' spreads the model over all visible GPUs with accelerate (default: one device)")


def _add_sampling_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--height", type=_positive_int, default=1024, help="image height in pixels, multiple of 16 (default 1024)")
    p.add_argument("--width", type=_positive_int, default=1024, help="image width in pixels, multiple of 16 (default 1024)")
    p.add_argument("--num-timesteps", type=_positive_int, default=50, help="flow-matching time points (default 50)")
    p.add_argument("--cfg-text-scale", type=float, default=4.0, help="text guidance scale, 1.0 = off (default 4.0)")
    p.add_argument("--cfg-img-scale", type=float, default=1.0, help="image guidance scale, 1.0 = off (default 1.0)")
    p.add_argument("--cfg-interval", type=float, nargs=2, default=[0.4, 1.0], metavar=("LOW", "HIGH"),
                   help="guidance applies while LOW < t <= HIGH (default 0.4 1.0)")
    p.add_argument("--timestep-shift", type=float, default=3.0, help="time-grid shift (default 3.0)")
    p.add_argument("--cfg-renorm-min", type=float, default=0.0, help="lower clamp of the CFG renorm scale (default 0.0)")
    p.add_argument("--cfg-renorm-type", choices=["global", "channel", "text_channel"], default="global",
                   help="CFG renorm granularity (default global)")
    p.add_argument("--think", action="store_true", help="write a chain of thought before drawing (default off)")
    _add_think_prompt_args(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the first image; image i uses seed + i (default 0)")


def _add_think_prompt_args(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--think-system-prompt", default=None,
                       help="think mode's system prompt (default: srum's own wording; BAGEL-7B-MoT was trained with "
                            "the one in the Bagel repository's inferencer.py)")
    group.add_argument("--think-system-prompt-file", default=None, help="read the think system prompt from this file")


def _think_prompt(args) -> str | None:
    from srum.models.bagel.prompts import read_think_prompt
    return read_think_prompt(args.think_system_prompt, args.think_system_prompt_file, "command line")


def _load(args):
    import srum
    return srum.load_model(args.model, dtype=args.dtype, device=args.device, device_map=args.device_map)


def _sampling_kwargs(args) -> dict:
    return dict(height=args.height, width=args.width, num_timesteps=args.num_timesteps,
                cfg_text_scale=args.cfg_text_scale, cfg_img_scale=args.cfg_img_scale,
                cfg_interval=tuple(args.cfg_interval), timestep_shift=args.timestep_shift,
                cfg_renorm_min=args.cfg_renorm_min, cfg_renorm_type=args.cfg_renorm_type, think=args.think,
                think_system_prompt=_think_prompt(args))


def cmd_init_tiny(args) -> int:
    from srum.models.bagel import write_tiny_checkpoint
    out = write_tiny_checkpoint(args.out_dir, seed=args.seed, config_path=args.config)
    print(f"wrote a random tiny Bagel (seed {args.seed}) to {out}")
    return 0


def cmd_understand(args) -> int:
    from PIL import Image
    if args.temperature < 0:
        raise ValueError(f"--temperature must be >= 0, got {args.temperature}")
    model = _load(args)
    images = [Image.open(p) for p in args.image]
    print(model.understand(images, args.prompt, think=args.think, max_new_tokens=args.max_new_tokens,
                           do_sample=args.temperature > 0, temperature=args.temperature or 1.0,
                           think_system_prompt=_think_prompt(args)))
    return 0


def cmd_t2i(args) -> int:
    model = _load(args)
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    prompts = [args.prompt] * args.num_images
    result = model.generate_image(prompts, seed=args.seed, progress=True, **_sampling_kwargs(args))
    for i, image in enumerate(result.images):
        path = out_dir / f"{i:04d}.png"
        image.save(path)
        record = {"image_file": path.name, "prompt": args.prompt, "seed": result.seeds[i],
                  "think_output": result.thoughts[i] if result.thoughts else None, **_sampling_kwargs(args)}
        print(json.dumps(record))
    return 0


def cmd_demo(args) -> int:
    """The README's main job on the built-in tiny model."""
    import srum
    out = Path(args.out)
    model_dir = out / "tiny-bagel"
    t0 = time.time()
    srum.write_tiny_checkpoint(model_dir, seed=args.seed)
    print(f"[1/3] wrote a random tiny Bagel to {model_dir} ({time.time() - t0:.1f}s)")
    model = srum.load_model(model_dir, device="cpu")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"      loaded it: {n_params / 1e6:.2f}M parameters, every checkpoint tensor consumed")
    t0 = time.time()
    image = model.generate_image("a red cube to the left of a blue sphere", height=args.size, width=args.size,
                                 num_timesteps=args.num_timesteps, think=True, max_think_tokens=24, seed=args.seed)
    path = out / "generated.png"
    image.images[0].save(path)
    print(f"[2/3] generated {path} ({args.size}x{args.size}, {args.num_timesteps} steps, think mode, "
          f"{time.time() - t0:.1f}s); chain of thought: {image.thoughts[0]!r}")
    t0 = time.time()
    answer = model.understand(image.images[0], "Is there a red cube in the image?", max_new_tokens=16)
    p_yes = float(model.score_yes_no(image.images[0], "Is there a red cube in the image? Answer yes or no.")[0])
    print(f"[3/3] understanding ({time.time() - t0:.1f}s): answer {answer!r}; P(yes) = {p_yes:.3f}")
    print("The tiny model has random weights: its text and images are noise. "
          "Point `srum understand` / `srum t2i` at a BAGEL-7B-MoT directory for real outputs.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="srum", description="SRUM: self-rewarding post-training for Bagel.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("init-tiny", help="write a random tiny Bagel checkpoint in the published layout")
    p.add_argument("out_dir", help="directory to write (created if missing)")
    p.add_argument("--seed", type=int, default=0, help="weight initialisation seed (default 0)")
    p.add_argument("--config", default=None, help="tiny model YAML (default configs/model/tiny.yaml)")
    p.set_defaults(func=cmd_init_tiny)

    p = sub.add_parser("understand", help="answer a question about one or more images")
    _add_model_args(p)
    p.add_argument("image", nargs="+", help="image file(s), placed before the prompt in this order")
    p.add_argument("--prompt", required=True, help="the question")
    p.add_argument("--think", action="store_true", help="reason inside <think> tags first (default off)")
    _add_think_prompt_args(p)
    p.add_argument("--max-new-tokens", type=_positive_int, default=512, help="answer length limit (default 512)")
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default); > 0 samples at this temperature")
    p.set_defaults(func=cmd_understand)

    p = sub.add_parser("t2i", help="generate images from a text prompt")
    _add_model_args(p)
    p.add_argument("prompt", help="the text prompt")
    p.add_argument("--out", default="outputs/t2i", help="output folder for PNGs (default outputs/t2i)")
    p.add_argument("--num-images", type=_positive_int, default=1, help="images to draw, batched (default 1)")
    _add_sampling_args(p)
    p.set_defaults(func=cmd_t2i)

    p = sub.add_parser("demo", help="tiny-model demo: build, generate an image, answer questions")
    p.add_argument("--out", default="outputs/demo", help="output folder (default outputs/demo)")
    p.add_argument("--seed", type=int, default=0, help="seed for weights and noise (default 0)")
    p.add_argument("--size", type=_positive_int, default=256, help="image side in pixels, multiple of 16 (default 256)")
    p.add_argument("--num-timesteps", type=_positive_int, default=20, help="flow-matching time points (default 20)")
    p.set_defaults(func=cmd_demo)

    from srum.stages.cli import add_stage_parsers
    add_stage_parsers(sub)
    from srum.training.main import add_parser as add_train_parser
    add_train_parser(sub)
    from srum.export.cli import add_export_parser
    add_export_parser(sub)
    from srum.visualize.cli import add_visualize_parser
    add_visualize_parser(sub)
    from srum.evaluation.cli import add_eval_parser
    add_eval_parser(sub)
    from srum.pipeline.cli import add_pipeline_parser
    add_pipeline_parser(sub)
    from srum.data.cli import add_datasets_parser
    add_datasets_parser(sub)
    from srum.miniworld.cli import add_miniworld_parser
    add_miniworld_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from srum.judge.errors import JudgeBackendFatal, fatal_reason
    from srum.models.bagel.config import CheckpointError
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a torchrun worker dies with torchrun (torch imported only then)
        from srum.distributed import die_with_torchrun
        die_with_torchrun()
    try:
        return args.func(args)
    except Exception as err:
        note = _peer_failure_note(err)  # another rank failed and printed why: one line, no backend traceback
        if note is not None:
            print(f"srum {args.command}: {note}", file=sys.stderr)
            return 1
        if isinstance(err, (CheckpointError, ValueError, OSError, JudgeBackendFatal)):  # ConfigError is a ValueError
            print(f"srum {args.command}: error: {err}", file=sys.stderr)
            return 2
        # CUDA out of memory / CUDA errors: one clear line instead of a traceback per rank
        reason = fatal_reason(err) if isinstance(err, RuntimeError) else None
        if reason is None:
            raise
        hint = (" Lower the batch size (or image size / tokens per step), or give the model more GPUs."
                if "memory" in reason else "")
        print(f"srum {args.command}: error: {reason}, the stage stopped (rerun resumes it): "
              f"{type(err).__name__}: {err}.{hint}", file=sys.stderr)
        return 3


def _peer_failure_note(err: BaseException) -> str | None:
    """:func:`srum.distributed.peer_failure_note`, importing torch only in a multi-process run."""
    if os.environ.get("WORLD_SIZE", "1") in ("", "1"):
        return None
    from srum.distributed import peer_failure_note
    try:
        return peer_failure_note(err)
    except ValueError:  # a malformed RANK/WORLD_SIZE: the error is reported as usual
        return None


if __name__ == "__main__":
    sys.exit(main())
