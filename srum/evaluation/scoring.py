# SPDX-License-Identifier: Apache-2.0
"""Score generated images with an MLLM judge on a 0-100 prompt-alignment scale.

The judge (Qwen2.5-VL through transformers; default ``Qwen/Qwen2.5-VL-72B-Instruct``)
sees one image and :data:`ALIGNMENT_QUESTION` and answers ``{"score": 0-100,
"explanation": "..."}``. Decoding is greedy. :func:`parse_alignment_score` reads the
answer leniently (code fences, prose around the object, single quotes, ``Score: 85``
lines, a bare number). An answer that does not parse is asked again up to ``retries``
times *with sampling* (a greedy re-ask would write the same text), from a generator
seeded by (seed, image id) so that reruns and other world sizes give the same rows. A
judge call that raises for its questions (``ValueError``, a ``RuntimeError`` that is not
a CUDA one, an HTTP request of the ``openai`` backend that failed after its retries) is a
failed attempt like an answer that does not parse; CUDA out of memory, a CUDA error or an
unreachable judge server stops the stage instead
(:class:`~srum.judge.errors.JudgeBackendFatal`). If every attempt fails the row is
``status: "failed"``, ``score: null``: it is counted, never averaged in (the reference
averaged such images in as -1).

Stage output (``scores/`` of a run, see :class:`~srum.stages.shards.ShardedOutput`):

* ``scores.jsonl``: one row per judged image, in manifest order -- ``image_id``,
  ``prompt_id``, ``sample_index``, ``category``, ``prompt``, ``image_file`` (relative to
  ``scores/``), ``score``, ``status`` ("ok" / "failed"), ``explanation``, ``attempts``
  (every raw answer with its parse error), ``judge``, ``think``. This is what the
  summary reads. ``retry_errors`` asks the judge again about the failed rows; a new
  answer replaces the old row.
* ``errors.jsonl``: the images that could not be judged at all (unreadable, no
  category), with the reason; ``retry_errors`` redoes them too.
* ``summary.json``: ``num_scored``, ``num_failed`` (failed judgments), ``mean_score``,
  ``num_errors`` (images not judged at all), ``num_missing``, ``complete``.
"""
from __future__ import annotations

import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Literal, Sequence

import torch

from srum import distributed
from srum.config import MODEL
from srum.judge.errors import JudgeRequestError, raise_if_fatal
from srum.judge.openai_backend import OpenAIServerConfig
from srum.judge.parse import ParseError, brace_blocks, load_lenient, strip_reasoning
from srum.stages.common import ImageStage, error_row, open_image, relative_to
from srum.stages.generate import image_seed
from srum.stages.outdir import result_settings

DEFAULT_JUDGE = "Qwen/Qwen2.5-VL-72B-Instruct"
SCORES_FILE = "scores.jsonl"            # every judged image (ok and failed): what the summary reads
# What a judge call may raise for the questions of one batch (a reply it cannot produce, an
# HTTP request that failed): such an attempt fails and is retried. CUDA out of memory and
# CUDA errors are RuntimeErrors too but break the judge, not the question: they stop the
# stage (srum.judge.errors.raise_if_fatal). Anything else is a bug and stops the run.
BACKEND_ERRORS = (RuntimeError, ValueError)

# Our wording of the 0-100 alignment rubric. The five 20-point bands and what they stand
# for follow the protocol SRUM reports its CompBench numbers with; the text is ours.
ALIGNMENT_QUESTION = (
    "You are rating how well a generated image matches the text prompt it was made from.\n"
    'Text prompt: "{prompt}"\n'
    "Check the objects the prompt names, how many there are, their attributes (color, shape, "
    "texture, material), where they are relative to each other, and any action or interaction "
    "between them.\n"
    "Scale from 0 to 100:\n"
    "81-100: everything in the prompt is shown, with no mismatch.\n"
    "61-80: most objects, attributes and relations are right; small mismatches only.\n"
    "41-60: part of the prompt is shown, but a key object, attribute or relation is missing or wrong.\n"
    "21-40: the image shows hardly any of the described objects, relations or events.\n"
    "0-20: the image does not convey the prompt.\n"
    'Reply with a single JSON object and nothing else: {{"score": <integer from 0 to 100>, '
    '"explanation": "<why, in at most 20 words>"}}'
)


