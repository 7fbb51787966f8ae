# SPDX-License-Identifier: Apache-2.0
"""``srum train --config configs/train/<name>.yaml [dotted.key=value ...]``.

Launch with torchrun for several processes (``scripts/train.sh``,
``scripts/train_multinode.sh``); run directly for one process. Also runnable as
``python -m srum.training.main``.
"""
from __future__ import annotations

import argparse
import sys

__all__ = ["add_parser", "main", "run"]


def _configure(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--config", required=True, help="training YAML, e.g. configs/train/tiny.yaml")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE",
                   help="dotted overrides parsed as YAML, e.g. optim.lr=1e-5 train.total_steps=10")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--dry-run", action="store_true",
                   help="preflight: check the model, reward files, versions and GPUs, print the command; train nothing")
    p.set_defaults(func=run)
    return p


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Register the ``train`` subcommand on an ``argparse`` subparsers object."""
    p = subparsers.add_parser("train", help="reward-weighted training (FSDP2; launch with torchrun for several GPUs)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    return _configure(p)


def run(args) -> int:
    from ..config import ConfigError, to_dict
    from .config import load_train_config
    try:
        cfg = load_train_config(args.config, args.overrides)
    except (ConfigError, FileNotFoundError) as err:
        print(f"srum train: error: {err}", file=sys.stderr)
        return 2
    if args.print_config:
        import yaml
        print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
        return 0
    if getattr(args, "dry_run", False):
        from ..preflight import check_stage
        return check_stage("train", cfg).report()
    from ..distributed import die_with_torchrun, env_info, peer_failure_note, shutdown
    from ..locking import DirectoryLocked
    from ..stages.status import clear_status, record_for_torchrun, write_status
    from .trainer import NonFiniteError, train
    die_with_torchrun()
    rank = env_info().rank
    if rank == 0:
        clear_status(cfg.output_dir)   # an earlier run's "complete" must not outlive a crash of this one
    try:
        summary = train(cfg)
    except DirectoryLocked as err:
        # another run holds output_dir: its status is its own, this run writes none
        record_for_torchrun(err)
        print(f"srum train: error: {err}", file=sys.stderr)
        return 2
    except Exception as err:
        note = peer_failure_note(err)
        if note is not None:
            # another rank failed and wrote why (its status too); this one writes nothing: when
            # rank 0 was refused the lock, the directory and its status belong to another run
            print(f"srum train: {note}", file=sys.stderr)
            return 1
        if isinstance(err, NonFiniteError):
            record_for_torchrun(err)
            write_status(cfg.output_dir, "failed", f"rank {rank}: {err}", rank=rank)
            print(f"srum train: error: {err}", file=sys.stderr)
            return 1
        if isinstance(err, (ValueError, FileNotFoundError)):
            record_for_torchrun(err)
            write_status(cfg.output_dir, "failed", f"rank {rank}: {err}", rank=rank)
            print(f"srum train: error: {err}", file=sys.stderr)
            return 2
        # any other error (out of memory, a collective that broke) is still written down, so the
        # pipeline never mistakes a crashed run for a finished one
        write_status(cfg.output_dir, "failed", f"rank {rank}: {type(err).__name__}: {err}", rank=rank)
        raise
    finally:
        shutdown()
    return write_train_status(cfg, summary, rank)


def write_train_status(cfg, summary: dict, rank: int) -> int:
    """Rank 0 writes ``status.json``: complete only at ``step == train.total_steps``
    (every rank passed the final checkpoint's collective save before train() returned)."""
    from ..stages.status import EXIT_CODES, write_status
    total = cfg.train.total_steps
    status = "complete" if summary["step"] == total else "failed"
    reason = None if status == "complete" else f"stopped at step {summary['step']} of {total}; a rerun resumes"
    if rank == 0:
        write_status(cfg.output_dir, status, reason, rank=rank, step=summary["step"], total_steps=total)
    return EXIT_CODES[status]


def main(argv: list[str] | None = None) -> int:
    parser = _configure(argparse.ArgumentParser(prog="srum train", description=__doc__,
                                                formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
