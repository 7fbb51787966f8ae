# SPDX-License-Identifier: Apache-2.0
"""``srum eval understanding``: the lmms-eval adapter over Bagel's understanding path.

Unit tests of the request handling (fake model), then local lmms-eval tasks written by
the test (a few pictures, questions and answers; lmms-eval's include_path) run end to
end through lmms-eval on the tiny random Bagel: generate_until with exact match and
a multiple-choice task (loglikelihood). lmms-eval is in the ``dev`` extra (CI installs it).
"""
import json
import math
import re
from pathlib import Path

import PIL.Image
import pytest
# lmms-eval is in the dev extra, so CI runs these tests (no import-skip: a broken install fails here)
from lmms_eval.api.instance import Instance

from srum.stages.common import ModelConfig
from srum.understanding import lmms_adapter as A
from srum.understanding.runner import UnderstandingConfig, run_understanding, summarize_results

COLOURS = [((220, 20, 20), "red"), ((20, 200, 20), "green"), ((20, 20, 220), "blue")]


# ------------------------------------------------------------------ pure request handling
def test_generation_settings_greedy_stop_and_limits():
    warnings = []
    s = A.generation_settings({"max_new_tokens": 16, "temperature": 0, "top_p": 1.0, "num_beams": 1,
                               "do_sample": False, "until": "ASSISTANT:"}, 256, None, warnings.append)
    assert (s.until, s.max_new_tokens, s.do_sample, s.temperature) == (("ASSISTANT:",), 16, False, 0.0)
    assert warnings == []
    # do_sample with temperature 0 is greedy; the cap bounds a task's limit; no limit: the default
    assert A.generation_settings({"do_sample": True, "temperature": 0}, 8, None).do_sample is False
    assert A.generation_settings({"max_new_tokens": 16384}, 8, 1024).max_new_tokens == 1024
    assert A.generation_settings({}, 8, None).max_new_tokens == 8
    sampled = A.generation_settings({"do_sample": "true", "temperature": 0.7, "top_p": 0.9, "num_beams": 3,
                                     "image_aspect_ratio": "pad", "until": ["\n", ""]}, 8, None, warnings.append)
    assert sampled.do_sample and sampled.temperature == 0.7 and sampled.until == ("\n",)
    assert [w.split("=")[0] for w in warnings] == ["generation_kwargs.num_beams", "generation_kwargs.top_p",
                                                   "generation_kwargs.image_aspect_ratio"]
    with pytest.raises(ValueError, match="until"):
        A.generation_settings({"until": 3}, 8, None)
    with pytest.raises(ValueError, match="max_new_tokens"):
        A.generation_settings({"max_new_tokens": -1}, 8, None)


def test_stop_strings_prompt_text_and_visuals(tmp_path):
    assert A.truncate_at_stop("Yes\nUSER: more", ["USER:", "\n"]) == "Yes"
    assert A.truncate_at_stop("Yes", []) == "Yes"
    assert A.prompt_text("<image>\nWhat is shown?") == "What is shown?"
    path = tmp_path / "p.png"
    PIL.Image.new("L", (8, 8), 100).save(path)
    red = PIL.Image.new("RGB", (8, 8), (255, 0, 0))
    got = A.load_visuals([red, str(path), None])
    assert len(got) == 2 and got[0] is red and got[1].mode == "RGB"
    assert A.load_visuals(None) == [] and len(A.load_visuals(red)) == 1
    with pytest.raises(ValueError, match="images only.*clip.mp4"):
        A.load_visuals(["clip.mp4"])


class FakeBagel:
    """Records what the adapter asks; answers from a script."""

    def __init__(self, answers):
        self.answers, self.calls = list(answers), []

    def understand(self, images, prompts, **kw):
        self.calls.append(("understand", [len(i) for i in images], list(prompts), kw))
        return [self.answers.pop(0) for _ in prompts]

    def continuation_logprobs(self, images, prompts, replies):
        self.calls.append(("logprobs", [len(i) for i in images], list(prompts), list(replies)))
        return [(-float(len(r)), True) for r in replies]


def _instance(kind, args, doc_id):
    return Instance(request_type=kind, arguments=args, idx=0, metadata={"task": "t", "doc_id": doc_id, "repeats": 1})


