# SPDX-License-Identifier: Apache-2.0
"""parse_judgment on realistic judge answers: layouts, key variants, clamping, failures."""
import pytest

from srum.judge.parse import ParseError, brace_blocks, load_lenient, parse_judgment, strip_reasoning

# (answer, kind, expected score, expected reason, expected label)
VALID = [
    # plain JSON, as the rubric asks
    ('{"score": 0.6, "reason": "The cup is left of the apple."}', "global", 0.6, "The cup is left of the apple.", None),
    ('{"object": "a red apple", "score": 0.85, "reason": "Clean and relevant."}', "local", 0.85, "Clean and relevant.",
     "a red apple"),
    # think block first, then the answer
    ('<think>The prompt wants the apple on the left. The apple is on the left; score maybe 0.9.</think>\n'
     '{"score": 0.8, "reason": "Apple left of cup, slightly overlapping."}', "global", 0.8,
     "Apple left of cup, slightly overlapping.", None),
    # only a closing tag (the opening one was part of the prompt)
    ('the apple is left, fine. 0.3 maybe\n</think>\n{"score": 0.7, "reason": "ok"}', "global", 0.7, "ok", None),
    # ```json fence with prose around it
    ('Here is my evaluation:\n```json\n{\n  "score": -0.6,\n  "reason": "The lamp is beside the sofa."\n}\n```\n'
     'Let me know if you need more.', "global", -0.6, "The lamp is beside the sofa.", None),
    # single quotes and a trailing comma
    ("{'score': 0.4, 'reason': 'Generic layout, no spatial words.',}", "global", 0.4,
     "Generic layout, no spatial words.", None),
    # apostrophe inside a single-quoted value
    ("{'object': 'the cat's tail', 'score': 0.2, 'reason': 'mixed'}", "local", 0.2, "mixed", "the cat's tail"),
    # capitalised keys
    ('{"Score": -0.9, "Reason": "Objects swapped."}', "global", -0.9, "Objects swapped.", None),
    # key variants
    ('{"rating": 0.5, "explanation": "mostly right"}', "global", 0.5, "mostly right", None),
    ('{"global_layout_score": 0.95, "reason": "perfect"}', "global", 0.95, "perfect", None),
    ('{"reward": -0.2, "justification": "meh"}', "global", -0.2, "meh", None),
    ('{"Identified Object": "a blue cup", "Final Score": 0.7, "Reasoning": "good"}', "local", 0.7, "good",
     "a blue cup"),
    # nested answer object
    ('{"evaluation": {"score": 0.3, "reason": "ok-ish"}}', "global", 0.3, "ok-ish", None),
    # score written as a string
    ('{"score": "0.65", "reason": "fine"}', "global", 0.65, "fine", None),
    # two JSON objects: the last complete answer wins
    ('First draft: {"score": 0.2, "reason": "draft"}\nOn reflection: {"score": 0.5, "reason": "final"}', "global",
     0.5, "final", None),
    # a truncated object after a complete one: the complete one is used
    ('{"score": -0.4, "reason": "wrong side"}\n{"score": 0.9, "reas', "global", -0.4, "wrong side", None),
    # missing reason
    ('{"score": 0.1}', "global", 0.1, "", None),
    # unquoted keys
    ('{score: 0.35, reason: "neutral"}', "global", 0.35, "neutral", None),
    # JSON true/null next to the score
    ('{"score": 0.45, "spatial": true, "note": null, "reason": "ok"}', "global", 0.45, "ok", None),
    # broken JSON (unescaped quotes) falls back to the key: value reading
    ('{"score": 0.55, "reason": "The "cat" is left"}', "global", 0.55, 'The "cat" is left', None),
    # the paper's line format
    ("Score: 0.95\nReason: The wide shot matches the prompt.", "global", 0.95,
     "The wide shot matches the prompt.", None),
    ("Identified Object: A running golden retriever.\nScore: 0.9\nReason: Relevant, sharp fur.", "local", 0.9,
     "Relevant, sharp fur.", "A running golden retriever."),
    # markdown bold in several places
    ("**Score:** -0.7\n**Reason:** The cat is on the right, the prompt asked for the left.", "global", -0.7,
     "The cat is on the right, the prompt asked for the left.", None),
    ("**Identified Object**: a red ball\n**Score**: **0.6**\n**Reason**: a bit blurry", "local", 0.6, "a bit blurry",
     "a red ball"),
    # "Final score" and "=" separators, parenthetical scale hint
    ("Analysis: the dog is above the cat.\nFinal score = 0.75", "global", 0.75, "", None),
    ("Score (from -1 to 1): 0.3\nReason: partially matches", "global", 0.3, "partially matches", None),
    # multi-line reason ends at the next key line
    ("Reason: The horse hides the microwave.\nThe background is plain.\nScore: 1.0", "global", 1.0,
     "The horse hides the microwave. The background is plain.", None),
    # several score lines: the last wins
    ("Score: 0.2\nReason: first guess\n\nScore: 0.6\nReason: after checking the left side", "global", 0.6,
     "after checking the left side", None),
    # explicit /1 denominator, plus sign, bare fraction, trailing full stop
    ("Score: 0.6/1\nReason: ok", "global", 0.6, "ok", None),
    ("Score: +0.4", "global", 0.4, "", None),
    ("Score: -.5", "global", -0.5, "", None),
    ("Score: 0.25.", "global", 0.25, "", None),
    # Unicode minus sign and decimal comma
    ("Score: \u22120.8\nReason: contradicts", "global", -0.8, "contradicts", None),
    ("Score: 0,7", "global", 0.7, "", None),
    # a bare number as the whole answer
    ("0.4", "global", 0.4, "", None),
    ("  -1  ", "global", -1.0, "", None),
    # chat special tokens left in the decoded text
    ('{"score": 0.3, "reason": "fine"}<|im_end|>', "global", 0.3, "fine", None),
    # Region block layout of the reference's multi-region prompt
    ("**Region ID: 1**\nIdentified Object: A microwave.\nScore: 0.5\n", "local", 0.5, "", "A microwave."),
    # line format inside a plain code fence, lower/upper case keys, no space after the colon
    ("```\nscore: 0.6\nreason: fits\n```", "global", 0.6, "fits", None),
    ("SCORE:0.3\nREASON: generic", "global", 0.3, "generic", None),
    ("Rating: -0.25", "global", -0.25, "", None),
    # a confidence score is not the score
    ("Score: -0.2\nReason: swapped\nConfidence score: 0.9", "global", -0.2, "swapped", None),
    # a JSON list holding the answer object
    ('[{"object": "cup", "score": 0.5, "reason": "fine"}]', "local", 0.5, "fine", "cup"),
    # a later object without a score does not replace the answer
    ('The answer is {"score": 0.2, "reason": "ok"}. Meta: {"confidence": "high"}', "global", 0.2, "ok", None),
    # vision tokens leaked into the decoded text
    ('<|vision_start|>{"score": -0.1, "reason": "x"}<|vision_end|>', "global", -0.1, "x", None),
    # an echoed template placeholder, then the real answer
    ('Format: {"score": <a number from -1.0 to 1.0>, "reason": "..."}\n{"score": -0.3, "reason": "swapped"}', "global",
     -0.3, "swapped", None),
    # a score mentioned inside the reason never wins over the score line (issue 14)
    ("Score: 0.6\nReason: a higher score: 0.9 would need the cup on the left", "global", 0.6,
     "a higher score: 0.9 would need the cup on the left", None),
    ("Reason: a score: 0.9 needs sharper fur\nScore: 0.4", "global", 0.4, "a score: 0.9 needs sharper fur", None),
    ("Score: -0.5\nReason: the cat is swapped.\nA final score: 0.9 would need it on the left.", "global", -0.5,
     "the cat is swapped.", None),
    ("Identified Object: a cup\nScore: 0.3\nReason: rating: 1.0 only for a sharp handle", "local", 0.3,
     "rating: 1.0 only for a sharp handle", "a cup"),
    # bullets and numbered lines still start a score line
    ("- Score: 0.45\n- Reason: fine", "global", 0.45, "fine", None),
    ("1. Score: -0.15\n2. Reason: slightly off", "global", -0.15, "slightly off", None),
    # no score line: a score in running text counts, but not one inside the reason
    ("The layout fits, so I give it a score: 0.7", "global", 0.7, "", None),
    ("I give it a score: 0.2.\nReason: a score: 0.9 would need more", "global", 0.2, "a score: 0.9 would need more",
     None),
]


