# SPDX-License-Identifier: Apache-2.0
"""The two Bagel-7B recipes: the reference script's (default) and the paper's Table 5."""
from pathlib import Path

from srum.config import load_config, to_dict
from srum.training.config import TrainConfig

REPO = Path(__file__).resolve().parents[1]


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_paper_recipe_differs_from_the_reference_recipe_only_in_table_5_values():
    script = _flat(to_dict(load_config(TrainConfig, REPO / "configs/train/bagel7b_compbench.yaml")))
    paper = _flat(to_dict(load_config(TrainConfig, REPO / "configs/train/bagel7b_compbench_paper.yaml")))
    differing = {k: (script[k], paper[k]) for k in script if script[k] != paper[k]}
    assert differing == {
        "output_dir": (str(REPO / "runs/srum/train"), str(REPO / "runs/srum/train-paper")),
        "data.expected_num_tokens": (8192, 36864),
        "data.max_num_tokens": (9216, 40960),          # Table 5: 40k context window
        "loss.timestep_shift": (1.0, 4.0),
        "optim.lr": (2e-5, 2.5e-5),
        "optim.warmup_steps": (100, 500),
    }
    assert script["rewards.map.cell_rule"] == "bilinear" and script["rewards.drop_zero_global"] is False