def _adapter(answers, **kw):
    lm = A.SrumBagelLMM(model=FakeBagel(answers), **kw)
    picture = PIL.Image.new("RGB", (8, 8))
    lm.task_dict = {"t": {"test": [{"q": "a", "pics": [picture]}, {"q": "b", "pics": [picture, picture]},
                                   {"q": "c", "pics": []}]}}
    return lm


def test_adapter_generate_until_order_batching_and_stops():
    lm = _adapter(["A\nextra", "B. ASSISTANT: x", "  C  "], batch_size=2)
    visual = lambda doc: doc["pics"]  # noqa: E731
    greedy = {"max_new_tokens": 4, "until": ["\n", "ASSISTANT:"]}
    requests = [_instance("generate_until", ("<image> first", greedy, visual, 0, "t", "test"), 0),
                _instance("generate_until", ("second", dict(greedy), visual, 1, "t", "test"), 1),
                _instance("generate_until", ("third", {"max_new_tokens": 9}, visual, 2, "t", "test"), 2)]
    assert lm.generate_until(requests) == ["A", "B.", "C"]
    calls = lm.model.calls
    # the first two share settings and a batch; the third has other settings
    assert [c[1] for c in calls] == [[1, 2], [0]] and [c[2] for c in calls] == [["first", "second"], ["third"]]
    assert calls[0][3]["max_new_tokens"] == 4 and calls[0][3]["do_sample"] is False
    assert calls[1][3]["max_new_tokens"] == 9


def test_adapter_loglikelihood_and_multi_round():
    lm = _adapter(["r0", "r1"])
    visual = lambda doc: doc["pics"]  # noqa: E731
    requests = [_instance("loglikelihood", ("Q?", " Yes", visual, 0, "t", "test"), 0),
                _instance("loglikelihood", ("Q?", lambda doc: " " + doc["q"], visual, 1, "t", "test"), 1)]
    # negative log-likelihoods by default: lmms-eval 0.7 picks a choice with argmin
    assert lm.loglikelihood(requests) == [(3.0, True), (1.0, True)]
    assert [c[3] for c in lm.model.calls] == [["Yes"], ["b"]]   # the separator space dropped: a reply starts a turn
    as_logprob = _adapter([], loglikelihood_value="logprob")
    assert as_logprob.loglikelihood(requests) == [(-3.0, True), (-1.0, True)]
    lm.model.calls.clear()

    rounds = []

    def doc_to_text(doc, previous_output, round_idx, previous_round_info):
        rounds.append((list(previous_output), round_idx, previous_round_info))
        return [], f"round {round_idx}", round_idx == 2, previous_output, {"seen": round_idx}

    args = ("round 0", {"until": ["\n"]}, visual, doc_to_text, 0, "t", "test")
    request = _instance("generate_until_multi_round", args, 0)
    assert lm.generate_until_multi_round([request]) == [["r0", "r1"]]
    assert rounds == [(["r0"], 1, None), (["r0", "r1"], 2, {"seen": 1})]
    assert [c[2] for c in lm.model.calls] == [["round 0"], ["round 1"]]


def test_adapter_refuses_no_model_and_bad_batch():
    with pytest.raises(ValueError, match="pretrained"):
        A.SrumBagelLMM()
    with pytest.raises(ValueError, match="batch_size"):
        A.SrumBagelLMM(model=FakeBagel([]), batch_size=0)
    with pytest.raises(ValueError, match="loglikelihood_value"):
        A.SrumBagelLMM(model=FakeBagel([]), loglikelihood_value="loss")


def test_registration_resolves_the_adapter():
    from lmms_eval.models.registry_v2 import ModelRegistryV2

    from srum.understanding.registration import lmms_eval_manifest
    registry = ModelRegistryV2()
    registry.register_manifest(lmms_eval_manifest())
    assert registry.get_model_class("srum") is A.SrumBagelLMM
    assert registry.get_model_class("srum_bagel") is A.SrumBagelLMM


def test_pyproject_declares_the_entry_point_and_the_extras():
    import importlib
    import tomllib
    project = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]
    target = project["entry-points"]["lmms_eval.models"]["srum"]
    module, _, attr = target.partition(":")
    manifest = getattr(importlib.import_module(module), attr)()
    assert manifest.model_id == "srum" and manifest.simple_class_path.endswith("lmms_adapter.SrumBagelLMM")
    extras = project["optional-dependencies"]
    assert any(d.startswith("lmms-eval") for d in extras["understanding"])
    assert set(extras["understanding"]) <= set(extras["dev"])          # CI runs these tests