@pytest.mark.parametrize("text,kind,score,reason,label", VALID)
def test_valid_answers(text, kind, score, reason, label):
    parsed = parse_judgment(text, kind)
    assert parsed.score == pytest.approx(score)
    assert parsed.reason == reason
    assert parsed.label == label
    assert parsed.clamped is False
    assert parsed.raw_score == pytest.approx(score)


def test_global_kind_never_returns_a_label():
    assert parse_judgment('{"object": "a cup", "score": 0.5}', "global").label is None


@pytest.mark.parametrize("text,raw,clamped", [
    ('{"score": 1.5, "reason": "great"}', 1.5, 1.0),
    ("Score: -3", -3.0, -1.0),
    ("Score: 7\nReason: looks good", 7.0, 1.0),   # another scale, not declared: clamped, never rescaled
    ('{"score": 10}', 10.0, 1.0),
    ("1.0000001", 1.0000001, 1.0),
])
def test_out_of_range_scores_are_clamped_and_flagged(text, raw, clamped):
    parsed = parse_judgment(text, "global")
    assert parsed.score == clamped
    assert parsed.raw_score == pytest.approx(raw)
    assert parsed.clamped is True


@pytest.mark.parametrize("text,fragment", [
    ("", "empty"),
    ("   \n ", "empty"),
    ("The image looks fine to me.", "no score"),
    ("<think>The apple is left of the cup so the score should be 0.9 and", "unclosed <think>"),
    ('{"score": NaN, "reason": "?"}', "finite"),
    ('{"score": Infinity}', "finite"),
    ('{"score": "high", "reason": "?"}', "not a number"),
    ('{"score": null}', "not a number"),
    ('{"score": true}', "not a number"),
    ('{"score": [0.5]}', "not a number"),
    ("Score: 8/10\nReason: good", "another scale"),
    ("Score: 7 out of 10", "another scale"),
    ("Score: 7 (out of 10)", "another scale"),
    ("Score: 80%", "percentage"),
    ('{"score": "60%"}', "percentage"),
    ("Score: 0.5 to 0.9", "range"),
    ("Score: 0.5-0.9", "range"),
    ("Score: [A single number between -1.0 and 1.0]", "no score"),
    ("Score: inf", "no score"),
])
def test_unusable_answers_raise(text, fragment):
    with pytest.raises(ParseError, match=fragment.replace("<", "<").replace("(", r"\(")):
        parse_judgment(text, "global")


