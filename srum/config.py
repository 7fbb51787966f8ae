# SPDX-License-Identifier: Apache-2.0
"""YAML configs with dotted command-line overrides, checked against dataclasses.

Every stage (``generate``, ``propose``, ``judge``, ``train`` ...) describes its settings
as a tree of dataclasses. :func:`load_config` reads a YAML file, applies overrides such
as ``optim.lr=1e-5`` or ``sampling.cfg_interval=[0.4,1.0]`` (values parsed as YAML), and
builds the dataclass tree. An unknown key, a wrong type or a missing required field is a
:class:`ConfigError` that names the file and the dotted field, so a typo never silently
falls back to a default.

Relative paths written in a config file (fields marked :data:`PATH` / :data:`MODEL`) are
taken from the file's :func:`config_root`, so a command behaves the same from any
directory; paths in command-line overrides keep meaning the current directory.
"""
from __future__ import annotations

import dataclasses
import math
import os
import types
import typing
from pathlib import Path
from typing import Any, Sequence, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not match the expected fields."""


# ------------------------------------------------------------------ paths in config files
# Field metadata marking a path. A relative path written in a config *file* means
# "relative to the config root" (below), not to whatever directory the command runs in;
# a path given as a command-line override keeps meaning the current directory.
PATH = {"srum_path": "file"}      # a file or folder: always taken from the config root
MODEL = {"srum_path": "model"}    # a model directory or a hub id: from the root when it exists there
ROOT_ENV = "SRUM_ROOT"            # overrides the config root of every config file


def config_root(path: str | os.PathLike) -> Path:
    """What a relative path in config file ``path`` is relative to: ``$SRUM_ROOT`` if set;
    else, for a file under a ``configs/`` folder (the repository's ``configs/data/generate.yaml``),
    the folder holding ``configs/`` (the repository root, where ``data/`` and ``runs/``
    are); else the file's own folder."""
    env = os.environ.get(ROOT_ENV)
    if env:
        return Path(os.path.expanduser(env)).absolute()
    here = Path(path).absolute().parent
    for folder in (here, *here.parents):
        if folder.name == "configs":
            return folder.parent
    return here


def _rootable(text: Any) -> bool:
    """A relative path as written (not ~, $VAR, a {placeholder} or a URL)."""
    return (isinstance(text, str) and text.strip() != "" and not os.path.isabs(text)
            and not text.startswith(("~", "$", "{")) and "://" not in text)


def _resolve_value(value: Any, kind: str, root: Path) -> Any:
    if isinstance(value, list):
        return [_resolve_value(v, kind, root) for v in value]
    if not _rootable(value):
        return value
    candidate = os.path.normpath(root / value)
    if kind == "model" and not os.path.exists(candidate):
        return value   # a hub id (ByteDance-Seed/BAGEL-7B-MoT), or not there: left as written
    return candidate


def _dataclass_of(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        found = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return found[0] if len(found) == 1 else None
    return None


def resolve_paths(cls: type, data: Any, root: str | os.PathLike) -> Any:
    """``data`` (raw YAML for dataclass ``cls``) with the relative paths of its
    :data:`PATH` / :data:`MODEL` fields made absolute against ``root``. Unknown keys and
    wrong types are left for :func:`build` to report."""
    if not isinstance(data, dict) or not dataclasses.is_dataclass(cls):
        return data
    hints = typing.get_type_hints(cls)
    out = dict(data)
    for f in dataclasses.fields(cls):
        if f.name not in out:
            continue
        kind = f.metadata.get("srum_path")
        if kind:
            out[f.name] = _resolve_value(out[f.name], kind, Path(root))
        elif (sub := _dataclass_of(hints[f.name])) is not None:
            out[f.name] = resolve_paths(sub, out[f.name], root)
    return out


def parse_overrides(overrides: Sequence[str]) -> dict:
    """``["a.b=1", "c=[1, 2]"]`` -> ``{"a": {"b": 1}, "c": [1, 2]}`` (values parsed as YAML)."""
    tree: dict = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected dotted.key=value")
        key, _, text = item.partition("=")
        parts = key.strip().split(".")
        if not all(parts):
            raise ConfigError(f"override {item!r}: empty key component")
        try:
            value = yaml.safe_load(text) if text.strip() else None
        except yaml.YAMLError as err:
            raise ConfigError(f"override {item!r}: value is not valid YAML ({err})") from None
        node = tree
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r}: {p} is both a value and a section")
        node[parts[-1]] = value
    return tree


def nest_dotted(overrides: dict) -> dict:
    """``{"a.b": 1, "c": {"d.e": 2}}`` -> ``{"a": {"b": 1}, "c": {"d": {"e": 2}}}``: a YAML
    mapping of dotted overrides (the pipeline's and the study's ``overrides:``) as a tree."""
    out: dict = {}
    for key, value in overrides.items():
        value = nest_dotted(value) if isinstance(value, dict) else value
        for part in reversed(str(key).split(".")):
            value = {part: value}
        out = merge(out, value)
    return out


def merge(base: dict, update: dict) -> dict:
    """Recursive dict merge; ``update`` wins. Returns a new dict."""
    out = dict(base)
    for k, v in update.items():
        out[k] = merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml(path: str | os.PathLike) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(data).__name__}")
    return data