# ------------------------------------------------------------------ the tiny model
def test_loglikelihood_matches_the_models_own_probabilities(tiny_model):
    image = PIL.Image.new("RGB", (40, 32), (200, 30, 30))
    prompt = "What colour is it?"
    first = tiny_model.tokenizer.encode(tiny_model.understand(image, prompt, max_new_tokens=1),
                                        add_special_tokens=False)
    assert len(first) == 1
    (logp, greedy), = tiny_model.continuation_logprobs(image, prompt, [first])
    _, mass = tiny_model.choice_probabilities(image, prompt, [tiny_model.tokenizer.decode(first)])
    assert greedy and logp == pytest.approx(math.log(float(mass[0])), abs=1e-4)
    # two tokens: the sum of the steps; another first token is not greedy
    other = (first[0] + 1) % 300
    (two, _), (alt, alt_greedy) = tiny_model.continuation_logprobs([image, image], [prompt, prompt],
                                                                    [first + [other], [other]])
    assert two < logp and not alt_greedy and alt < logp
    lm = A.SrumBagelLMM(model=tiny_model, loglikelihood_value="logprob")
    lm.task_dict = {"t": {"test": [{}]}}
    text = tiny_model.tokenizer.decode(first)
    got = lm.loglikelihood([_instance("loglikelihood", (prompt, text, lambda doc: [image], 0, "t", "test"), 0)])
    assert got[0][0] == pytest.approx(logp, abs=1e-5) and got[0][1] is True


def _write_task(root: Path, kind: str = "generate") -> Path:
    """A local lmms-eval task: three coloured pictures, a question each, the colour as answer."""
    tasks, images = root / "tasks", root / "images"
    tasks.mkdir(parents=True, exist_ok=True)
    images.mkdir(exist_ok=True)
    docs = []
    for i, (rgb, name) in enumerate(COLOURS):
        PIL.Image.new("RGB", (48, 32), rgb).save(images / f"{i}.png")
        docs.append({"id": i, "image": str(images / f"{i}.png"), "question": "What colour is the picture?",
                     "answer": name, "choices": ["red", "green", "blue"], "label": i})
    (root / "docs.jsonl").write_text("".join(json.dumps(d) + "\n" for d in docs))
    (tasks / "local_utils.py").write_text("import PIL.Image\n\n\ndef doc_to_visual(doc):\n"
                                          "    return [PIL.Image.open(doc['image']).convert('RGB')]\n")
    head = (f"dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {root / 'docs.jsonl'}\n"
            f"  cache_dir: {root / 'hf_cache'}\ntest_split: test\n"
            "doc_to_visual: !function local_utils.doc_to_visual\ndoc_to_text: \"{{question}}\"\n")
    if kind == "generate":
        body = ("task: srum_local_colours\noutput_type: generate_until\ndoc_to_target: answer\n"
                "generation_kwargs:\n  max_new_tokens: 4\n  until: [\"\\n\"]\n"
                "metric_list:\n  - metric: exact_match\n    aggregation: mean\n    higher_is_better: true\n"
                "    ignore_case: true\n    ignore_punctuation: true\n")
    else:
        body = ("task: srum_local_colours_mc\noutput_type: multiple_choice\ndoc_to_target: label\n"
                "doc_to_choice: \"{{choices}}\"\n"
                "metric_list:\n  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n")
    (tasks / f"{kind}.yaml").write_text(head + body + "metadata:\n  version: 0\n")
    return tasks


def _cfg(root: Path, tiny_dir, tasks_dir: Path, task: str, out: str = "out") -> UnderstandingConfig:
    return UnderstandingConfig(out_dir=str(root / out), model=ModelConfig(path=str(tiny_dir), dtype="float32"),
                               tasks=[task], include_path=[str(tasks_dir)], include_default_tasks=False,
                               bootstrap_iters=0)