def test_unclosed_think_after_an_answer_keeps_the_answer():
    # text before an unclosed <think> is still the answer
    parsed = parse_judgment('{"score": 0.2, "reason": "x"}\n<think>now let me reconsider, maybe 0.9', "global")
    assert parsed.score == pytest.approx(0.2)


def test_numbers_inside_the_reasoning_are_ignored():
    with pytest.raises(ParseError):
        parse_judgment("<think>Score: 0.9 would be fair</think>\nI cannot tell.", "global")


def test_strip_reasoning_takes_text_after_the_last_close():
    assert strip_reasoning("<think>a</think>b<think>c</think> d") == " d"
    assert strip_reasoning("no tags at all") == "no tags at all"


def test_bad_kind_and_type():
    with pytest.raises(ValueError):
        parse_judgment("Score: 0.1", "regional")
    with pytest.raises(ParseError):
        parse_judgment(None, "global")  # type: ignore[arg-type]


def test_brace_blocks_top_level_spans_in_order():
    text = 'a {"x": "}{"} b {"y": {"z": 1}} c {"cut": 1'
    assert list(brace_blocks(text)) == ['{"x": "}{"}', '{"y": {"z": 1}}']   # braces in strings do not count
    assert list(brace_blocks("{'o': 'the cat's {tail}'} {}")) == ["{'o': 'the cat's {tail}'}", "{}"]
    assert list(brace_blocks("no braces")) == []


def test_load_lenient_forgives_model_json():
    assert load_lenient('{"score": 0.5}') == {"score": 0.5}
    assert load_lenient("{'score': 0.5, 'reason': 'the cat's tail',}") == {"score": 0.5, "reason": "the cat's tail"}
    assert load_lenient("{score: 0.5, final score: 1}") == {"score": 0.5, "final score": 1}
    assert load_lenient('{"ok": true, "x": null, "y": False}') == {"ok": True, "x": None, "y": False}
    assert load_lenient("{not json at all") is None
