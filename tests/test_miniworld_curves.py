# SPDX-License-Identifier: Apache-2.0
"""`srum miniworld curves`: the training curves of a chain of pretraining stages."""
from __future__ import annotations

import csv
import json

import pytest

from srum.miniworld.curves import write_curves


def _stage(root, name, lines, exported_step=None):
    d = root / name
    (d / "train").mkdir(parents=True)
    (d / "train" / "metrics.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    if exported_step is not None:
        (d / "model").mkdir()
        (d / "model" / "srum_export.json").write_text(json.dumps({"step": exported_step}))
    return d


def _step(step, mse=None, ce=None, grad=1.0, secs=0.5):
    row = {"step": step, "grad_norm": grad, "step_time_s": secs, "latent_tokens": 16 if mse is not None else 0,
           "ce_tokens": 3 if ce is not None else 0}
    if mse is not None:
        row["mse"] = mse
    if ce is not None:
        row["ce"] = ce
    return row


def test_windows_means_repeated_steps_events_and_the_exported_step(tmp_path):
    first = _stage(tmp_path, "s1", [
        _step(1, mse=1.0, ce=2.0), _step(2, mse=3.0, ce=4.0, grad=3.0),
        {"event": "saved checkpoint .../step-000002"},
        _step(3, mse=9.0, ce=9.0),                        # redone after a resume: the later line wins
        _step(3, mse=5.0), _step(4, mse=7.0, ce=6.0),
        _step(5, mse=100.0, ce=100.0),                    # past the exported checkpoint: dropped
    ], exported_step=4)
    second = _stage(tmp_path, "s2", [_step(1, ce=1.0), _step(2, ce=3.0)])   # questions only: no flow MSE
    out = tmp_path / "curve.csv"
    assert write_curves(out, [first, second], ["a", "b"], every=2) == 3
    rows = list(csv.DictReader(open(out)))
    assert [(r["stage"], r["step_in_stage"], r["global_step"]) for r in rows] == [
        ("a", "2", "2"), ("a", "4", "4"), ("b", "2", "6")]
    assert float(rows[0]["flow_mse"]) == 2.0 and float(rows[0]["cross_entropy"]) == 3.0
    assert float(rows[0]["grad_norm"]) == 2.0
    assert float(rows[1]["flow_mse"]) == 6.0 and float(rows[1]["cross_entropy"]) == 6.0   # step 3 had no answers
    assert rows[2]["flow_mse"] == "" and float(rows[2]["cross_entropy"]) == 2.0


def test_a_bad_line_or_a_missing_stage_is_named(tmp_path):
    bad = _stage(tmp_path, "bad", [_step(1, ce=1.0)])
    with open(bad / "train" / "metrics.jsonl", "a") as fh:
        fh.write("{not json\n")
    with pytest.raises(ValueError, match=r"metrics.jsonl:2"):
        write_curves(tmp_path / "c.csv", [bad])
    with pytest.raises(FileNotFoundError, match="no training metrics"):
        write_curves(tmp_path / "c.csv", [tmp_path / "nowhere"])