# ------------------------------------------------------------------ answer parsing
@dataclass(frozen=True)
class AlignmentScore:
    """``score`` in [0, 100] (an int when the judge wrote a whole number); ``source``:
    where it was read ("json", "line" or "number")."""

    score: float
    explanation: str
    source: str


_SCORE_KEYS = {"score", "alignment_score", "alignment", "overall_score", "final_score", "rating", "overall_rating"}
_EXPLANATION_KEYS = {"explanation", "reason", "reasoning", "rationale", "justification", "analysis", "comment"}
_NUM = r"[+-]?(?:\d+(?:\.\d+)?|\.\d+)"
_SCORE_FIELD = (rf"(?<![A-Za-z])[\"'*_`#]*(?:(?:final|overall|alignment)[ _])?(?:score|rating)[\"'*_`]*\s*"
                rf"(?:\([^()\n]*\)\s*)?[:=][\s*_`\"']*(?P<num>{_NUM})")
# A score field that starts its line wins over one mentioned in running text (e.g. inside
# the explanation: "Explanation: a score: 95 would need ...").
_SCORE_LINE = re.compile(rf"^[ \t]*(?:[-+>]+[ \t]*|\d+[.)][ \t]*)?{_SCORE_FIELD}", re.IGNORECASE | re.MULTILINE)
_SCORE_ANYWHERE = re.compile(_SCORE_FIELD, re.IGNORECASE)
_EXPLANATION_LINE = re.compile(r"(?<![A-Za-z])[\"'*_`#]*(?:explanation|reason)[\"'*_`]*\s*:[\s*_`\"']*(?P<text>[^\n]*)",
                               re.IGNORECASE)
_BARE = re.compile(rf"[\s*_`\"'(\[]*(?P<num>{_NUM})(?P<rest>[^\n]*?)[\s*_`\"')\].]*")
_FRACTION = re.compile(rf"\s*(?:/|out\s+of)\s*(?P<den>{_NUM})", re.IGNORECASE)
_RANGE = re.compile(rf"\s*(?:-|\u2013|to|~)\s*{_NUM}", re.IGNORECASE)
_PERCENT = re.compile(r"\s*%")


def _norm(key: Any) -> str:
    return re.sub(r"[\s\-]+", "_", str(key).strip().strip("*_:`").lower())


def _checked(value: Any, rest: str = "") -> float:
    """A score value (and the text right after it) -> a number in [0, 100].

    Accepted: 85, 85.0, "85", "85/100", "85%" (the same scale). Rejected with
    :class:`ParseError`: other denominators (8/10: we do not rescale), ranges (80-90),
    booleans, NaN, anything outside [0, 100]."""
    if isinstance(value, bool) or value is None:
        raise ParseError(f"score is {value!r}, not a number")
    if isinstance(value, str):
        m = re.fullmatch(rf"\s*(?P<num>{_NUM})(?P<rest>.*)", value, re.DOTALL)
        if not m:
            raise ParseError(f"score {value!r} is not a number")
        value, rest = float(m["num"]), m["rest"]
    elif not isinstance(value, (int, float)):
        raise ParseError(f"score {value!r} is not a number")
    value = float(value)
    if not math.isfinite(value):
        raise ParseError(f"score is {value}, not a finite number")
    frac = _FRACTION.match(rest)
    if frac and float(frac["den"]) != 100.0:
        raise ParseError(f"score {value:g}{frac.group(0).strip()} is on another scale; expected 0-100")
    if not frac and _RANGE.match(rest):
        raise ParseError(f"score is a range ({value:g}{rest.strip()[:20]}), not a number")
    if not 0.0 <= value <= 100.0:
        raise ParseError(f"score {value:g} is outside 0-100")
    return int(value) if value.is_integer() else value


