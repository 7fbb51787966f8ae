# SPDX-License-Identifier: Apache-2.0
"""The YAML dataset registry (srum/data/registry.py) and ``srum datasets list|check``."""
from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from srum.data.cli import add_datasets_parser
from srum.data.registry import (
    Dataset,
    load_registry,
    read_dataset_prompts,
    registry_from_dict,
    resolve_path,
)
from srum.records import SCHEMA

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "data" / "datasets.yaml"
SHARED = Path("/work/shared/data")


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def prompts_jsonl(path: Path, rows: list[tuple[str, str]]) -> Path:
    """rows: (id, category) -> a JSONL prompt file."""
    return write(path, "".join(json.dumps({"id": i, "prompt": f"prompt {i}", "category": c}) + "\n" for i, c in rows))


def reward_record(image_id: str) -> dict:
    return {
        "schema": SCHEMA, "image_id": image_id, "image_file": f"images/{image_id}.png",
        "prompt": "a red cup", "width": 64, "height": 32,
        "global": {"score": 0.5, "reason": "", "status": "ok", "method": "text"},
        "regions": [{"region_id": 0, "bbox": [0, 0, 32, 16], "mask": None, "label": "cup", "score": -0.5,
                     "reason": "", "status": "ok", "method": "text"}],
    }


def run_cli(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="srum")
    sub = parser.add_subparsers(dest="command", required=True)
    add_datasets_parser(sub)
    args = parser.parse_args(["datasets", *argv])
    return args.func(args)


# --------------------------------------------------------------------------- the shipped registry

def test_shipped_registry_loads_and_examples_has_16_prompts():
    registry = load_registry(SHIPPED)
    assert registry.path == SHIPPED
    assert registry.names() == ["examples", "srum_train_comp", "srum_val_comp", "t2i_compbench_val", "miniworld_train",
                                "wise_culture", "wise_space_time", "wise_science", "srum6k_compbench", "self_rewards"]
    assert [registry.get(n).kind for n in registry.names()] == ["prompts"] * 8 + ["rewards"] * 2
    assert registry.get("self_rewards").paths == ("judge/rewards.jsonl",)
    assert all(registry.get(n).description for n in registry.names())
    assert registry.resolve("examples") == [REPO / "data" / "prompts" / "examples.jsonl"]
    items, errors = read_dataset_prompts(registry, "examples")
    assert errors == [] and len(items) == 16
    categories = {item.category for item in items}
    assert len(categories) == 8 and all(sum(i.category == c for i in items) == 2 for c in categories)
    # the miniature world's training prompts (shipped): 200 per category, none of a held-out combination
    from srum.miniworld import world as W
    items, errors = read_dataset_prompts(registry, "miniworld_train")
    assert errors == [] and len(items) == 1200 and {i.category for i in items} == set(W.CATEGORIES)
    specs = {json.loads(line)["id"]: W.PromptSpec.from_dict(json.loads(line)["spec"])
             for line in registry.resolve("miniworld_train")[0].read_text().splitlines()}
    assert not any(W.is_heldout(s) for s in specs.values())
    assert [s.text for s in specs.values()] == [i.prompt for i in items]


def test_default_registry_is_the_shipped_file_or_the_env_var(tmp_path, monkeypatch):
    monkeypatch.delenv("SRUM_DATASETS", raising=False)
    assert load_registry().path == SHIPPED
    other = write(tmp_path / "mine.yaml", "datasets:\n  only:\n    kind: images\n    paths: imgs\n")
    monkeypatch.setenv("SRUM_DATASETS", str(other))
    assert load_registry().names() == ["only"]
    monkeypatch.setenv("SRUM_DATASETS", str(tmp_path / "absent.yaml"))
    with pytest.raises(FileNotFoundError, match=r"absent\.yaml.*\$SRUM_DATASETS"):
        load_registry()


@pytest.mark.skipif(not (SHARED / "srum-prompts" / "train_comp.json").is_file()
                    or not (SHARED / "t2i-compbench").is_dir(), reason="shared prompt data not present")
