# SPDX-License-Identifier: Apache-2.0
"""The dataset registry: datasets named in YAML instead of a Python dict.

A registry file looks like::

    datasets:
      examples:
        kind: prompts                       # prompts | rewards | images
        paths: "{registry_dir}/prompts/examples.jsonl"   # a string or a list
        categories: [color, shape]          # prompts only, optional: keep only these
        limit_per_category: 4               # prompts only, optional: first N of each
        description: "16 hand-written prompts"

Dataset names match ``[A-Za-z0-9_.-]+``. Unknown fields, wrong types, a missing ``kind``
or ``paths`` and an unknown kind are errors naming the file (with the line when the
registry came from YAML), the dataset and the field.

Path resolution (:func:`resolve_path`), in this order:

1. ``{registry_dir}`` becomes the folder of the registry file (an error when the registry
   has none, e.g. built from a dict without ``base_dir``); ``{run_dir}`` becomes the run
   directory (an error when none is given). Any other ``{name}`` is an error (a typo).
2. ``$VAR`` / ``${VAR}`` in the written text become environment variables (an unset one
   is an error, not a silent literal), and a leading ``~`` becomes the home folder.
3. An absolute path stays; a relative one is taken relative to the run directory (an
   error when there is none): ``judge/rewards.jsonl`` means "this run's rewards".
4. A path with glob characters (``*``, ``?``, ``[``; ``**`` recurses) becomes its sorted
   matches. Only the written text counts: a folder substituted for a placeholder, a
   variable or ``~`` is taken literally even if its name has ``[`` or ``$`` in it.

:meth:`DatasetRegistry.resolve` then, with ``must_exist``, raises :class:`FileNotFoundError`
for a path or pattern that matches nothing, and drops duplicates keeping the first.
"""
from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = [
    "KINDS",
    "ENV_VAR",
    "Dataset",
    "DatasetRegistry",
    "default_registry_path",
    "load_registry",
    "registry_from_dict",
    "resolve_path",
    "read_dataset_prompts",
]

KINDS = ("prompts", "rewards", "images")
# Environment variable naming the registry file used when no path is given.
ENV_VAR = "SRUM_DATASETS"

_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")
_PLACEHOLDER = re.compile(r"(?<!\$)\{([^{}]*)\}")  # not ${VAR}
_ENV = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")
_GLOB_CHARS = re.compile(r"[*?\[]")
_FIELDS = ("kind", "paths", "categories", "limit_per_category", "description")
_PROMPT_ONLY = ("categories", "limit_per_category")


@dataclass(frozen=True)
class Dataset:
    name: str
    kind: str                      # "prompts" | "rewards" | "images"
    paths: tuple[str, ...]         # as written in the YAML
    categories: tuple[str, ...] | None = None   # prompts: keep only these categories
    limit_per_category: int | None = None       # prompts: keep the first N of each category
    description: str = ""


# --------------------------------------------------------------------------- path resolution

def _is_pattern(text: str) -> bool:
    """Glob characters in the text as written (placeholders and variables do not count)."""
    return bool(_GLOB_CHARS.search(_ENV.sub("", _PLACEHOLDER.sub("", text))))