def _convert(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, where)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0] if len(errors) == 1 else f"{where}: {value!r} matches none of {tp}")
    if origin is typing.Literal:
        if value not in typing.get_args(tp):
            raise ConfigError(f"{where}: {value!r} is not one of {list(typing.get_args(tp))}")
        return value
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return build(tp, value, where)
    if origin in (list, tuple, Sequence) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise ConfigError(f"{where}: expected {len(args)} values, got {len(value)}")
            return tuple(_convert(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
        item = args[0] if args else Any
        seq = [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
        return tuple(seq) if origin is tuple else seq
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if tp is float:
        return _finite_float(value, where)
    if tp is str:
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _finite_float(value: Any, where: str) -> float:
    """A float setting: a number (or a string YAML 1.1 left unparsed, such as "2e-5"),
    finite: NaN and infinity would only fail much later, inside torch, without the field."""
    if isinstance(value, str):  # YAML 1.1 reads "2e-5" (no dot) as a string
        try:
            value = float(value)
        except ValueError:
            pass
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{where}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ConfigError(f"{where}: expected a finite number, got {value!r}")
    return float(value)


def _post_init_error(where: str, cls: type, err: Exception) -> ConfigError:
    """A ``__post_init__`` check as a ConfigError prefixed with its section once (the
    check may name the section itself: "train: train: ..." helps nobody)."""
    prefix = where or cls.__name__
    message = str(err)
    return ConfigError(message if message.startswith(f"{prefix}:") else f"{prefix}: {message}")


def build(cls: type[T], data: dict, where: str = "") -> T:
    """Build dataclass ``cls`` from a nested dict, checking every key and type."""
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(f"unknown field(s) {', '.join(prefix + u for u in unknown)}; "
                          f"expected some of: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, f in fields.items():
        key = f"{where}.{name}" if where else name
        if name in data:
            kwargs[name] = _convert(data[name], hints[name], key)
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required field {key}")
    try:
        obj = cls(**kwargs)
    except (ValueError, TypeError) as err:  # __post_init__ checks
        raise _post_init_error(where, cls, err) from None
    return obj


def load_config(cls: type[T], path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> T:
    """YAML file (optional) + dotted overrides -> a checked ``cls`` instance. Relative
    paths in the file are taken from its :func:`config_root`; in overrides, from the
    current directory."""
    data = resolve_paths(cls, read_yaml(path), config_root(path)) if path is not None else {}
    data = merge(data, parse_overrides(overrides))
    try:
        return build(cls, data)
    except ConfigError as err:
        source = f"{path}" if path is not None else "config"
        raise ConfigError(f"{source}: {err}") from None


def to_dict(cfg: Any) -> dict:
    """Dataclass tree -> plain dict (tuples as lists), suitable for YAML/JSON."""
    def plain(x):
        if dataclasses.is_dataclass(x):
            return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
        if isinstance(x, (list, tuple)):
            return [plain(v) for v in x]
        if isinstance(x, dict):
            return {k: plain(v) for k, v in x.items()}
        if isinstance(x, Path):
            return str(x)
        return x
    return plain(cfg)


def dump_config(cfg: Any, path: str | os.PathLike) -> None:
    """Write the resolved config as YAML (atomically)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    os.replace(tmp, path)
