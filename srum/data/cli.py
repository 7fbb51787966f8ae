# SPDX-License-Identifier: Apache-2.0
"""``srum datasets list|check``: show the dataset registry and check that its files are usable.

``list`` prints each dataset's name, kind, paths as written and description. ``check``
resolves the datasets (all of them, or the ones named) and reads them: prompt datasets
are counted with their category filter applied (total and per category), reward datasets
by valid records, image datasets by image files. It exits 1 when any named dataset is
missing or unreadable, naming it. Without names and without ``--run-dir``, datasets whose
paths are relative to a run directory are reported as skipped rather than failed.
"""
from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections import Counter
from pathlib import Path

from .registry import DatasetRegistry, load_registry

EXAMPLES = """examples:
  srum datasets list
  srum datasets check examples t2i_compbench_val
  srum datasets check self_rewards --run-dir runs/r1
  srum datasets list --registry my_datasets.yaml      (or: export SRUM_DATASETS=my_datasets.yaml)
"""
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
# Skipped rows shown per dataset by `check` (the total is always printed).
SHOWN_ERRORS = 5


class DatasetCheckError(ValueError):
    """A dataset whose files resolve but cannot be used (no prompts, a category that never occurs)."""


def _add_registry_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--registry", default=None, metavar="FILE",
                   help="registry YAML (default: $SRUM_DATASETS if set, else data/datasets.yaml in the repository)")


def add_datasets_parser(subparsers) -> argparse.ArgumentParser:
    """Register ``srum datasets list|check`` on an ``argparse`` subparsers object."""
    p = subparsers.add_parser("datasets", help="list the dataset registry, or check that its datasets resolve and read",
                              description=__doc__, epilog=EXAMPLES,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="datasets_command", required=True)

    q = sub.add_parser("list", help="name, kind, paths and description of every dataset")
    _add_registry_arg(q)
    q.set_defaults(func=cmd_list)

    q = sub.add_parser("check", help="resolve datasets and count their prompts / records; exit 1 if any is unusable")
    _add_registry_arg(q)
    q.add_argument("--run-dir", default=None, metavar="DIR",
                   help="run directory that relative paths and {run_dir} refer to")
    q.add_argument("--strict", action="store_true",
                   help="also fail when rows of a file were skipped (bad JSON, missing ids, duplicates)")
    q.add_argument("names", nargs="*", metavar="NAME", help="datasets to check (default: all)")
    q.set_defaults(func=cmd_check)
    return p


def _load(args) -> DatasetRegistry | None:
    try:
        return load_registry(args.registry)
    except (ValueError, OSError) as err:
        print(f"srum datasets: error: {err}", file=sys.stderr)
        return None


def cmd_list(args) -> int:
    registry = _load(args)
    if registry is None:
        return 2
    print(f"registry: {registry.source}")
    if not registry.names():
        print("(no datasets)")
    width = max((len(n) for n in registry.names()), default=0)
    for name in registry.names():
        ds = registry.get(name)
        print(f"{name:<{width}}  {ds.kind:<7}  {ds.paths[0]}")
        for extra in ds.paths[1:]:
            print(f"{'':<{width}}  {'':<7}  {extra}")
        filters = []
        if ds.categories:
            filters.append(f"categories: {', '.join(ds.categories)}")
        if ds.limit_per_category is not None:
            filters.append(f"limit_per_category: {ds.limit_per_category}")
        for line in filters:
            print(f"{'':<{width}}    {line}")
        if ds.description:
            print(textwrap.fill(ds.description, width=100, initial_indent=" " * (width + 4),
                                subsequent_indent=" " * (width + 4)))
    return 0


def _needs_run_dir(registry: DatasetRegistry, name: str) -> bool:
    """True when the dataset resolves with some run directory but not without one."""
    try:
        registry.resolve(name, None, must_exist=False)
        return False
    except ValueError:
        pass
    try:
        registry.resolve(name, Path(os.sep, "run-dir"), must_exist=False)
        return True
    except ValueError:
        return False