def test_local_task_end_to_end_and_the_scoring_path(tmp_path, tiny_dir, tiny_model, monkeypatch):
    tasks = _write_task(tmp_path)
    summary = run_understanding(_cfg(tmp_path, tiny_dir, tasks, "srum_local_colours"), model=tiny_model)
    out = tmp_path / "out"
    assert summary["status"] == "complete" and json.loads((out / "status.json").read_text())["status"] == "complete"
    task = summary["tasks"]["srum_local_colours"]
    assert task["num_docs"] == 3 and "exact_match" in task["metrics"]
    assert summary["table"]["columns"] == ["srum_local_colours"]
    assert 0.0 <= summary["table"]["values"]["srum_local_colours"] <= 1.0
    saved = json.loads((out / "summary.json").read_text())
    assert saved["tasks"]["srum_local_colours"]["num_docs"] == 3
    results = Path(saved["run"]["lmms_eval_results"])
    assert results.is_file() and json.loads(results.read_text())["n-samples"]["srum_local_colours"]["effective"] == 3
    samples = [json.loads(line) for line in Path(saved["run"]["lmms_eval_samples"][0]).read_text().splitlines()]
    assert len(samples) == 3 and "srum_local_colours" in (out / "summary.md").read_text()

    # a model that says the known answers scores 1; one wrong answer, 2/3; the stop string cuts
    answers = {"red": "Red.\nsomething else", "green": "green", "blue": "blue"}
    colour_of = {rgb: name for rgb, name in COLOURS}

    def scripted(images, prompts, **kw):
        return [answers[colour_of[ims[0].getpixel((0, 0))]] for ims in images]
    monkeypatch.setattr(tiny_model, "understand", scripted)
    right = run_understanding(_cfg(tmp_path, tiny_dir, tasks, "srum_local_colours", "right"), model=tiny_model)
    assert right["table"]["values"]["srum_local_colours"] == 1.0
    answers["blue"] = "purple"
    wrong = run_understanding(_cfg(tmp_path, tiny_dir, tasks, "srum_local_colours", "wrong"), model=tiny_model)
    assert wrong["table"]["values"]["srum_local_colours"] == pytest.approx(2 / 3)


def test_multiple_choice_task_uses_loglikelihood(tmp_path, tiny_dir, tiny_model, monkeypatch):
    tasks = _write_task(tmp_path, "mc")
    summary = run_understanding(_cfg(tmp_path, tiny_dir, tasks, "srum_local_colours_mc"), model=tiny_model)
    task = summary["tasks"]["srum_local_colours_mc"]
    assert summary["status"] == "complete" and task["num_docs"] == 3 and 0 <= task["metrics"]["acc"] <= 1
    colour_of = {rgb: name for rgb, name in COLOURS}

    def favour_truth(images, prompts, replies):   # the right colour gets the highest log-probability
        return [(0.0 if colour_of[ims[0].getpixel((0, 0))] == r else -5.0, False) for ims, r in zip(images, replies)]
    monkeypatch.setattr(tiny_model, "continuation_logprobs", favour_truth)
    right = run_understanding(_cfg(tmp_path, tiny_dir, tasks, "srum_local_colours_mc", "right"), model=tiny_model)
    assert right["tasks"]["srum_local_colours_mc"]["metrics"]["acc"] == 1.0


def test_cli_runs_and_fails_truthfully(tmp_path, tiny_dir):
    from srum.cli import main
    tasks = _write_task(tmp_path)
    args = ["eval", "understanding", "--model", str(tiny_dir), "--include-path", str(tasks), "--out"]
    common = ["model.dtype=float32", "include_default_tasks=false", "bootstrap_iters=0", "--limit", "2"]
    assert main(args + [str(tmp_path / "ok"), "--tasks", "srum_local_colours", *common]) == 0
    summary = json.loads((tmp_path / "ok" / "summary.json").read_text())
    assert summary["tasks"]["srum_local_colours"]["num_docs"] == 2 and summary["status"] == "complete"
    assert main(args + [str(tmp_path / "bad"), "--tasks", "no_such_task", *common]) == 2
    status = json.loads((tmp_path / "bad" / "status.json").read_text())
    assert status["status"] == "failed" and "no_such_task" in status["reason"]