def _explanation(obj: dict) -> str:
    for k, v in obj.items():
        if _norm(k) in _EXPLANATION_KEYS and isinstance(v, str):
            return " ".join(v.split())
    return ""


def parse_alignment_score(text: str) -> AlignmentScore:
    """Read a 0-100 score (and explanation) from a judge answer.

    Preference: the last JSON-like object with a score key; else the last ``score: N``
    line; else an answer that is only a number. Reasoning before a closing ``</think>``
    is ignored. Raises :class:`~srum.judge.parse.ParseError` saying why when no valid
    score is found."""
    if not isinstance(text, str):
        raise ParseError(f"expected the answer as a string, got {type(text).__name__}")
    answer = strip_reasoning(text)
    if not answer.strip():
        raise ParseError("empty answer")
    errors = []
    for snippet in reversed(list(brace_blocks(answer))):
        obj = load_lenient(snippet)
        if not isinstance(obj, dict):
            continue
        key = next((k for k in obj if _norm(k) in _SCORE_KEYS), None)
        if key is None:
            continue
        try:
            return AlignmentScore(_checked(obj[key]), _explanation(obj), "json")
        except ParseError as err:  # a later-looking line may still hold a valid score
            errors.append(str(err))
            break
    if errors:
        raise ParseError(errors[0])
    found = list(_EXPLANATION_LINE.finditer(answer))
    lines = list(_SCORE_LINE.finditer(answer)) or [
        m for m in _SCORE_ANYWHERE.finditer(answer)
        if not any(e.start("text") <= m.start() < e.end("text") for e in found)]
    if lines:
        last = lines[-1]
        score = _checked(float(last["num"]), answer[last.end("num"):])
        explanation = found[-1]["text"].strip().rstrip("\"',}").strip() if found else ""
        return AlignmentScore(score, explanation, "line")
    bare = _BARE.fullmatch(answer.strip())
    if bare and (not bare["rest"].strip() or _FRACTION.match(bare["rest"]) or _PERCENT.match(bare["rest"])
                 or _RANGE.match(bare["rest"])):
        return AlignmentScore(_checked(float(bare["num"]), bare["rest"]), "", "number")
    shown = " ".join(answer.split())
    raise ParseError(f"no score found in the answer: {shown[:160]!r}")


# ------------------------------------------------------------------ config and judge placement
def check_judge_settings(cfg) -> None:
    """The checks every benchmark's MLLM judge config shares (budget, retries, placement,
    server): ``CompBenchJudgeConfig`` and ``reasonbench.ReasonBenchJudgeConfig``."""
    if cfg.max_new_tokens < 1 or cfg.batch_size < 1 or cfg.gpus_per_process < 1:
        raise ValueError("max_new_tokens, batch_size and gpus_per_process must be >= 1")
    if cfg.retries < 0:
        raise ValueError(f"retries must be >= 0, got {cfg.retries}")
    if not cfg.retry_temperature > 0:
        raise ValueError(f"retry_temperature must be > 0, got {cfg.retry_temperature}")
    if cfg.device_map not in (None, "auto"):
        raise ValueError(f"device_map must be null or 'auto', got {cfg.device_map!r}")
    if cfg.device_map and cfg.gpus_per_process > 1:
        raise ValueError("choose device_map: auto (one process, all GPUs) or gpus_per_process (torchrun), not both")
    if cfg.backend == "openai":
        cfg.server.check("judge")


