# SPDX-License-Identifier: Apache-2.0
"""`srum generate`: prompt files, manifest, seeds, resume after kill -9, 1 vs 2 processes."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from srum.data.prompts import category_from_filename, read_prompts
from srum.stages.generate import GenerateConfig, image_seed, run_generate
from srum.stages.shards import PartWriter, ShardedOutput, iter_jsonl
from srum.distributed import DistInfo
from srum.config import load_config

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TINY_SAMPLING = ["sampling.height=32", "sampling.width=48", "sampling.num_timesteps=3", "sampling.max_think_tokens=4"]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = str(Path(__file__).resolve().parents[1]) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _rows(path):
    return [obj for _, obj, err in iter_jsonl(Path(path)) if obj is not None]


@pytest.fixture
def prompt_file(tmp_path):
    path = tmp_path / "prompts.jsonl"
    rows = [{"id": f"p{i}", "prompt": f"a red cube number {i}", "category": "color"} for i in range(5)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# ---------------------------------------------------------------- prompt files
def test_category_from_compbench_file_names():
    assert category_from_filename("color_val.txt") == "color"
    assert category_from_filename("complex_val_action.txt") == "complex_action"
    assert category_from_filename("complex_train_spatial.txt") == "complex_spatial"
    assert category_from_filename("non_spatial_train.txt") == "non-spatial"
    assert category_from_filename("3d_spatial_val.txt") == "3d_spatial"
    assert category_from_filename("color_val_seen.txt") == "color"
    assert category_from_filename("prompts.txt") is None


def test_read_prompts_all_formats_and_bad_rows(tmp_path):
    ref = tmp_path / "ref.json"
    ref.write_text(json.dumps([{"Question": "a cat", "Category": "color", "Question_id": 7},
                               {"Question": "", "Category": "color", "Question_id": 8},
                               {"Question": "no id", "Category": "color"}]))
    txt = tmp_path / "shape_val.txt"
    txt.write_text("a round clock\n\na square box\n")
    jl = tmp_path / "extra.jsonl"
    jl.write_text('{"id": "a", "prompt": "x"}\n{not json}\n{"prompt": "no id"}\n{"id": "7", "prompt": "dup"}\n'
                  '{"id": "../evil", "prompt": "bad id"}\n')
    items, errors = read_prompts([ref, txt, jl])
    assert [(i.id, i.prompt, i.category) for i in items] == [
        ("7", "a cat", "color"), ("shape_val_00000", "a round clock", "shape"),
        ("shape_val_00001", "a square box", "shape"), ("a", "x", None)]
    assert len(errors) == 6
    assert any(f"{ref}[1]" in e and "no prompt" in e for e in errors)
    assert any(f"{ref}[2]" in e and "no id" in e for e in errors)
    assert any(f"{jl}:2" in e and "JSON" in e for e in errors)
    assert any(f"{jl}:3" in e and "no id" in e for e in errors)
    assert any(f"{jl}:4" in e and "duplicate id '7'" in e for e in errors)
    assert any(f"{jl}:5" in e and "file name" in e for e in errors)


@pytest.mark.skipif(not (SHARED / "srum-prompts" / "train_comp.json").exists(), reason="shared data absent")
def test_read_real_prompt_files():
    items, errors = read_prompts([SHARED / "srum-prompts" / "train_comp.json"])
    assert len(items) == 6234 and not errors
    items, errors = read_prompts(sorted((SHARED / "t2i-compbench").glob("*_val.txt")), limit_per_category=2)
    assert not errors and {i.category for i in items} >= {"color", "non-spatial", "complex", "3d_spatial"}


def test_missing_prompt_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        read_prompts([tmp_path / "nope.json"])


# ---------------------------------------------------------------- seeds
def test_image_seed_depends_only_on_base_prompt_and_index():
    assert image_seed(0, "p1", 0) == image_seed(0, "p1", 0)
    assert len({image_seed(0, "p1", 0), image_seed(0, "p1", 1), image_seed(0, "p2", 0), image_seed(1, "p1", 0)}) == 4
    assert 0 <= image_seed(123, "x", 5) < 2 ** 31


# ---------------------------------------------------------------- the stage
def _config(tiny_dir, prompt_file, out, *extra):
    return load_config(GenerateConfig, None, [f"model.path={tiny_dir}", f"prompts=[{prompt_file}]", f"out_dir={out}",
                                              "num_images_per_prompt=2", "batch_size=3", *TINY_SAMPLING, *extra])


def test_generate_manifest_and_rerun_is_a_no_op(tiny_dir, prompt_file, tmp_path):
    out = tmp_path / "gen"
    summary = run_generate(_config(tiny_dir, prompt_file, out))
    assert summary["complete"] and summary["num_ok"] == 10
    rows = _rows(out / "manifest.jsonl")
    assert [r["image_id"] for r in rows] == [f"p{i}_{k}" for i in range(5) for k in range(2)]
    for r in rows:
        for key in ("prompt_id", "image_file", "original_prompt", "detailed_prompt", "think_output", "seed", "category"):
            assert key in r
        assert (out / r["image_file"]).is_file() and r["seed"] == image_seed(0, r["prompt_id"], r["sample_index"])
        assert r["sampling"]["think"] is True and (r["width"], r["height"]) == (48, 32)
    mtimes = {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()}
    again = run_generate(_config(tiny_dir, prompt_file, out))
    assert again["num_ok"] == 10
    assert {p: p.stat().st_mtime_ns for p in (out / "images").iterdir()} == mtimes


def test_truncated_part_line_is_redone_once(tiny_dir, prompt_file, tmp_path):
    out = tmp_path / "gen"
    run_generate(_config(tiny_dir, prompt_file, out))
    part = out / "parts" / "rank-00000.jsonl"
    lines = part.read_text().splitlines(keepends=True)
    # simulate a kill -9 while writing the last two rows: one lost, one cut mid-line
    part.write_text("".join(lines[:-2]) + lines[-2][:25])
    (out / "summary.json").unlink()
    (out / "manifest.jsonl").unlink()
    summary = run_generate(_config(tiny_dir, prompt_file, out))
    assert summary["complete"] and summary["num_ok"] == 10
    part_rows = _rows(part)
    assert len(part_rows) == 10 and len({r["image_id"] for r in part_rows}) == 10
    assert len(_rows(out / "manifest.jsonl")) == 10


def test_resume_with_other_timesteps_and_seed_is_refused_then_fresh_starts_over(tiny_dir, prompt_file, tmp_path):
    from srum.run_settings import SettingsChanged
    out = tmp_path / "gen"
    run_generate(_config(tiny_dir, prompt_file, out))
    part = out / "parts" / "rank-00000.jsonl"
    part.write_text("".join(part.read_text().splitlines(keepends=True)[:6]))  # as if killed after 6 rows
    (out / "summary.json").unlink()
    with pytest.raises(SettingsChanged) as err:
        run_generate(_config(tiny_dir, prompt_file, out, "sampling.num_timesteps=4", "seed=7"))
    assert "sampling.num_timesteps: 3 before, 4 now" in str(err.value) and "seed: 0 before, 7 now" in str(err.value)
    assert len(_rows(part)) == 6  # nothing was added
    summary = run_generate(_config(tiny_dir, prompt_file, out, "sampling.num_timesteps=4", "seed=7", "fresh=true"))
    assert summary["complete"] and summary["num_ok"] == 10
    assert {r["seed"] for r in _rows(out / "manifest.jsonl")} == {image_seed(7, f"p{i}", k) for i in range(5)
                                                                   for k in range(2)}
    assert all(r["sampling"]["num_timesteps"] == 4 for r in _rows(out / "manifest.jsonl"))


def _run_cli(args, **kw):
    return subprocess.Popen([sys.executable, "-m", "srum", *args], env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, **kw)


def _torchrun(nproc, args):
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                           "-m", "srum", *args], env=_env(), capture_output=True, text=True, timeout=300)


def test_kill_9_then_resume_gives_complete_manifest(tiny_dir, prompt_file, tmp_path):
    out = tmp_path / "gen"
    args = ["generate", f"model.path={tiny_dir}", f"prompts=[{prompt_file}]", f"out_dir={out}",
            "num_images_per_prompt=4", "batch_size=1", "sampling.height=32", "sampling.width=48",
            "sampling.num_timesteps=12", "sampling.max_think_tokens=4"]
    proc = _run_cli(args)
    part = out / "parts" / "rank-00000.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and (not part.exists() or len(part.read_text().splitlines()) < 3):
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    n_before = len(part.read_text().splitlines())
    assert 3 <= n_before < 20, "the kill should land in the middle of the run"
    assert not (out / "manifest.jsonl").exists()
    done = _run_cli(args)
    log = done.communicate(timeout=300)[0]
    assert done.returncode == 0, log
    rows = _rows(out / "manifest.jsonl")
    ids = [r["image_id"] for r in rows]
    assert ids == [f"p{i}_{k}" for i in range(5) for k in range(4)]
    assert len(_rows(part)) == 20  # nothing done twice
    assert all((out / r["image_file"]).is_file() for r in rows)


def test_two_processes_draw_the_same_images_as_one(tiny_dir, prompt_file, tmp_path):
    common = [f"model.path={tiny_dir}", f"prompts=[{prompt_file}]", "num_images_per_prompt=2", *TINY_SAMPLING]
    # batch_size 1 on both sides: a batched forward may round differently from a single one
    # (a pixel off by 1 after the uint8 cast), which is batching, not seeding
    one = _torchrun(1, ["generate", f"out_dir={tmp_path / 'one'}", "batch_size=1", *common])
    assert one.returncode == 0, one.stderr[-3000:]
    two = _torchrun(2, ["generate", f"out_dir={tmp_path / 'two'}", "batch_size=1", *common])
    assert two.returncode == 0, two.stderr[-3000:]
    assert sorted(p.name for p in (tmp_path / "two" / "parts").iterdir()) == ["rank-00000.jsonl", "rank-00001.jsonl"]
    rows1, rows2 = _rows(tmp_path / "one" / "manifest.jsonl"), _rows(tmp_path / "two" / "manifest.jsonl")
    assert [r["image_id"] for r in rows1] == [r["image_id"] for r in rows2]
    for a, b in zip(rows1, rows2):
        assert a["seed"] == b["seed"] and a["think_output"] == b["think_output"]
        assert (tmp_path / "one" / a["image_file"]).read_bytes() == (tmp_path / "two" / b["image_file"]).read_bytes()


def test_batch_size_2_draws_the_same_bytes_on_1_2_and_3_processes(tiny_dir, prompt_file, tmp_path):
    # batches are cut from the global order and dealt out whole, so every process count
    # draws the same pairs together (a batched forward rounds differently from another pair)
    common = [f"model.path={tiny_dir}", f"prompts=[{prompt_file}]", "num_images_per_prompt=2", "batch_size=2",
              *TINY_SAMPLING]
    images = {}
    for nproc in (1, 2, 3):
        out = tmp_path / f"n{nproc}"
        run = _torchrun(nproc, ["generate", f"out_dir={out}", *common])
        assert run.returncode == 0, run.stderr[-3000:]
        rows = _rows(out / "manifest.jsonl")
        images[nproc] = [(r["image_id"], r["think_output"], (out / r["image_file"]).read_bytes()) for r in rows]
    assert len(images[1]) == 10
    assert images[1] == images[2] == images[3]


def test_resume_with_another_world_size_and_bad_config(tiny_dir, prompt_file, tmp_path):
    # a partial 1-process run (first 3 items) finished by 2 processes
    out = tmp_path / "gen"
    keys = [f"p{i}_{k}" for i in range(5) for k in range(2)]
    writer = PartWriter(out / "parts" / "rank-00000.jsonl")
    for key in keys[:3]:
        writer.write({"image_id": key, "image_file": f"images/{key}.png", "prompt": "x"})
    writer.close()
    so = ShardedOutput(out, keys, DistInfo(1, 2, 1))
    assert [keys[i] for i in so.my_todo(so.done_keys())] == [keys[i] for i in (3, 5, 7, 9)]
    with pytest.raises(ValueError, match="num_images_per_prompt"):
        _config(tiny_dir, prompt_file, out, "num_images_per_prompt=0")
    with pytest.raises(ValueError, match="sampling.num_timestep"):
        _config(tiny_dir, prompt_file, out, "sampling.num_timestep=3")
