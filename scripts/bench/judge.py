# SPDX-License-Identifier: Apache-2.0
"""Benchmark: self-judgment of one image (global + one question per region) with
:func:`srum.judge.judge_image` and :class:`~srum.judge.SelfJudge`, ``text`` mode (think,
then a written answer; ``--max-new-tokens`` per reply as in configs/data/judge.yaml) vs
``logits`` mode (one forward per question, no text). Same image, same regions, same
batch size in both modes.

Work per image is counted by wrapping the language model's cached forward
(``Qwen2MoTModel.forward_cached``) and the ViT for one untimed run per mode:
``llm_tokens`` is the number of token positions the LLM processed (prefill + every
decoded token of every row), ``llm_forwards`` the number of forward calls, ``vit_patches``
the ViT patches encoded. Counts do not depend on timing.

A random model never writes a parseable answer, so text mode runs the full reply budget
for every question (the worst case, which real judges approach when thinking at length);
``--retries`` (default 0) adds sampled re-asks of failed answers as ``srum judge`` would.

    .venv/bin/python scripts/bench/judge.py                         # tiny, CPU
    .venv/bin/python scripts/bench/judge.py --device cuda --model bagel7b-width --layers 4
"""
from __future__ import annotations

import argparse
from contextlib import contextmanager

import numpy as np
import PIL.Image
import torch

from common import Reporter, add_common_args, add_model_args, build_model, peak_memory, setup, time_fn

PROMPT = "a red cube to the left of a blue sphere, with a small green cat under a wooden table"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, reps=2, warmup=0)
    add_model_args(p)
    p.add_argument("--modes", default="text,logits", help="comma-separated: text, logits (default both)")
    p.add_argument("--image-size", type=int, default=64, help="side of the judged (saved) image (default 64)")
    p.add_argument("--regions", type=int, default=10, help="regions judged per image (default 10, as the reference)")
    p.add_argument("--max-new-tokens", type=int, default=1024,
                   help="text mode reply budget, reasoning included (default 1024, configs/data/judge.yaml)")
    p.add_argument("--no-think", action="store_true", help="text mode without the think system prompt")
    p.add_argument("--retries", type=int, default=0, help="text mode sampled re-asks of unparseable answers (default 0)")
    p.add_argument("--batch-size", type=int, default=8, help="questions per backend call (default 8, as judge.yaml)")
    p.add_argument("--view", default="mark", choices=["mark", "crop", "coords"], help="how regions are shown")
    p.add_argument("--logits-reps", type=int, default=5,
                   help="timed repetitions of the (fast) logits mode (default 5; --reps applies to text mode)")
    return p.parse_args(argv)


def bench_image(size: int, regions: int, seed: int) -> tuple[PIL.Image.Image, list[dict]]:
    """A random RGB image and ``regions`` random boxes inside it."""
    rng = np.random.default_rng(seed)
    image = PIL.Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
    out = []
    for i in range(regions):
        x1, y1 = rng.integers(0, size // 2, 2)
        w, h = rng.integers(size // 8, size // 2, 2)
        out.append({"region_id": i, "bbox": [float(x1), float(y1), float(min(size, x1 + w)), float(min(size, y1 + h))]})
    return image, out


class WorkCounter:
    """Counts LLM token positions / forward calls and ViT patches while active."""

    def __init__(self, model):
        self.model = model
        self.llm_tokens = self.llm_forwards = self.vit_patches = 0

    @contextmanager
    def counting(self):
        lm, vit = self.model.language_model.model, self.model.vit_model
        inner_lm, inner_vit = lm.forward_cached, vit.forward

        def forward_cached(x, *args, **kwargs):
            self.llm_tokens += x.shape[0]
            self.llm_forwards += 1
            return inner_lm(x, *args, **kwargs)

        def vit_forward(patches, *args, **kwargs):
            self.vit_patches += patches.shape[0]
            return inner_vit(patches, *args, **kwargs)

        lm.forward_cached, vit.forward = forward_cached, vit_forward
        try:
            yield self
        finally:  # drop the instance attributes: the class methods are visible again
            del lm.forward_cached, vit.forward


def main(argv=None) -> None:
    args = parse_args(argv)
    env = setup(args)
    from srum.judge import JudgeConfig, SelfJudge, judge_image
    from srum.regions import RegionView

    model, desc = build_model(args, env)
    backend = SelfJudge(model, model_id=desc["model"])
    image, regions = bench_image(args.image_size, args.regions, args.seed)
    modes = args.modes.split(",")
    if set(modes) - {"text", "logits"}:
        raise SystemExit(f"--modes: expected text and/or logits, got {args.modes!r}")
    reporter = Reporter("judge", env, args.out, args.md)
    per_image = {}
    rows = {}
    for mode in modes:
        # min_scale_mass 0: a random model puts almost no probability on the digits; the
        # timing is the same either way, and entries then carry a score
        cfg = JudgeConfig(mode=mode, think=not args.no_think, max_new_tokens=args.max_new_tokens,
                          retries=args.retries, batch_size=args.batch_size, view=RegionView(mode=args.view),
                          min_scale_mass=0.0)

        def run():
            return judge_image(backend, image, PROMPT, regions, cfg, generator=torch.Generator().manual_seed(args.seed))

        counter = WorkCounter(model)
        with counter.counting():
            glob, entries = run()  # counted run, untimed (it also warms up)
        reps = args.reps if mode == "text" else args.logits_reps
        timing = time_fn(run, reps=reps, warmup=args.warmup, device=env.device)
        per_image[mode] = timing.median
        statuses = [glob["status"], *(e["status"] for e in entries)]
        rows[mode] = dict(
            **desc, mode=mode, think=cfg.think and mode == "text", questions=len(statuses),
            max_new_tokens=args.max_new_tokens if mode == "text" else None, retries=args.retries if mode == "text" else None,
            batch_size=args.batch_size, view=args.view, image_size=args.image_size, regions=args.regions,
            s_per_image=timing.median, s_per_image_min=timing.min, s_per_image_max=timing.max, reps=len(timing.times),
            llm_tokens_per_image=counter.llm_tokens, llm_forwards_per_image=counter.llm_forwards,
            vit_patches_per_image=counter.vit_patches, failed_entries=statuses.count("failed"), **peak_memory(env.device))
    for mode, row in rows.items():
        if mode == "logits" and "text" in per_image:
            row["speedup_vs_text"] = per_image["text"] / per_image["logits"]
        reporter.emit(mode, **row)
    reporter.finish(
        [("case", "mode"), ("think", "think"), ("questions", "questions"), ("s_per_image", "s/image (median)"),
         ("llm_tokens_per_image", "LLM tokens/image"), ("llm_forwards_per_image", "LLM forwards/image"),
         ("vit_patches_per_image", "ViT patches/image"), ("speedup_vs_text", "speedup vs text"),
         ("failed_entries", "failed entries")],
        notes=[f"{args.image_size}x{args.image_size} image, {args.regions} regions ({args.view} view), batch "
               f"{args.batch_size}; text mode: up to {args.max_new_tokens} reply tokens, {args.retries} retries. "
               "Failed entries: a random model writes no parseable answer (text mode)."])


if __name__ == "__main__":
    main()