# ------------------------------------------------------------------ summary arithmetic
def test_summary_scales_headlines_and_flags_missing_numbers():
    results = {"results": {"mme": {"alias": "mme", "mme_perception_score,none": 1500.0,
                                   "mme_cognition_score,none": 300.0},
                           "mmmu_val": {"mmmu_acc,none": 0.5, "mmmu_acc_stderr,none": 0.01},
                           "pope": {"pope_accuracy,none": 0.8, "submission,none": "file.json"},
                           "mathvista_testmini": {"alias": "group"}},
               "n-samples": {"mme": {"original": 2374, "effective": 2374},
                             "mmmu_val": {"original": 900, "effective": 900},
                             "pope": {"original": 9000, "effective": 0}}}
    s = summarize_results(results, ["mme", "mmmu_val", "pope", "mathvista_testmini"])
    values = s["table"]["values"]
    assert values["mme_p"] == 1500.0 and values["mme_c"] == 300.0 and values["mmmu"] == pytest.approx(50.0)
    assert values["pope_f1"] is None and set(s["tasks"]) == {"mme", "mmmu_val", "pope"}   # the group is not a leaf
    assert any("pope: no value for pope_f1_score" in p for p in s["problems"])
    assert any("pope: no document scored" in p for p in s["problems"])
    assert s["table"]["paper"]["rows"]["Bagel"]["mme_p"] == 1687 and s["num_scored"] == 2374 + 900
    from srum.understanding.runner import markdown_summary, status_of
    assert status_of(s)[0] == "incomplete"
    assert "| paper: Bagel+SRUM | 1673.00 | 677.00 | 55.20 |" in markdown_summary(s)
    assert status_of(summarize_results({"results": {}}, ["x"]))[0] == "failed"


# ------------------------------------------------------------------ the pipeline option
TINY_PIPELINE = Path(__file__).resolve().parents[1] / "configs" / "pipeline" / "tiny.yaml"


def _pipeline(tmp_path, *overrides):
    from srum.pipeline.config import load_pipeline_config
    from srum.pipeline.runner import Pipeline
    cfg = load_pipeline_config(str(TINY_PIPELINE), [f"run_dir={tmp_path / 'run'}", *overrides])
    return cfg, Pipeline


def test_pipeline_plans_understanding_on_the_base_and_each_round(tmp_path, capsys):
    cfg, Pipeline = _pipeline(tmp_path, "rounds=2", "understanding.enabled=true", "understanding.tasks=[mme,pope]",
                              "understanding.every_round=false")
    assert Pipeline(cfg, str(TINY_PIPELINE), dry_run=True).run() is None
    out = capsys.readouterr().out
    planned = re.findall(r"^\[([^\]]+)\] would run", out, flags=re.M)
    assert "baseline/understanding" in planned and "round-02/understanding" in planned
    assert "round-01/understanding" not in planned                     # every_round: false
    assert re.search(r"\$ .*srum eval understanding --config \S*baseline/understanding/config.yaml", out)
    off, _ = _pipeline(tmp_path)
    assert off.understanding.enabled is False                          # off unless asked for


def test_pipeline_understanding_stage_runs_and_reports(tmp_path, tiny_dir):
    tasks = _write_task(tmp_path)
    cfg, Pipeline = _pipeline(tmp_path, "understanding.enabled=true", "understanding.tasks=[srum_local_colours]",
                              f"understanding.overrides={{include_path: [{tasks}], include_default_tasks: false, "
                              "bootstrap_iters: 0, model.dtype: float32}")
    pipeline = Pipeline(cfg, str(TINY_PIPELINE))
    pipeline.run_dir.mkdir(parents=True)
    base = pipeline.understanding(pipeline.run_dir / "baseline" / "understanding", str(tiny_dir),
                                  {"model": str(tiny_dir)})
    summary = json.loads((base.dir / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["tasks"]["srum_local_colours"]["num_docs"] == 3
    assert base.config["tasks"] == ["srum_local_colours"] and base.config["model"]["path"] == str(tiny_dir)
    again = pipeline.understanding(base.dir, str(tiny_dir), {"model": str(tiny_dir)})
    assert pipeline.timing[-1]["action"] == "skipped" and again.dir == base.dir

    from srum.pipeline.runner import understanding_beside
    eval_md = tmp_path / "eval.md"
    eval_md.write_text("# T2I-CompBench comparison\n\n| run | overall |\n|---|---:|\n| base | 50.0 |\n")
    md = understanding_beside(tmp_path / "report", eval_md, [["base", str(base.dir)], ["round 1", str(base.dir)]])
    text = md.read_text()
    assert text.index("T2I-CompBench") < text.index("Understanding (lmms-eval) comparison")
    assert "| round 1 | 0.00 (+0.00) | 3 | 0 |" in text                  # documents scored, tasks without a number