def _summarise(registry: DatasetRegistry, name: str, files: list[Path]) -> tuple[list[str], list[str]]:
    """Read a resolved dataset. Returns (summary lines, skipped-row messages); raises
    ValueError / OSError when the dataset cannot be used at all."""
    ds = registry.get(name)
    if ds.kind == "prompts":
        from .prompts import read_prompts
        items, errors = read_prompts(files, categories=ds.categories, limit_per_category=ds.limit_per_category)
        if not items:
            raise DatasetCheckError(f"dataset {name!r}: no usable prompts"
                                    + (f" in categories {', '.join(ds.categories)}" if ds.categories else ""))
        per_category = Counter(item.category if item.category is not None else "(none)" for item in items)
        if ds.categories:
            absent = [c for c in ds.categories if c not in per_category]
            if absent:
                raise DatasetCheckError(f"dataset {name!r}: no prompts in categories {', '.join(absent)} "
                                        f"(found: {', '.join(sorted(per_category))})")
        lines = [f"{len(items)} prompts"]
        lines += [f"  {cat}: {count}" for cat, count in sorted(per_category.items())]
        return lines, errors
    if ds.kind == "rewards":
        from srum.records import read_records
        total, errors = 0, []
        for path in files:
            if not path.is_file():
                raise DatasetCheckError(f"dataset {name!r}: {path} is not a file (reward records are JSONL files)")
            records, skipped = read_records(path)
            total += len(records)
            errors += skipped
        if not total:
            raise DatasetCheckError(f"dataset {name!r}: no valid reward records")
        return [f"{total} records"], errors
    # images: files directly, or the image files inside folders (not recursive)
    count = 0
    for path in files:
        if path.is_dir():
            count += sum(1 for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            count += 1
    if not count:
        raise DatasetCheckError(f"dataset {name!r}: no image files ({', '.join(IMAGE_SUFFIXES)})")
    return [f"{count} images"], []


def cmd_check(args) -> int:
    registry = _load(args)
    if registry is None:
        return 2
    print(f"registry: {registry.source}")
    explicit = bool(args.names)
    names = list(dict.fromkeys(args.names)) if explicit else registry.names()
    failed: list[str] = []
    for name in names:
        if name not in registry:
            print(f"FAIL {name}: {_error_text(registry, name)}")
            failed.append(name)
            continue
        ds = registry.get(name)
        if not explicit and args.run_dir is None and _needs_run_dir(registry, name):
            print(f"skip {name} ({ds.kind}): its paths are relative to a run directory; give --run-dir")
            continue
        try:
            files = registry.resolve(name, args.run_dir)
            lines, errors = _summarise(registry, name, files)
        except (ValueError, OSError) as err:
            print(f"FAIL {name} ({ds.kind}): {err}")
            if isinstance(err, FileNotFoundError) and ds.description:
                # The description says where the files come from (most "missing" datasets
                # are ones the user has not downloaded yet).
                print(textwrap.fill(ds.description, width=100, initial_indent="     ", subsequent_indent="     "))
            failed.append(name)
            continue
        bad = args.strict and bool(errors)
        print(f"{'FAIL' if bad else 'ok  '} {name} ({ds.kind}): {len(files)} file(s), {lines[0]}"
              + (f", {len(errors)} row(s) skipped" if errors else ""))
        for path in files:
            print(f"       {path}")
        for line in lines[1:]:
            print(f"     {line}")
        for message in errors[:SHOWN_ERRORS]:
            print(f"     skipped: {message}")
        if len(errors) > SHOWN_ERRORS:
            print(f"     ... and {len(errors) - SHOWN_ERRORS} more skipped row(s)")
        if bad:
            failed.append(name)
    if failed:
        print(f"{len(failed)} of {len(names)} dataset(s) unusable: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


def _error_text(registry: DatasetRegistry, name: str) -> str:
    try:
        registry.get(name)
    except ValueError as err:
        return str(err)
    return ""