@dataclass
class CompBenchJudgeConfig:
    """The MLLM judge of ``srum eval compbench score`` (documented in EVAL.md).

    Placement: one process with ``device_map: auto`` spreads the judge over every visible
    GPU; under torchrun each process uses ``cuda:LOCAL_RANK``, or with
    ``gpus_per_process: g > 1`` the GPUs ``[LOCAL_RANK*g, (LOCAL_RANK+1)*g)`` (launch
    ``GPUs / g`` processes per node)."""

    model: str = field(default=DEFAULT_JUDGE, metadata=MODEL)   # Qwen2.5-VL-Instruct directory or hub id
    backend: Literal["transformers", "openai"] = "transformers"   # in-process, or a vLLM / SGLang server
    server: OpenAIServerConfig = field(default_factory=OpenAIServerConfig)   # backend openai: where it is
    dtype: str | None = "bfloat16"      # bfloat16 | float16 | float32; None = the checkpoint's
    device: str | None = None           # one process, one device (e.g. "cuda:1"); None = automatic
    device_map: str | None = None       # "auto": one process spreads the judge over all visible GPUs
    gpus_per_process: int = 1           # > 1: each torchrun process shards the judge over g GPUs
    max_new_tokens: int = 256           # answer budget per attempt
    batch_size: int = 4                 # images per greedy judge call
    retries: int = 2                    # sampled re-asks of an answer that does not parse
    retry_temperature: float = 0.7
    question_template: str | None = None   # None = ALIGNMENT_QUESTION; must contain "{prompt}"

    def __post_init__(self):
        check_judge_settings(self)
        if self.question_template is not None:
            try:
                self.question_template.format(prompt="x")
            except (KeyError, IndexError, ValueError) as err:
                raise ValueError(f"question_template must contain {{prompt}} and no other field "
                                 f"(double literal braces): {err!r}") from None
            if "{prompt}" not in self.question_template:
                raise ValueError("question_template must contain {prompt}")

    def question(self, prompt: str) -> str:
        return (self.question_template or ALIGNMENT_QUESTION).format(prompt=prompt)


# judge fields that decide where and how fast the questions are asked, not the answers (as
# for ``srum judge``: retries only add attempts after the same first ones)
JUDGE_NOT_RESULT_FIELDS = ("batch_size", "device", "device_map", "gpus_per_process", "retries",
                           *(f"server.{name}" for name in OpenAIServerConfig.OPERATIONAL_FIELDS))


def judge_result_settings(judge, **extra) -> dict:
    """The result-changing settings of a judged score step: the judge's config less
    :data:`JUDGE_NOT_RESULT_FIELDS`, plus ``extra`` (seed, benchmark files...). Recorded with
    the scores; resuming with other ones is refused (``fresh=true`` starts over)."""
    settings = result_settings(SimpleNamespace(judge=judge), ("judge",),
                               tuple(f"judge.{name}" for name in JUDGE_NOT_RESULT_FIELDS))
    return {**settings, **extra}


def balanced_device_map(model_id: str, max_memory: dict, dtype: str | torch.dtype | None = "bfloat16") -> dict:
    """A module -> device map that spreads the Qwen2.5-VL ``model_id`` over the devices of
    ``max_memory`` (``{gpu index: bytes or "70GiB"}``), balanced like ``device_map="auto"``
    but restricted to those devices. Built from the config alone (no weights are read)."""
    from accelerate import infer_auto_device_map, init_empty_weights
    from accelerate.utils import get_balanced_memory
    from transformers import AutoConfig, Qwen2_5_VLForConditionalGeneration

    from srum.judge.backends import resolve_dtype

    torch_dtype = resolve_dtype(dtype) or torch.bfloat16
    config = AutoConfig.from_pretrained(model_id, trust_remote_code=False)
    with init_empty_weights():
        model = Qwen2_5_VLForConditionalGeneration._from_config(config, dtype=torch_dtype)
    no_split = list(getattr(model, "_no_split_modules", None) or [])
    memory = get_balanced_memory(model, max_memory=dict(max_memory), no_split_module_classes=no_split, dtype=torch_dtype)
    return infer_auto_device_map(model, max_memory=memory, no_split_module_classes=no_split, dtype=torch_dtype)