def _expand(text: str, run_dir: Path | None, registry_dir: Path | None, *, as_pattern: bool = False) -> str:
    """Steps 1-3 of the resolution: placeholders, variables, ``~``, run-directory anchoring.

    Only the text the user wrote is expanded or globbed: substituted values (folders,
    variables, the home folder) are taken literally, so a folder called ``a$b`` or ``[x]``
    stays what it is (``as_pattern`` glob-escapes them)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"path must be a non-empty string, got {text!r}")
    literal = glob.escape if as_pattern else (lambda value: value)

    def env(piece: str) -> str:
        def sub(match: re.Match) -> str:
            name = match.group(1) or match.group(2)
            value = os.environ.get(name)
            if value is None:
                raise ValueError(f"path {text!r}: environment variable ${name} is not set")
            return literal(value)
        return _ENV.sub(sub, piece)

    pieces: list[str] = []
    rest = text
    if text.startswith("~"):
        user, sep, rest = text.partition("/")
        pieces.append(literal(os.path.expanduser(user)) + sep)
    last = 0
    for match in _PLACEHOLDER.finditer(rest):
        pieces.append(env(rest[last:match.start()]))
        key = match.group(1)
        if key == "registry_dir":
            if registry_dir is None:
                raise ValueError(f"path {text!r} uses {{registry_dir}} but the registry was not read from a "
                                 "file and has no base folder")
            pieces.append(literal(os.fspath(Path(registry_dir).absolute())))
        elif key == "run_dir":
            if run_dir is None:
                raise ValueError(f"path {text!r} uses {{run_dir}} but no run directory was given")
            pieces.append(literal(os.fspath(Path(run_dir).absolute())))
        else:
            raise ValueError(f"path {text!r}: unknown placeholder {{{key}}} "
                             "(known: {registry_dir}, {run_dir})")
        last = match.end()
    pieces.append(env(rest[last:]))
    expanded = "".join(pieces)
    if not os.path.isabs(expanded):
        if run_dir is None:
            raise ValueError(f"path {text!r} is relative, and relative paths are taken from the run "
                             "directory, but none was given (give one, or write an absolute path or "
                             "{registry_dir}/...)")
        expanded = os.path.join(literal(os.fspath(Path(run_dir).absolute())), expanded)
    return os.path.normpath(expanded)


def resolve_path(text: str, *, run_dir: Path | None, registry_dir: Path | None) -> list[Path]:
    """One path as written -> the absolute paths it names (see the module docstring).

    A path without glob characters gives one path whether or not it exists; a pattern
    gives its sorted matches (possibly none). Raises :class:`ValueError` when the text
    needs a folder that is not given, names an unknown placeholder or an unset variable.
    """
    if _is_pattern(text):
        pattern = _expand(text, run_dir, registry_dir, as_pattern=True)
        return [Path(p) for p in sorted(glob.glob(pattern, recursive=True))]
    return [Path(_expand(text, run_dir, registry_dir))]


# --------------------------------------------------------------------------- registry

class DatasetRegistry:
    """Named datasets. ``path`` is the file it came from (None when built from a dict).

    Each dataset remembers the folder its ``{registry_dir}`` means, so a registry merged
    from two files resolves every entry against its own file's folder.
    """

    def __init__(self, datasets: dict[str, Dataset], path: Path | None = None, *,
                 base_dir: Path | None = None, source: str | None = None,
                 base_dirs: dict[str, Path | None] | None = None) -> None:
        self.path: Path | None = Path(path) if path is not None else None
        self.datasets: dict[str, Dataset] = dict(datasets)
        self.source: str = source if source is not None else (os.fspath(self.path) if self.path else "<dict>")
        if base_dir is None and self.path is not None:
            base_dir = self.path.absolute().parent
        default = Path(base_dir).absolute() if base_dir is not None else None
        given = base_dirs or {}
        self._base_dirs: dict[str, Path | None] = {name: given.get(name, default) for name in self.datasets}

    def __repr__(self) -> str:
        return f"DatasetRegistry({self.source!r}, datasets={self.names()})"

    def __contains__(self, name: object) -> bool:
        return name in self.datasets

    def names(self) -> list[str]:
        return list(self.datasets)

    def registry_dir(self, name: str) -> Path | None:
        """The folder ``{registry_dir}`` means for dataset ``name``."""
        self.get(name)
        return self._base_dirs[name]

    def get(self, name: str) -> Dataset:
        try:
            return self.datasets[name]
        except (KeyError, TypeError):
            known = ", ".join(self.names()) or "(none)"
            raise ValueError(f"unknown dataset {name!r} in registry {self.source}; known: {known}") from None

    def resolve(self, name: str, run_dir: str | os.PathLike | None = None, *,
                must_exist: bool = True) -> list[Path]:
        """Dataset ``name`` -> its files (absolute, globs expanded, duplicates dropped, order kept).

        Raises :class:`ValueError` (unknown name, relative path without ``run_dir``, bad
        placeholder or variable) and, with ``must_exist``, :class:`FileNotFoundError` naming
        the dataset, the path as written and what it resolved to.
        """
        dataset = self.get(name)
        run = Path(run_dir) if run_dir is not None else None
        out: list[Path] = []
        seen: set[Path] = set()
        for text in dataset.paths:
            try:
                found = resolve_path(text, run_dir=run, registry_dir=self._base_dirs[name])
            except ValueError as err:
                raise ValueError(f"dataset {name!r} ({self.source}): {err}") from None
            if must_exist:
                if not found:
                    raise FileNotFoundError(f"dataset {name!r} ({self.source}): pattern {text!r} matches no "
                                            f"file (resolved to {_expand(text, run, self._base_dirs[name])})")
                missing = [p for p in found if not p.exists()]
                if missing:
                    raise FileNotFoundError(f"dataset {name!r} ({self.source}): path {text!r} does not exist "
                                            f"(resolved to {missing[0]})")
            for p in found:
                if p not in seen:
                    seen.add(p)
                    out.append(p)
        return out

    def merged(self, other: "DatasetRegistry") -> "DatasetRegistry":
        """A new registry: this one's entries, then ``other``'s (which replace same-named ones).
        ``path`` stays this registry's; each entry keeps its own ``{registry_dir}``."""
        datasets = {**self.datasets, **other.datasets}
        base_dirs = {**self._base_dirs, **other._base_dirs}
        return DatasetRegistry(datasets, self.path, source=f"{self.source} + {other.source}", base_dirs=base_dirs)


