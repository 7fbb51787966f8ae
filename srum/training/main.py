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
    from ..distributed import die_with_torchrun, peer_failure_note, shutdown
    from .trainer import NonFiniteError, train
    die_with_torchrun()
    try:
        train(cfg)
    except Exception as err:
        return _report(err, peer_failure_note(err), NonFiniteError)
    finally:
        shutdown()
    return 0


def _report(err: Exception, peer_note: str | None, nonfinite: type) -> int:
    """The exit code of a failed run, after one clear line on stderr (a traceback only
    for errors that are bugs)."""
    if peer_note is not None:  # another rank failed and printed why
        print(f"srum train: {peer_note}", file=sys.stderr)
        return 1
    if isinstance(err, nonfinite):
        print(f"srum train: error: {err}", file=sys.stderr)
        return 1
    if isinstance(err, (ValueError, FileNotFoundError)):
        print(f"srum train: error: {err}", file=sys.stderr)
        return 2
    raise err


def main(argv: list[str] | None = None) -> int:
    parser = _configure(argparse.ArgumentParser(prog="srum train", description=__doc__,
                                                formatter_class=argparse.RawDescriptionHelpFormatter))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
