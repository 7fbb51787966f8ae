# SPDX-License-Identifier: Apache-2.0
"""The OpenAI-compatible judge backend against a local test server (tests/openai_judge_server.py)
that answers with the tiny Qwen2.5-VL: same answers and scores as the in-process judge,
retries with backoff, timeouts, per-row failure accounting, and what stops a stage."""
import socket

import PIL.Image
import pytest
import torch

from srum.evaluation.scoring import CompBenchJudgeConfig, load_judge, score_images
from srum.judge import (RATING_SCALE, JudgeBackendFatal, JudgeConfig, JudgeRequestError, OpenAIJudge,
                        OpenAIServerConfig, QwenVLJudge, judge_image, load_judge_backend, write_tiny_qwen_vl)
from srum.judge.errors import fatal_reason

from openai_judge_server import JudgeServer

PROMPT = "a red apple to the left of a blue cup"


@pytest.fixture(scope="module")
def qwen_judge(tmp_path_factory):
    return QwenVLJudge(write_tiny_qwen_vl(tmp_path_factory.mktemp("tiny-qwen-vl"), seed=0), dtype="float32",
                       device="cpu")


@pytest.fixture()
def server(qwen_judge):
    with JudgeServer(qwen_judge) as srv:
        yield srv


def _remote(server, sleeps=None, **kw) -> OpenAIJudge:
    cfg = OpenAIServerConfig(base_url=server.base_url, model="tiny-judge", **kw)
    return OpenAIJudge(cfg, sleep=(sleeps.append if sleeps is not None else lambda s: None))


def _rows():
    red = PIL.Image.new("RGB", (64, 48), (200, 20, 20))
    blue = PIL.Image.new("RGB", (40, 64), (20, 20, 200))
    return [[red], [red, blue], []], ["Is the apple red?", "Which image is bluer?", "Say a digit."]


def test_generate_equals_in_process(server, qwen_judge, monkeypatch):
    monkeypatch.setenv("MY_JUDGE_KEY", "sk-test")
    remote = _remote(server, api_key_env="MY_JUDGE_KEY", concurrency=3)
    images, prompts = _rows()
    for system in (None, "Think first."):
        kw = dict(system=system, max_new_tokens=6, do_sample=False, temperature=1.0, generator=None)
        assert remote.generate(images, prompts, **kw) == qwen_judge.generate(images, prompts, **kw)
    body = server.requests[0]
    assert body["temperature"] == 0.0 and body["max_tokens"] == 6 and "seed" not in body
    assert server.headers[0]["authorization"] == "Bearer sk-test"   # the key comes from the named variable
    # a sampled retry sends a seed drawn from the caller's generator: reproducible
    kw = dict(system=None, max_new_tokens=6, do_sample=True, temperature=0.7)
    first = remote.generate(images, prompts, generator=torch.Generator().manual_seed(3), **kw)
    assert first == remote.generate(images, prompts, generator=torch.Generator().manual_seed(3), **kw)
    assert server.requests[-1]["temperature"] == 0.7 and isinstance(server.requests[-1]["seed"], int)


def test_judge_scores_equal_in_process(server, qwen_judge):
    image = PIL.Image.new("RGB", (64, 48), (90, 140, 60))
    regions = [{"region_id": 0, "bbox": [0, 0, 32, 24], "mask": None, "grounding": None}]
    logits = JudgeConfig(backend="openai", judge_model="tiny-judge", mode="logits", min_scale_mass=0.0,
                         server=OpenAIServerConfig(base_url=server.base_url, top_logprobs=100000))
    remote = load_judge_backend(logits)
    assert isinstance(remote, OpenAIJudge) and remote.model_id == "tiny-judge"
    ours, theirs = judge_image(remote, image, PROMPT, regions, logits), judge_image(qwen_judge, image, PROMPT,
                                                                                      regions, logits)
    for a, b in zip([ours[0], *ours[1]], [theirs[0], *theirs[1]]):
        assert a["status"] == b["status"] == "ok"
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)
        assert a["detail"]["scale_mass"] == pytest.approx(b["detail"]["scale_mass"], rel=1e-4)
    text = JudgeConfig(backend="openai", judge_model="tiny-judge", max_new_tokens=4, retries=0, think=False,
                       server=OpenAIServerConfig(base_url=server.base_url))
    ours, theirs = judge_image(remote, image, PROMPT, regions, text), judge_image(qwen_judge, image, PROMPT,
                                                                                    regions, text)
    assert [ours[0]["status"], ours[0]["score"]] == [theirs[0]["status"], theirs[0]["score"]]
    assert ours[0]["detail"].get("answers") == theirs[0]["detail"].get("answers")


