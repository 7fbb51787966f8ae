# SPDX-License-Identifier: Apache-2.0
"""Benchmark: understanding decode speed (tokens/s) against context length.

For each ``--contexts`` length L a cache is prefilled with L random text tokens (timed:
``prefill_s``, the cost of one full forward over the context, which a decoder without a
KV cache would pay for every new token), then ``Bagel._decode`` (the greedy loop behind
``understand``) generates ``--new-tokens`` tokens against it. With the KV cache the time
per token must stay nearly flat in L (``per_token_vs_first``: ratio to the shortest
context).

To decode exactly ``--new-tokens`` tokens, the model's end token is replaced by an id
that cannot be produced for the duration of the timing (a random model would otherwise
stop at an arbitrary point); everything else is the real decode path.

    .venv/bin/python scripts/bench/decode.py                        # tiny, CPU
    .venv/bin/python scripts/bench/decode.py --device cuda --model bagel7b-width --layers 4 \\
        --contexts 32,512,2048,8192 --batch 8
"""
from __future__ import annotations

import argparse
import dataclasses

import torch

from common import Reporter, add_common_args, add_model_args, build_model, peak_memory, setup, time_interleaved


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common_args(p, reps=7, warmup=1)
    add_model_args(p)
    p.add_argument("--contexts", default="32,128,512,2048", help="comma-separated context lengths (default 32,128,512,2048)")
    p.add_argument("--new-tokens", type=int, default=64, help="tokens decoded per timed run (default 64)")
    p.add_argument("--batch", type=int, default=1, help="sequences decoded together (default 1)")
    return p.parse_args(argv)


def main(argv=None) -> None:
    args = parse_args(argv)
    env = setup(args)
    model, desc = build_model(args, env)
    contexts = [int(c) for c in args.contexts.split(",")]
    if args.new_tokens < 1 or args.batch < 1 or min(contexts) < 1:
        raise SystemExit("--new-tokens, --batch and every context length must be >= 1")
    special = model.special_tokens
    vocab = min(len(model.tokenizer), special.bos)  # plain text ids, below the special tokens
    gen = torch.Generator().manual_seed(args.seed)
    reporter = Reporter("decode", env, args.out, args.md)
    rows = torch.arange(args.batch, device=env.device)
    caches, prefills, decoders, outputs = {}, {}, {}, {}
    for length in contexts:
        cache = caches[length] = model.new_cache(args.batch, length + args.new_tokens + 1)
        ids = torch.randint(0, vocab, (args.batch * length,), generator=gen).to(env.device)
        lengths = torch.full((args.batch,), length, dtype=torch.long, device=env.device)

        def prefill(cache=cache, ids=ids, lengths=lengths, commit=False):
            with torch.no_grad():
                model._forward_rows(cache, model.embed_text(ids), lengths, causal=True, single_position=False,
                                    commit=commit)

        prefills[length] = prefill
        outputs[length] = []

        def decode(cache=cache, out=outputs[length]):
            with torch.no_grad():
                out[:] = model._decode(cache, rows, args.new_tokens, False, 1.0, None)

        decoders[length] = decode
    capacities = {length: cache.capacity for length, cache in caches.items()}
    # contexts take turns, so machine load hits them alike (the flatness ratio compares them);
    # uncommitted prefills of the empty caches, then the committed one decoding starts from
    prefill_timings = time_interleaved(prefills, reps=args.reps, warmup=args.warmup, device=env.device)
    for prefill in prefills.values():
        prefill(commit=True)  # decode restores this context after every run
    model.special_tokens = dataclasses.replace(special, eos=-1)  # never produced: decode the full budget
    try:
        timings = time_interleaved(decoders, reps=args.reps, warmup=args.warmup, device=env.device)
    finally:
        model.special_tokens = special
    first = timings[contexts[0]].median / args.new_tokens
    for length in contexts:
        timing, out = timings[length], outputs[length]
        if any(len(t) != args.new_tokens for t in out):
            raise RuntimeError(f"decode produced {[len(t) for t in out]} tokens, expected {args.new_tokens} per row")
        per_token = timing.median / args.new_tokens
        reporter.emit(
            f"ctx{length}-b{args.batch}", **desc, context=length, batch=args.batch, new_tokens=args.new_tokens,
            decode_s=timing.median, decode_s_min=timing.min, decode_s_max=timing.max, reps=len(timing.times),
            s_per_token=per_token, tokens_per_s=args.batch * args.new_tokens / timing.median,
            per_token_vs_first=per_token / first, prefill_s=prefill_timings[length].median,
            prefill_over_token=prefill_timings[length].median / per_token,
            kv_cache_grown=caches[length].capacity != capacities[length], **peak_memory(env.device))
    reporter.finish(
        [("case", "case"), ("context", "context"), ("s_per_token", "s/token (median)"), ("tokens_per_s", "tokens/s"),
         ("per_token_vs_first", f"vs ctx {contexts[0]}"), ("prefill_s", "prefill s"),
         ("prefill_over_token", "prefill / token"), ("kv_cache_grown", "cache grew")],
        notes=["prefill / token: how many cached decode steps one full forward over the context costs "
               "(what every token would cost without the KV cache)."])


if __name__ == "__main__":
    main()
