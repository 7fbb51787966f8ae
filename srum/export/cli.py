# SPDX-License-Identifier: Apache-2.0
"""``srum export checkpoint | sft-parquet``."""
from __future__ import annotations

import json


def cmd_checkpoint(args) -> int:
    from .checkpoint import export_checkpoint
    if args.max_shard_gb is not None and not args.max_shard_gb > 0:
        raise ValueError(f"--max-shard-gb must be > 0, got {args.max_shard_gb}")
    shard = int(args.max_shard_gb * 2 ** 30) if args.max_shard_gb is not None else None
    out = export_checkpoint(args.checkpoint, args.base, args.out, weights=args.weights, dtype=args.dtype,
                            max_shard_bytes=shard)
    print(json.dumps(json.loads((out / "srum_export.json").read_text())))
    print(f"exported to {out}")
    return 0


def cmd_sft_parquet(args) -> int:
    from .sft_parquet import export_sft_parquet
    counts = export_sft_parquet(args.manifest, args.out, rows_per_file=args.rows_per_file)
    print(json.dumps({k: v for k, v in counts.items() if k != "errors"}))
    for err in counts["errors"][:20]:
        print(f"skipped: {err}")
    return 0


def add_export_parser(sub) -> None:
    p = sub.add_parser("export", help="training checkpoint -> BAGEL-7B-MoT directory; generated data -> SFT parquet")
    actions = p.add_subparsers(dest="export_action", required=True)
    c = actions.add_parser("checkpoint", help="a training checkpoint -> a directory in the published layout")
    c.add_argument("checkpoint", help="a step-NNNNNN directory, a run's checkpoints/ root or the run directory "
                                      "(the latest complete checkpoint is used)")
    c.add_argument("--base", required=True, help="the base model the run started from (directory or hub id); "
                                                 "frozen tensors, configs, tokenizer and ae.safetensors come from it")
    c.add_argument("--out", required=True, help="output directory (new; not the base model's)")
    c.add_argument("--weights", choices=["auto", "ema", "model"], default="auto",
                   help="trained tensors from the EMA (auto: when the run kept one) or the trained weights")
    c.add_argument("--dtype", choices=["bfloat16", "float32", "float16"], default="bfloat16",
                   help="dtype of the written tensors (default bfloat16, as published)")
    c.add_argument("--max-shard-gb", type=float, default=None,
                   help="split ema.safetensors into shards of at most this size plus an index (default: one "
                        "ema.safetensors, which Bagel's own scripts and the reference's need)")
    c.set_defaults(func=cmd_checkpoint)
    s = actions.add_parser("sft-parquet", help="generated images + manifest -> parquet for the SFT baseline")
    s.add_argument("manifest", help="manifest.jsonl of srum generate (or the reference's output.jsonl)")
    s.add_argument("out", help="output .parquet path (split into -0000i-of-0000N files when large)")
    s.add_argument("--rows-per-file", type=int, default=5000, help="rows per parquet file (default 5000)")
    s.set_defaults(func=cmd_sft_parquet)