def test_shipped_entries_resolve_once_the_files_are_in_place(tmp_path):
    # The shipped YAML in a folder where the user has put the downloaded files.
    shutil.copy(SHIPPED, tmp_path / "datasets.yaml")
    shutil.copytree(REPO / "data" / "prompts", tmp_path / "prompts")
    (tmp_path / "prompts" / "train_comp.json").symlink_to(SHARED / "srum-prompts" / "train_comp.json")
    (tmp_path / "prompts" / "val_comp.json").symlink_to(SHARED / "srum-prompts" / "val_comp.json")
    (tmp_path / "t2i-compbench").symlink_to(SHARED / "t2i-compbench")
    registry = load_registry(tmp_path / "datasets.yaml")
    items, errors = read_dataset_prompts(registry, "srum_train_comp")
    assert errors == [] and len(items) == 6234
    items, errors = read_dataset_prompts(registry, "srum_val_comp")
    assert errors == [] and len(items) == 2670
    files = registry.resolve("t2i_compbench_val")
    assert [f.name for f in files] == [f"{c}_val.txt" for c in ("3d_spatial", "color", "complex", "non_spatial",
                                                                 "numeracy", "shape", "spatial", "texture")]
    items, errors = read_dataset_prompts(registry, "t2i_compbench_val")
    assert errors == [] and len(items) == 2400
    assert sum(i.category == "non-spatial" for i in items) == 300


# --------------------------------------------------------------------------- schema errors

GOOD = "    kind: prompts\n    paths: a.jsonl\n"


@pytest.mark.parametrize("text, expected", [
    ("datasets:\n  x:\n" + GOOD + "    colour: red\n", r"reg\.yaml:5: dataset 'x': field 'colour': unknown field"),
    ("datasets:\n  x:\n    paths: a.jsonl\n", r"reg\.yaml:2: dataset 'x': field 'kind': missing"),
    ("datasets:\n  x:\n    kind: prompts\n", r"reg\.yaml:2: dataset 'x': field 'paths': missing"),
    ("datasets:\n  x:\n    kind: videos\n    paths: a\n", r"reg\.yaml:3: dataset 'x': field 'kind': must be one of"),
    ("datasets:\n  x:\n    kind: prompts\n    paths: 3\n", r"reg\.yaml:4: dataset 'x': field 'paths': must be a path"),
    ("datasets:\n  x:\n    kind: prompts\n    paths: []\n", r"field 'paths': must be a path or a non-empty list"),
    ("datasets:\n  x:\n    kind: prompts\n    paths: [a, 7]\n",
     r"field 'paths': every entry must be a non-empty string"),
    ("datasets:\n  x:\n" + GOOD + "    categories: [color, 3]\n", r":5: dataset 'x': field 'categories'"),
    ("datasets:\n  x:\n" + GOOD + "    limit_per_category: 0\n",
     r":5: dataset 'x': field 'limit_per_category': must be a positive"),
    ("datasets:\n  x:\n" + GOOD + "    limit_per_category: true\n", r"field 'limit_per_category': must be a positive"),
    ("datasets:\n  x:\n    kind: rewards\n    paths: r.jsonl\n    categories: [color]\n",
     r":5: dataset 'x': field 'categories': only prompt datasets"),
    ("datasets:\n  x:\n" + GOOD + "    description: 5\n", r":5: dataset 'x': field 'description': must be a string"),
    ("datasets:\n  bad name:\n" + GOOD, r":2: dataset 'bad name': dataset names must match"),
    ("datasets:\n  x: a.jsonl\n", r":2: dataset 'x': expected a mapping"),
    ("datasets:\n  x:\n" + GOOD + "  x:\n" + GOOD, r"reg\.yaml:5: duplicate key 'x' \(first at line 2\)"),
    ("datasets:\n  x:\n" + GOOD + "extra: 1\n", r"reg\.yaml:5: unknown top-level key 'extra'"),
    ("datasets: [a, b]\n", r"reg\.yaml:1: 'datasets' must be a mapping"),
    ("- a\n- b\n", r"reg\.yaml: expected a mapping with a 'datasets' key"),
    ("datasets:\n  x: [unclosed\n", r"reg\.yaml:\d+: not valid YAML"),
])
def test_schema_errors_name_file_line_dataset_and_field(tmp_path, text, expected):
    path = write(tmp_path / "reg.yaml", text)
    with pytest.raises(ValueError, match=expected):
        load_registry(path)


