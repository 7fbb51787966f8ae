# SPDX-License-Identifier: Apache-2.0
"""`srum propose` and `srum judge` end to end on the tiny Bagel + tiny random SAM:
records, reference-format round trip, bad input, resume, 1 vs 2 processes."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from srum.config import load_config
from srum.data.prompts import read_prompts
from srum.records import from_reference, read_records, to_reference, validate_record
from srum.stages.generate import GenerateConfig, run_generate
from srum.stages.judge import JudgeStageConfig, run_judge
from srum.stages.propose import ProposeStageConfig, run_propose
from srum.stages.shards import iter_jsonl

ROOT = Path(__file__).resolve().parents[1]
SHARED_VAL = ROOT.parent / "shared" / "data" / "t2i-compbench" / "spatial_val.txt"
PROMPTS = SHARED_VAL if SHARED_VAL.exists() else ROOT / "data" / "prompts" / "examples.jsonl"
SAM = ["proposals.sam.model_type=tiny", "proposals.sam.points_per_side=4"]
JUDGE = ["judge.mode=logits", "judge.min_scale_mass=0.0"]


def _rows(path):
    return [obj for _, obj, _ in iter_jsonl(Path(path)) if obj is not None]


def _env():
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture(scope="module")
def run_dir(tiny_dir, tmp_path_factory):
    """generate -> propose -> judge once, in one process."""
    root = tmp_path_factory.mktemp("stages")
    # the first three prompts of whichever file is there (the real val split, or our examples)
    prompts = root / "prompts.jsonl"
    prompts.write_text("".join(json.dumps(p.to_dict()) + "\n" for p in read_prompts(PROMPTS)[0][:3]))
    run_generate(load_config(GenerateConfig, None, [
        f"model.path={tiny_dir}", f"prompts=[{prompts}]", f"out_dir={root / 'generate'}",
        "sampling.height=48", "sampling.width=64", "sampling.num_timesteps=3", "sampling.max_think_tokens=4"]))
    run_propose(load_config(ProposeStageConfig, None, [
        f"images={root / 'generate' / 'manifest.jsonl'}", f"out_dir={root / 'propose'}", f"model.path={tiny_dir}", *SAM]))
    run_judge(load_config(JudgeStageConfig, None, [
        f"regions={root / 'propose' / 'regions.jsonl'}", f"out_dir={root / 'judge'}", f"model.path={tiny_dir}", *JUDGE]))
    return root


def test_propose_rows_have_grounded_regions(run_dir):
    rows = _rows(run_dir / "propose" / "regions.jsonl")
    assert len(rows) == 3 and json.loads((run_dir / "propose" / "summary.json").read_text())["complete"]
    for row in rows:
        assert (run_dir / "propose" / row["image_file"]).is_file()
        assert (row["width"], row["height"]) == (64, 48)
        for k, region in enumerate(row["regions"]):
            assert region["region_id"] == k
            x1, y1, x2, y2 = region["bbox"]
            assert 0 <= x1 < x2 <= 64 and 0 <= y1 < y2 <= 48
            assert region["mask"]["size"] == [48, 64]
            g = region["grounding"]
            assert 0.0 <= g["p_relevant"] <= 1.0 and isinstance(g["kept"], bool)
        assert row["stats"]["kept"] == sum(r["grounding"]["kept"] for r in row["regions"])


def test_judge_records_are_valid_and_say_how_scores_were_made(run_dir):
    records, errors = read_records(run_dir / "judge" / "rewards.jsonl")
    assert not errors and len(records) == 3
    summary = json.loads((run_dir / "judge" / "summary.json").read_text())
    assert summary["global_ok"] + summary["global_failed"] == 3
    for rec in records:
        assert Path(rec["image_path"]).is_file()
        assert rec["judge"] == {"backend": "self", "mode": "logits", "model": rec["judge"]["model"]}
        assert rec["global"]["method"] == "logits" and rec["global"]["status"] == "ok"
        assert -1.0 <= rec["global"]["score"] <= 1.0
        assert abs(sum(rec["global"]["detail"]["probabilities"]) - 1.0) < 1e-4
        for region in rec["regions"]:
            if region["grounding"]["kept"]:
                assert region["status"] == "ok" and -1 <= region["score"] <= 1
            else:
                assert region["status"] == "failed" and region["detail"]["skipped"]


def test_records_round_trip_through_the_reference_format(run_dir):
    records, _ = read_records(run_dir / "judge" / "rewards.jsonl")
    for rec in records:
        ref = to_reference(rec)
        assert ref["vlm_rewards"][0]["object"] == "global_layout_reward"
        assert ref["vlm_rewards"][0]["bbox"] == [0, 0, rec["width"], rec["height"]]
        back = from_reference(ref, "ref.jsonl:1", (rec["width"], rec["height"]))
        validate_record(back, "ref.jsonl:1")
        assert back["global"]["score"] == pytest.approx(rec["global"]["score"])
        kept = [r for r in rec["regions"] if r["status"] == "ok"]
        assert [r["bbox"] for r in back["regions"]] == [pytest.approx(r["bbox"]) for r in kept]
        assert [r["score"] for r in back["regions"]] == [pytest.approx(r["score"]) for r in kept]


def test_cli_exports_and_imports_reference_records(run_dir, tmp_path):
    env = _env()
    ref = tmp_path / "ref.jsonl"
    out = subprocess.run([sys.executable, "-m", "srum", "records", "export-reference",
                          str(run_dir / "judge" / "rewards.jsonl"), str(ref)], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    rows = _rows(ref)
    assert len(rows) == 3 and all(Path(tmp_path, r["bad_image_file"]).is_file() for r in rows)
    back = tmp_path / "back.jsonl"
    out = subprocess.run([sys.executable, "-m", "srum", "records", "import-reference", str(ref), str(back)],
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    records, errors = read_records(back)
    assert not errors and [r["global"]["score"] for r in records] == pytest.approx(
        [r["global"]["score"] for r in read_records(run_dir / "judge" / "rewards.jsonl")[0]])


def test_logits_judging_is_deterministic_and_rerun_is_a_no_op(run_dir, tiny_dir, tmp_path):
    cfg = load_config(JudgeStageConfig, None, [f"regions={run_dir / 'propose' / 'regions.jsonl'}",
                                               f"out_dir={tmp_path / 'again'}", f"model.path={tiny_dir}", *JUDGE])
    run_judge(cfg)
    a = [{k: v for k, v in r.items() if k != "image_file"} for r in _rows(run_dir / "judge" / "rewards.jsonl")]
    b = [{k: v for k, v in r.items() if k != "image_file"} for r in _rows(tmp_path / "again" / "rewards.jsonl")]
    assert len(a) == 3 and a == b
    part = tmp_path / "again" / "parts" / "rank-00000.jsonl"
    before = part.read_text()
    summary = run_judge(cfg)
    assert summary["complete"] and part.read_text() == before


def test_retry_errors_rejudges_records_with_failed_judgments(run_dir, tiny_dir, tmp_path):
    """A random model's text answers never parse: every record has a failed global judgment.
    Kept and counted; a plain rerun does nothing; retry_errors with another judge setting
    (logits mode) judges them again, and the new records replace the old ones."""
    common = [f"regions={run_dir / 'propose' / 'regions.jsonl'}", f"out_dir={tmp_path / 'judge'}",
              f"model.path={tiny_dir}"]
    text = ["judge.mode=text", "judge.think=false", "judge.max_new_tokens=3", "judge.retries=0"]
    first = run_judge(load_config(JudgeStageConfig, None, common + text))
    records = _rows(tmp_path / "judge" / "rewards.jsonl")
    assert len(records) == 3 and all(r["global"]["status"] == "failed" for r in records)
    assert first["num_retryable"] == 3 and first["global_failed"] == 3 and first["num_errors"] == 0
    part = tmp_path / "judge" / "parts" / "rank-00000.jsonl"
    before = part.read_text()
    run_judge(load_config(JudgeStageConfig, None, common + text))
    assert part.read_text() == before                                  # finished: nothing asked again
    again = run_judge(load_config(JudgeStageConfig, None, common + JUDGE + ["retry_errors=true"]))
    records = _rows(tmp_path / "judge" / "rewards.jsonl")
    assert [r["image_id"] for r in records] == [r["image_id"] for r in _rows(run_dir / "judge" / "rewards.jsonl")]
    assert all(r["global"]["status"] == "ok" and r["global"]["method"] == "logits" for r in records)
    assert again["num_retryable"] == 0 and again["global_failed"] == 0 and again["num_ok"] == 3


def test_bad_input_is_named_skipped_and_counted(run_dir, tiny_dir, tmp_path):
    good = _rows(run_dir / "propose" / "regions.jsonl")
    image = str((run_dir / "propose" / good[0]["image_file"]).resolve())
    base = {**good[0], "image_file": image}
    bad_boxes = [[float("nan"), 0, 10, 10], [-5, 0, 10, 10], [30, 10, 10, 20], [0, 0, 500, 20], [0, 0, 20, 20]]
    rows = [
        {**base, "image_id": "boxes", "regions": [{"bbox": b, "mask": None} for b in bad_boxes]},
        {**base, "image_id": "missing", "image_file": str(tmp_path / "nope.png")},
        {**base, "image_id": "broken", "image_file": str(tmp_path / "broken.png")},
        {"image_id": "noprompt", "image_file": image},
    ]
    (tmp_path / "broken.png").write_bytes(b"\x89PNG not really")
    manifest = tmp_path / "regions.jsonl"
    lines = [json.dumps(r, allow_nan=True) for r in rows]
    lines.insert(2, "{this is not json")
    manifest.write_text("\n".join(lines) + "\n")
    summary = run_judge(load_config(JudgeStageConfig, None, [
        f"regions={manifest}", f"out_dir={tmp_path / 'judge'}", f"model.path={tiny_dir}", *JUDGE]))
    assert summary["num_ok"] == 1 and summary["num_errors"] == 2 and summary["num_input_errors"] == 2
    assert any(f"{manifest}:3" in e and "JSON" in e for e in summary["input_errors"])
    assert any(f"{manifest}:5" in e and "prompt" in e for e in summary["input_errors"])
    errors = {r["image_id"]: r["_error"] for r in _rows(tmp_path / "judge" / "errors.jsonl")}
    assert "image not found" in errors["missing"] and str(manifest) in errors["missing"]
    assert "cannot read image" in errors["broken"]
    (rec,) = _rows(tmp_path / "judge" / "rewards.jsonl")
    reasons = [s["reason"] for s in rec["skipped_regions"]]
    assert len(reasons) == 4 and all(f"{manifest}:1" in r for r in reasons)
    assert "non-finite" in reasons[0] and "negative" in reasons[1] and "inverted" in reasons[2]
    assert "outside" in reasons[3]
    assert [r["bbox"] for r in rec["regions"]] == [[0, 0, 20, 20]]
    assert summary["regions_skipped_bad_input"] == 4


def test_two_processes_match_one(run_dir, tiny_dir, tmp_path):
    """propose + judge under torchrun with 2 processes give the single-process records."""
    def torchrun(*args):
        out = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                              "-m", "srum", *args], env=_env(), capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stderr[-3000:]
    torchrun("propose", f"images={run_dir / 'generate' / 'manifest.jsonl'}", f"out_dir={tmp_path / 'propose'}",
             f"model.path={tiny_dir}", *SAM)
    # whole batches are dealt out: batch_size 1 gives both processes some of the 3 images
    torchrun("judge", f"regions={tmp_path / 'propose' / 'regions.jsonl'}", f"out_dir={tmp_path / 'judge'}",
             f"model.path={tiny_dir}", "batch_size=1", *JUDGE)
    assert len(list((tmp_path / "judge" / "parts").glob("rank-*.jsonl"))) == 2

    def strip(rows):
        return [{k: v for k, v in r.items() if k not in ("image_file",)} for r in rows]
    one, two = _rows(run_dir / "propose" / "regions.jsonl"), _rows(tmp_path / "propose" / "regions.jsonl")
    for x, y in zip(one, two):
        assert [r["bbox"] for r in x["regions"]] == [r["bbox"] for r in y["regions"]]
        assert [r["mask"] for r in x["regions"]] == [r["mask"] for r in y["regions"]]
        assert [r["grounding"]["p_relevant"] for r in x["regions"]] == pytest.approx(
            [r["grounding"]["p_relevant"] for r in y["regions"]], abs=1e-5)
    a, b = strip(_rows(run_dir / "judge" / "rewards.jsonl")), strip(_rows(tmp_path / "judge" / "rewards.jsonl"))
    assert [r["image_id"] for r in a] == [r["image_id"] for r in b]
    for x, y in zip(a, b):
        assert x["global"]["score"] == pytest.approx(y["global"]["score"], abs=1e-5)
        assert [r["score"] for r in x["regions"]] == pytest.approx([r["score"] for r in y["regions"]], abs=1e-5)


def test_config_errors_name_the_field(tmp_path):
    with pytest.raises(ValueError, match="model.path is required"):
        load_config(ProposeStageConfig, None, [f"images={tmp_path}/m.jsonl", f"out_dir={tmp_path}"])
    with pytest.raises(ValueError, match="judge.modee"):
        load_config(JudgeStageConfig, None, ["regions=r.jsonl", "out_dir=o", "model.path=m", "judge.modee=text"])
    with pytest.raises(ValueError, match="judge.mode"):
        load_config(JudgeStageConfig, None, ["regions=r.jsonl", "out_dir=o", "model.path=m", "judge.mode=words"])
