# SPDX-License-Identifier: Apache-2.0
"""Shared fixtures: one random tiny Bagel checkpoint per test session."""
import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch

import srum


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory):
    """A tiny checkpoint in the published BAGEL-7B-MoT layout (read-only: copy it to modify)."""
    path = tmp_path_factory.mktemp("tiny-bagel")
    srum.write_tiny_checkpoint(path, seed=0)
    return path


@pytest.fixture(scope="session")
def tiny_model(tiny_dir):
    torch.manual_seed(0)
    return srum.load_model(tiny_dir, dtype=torch.float32, device="cpu")


@pytest.fixture(scope="session")
def tiny_judge_dir(tmp_path_factory):
    """A random tiny Qwen2.5-VL judge in the published layout (the evaluation tests)."""
    from srum.judge.tiny_qwen_vl import write_tiny_qwen_vl
    return write_tiny_qwen_vl(tmp_path_factory.mktemp("tiny-qwen-vl"), seed=0)