def test_empty_registry_file_is_an_empty_registry(tmp_path):
    assert load_registry(write(tmp_path / "reg.yaml", "# nothing yet\n")).names() == []
    assert load_registry(write(tmp_path / "reg2.yaml", "datasets:\n")).names() == []


def test_valid_entry_fields_are_kept_as_written(tmp_path):
    path = write(tmp_path / "reg.yaml", "datasets:\n  x:\n    kind: prompts\n    paths: [a.jsonl, '{run_dir}/b.txt']\n"
                                        "    categories: color\n    limit_per_category: 3\n"
                                        "    description: '  some words  '\n")
    assert load_registry(path).get("x") == Dataset("x", "prompts", ("a.jsonl", "{run_dir}/b.txt"),
                                                   ("color",), 3, "some words")


def test_registry_from_dict_accepts_both_shapes_and_names_the_source(tmp_path):
    entries = {"mine": {"kind": "rewards", "paths": "/abs/r.jsonl"}}
    for data in (entries, {"datasets": entries}):
        registry = registry_from_dict(data, source="pipe.yaml: datasets", base_dir=tmp_path)
        assert registry.path is None and registry.names() == ["mine"]
        assert registry.resolve("mine", must_exist=False) == [Path("/abs/r.jsonl")]
    with pytest.raises(ValueError, match=r"pipe\.yaml: datasets: dataset 'mine': field 'kind': missing"):
        registry_from_dict({"mine": {"paths": "x"}}, source="pipe.yaml: datasets")
    with pytest.raises(ValueError, match=r"<dict>: dataset 'x': field 'kind'"):
        registry_from_dict({"x": {"kind": 1, "paths": "x"}})


def test_unknown_name_lists_the_known_ones():
    registry = load_registry(SHIPPED)
    with pytest.raises(ValueError, match=r"unknown dataset 'nope' in registry .*datasets\.yaml; "
                                         r"known: examples, srum_train_comp, srum_val_comp, t2i_compbench_val, miniworld_train, "
                                         r"wise_culture, wise_space_time, wise_science, srum6k_compbench, "
                                         r"self_rewards"):
        registry.get("nope")
    with pytest.raises(ValueError, match="unknown dataset 'nope'"):
        registry.resolve("nope")


# --------------------------------------------------------------------------- path resolution

def test_resolution_rules(tmp_path, monkeypatch):
    reg_dir, run_dir = tmp_path / "reg", tmp_path / "run"
    monkeypatch.setenv("SRUM_TEST_ROOT", str(tmp_path / "env"))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert resolve_path("{registry_dir}/p/a.txt", run_dir=None, registry_dir=reg_dir) == [reg_dir / "p" / "a.txt"]
    assert resolve_path("{run_dir}/j/r.jsonl", run_dir=run_dir, registry_dir=None) == [run_dir / "j" / "r.jsonl"]
    assert resolve_path("j/r.jsonl", run_dir=run_dir, registry_dir=reg_dir) == [run_dir / "j" / "r.jsonl"]
    assert resolve_path("$SRUM_TEST_ROOT/x", run_dir=None, registry_dir=None) == [tmp_path / "env" / "x"]
    assert resolve_path("${SRUM_TEST_ROOT}/x", run_dir=None, registry_dir=None) == [tmp_path / "env" / "x"]
    assert resolve_path("~/x", run_dir=None, registry_dir=None) == [tmp_path / "home" / "x"]
    assert resolve_path("/abs/x", run_dir=run_dir, registry_dir=reg_dir) == [Path("/abs/x")]
    assert resolve_path("{registry_dir}/../y", run_dir=None, registry_dir=reg_dir) == [tmp_path / "y"]
    # A relative run directory is taken from the current directory.
    monkeypatch.chdir(tmp_path)
    assert resolve_path("r.jsonl", run_dir=Path("runs/r1"), registry_dir=None) == [tmp_path / "runs" / "r1" / "r.jsonl"]