def judge_placement(cfg: CompBenchJudgeConfig, info: distributed.DistInfo) -> tuple[str | None, str | dict | None]:
    """``(device, device_map)`` for :class:`~srum.judge.backends.QwenVLJudge` in this process."""
    if cfg.device_map == "auto":
        if info.enabled:
            raise ValueError("judge.device_map=auto spreads one judge over all GPUs of a single process; under "
                             "torchrun use judge.gpus_per_process instead")
        return None, "auto"
    if cfg.gpus_per_process > 1:
        if not torch.cuda.is_available():
            raise ValueError("judge.gpus_per_process > 1 needs CUDA GPUs")
        first = info.local_rank * cfg.gpus_per_process
        gpus = list(range(first, first + cfg.gpus_per_process))
        if gpus[-1] >= torch.cuda.device_count():
            raise ValueError(f"process {info.local_rank} needs GPUs {gpus} (gpus_per_process={cfg.gpus_per_process}) "
                             f"but only {torch.cuda.device_count()} are visible; launch fewer processes per node")
        torch.cuda.set_device(first)   # collectives (NCCL) then use this process's own first GPU
        # leave room for activations and the CUDA context
        memory = {g: int(torch.cuda.mem_get_info(g)[0] * 0.85) for g in gpus}
        return None, balanced_device_map(cfg.model, memory, cfg.dtype)
    if cfg.device is not None:
        return cfg.device, None
    return str(distributed.local_device(info)), None


def load_judge(cfg: CompBenchJudgeConfig, info: distributed.DistInfo):
    if cfg.backend == "openai":   # served elsewhere: nothing is placed on this process's GPUs
        from srum.judge.openai_backend import OpenAIJudge
        return OpenAIJudge(cfg.server, model=cfg.model)
    import dataclasses

    from srum.hub import local_or_snapshot
    from srum.judge.backends import QwenVLJudge
    model = local_or_snapshot(cfg.model)   # a hub id: local rank 0 downloads, the node's other processes wait
    device, device_map = judge_placement(dataclasses.replace(cfg, model=model), info)
    return QwenVLJudge(model, dtype=cfg.dtype, device=device, device_map=device_map)


# ------------------------------------------------------------------ asking
def _ask(backend, images: Sequence, questions: Sequence[str], cfg: CompBenchJudgeConfig, *,
         generator: torch.Generator | None) -> list[str | BaseException]:
    """One judge call: greedy for ``generator`` None, else sampled from it. Returns one
    answer per image or, when the call raised one of :data:`BACKEND_ERRORS`, that
    exception in place of the answers it lacks (the rows a
    :class:`~srum.judge.errors.JudgeRequestError` answered keep their answer). CUDA
    errors and unusable servers raise :class:`~srum.judge.errors.JudgeBackendFatal`."""
    sampled = generator is not None
    try:
        return backend.generate([[im] for im in images], list(questions), system=None,
                                max_new_tokens=cfg.max_new_tokens, do_sample=sampled,
                                temperature=cfg.retry_temperature if sampled else 1.0, generator=generator)
    except JudgeRequestError as err:
        return [a if a is not None else JudgeRequestError([None], [e]) for a, e in zip(err.answers, err.errors)]
    except BACKEND_ERRORS as err:
        raise_if_fatal(err, f"judge {getattr(backend, 'model_id', '?')}")
        return [err] * len(images)


def score_images(backend, images: Sequence, prompts: Sequence[str], cfg: CompBenchJudgeConfig,
                 generators: Sequence[torch.Generator]) -> list[dict]:
    """Judge ``images[i]`` against ``prompts[i]``; one result per image:
    ``{score, status, explanation, attempts: [{answer, sampled, error}]}``.

    All images are asked together greedily; each failure (an answer that does not parse,
    or a call that raised: ``answer`` None) is then re-asked alone, sampled from its own
    ``generators[i]`` (so its retries do not depend on the batch)."""
    if not (len(images) == len(prompts) == len(generators)):
        raise ValueError("images, prompts and generators must have the same length")
    questions = [cfg.question(p) for p in prompts]
    greedy = _ask(backend, images, questions, cfg, generator=None)
    results = []
    for i in range(len(images)):
        attempts, parsed = [], None
        for attempt in range(cfg.retries + 1):
            answer = greedy[i] if attempt == 0 else _ask(backend, [images[i]], [questions[i]], cfg,
                                                         generator=generators[i])[0]
            if isinstance(answer, BaseException):
                attempts.append({"answer": None, "sampled": attempt > 0,
                                 "error": f"judge raised {type(answer).__name__}: {answer}"})
                continue
            try:
                parsed = parse_alignment_score(answer)
                attempts.append({"answer": answer, "sampled": attempt > 0, "error": None})
                break
            except ParseError as err:
                attempts.append({"answer": answer, "sampled": attempt > 0, "error": str(err)})
        if parsed is None:
            results.append({"score": None, "status": "failed", "explanation": "", "attempts": attempts})
        else:
            results.append({"score": parsed.score, "status": "ok", "explanation": parsed.explanation,
                            "attempts": attempts})
    return results


