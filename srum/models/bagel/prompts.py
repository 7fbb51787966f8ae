# SPDX-License-Identifier: Apache-2.0
"""System prompts that switch Bagel into "think" mode.

They play the reference inferencer's role: one text segment placed before everything
else in the context, asking the model to reason inside ``<think> ... </think>`` first.
The wording is ours; pass ``think_system_prompt=`` to the inference calls to use any
other text (for instance the exact wording a checkpoint was trained with).
"""

GENERATION_THINK_PROMPT = (
    "Plan the picture before drawing it. Write the plan between <think> and </think>: "
    "the objects, their attributes, how many there are and where each one goes. "
    "Then generate the image."
)

UNDERSTANDING_THINK_PROMPT = (
    "Reason about the question before answering. Write the reasoning between <think> and </think>, "
    "then give the final answer after the closing tag."
)