# --------------------------------------------------------------------------- schema checks

class _Where:
    """Builds ``file:line: dataset 'x': field 'y'`` prefixes from an optional line index."""

    def __init__(self, source: str, lines: dict[tuple[str, ...], int]):
        self.source, self.lines = source, lines

    def __call__(self, *keys: str) -> str:
        line = None
        for n in range(len(keys), 0, -1):  # the most specific key with a known line
            line = self.lines.get(tuple(keys[:n]))
            if line is not None:
                break
        head = f"{self.source}:{line}" if line is not None else self.source
        parts = [head]
        if len(keys) >= 2:
            parts.append(f"dataset {keys[1]!r}")
        if len(keys) >= 3:
            parts.append(f"field {keys[2]!r}")
        return ": ".join(parts)


def _string_list(value: Any, where: str, what: str) -> tuple[str, ...]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not value:
        raise ValueError(f"{where}: must be a {what} or a non-empty list of them, got {value!r}")
    for item in value:
        if not isinstance(item, str) or not item.strip():
            raise ValueError(f"{where}: every entry must be a non-empty string, got {item!r}")
    return tuple(value)


def _dataset_from_entry(name: Any, entry: Any, where: _Where) -> Dataset:
    if not isinstance(name, str) or not _NAME.match(name):
        raise ValueError(f"{where('datasets', str(name))}: dataset names must match [A-Za-z0-9_.-]+, "
                         f"got {name!r}")
    if not isinstance(entry, dict):
        raise ValueError(f"{where('datasets', name)}: expected a mapping with 'kind' and 'paths', "
                         f"got {type(entry).__name__}")
    unknown = [k for k in entry if k not in _FIELDS]
    if unknown:
        raise ValueError(f"{where('datasets', name, str(unknown[0]))}: unknown field "
                         f"(known: {', '.join(_FIELDS)})")
    for field in ("kind", "paths"):
        if field not in entry:
            raise ValueError(f"{where('datasets', name, field)}: missing (every dataset needs 'kind' and 'paths')")
    kind = entry["kind"]
    if kind not in KINDS:
        raise ValueError(f"{where('datasets', name, 'kind')}: must be one of {', '.join(KINDS)}, got {kind!r}")
    paths = _string_list(entry["paths"], where("datasets", name, "paths"), "path")
    for field in _PROMPT_ONLY:
        if entry.get(field) is not None and kind != "prompts":
            raise ValueError(f"{where('datasets', name, field)}: only prompt datasets can have it (kind is {kind!r})")
    categories = entry.get("categories")
    if categories is not None:
        categories = _string_list(categories, where("datasets", name, "categories"), "category")
    limit = entry.get("limit_per_category")
    if limit is not None and (not isinstance(limit, int) or isinstance(limit, bool) or limit <= 0):
        raise ValueError(f"{where('datasets', name, 'limit_per_category')}: must be a positive integer, got {limit!r}")
    description = entry.get("description", "")
    if description is None:
        description = ""
    if not isinstance(description, str):
        raise ValueError(f"{where('datasets', name, 'description')}: must be a string, got {description!r}")
    return Dataset(name=name, kind=kind, paths=paths, categories=categories,
                   limit_per_category=limit, description=description.strip())