def test_placeholder_values_are_not_expanded_again(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", "/elsewhere")
    odd = tmp_path / "a$HOME"
    assert resolve_path("{registry_dir}/x", run_dir=None, registry_dir=odd) == [odd / "x"]


@pytest.mark.parametrize("text, run_dir, registry_dir, expected", [
    ("{registry_dir}/a", "/r", None, r"uses \{registry_dir\} but the registry was not read from a file"),
    ("{run_dir}/a", None, "/g", r"uses \{run_dir\} but no run directory was given"),
    ("a/b.jsonl", None, "/g", r"'a/b\.jsonl' is relative, .* none was given"),
    ("{regsitry_dir}/a", "/r", "/g", r"unknown placeholder \{regsitry_dir\}"),
    ("$SRUM_TEST_SURELY_UNSET/a", "/r", "/g", r"environment variable \$SRUM_TEST_SURELY_UNSET is not set"),
    ("", "/r", "/g", "non-empty string"),
])
def test_resolution_errors(text, run_dir, registry_dir, expected, monkeypatch):
    monkeypatch.delenv("SRUM_TEST_SURELY_UNSET", raising=False)
    with pytest.raises(ValueError, match=expected):
        resolve_path(text, run_dir=run_dir and Path(run_dir), registry_dir=registry_dir and Path(registry_dir))


def test_globs_expand_sorted_and_recursive(tmp_path):
    for name in ("b_val.txt", "a_val.txt", "c_train.txt", "sub/d_val.txt", "sub/deeper/e_val.txt"):
        write(tmp_path / name, "x\n")
    assert resolve_path("{registry_dir}/*_val.txt", run_dir=None, registry_dir=tmp_path) == \
        [tmp_path / "a_val.txt", tmp_path / "b_val.txt"]
    assert resolve_path("{registry_dir}/[ab]_?al.txt", run_dir=None, registry_dir=tmp_path) == \
        [tmp_path / "a_val.txt", tmp_path / "b_val.txt"]
    assert resolve_path("{registry_dir}/**/*_val.txt", run_dir=None, registry_dir=tmp_path) == \
        [tmp_path / "a_val.txt", tmp_path / "b_val.txt", tmp_path / "sub" / "d_val.txt",
         tmp_path / "sub" / "deeper" / "e_val.txt"]
    assert resolve_path("{registry_dir}/*.none", run_dir=None, registry_dir=tmp_path) == []


def test_resolve_checks_existence_names_the_dataset_and_drops_duplicates(tmp_path):
    write(tmp_path / "a_val.txt", "x\n")
    write(tmp_path / "b_val.txt", "x\n")
    registry = registry_from_dict({
        "both": {"kind": "prompts", "paths": ["{registry_dir}/b_val.txt", "{registry_dir}/*_val.txt"]},
        "missing": {"kind": "prompts", "paths": ["{registry_dir}/a_val.txt", "{registry_dir}/gone.json"]},
        "empty_glob": {"kind": "prompts", "paths": "{registry_dir}/*.jsonl"},
        "relative": {"kind": "rewards", "paths": "judge/rewards.jsonl"},
    }, source="src.yaml", base_dir=tmp_path)
    assert registry.resolve("both") == [tmp_path / "b_val.txt", tmp_path / "a_val.txt"]
    with pytest.raises(FileNotFoundError, match=r"dataset 'missing' \(src\.yaml\): path '\{registry_dir\}/gone\.json' "
                                                r"does not exist \(resolved to " + str(tmp_path / "gone.json")):
        registry.resolve("missing")
    assert registry.resolve("missing", must_exist=False) == [tmp_path / "a_val.txt", tmp_path / "gone.json"]
    with pytest.raises(FileNotFoundError, match=r"dataset 'empty_glob' .*pattern '\{registry_dir\}/\*\.jsonl' matches "
                                                r"no file \(resolved to " + str(tmp_path) + r"/\*\.jsonl\)"):
        registry.resolve("empty_glob")
    assert registry.resolve("empty_glob", must_exist=False) == []
    with pytest.raises(ValueError, match=r"dataset 'relative' \(src\.yaml\): path 'judge/rewards\.jsonl' is relative"):
        registry.resolve("relative")
    assert registry.resolve("relative", tmp_path / "run", must_exist=False) == \
        [tmp_path / "run" / "judge" / "rewards.jsonl"]


def test_merged_overrides_adds_and_keeps_each_registry_dir(tmp_path):
    base = load_registry(write(tmp_path / "a" / "reg.yaml",
                               "datasets:\n  shared:\n    kind: prompts\n    paths: '{registry_dir}/p.jsonl'\n"
                               "  kept:\n    kind: prompts\n    paths: '{registry_dir}/k.jsonl'\n"))
    extra = registry_from_dict({"shared": {"kind": "prompts", "paths": "{registry_dir}/q.jsonl",
                                           "description": "override"},
                                "new": {"kind": "images", "paths": "{registry_dir}/imgs"}},
                               source="pipe.yaml", base_dir=tmp_path / "b")
    merged = base.merged(extra)
    assert merged.names() == ["shared", "kept", "new"]
    assert merged.path == base.path
    assert merged.get("shared").description == "override"
    assert merged.resolve("kept", must_exist=False) == [tmp_path / "a" / "k.jsonl"]
    assert merged.resolve("shared", must_exist=False) == [tmp_path / "b" / "q.jsonl"]
    assert merged.resolve("new", must_exist=False) == [tmp_path / "b" / "imgs"]
    assert base.get("shared").paths == ("{registry_dir}/p.jsonl",)  # the originals are unchanged
    with pytest.raises(ValueError, match=r"unknown dataset 'x' in registry .*reg\.yaml \+ pipe\.yaml"):
        merged.get("x")


def test_read_dataset_prompts_applies_categories_and_limit(tmp_path):
    prompts_jsonl(tmp_path / "p.jsonl", [("c0", "color"), ("s0", "shape"), ("c1", "color"), ("c2", "color"),
                                         ("t0", "texture")])
    registry = registry_from_dict({
        "some": {"kind": "prompts", "paths": "{registry_dir}/p.jsonl", "categories": ["color", "shape"],
                 "limit_per_category": 2},
        "r": {"kind": "rewards", "paths": "/x.jsonl"}}, base_dir=tmp_path)
    items, errors = read_dataset_prompts(registry, "some")
    assert errors == [] and [i.id for i in items] == ["c0", "s0", "c1"]
    with pytest.raises(ValueError, match="kind 'rewards', not 'prompts'"):
        read_dataset_prompts(registry, "r")


# --------------------------------------------------------------------------- the command line

def test_cli_list_prints_names_kinds_paths_and_descriptions(capsys):
    assert run_cli(["list", "--registry", str(SHIPPED)]) == 0
    out = capsys.readouterr().out
    assert f"registry: {SHIPPED}" in out
    lines = out.splitlines()
    row = next(line for line in lines if line.startswith("t2i_compbench_val "))
    assert row.split() == ["t2i_compbench_val", "prompts", "{registry_dir}/t2i-compbench/*_val.txt"]
    row = next(line for line in lines if line.startswith("self_rewards "))
    assert row.split() == ["self_rewards", "rewards", "judge/rewards.jsonl"]
    assert "train_comp.json at the root of the SRUM" in out


def test_cli_check_counts_prompts_per_category(capsys):
    assert run_cli(["check", "--registry", str(SHIPPED), "examples"]) == 0
    out = capsys.readouterr().out
    assert "ok   examples (prompts): 1 file(s), 16 prompts" in out
    assert str(REPO / "data" / "prompts" / "examples.jsonl") in out
    assert "color: 2" in out and "non-spatial: 2" in out


def make_check_registry(tmp_path: Path) -> Path:
    prompts_jsonl(tmp_path / "good.jsonl", [("a", "color"), ("b", "color"), ("c", "shape")])
    write(tmp_path / "rowbad.jsonl", json.dumps({"id": "a", "prompt": "p"}) + "\n{not json\n")
    return write(tmp_path / "reg.yaml", """datasets:
  good:
    kind: prompts
    paths: '{registry_dir}/good.jsonl'
  typo_category:
    kind: prompts
    paths: '{registry_dir}/good.jsonl'
    categories: [color, colour]
  gone:
    kind: prompts
    paths: '{registry_dir}/gone.json'
    description: download it from somewhere
  rowbad:
    kind: prompts
    paths: '{registry_dir}/rowbad.jsonl'
  rewards:
    kind: rewards
    paths: judge/rewards.jsonl
  pictures:
    kind: images
    paths: '{run_dir}/images'
""")


def test_cli_check_reports_each_failure_and_exits_1(tmp_path, capsys):
    registry = make_check_registry(tmp_path)
    assert run_cli(["check", "--registry", str(registry), "good", "rowbad"]) == 0
    out = capsys.readouterr().out
    assert "ok   good (prompts): 1 file(s), 3 prompts" in out and "color: 2" in out and "shape: 1" in out
    assert "ok   rowbad (prompts): 1 file(s), 1 prompts, 1 row(s) skipped" in out
    assert "skipped: " + str(tmp_path / "rowbad.jsonl") + ":2: not valid JSON" in out

    assert run_cli(["check", "--registry", str(registry), "--strict", "rowbad"]) == 1
    assert "FAIL rowbad" in capsys.readouterr().out

    assert run_cli(["check", "--registry", str(registry), "good", "typo_category", "gone", "nope"]) == 1
    captured = capsys.readouterr()
    assert "FAIL typo_category (prompts): dataset 'typo_category': no prompts in categories colour" in captured.out
    assert "FAIL gone (prompts): dataset 'gone'" in captured.out and "gone.json' does not exist" in captured.out
    assert "download it from somewhere" in captured.out
    assert "FAIL nope: unknown dataset 'nope'" in captured.out
    assert "3 of 4 dataset(s) unusable: typo_category, gone, nope" in captured.err


def test_cli_check_run_dir_datasets(tmp_path, capsys):
    registry = make_check_registry(tmp_path)
    run_dir = tmp_path / "run"
    # All datasets, no --run-dir: run-relative ones are skipped, not failed.
    assert run_cli(["check", "--registry", str(registry)]) == 1
    out = capsys.readouterr().out
    assert "skip rewards (rewards)" in out and "skip pictures (images)" in out
    # Named explicitly without --run-dir: a failure that says why.
    assert run_cli(["check", "--registry", str(registry), "rewards"]) == 1
    assert "is relative" in capsys.readouterr().out

    write(run_dir / "judge" / "rewards.jsonl",
          "".join(json.dumps(reward_record(f"img_{i}")) + "\n" for i in range(3)))
    write(run_dir / "images" / "a.png", "not really a png")
    write(run_dir / "images" / "notes.txt", "")
    assert run_cli(["check", "--registry", str(registry), "--run-dir", str(run_dir), "rewards", "pictures"]) == 0
    out = capsys.readouterr().out
    assert "ok   rewards (rewards): 1 file(s), 3 records" in out
    assert str(run_dir / "judge" / "rewards.jsonl") in out
    assert "ok   pictures (images): 1 file(s), 1 images" in out


def test_cli_bad_registry_exits_2(tmp_path, capsys):
    bad = write(tmp_path / "reg.yaml", "datasets:\n  x:\n    kind: nope\n    paths: a\n")
    assert run_cli(["list", "--registry", str(bad)]) == 2
    assert "field 'kind'" in capsys.readouterr().err
    assert run_cli(["check", "--registry", str(tmp_path / "absent.yaml")]) == 2
    assert "dataset registry not found" in capsys.readouterr().err


def test_only_the_written_text_is_a_pattern(tmp_path, monkeypatch):
    odd = tmp_path / "[x]"
    write(odd / "a_val.txt", "x\n")
    # The folder's brackets are a literal name, the written '*' is a pattern.
    assert resolve_path("{registry_dir}/*_val.txt", run_dir=None, registry_dir=odd) == [odd / "a_val.txt"]
    assert resolve_path("*_val.txt", run_dir=odd, registry_dir=None) == [odd / "a_val.txt"]
    monkeypatch.setenv("SRUM_TEST_ODD", str(odd))
    assert resolve_path("$SRUM_TEST_ODD/a_val.txt", run_dir=None, registry_dir=None) == [odd / "a_val.txt"]
    assert resolve_path("$SRUM_TEST_ODD/?_val.txt", run_dir=None, registry_dir=None) == [odd / "a_val.txt"]