def test_eval_scores_equal_in_process(server, qwen_judge):
    cfg = CompBenchJudgeConfig(model="tiny-judge", backend="openai", max_new_tokens=4, retries=1,
                               server=OpenAIServerConfig(base_url=server.base_url))
    remote = load_judge(cfg, info=None)
    assert isinstance(remote, OpenAIJudge)
    images = [PIL.Image.new("RGB", (48, 48), c) for c in ((200, 20, 20), (20, 200, 20))]
    gens = lambda: [torch.Generator().manual_seed(i) for i in range(2)]   # noqa: E731
    ours = score_images(remote, images, ["a red square", "a green square"], cfg, gens())
    theirs = score_images(qwen_judge, images, ["a red square", "a green square"], cfg, gens())
    for a, b in zip(ours, theirs):
        assert a["status"] == b["status"] and a["score"] == b["score"]
        assert a["attempts"][0] == b["attempts"][0]   # the greedy answer (sampled retries use the server's RNG)


def test_retries_with_exponential_backoff(server):
    sleeps = []
    remote = _remote(server, sleeps, max_retries=3, backoff_s=1.0, max_backoff_s=3.0)
    server.faults[:] = [("status", 500), ("status", 503), ("status", 429)]
    images, prompts = _rows()
    assert len(remote.generate(images[:1], prompts[:1], max_new_tokens=2)) == 1
    assert sleeps == [1.0, 2.0, 3.0]   # doubled each time, capped at max_backoff_s
    assert len(server.requests) == 4


def test_failed_request_fails_its_row_only(server, qwen_judge):
    remote = _remote(server, max_retries=1)
    images, prompts = _rows()
    server.faults[:] = [("status", 500), ("status", 500)]   # the first row to arrive fails twice
    with pytest.raises(JudgeRequestError) as info:
        remote.generate(images[:1], prompts[:1], max_new_tokens=2)
    assert info.value.answers == [None] and "InternalServerError after 2 tries" in info.value.errors[0]
    server.faults[:] = [("status", 400)]                     # a refused request is not retried
    with pytest.raises(JudgeRequestError) as info:
        remote.generate(images, prompts, max_new_tokens=2)
    assert sum(a is None for a in info.value.answers) == 1 and sum(e is not None for e in info.value.errors) == 1
    # srum judge: that question gets a failed attempt and is asked again; the others keep theirs
    cfg = JudgeConfig(backend="openai", judge_model="tiny-judge", max_new_tokens=3, retries=1, think=False,
                      server=OpenAIServerConfig(base_url=server.base_url))
    server.faults[:] = [("status", 400)]
    entry, _ = judge_image(remote, images[0][0], PROMPT, [], cfg, torch.Generator().manual_seed(0))
    assert entry["detail"]["attempts"] == 2
    assert entry["detail"]["errors"][0].startswith("judge request failed: HTTP 400")
    # eval scoring: the row's attempt records the error, the row is re-asked and counted
    eval_cfg = CompBenchJudgeConfig(model="tiny-judge", backend="openai", max_new_tokens=3, retries=0,
                                    server=OpenAIServerConfig(base_url=server.base_url))
    server.faults[:] = [("status", 400)]
    rows = score_images(remote, [images[0][0]] * 2, ["a", "b"], eval_cfg, [torch.Generator()] * 2)
    failed = [r for r in rows if r["attempts"][0]["answer"] is None]
    assert len(failed) == 1 and failed[0]["status"] == "failed" and "HTTP 400" in failed[0]["attempts"][0]["error"]


def test_malformed_replies_and_retried_statuses(server):
    sleeps = []
    remote = _remote(server, sleeps, max_retries=2, backoff_s=0.5)
    images, prompts = _rows()
    server.faults[:] = [("status", 408), ("status", 409)]   # retried like a 5xx
    assert len(remote.generate(images[:1], prompts[:1], max_new_tokens=2)) == 1 and sleeps == [0.5, 1.0]
    server.faults[:] = [("malformed", 0)]                     # no choices: that row fails, not the stage
    with pytest.raises(JudgeRequestError) as info:
        remote.generate(images[:1], prompts[:1], max_new_tokens=2)
    assert "malformed reply" in info.value.errors[0]


def test_timeout_is_a_failed_attempt(server):
    remote = _remote(server, timeout_s=0.5, max_retries=1)
    server.faults[:] = [("sleep", 1.5), ("sleep", 1.5)]
    images, prompts = _rows()
    with pytest.raises(JudgeRequestError) as info:
        remote.generate(images[:1], prompts[:1], max_new_tokens=2)
    assert "APITimeoutError after 2 tries" in info.value.errors[0]


def test_unusable_server_stops_the_stage(server):
    images, prompts = _rows()
    wrong_model = OpenAIJudge(OpenAIServerConfig(base_url=server.base_url, model="not-served"))
    with pytest.raises(JudgeBackendFatal, match="HTTP 404"):
        wrong_model.generate(images[:1], prompts[:1], max_new_tokens=2)
    with socket.socket() as s:   # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = OpenAIJudge(OpenAIServerConfig(base_url=f"http://127.0.0.1:{port}/v1", model="m", max_retries=1),
                       sleep=lambda s: None)
    with pytest.raises(JudgeBackendFatal, match="unreachable after 2 tries"):
        down.generate(images[:1], prompts[:1], max_new_tokens=2)
    cfg = CompBenchJudgeConfig(model="m", backend="openai", server=OpenAIServerConfig(base_url=down.cfg.base_url,
                                                                                      max_retries=0))
    with pytest.raises(JudgeBackendFatal):   # not a per-image failure
        score_images(down, images[0], ["a"], cfg, [torch.Generator()])