def _registry(data: Any, source: str, base_dir: Path | None, path: Path | None,
              lines: dict[tuple[str, ...], int]) -> DatasetRegistry:
    where = _Where(source, lines)
    if data is None:
        data = {"datasets": {}}
    if not isinstance(data, dict):
        raise ValueError(f"{where()}: expected a mapping with a 'datasets' key, got {type(data).__name__}")
    if "datasets" in data:
        extra = [k for k in data if k != "datasets"]
        if extra:
            raise ValueError(f"{where(str(extra[0]))}: unknown top-level key {extra[0]!r} (only 'datasets')")
        entries = data["datasets"]
        if entries is None:
            entries = {}
        if not isinstance(entries, dict):
            raise ValueError(f"{where('datasets')}: 'datasets' must be a mapping of name -> dataset, "
                             f"got {type(entries).__name__}")
    else:
        entries = data  # the name -> dataset mapping itself (e.g. a pipeline YAML's `datasets:` value)
    datasets = {name: _dataset_from_entry(name, entry, where) for name, entry in entries.items()}
    return DatasetRegistry(datasets, path, base_dir=base_dir, source=source)


def registry_from_dict(data: dict, source: str = "<dict>", base_dir: Path | None = None) -> DatasetRegistry:
    """A registry from already-parsed YAML: either the file shape ``{"datasets": {...}}`` or
    the ``name -> dataset`` mapping itself (so a dataset may not be called ``datasets``).
    ``base_dir`` is what ``{registry_dir}`` means for these entries; ``source`` names them
    in errors (e.g. ``"pipeline.yaml: datasets"``)."""
    return _registry(data, source, Path(base_dir) if base_dir is not None else None, None, {})


def _parse_with_lines(text: str, source: str) -> tuple[Any, dict[tuple[str, ...], int]]:
    """YAML text -> (data, {key path: 1-based line}) for the top level, the dataset names and
    their fields; duplicate keys there (which PyYAML would silently overwrite) are errors."""
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        at = f"{source}:{mark.line + 1}" if mark is not None else source
        problem = getattr(err, "problem", None) or str(err)
        raise ValueError(f"{at}: not valid YAML ({problem})") from None
    finally:
        loader.dispose()
    lines: dict[tuple[str, ...], int] = {}

    def walk(mapping: yaml.Node, prefix: tuple[str, ...], depth: int) -> None:
        if not isinstance(mapping, yaml.MappingNode):
            return
        for key_node, value_node in mapping.value:
            if not isinstance(key_node, yaml.ScalarNode):
                continue
            key = prefix + (str(key_node.value),)
            line = key_node.start_mark.line + 1
            if key in lines:
                raise ValueError(f"{source}:{line}: duplicate key {key[-1]!r} (first at line {lines[key]})")
            lines[key] = line
            if depth > 1 and (key == ("datasets",) or len(key) == 2):
                walk(value_node, key, depth - 1)

    if node is not None:
        walk(node, (), 3)
    return data, lines


def default_registry_path() -> tuple[Path, str]:
    """The registry used when none is named: ``$SRUM_DATASETS`` if set; else, in a source
    checkout, the repository's ``data/datasets.yaml``; else (a regular install from a wheel)
    the copy installed with the package (``srum/data/shipped/``, package data), whose
    shipped prompt files resolve next to it. Never the current directory: the same
    registry answers from any directory. Returns (path, where it came from)."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(os.path.expanduser(env)), f"${ENV_VAR}"
    checkout = Path(__file__).resolve().parents[2] / "data" / "datasets.yaml"
    if checkout.is_file():
        return checkout, "the repository's data/datasets.yaml"
    return Path(__file__).resolve().parent / "shipped" / "datasets.yaml", "the registry installed with srum"


def load_registry(path: str | os.PathLike | None = None) -> DatasetRegistry:
    """Read a registry YAML. ``None`` -> :func:`default_registry_path`."""
    if path is None:
        path, origin = default_registry_path()
    else:
        path, origin = Path(os.path.expanduser(os.fspath(path))), "given"
    if not path.is_file():
        raise FileNotFoundError(f"dataset registry not found: {path} ({origin})")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    data, lines = _parse_with_lines(text, os.fspath(path))
    return _registry(data, os.fspath(path), path.absolute().parent, path.absolute(), lines)


# --------------------------------------------------------------------------- readers

def read_dataset_prompts(registry: DatasetRegistry, name: str, run_dir: str | os.PathLike | None = None):
    """The prompts of dataset ``name`` with its ``categories`` / ``limit_per_category`` applied.
    Returns ``read_prompts``'s ``(items, errors)``."""
    from .prompts import read_prompts
    dataset = registry.get(name)
    if dataset.kind != "prompts":
        raise ValueError(f"dataset {name!r} ({registry.source}) is of kind {dataset.kind!r}, not 'prompts'")
    return read_prompts(registry.resolve(name, run_dir), categories=dataset.categories,
                        limit_per_category=dataset.limit_per_category)