# ------------------------------------------------------------------ the stage
def run_score(images_manifest: str | Path, out_dir: str | Path, judge: CompBenchJudgeConfig, *, seed: int = 0,
              retry_errors: bool = False, category: str | None = None, config=None, backend=None,
              fresh: bool = False) -> dict:
    """Score every image of ``images_manifest`` (ours, or the reference's ``output.jsonl``)
    into ``out_dir`` (sharded over torchrun processes, resumable; files in the module
    docstring). ``category`` fills rows that carry none (a one-category reference
    folder). ``retry_errors`` re-judges the failed judgments and the images not judged
    before. ``backend``: an already built judge (tests); default: load ``judge.model``.
    A resume with other result-changing settings (:func:`judge_result_settings`, ``seed``,
    ``category``) is refused; ``fresh`` moves the earlier scores aside first. Returns the
    stage summary (on rank 0; ``{}`` on the others)."""
    stage = ImageStage.open("eval score", images_manifest, out_dir, manifest_name=SCORES_FILE,
                            retryable=failed_judgment, timeout_minutes=getattr(config, "timeout_minutes", None))
    items, out_dir = stage.items, stage.out.out_dir
    judge_backend = (lambda: backend) if backend is not None else functools.cache(lambda: load_judge(judge, stage.info))

    def process(indices: list[int]) -> list[dict]:
        rows: dict[int, dict] = {}
        todo, images = [], []
        for i in indices:
            item = items[i]
            cat = item.category or category
            if not cat:
                rows[i] = error_row("image_id", item.image_id, f"{item.source}: no 'category' (set category= for a "
                                                               "manifest of one category)")
                continue
            try:
                images.append(open_image(item))
                todo.append(i)
            except (FileNotFoundError, ValueError) as err:
                rows[i] = error_row("image_id", item.image_id, str(err))
        if todo:
            generators = [torch.Generator().manual_seed(image_seed(seed, items[i].image_id, 0)) for i in todo]
            results = score_images(judge_backend(), images, [items[i].prompt for i in todo], judge, generators)
            for i, result in zip(todo, results):
                item = items[i]
                rows[i] = {"image_id": item.image_id, "prompt_id": item.prompt_id, "sample_index": item.sample_index,
                           "category": item.category or category, "prompt": item.prompt,
                           "image_file": relative_to(item.image_path, out_dir), **result,
                           "judge": getattr(judge_backend(), "model_id", judge.model),
                           "think": item.row.get("think")}
        return [rows[i] for i in indices]

    def summarize(rows: list[dict]) -> dict:
        scored = [r["score"] for r in rows if r.get("status") == "ok"]
        return {"num_scored": len(scored), "num_failed": sum(failed_judgment(r) for r in rows),
                "mean_score": sum(scored) / len(scored) if scored else None}

    return stage.run(process, batch_size=judge.batch_size, config=config or judge, retry_errors=retry_errors,
                     summarize=summarize, settings=judge_result_settings(judge, seed=seed, category=category),
                     fresh=fresh)


def failed_judgment(row: dict) -> bool:
    """A scored row whose every attempt failed: kept and counted, redone by ``retry_errors``."""
    return row.get("status") == "failed"
