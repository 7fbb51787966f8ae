# SPDX-License-Identifier: Apache-2.0
"""Self-judgment: the model (or an external VLM) scores generated images and their regions.

* :mod:`.rubric`: the global/local questions and the 1..9 rating scale;
* :mod:`.parse`: reading a score, reason and label out of a written answer;
* :mod:`.scoring`: :class:`JudgeConfig`, :func:`judge_image` and :func:`judge_images` (text and logits modes);
* :mod:`.backends`: :class:`SelfJudge` (Bagel) and :class:`QwenVLJudge` (transformers);
* :mod:`.openai_backend`: :class:`OpenAIJudge` (a judge served by vLLM / SGLang over HTTP);
* :mod:`.errors`: per-request failures vs. errors that stop a stage;
* :mod:`.tiny_qwen_vl`: a random tiny Qwen2.5-VL checkpoint for tests.
"""
from .backends import JudgeBackend, QwenVLJudge, SelfJudge, load_judge_backend
from .errors import JudgeBackendFatal, JudgeRequestError
from .openai_backend import OpenAIJudge, OpenAIServerConfig
from .parse import ParsedJudgment, ParseError, parse_judgment
from .rubric import RATING_SCALE, RatingScale, global_question, local_question
from .scoring import JudgeConfig, judge_image, judge_images
from .tiny_qwen_vl import write_tiny_qwen_vl

__all__ = ["JudgeBackend", "JudgeBackendFatal", "JudgeConfig", "JudgeRequestError", "OpenAIJudge",
           "OpenAIServerConfig", "ParseError", "ParsedJudgment", "QwenVLJudge", "RATING_SCALE", "RatingScale",
           "SelfJudge", "global_question", "judge_image", "judge_images", "load_judge_backend", "local_question",
           "parse_judgment", "write_tiny_qwen_vl"]