def test_config_checks():
    with pytest.raises(ValueError, match="server.base_url"):
        JudgeConfig(backend="openai", judge_model="m")
    with pytest.raises(ValueError, match="served model name"):
        JudgeConfig(backend="openai", server=OpenAIServerConfig(base_url="http://x/v1"))
    with pytest.raises(ValueError, match="server.base_url"):
        CompBenchJudgeConfig(backend="openai")
    with pytest.raises(ValueError):
        OpenAIServerConfig(concurrency=0)
    assert JudgeConfig(backend="openai", server=OpenAIServerConfig(base_url="http://x/v1", model="m"))


# ------------------------------------------------------------------ CUDA errors stop the stage
class _Raising:
    name, model_id = "fake", "fake"

    def __init__(self, err):
        self.err = err

    def generate(self, *a, **k):
        raise self.err


@pytest.mark.parametrize("err", [torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"),
                                 RuntimeError("CUDA error: an illegal memory access was encountered")])
def test_cuda_errors_stop_eval_scoring(err):
    cfg = CompBenchJudgeConfig(model="m", retries=2)
    with pytest.raises(JudgeBackendFatal, match="stopping instead of counting every item as failed"):
        score_images(_Raising(err), [PIL.Image.new("RGB", (8, 8))], ["a"], cfg, [torch.Generator()])
    assert fatal_reason(err) is not None


def test_other_errors_stay_per_item():
    cfg = CompBenchJudgeConfig(model="m", retries=1)
    rows = score_images(_Raising(ValueError("image too small")), [PIL.Image.new("RGB", (8, 8))], ["a"], cfg,
                        [torch.Generator()])
    assert rows[0]["status"] == "failed" and len(rows[0]["attempts"]) == 2
    assert "image too small" in rows[0]["attempts"][0]["error"]


def test_in_process_judge_loads_onto_its_device(monkeypatch, tmp_path):
    """No full host copy per process: from_pretrained is asked to place weights on the device."""
    import transformers
    seen = {}
    real = transformers.Qwen2_5_VLForConditionalGeneration.from_pretrained

    def spy(*args, **kwargs):
        seen.update(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(transformers.Qwen2_5_VLForConditionalGeneration, "from_pretrained", spy)
    judge = QwenVLJudge(write_tiny_qwen_vl(tmp_path / "q", seed=0), dtype="float32", device="cpu")
    assert seen["device_map"] == {"": "cpu"} and judge.device == torch.device("cpu")
    assert RATING_SCALE.choices


# ------------------------------------------------------------------ the stages, end to end
def _manifest(tmp_path, n=3):
    import json
    (tmp_path / "images").mkdir()
    rows = []
    for i in range(n):
        PIL.Image.new("RGB", (48, 48), (60 * i, 100, 40)).save(tmp_path / "images" / f"img{i}.png")
        rows.append({"image_id": f"img{i}", "image_file": f"images/img{i}.png", "prompt": f"prompt {i}",
                     "category": "color", "regions": [{"bbox": [0, 0, 24, 24]}]})
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest


def test_eval_score_stage_with_a_served_judge(server, tmp_path):
    import json

    from srum.evaluation.scoring import run_score
    cfg = CompBenchJudgeConfig(model="tiny-judge", backend="openai", max_new_tokens=4, retries=1, batch_size=3,
                               server=OpenAIServerConfig(base_url=server.base_url))
    server.faults[:] = [("status", 400)]        # one image's first request is refused: a failed attempt only
    summary = run_score(_manifest(tmp_path), tmp_path / "scores", cfg)
    rows = [json.loads(line) for line in (tmp_path / "scores/scores.jsonl").read_text().splitlines()]
    assert len(rows) == 3 and all(r["judge"] == "tiny-judge" for r in rows)
    assert summary["num_scored"] + summary["num_failed"] == 3
    assert sum(a["error"] is not None and "HTTP 400" in a["error"] for r in rows for a in r["attempts"]) == 1


def test_judge_stage_with_a_served_judge(server, tmp_path):
    import json

    from srum.stages.judge import JudgeStageConfig, run_judge
    cfg = JudgeStageConfig(regions=str(_manifest(tmp_path)), out_dir=str(tmp_path / "judge"),
                           judge=JudgeConfig(backend="openai", mode="logits", min_scale_mass=0.0,
                                             server=OpenAIServerConfig(base_url=server.base_url, model="tiny-judge",
                                                                       top_logprobs=100000)))
    run_judge(cfg)
    records = [json.loads(line) for line in (tmp_path / "judge/rewards.jsonl").read_text().splitlines()]
    assert len(records) == 3
    assert records[0]["judge"] == {"backend": "openai", "mode": "logits", "model": "tiny-judge",
                                   "endpoint": server.base_url}
    assert all(r["global"]["status"] == "ok" and r["regions"][0]["status"] == "ok" for r in records)
