# SPDX-License-Identifier: Apache-2.0
"""Exponential moving average of the trainable parameters, kept sharded.

The shadow copies are DTensors with the same mesh and placements as the FSDP2
parameters they follow, so each rank stores and updates only its own shard (no
gathering, no private FSDP APIs) and torch.distributed.checkpoint saves and reshards
them like any other state. Frozen parameters are not tracked: their average is
themselves."""
from __future__ import annotations

import torch
from torch import nn
from torch.distributed.tensor import DTensor

__all__ = ["EMA"]


def _local(t: torch.Tensor) -> torch.Tensor:
    return t.to_local() if isinstance(t, DTensor) else t


class EMA:
    """shadow <- decay * shadow + (1 - decay) * param, after every optimizer step."""

    def __init__(self, model: nn.Module, decay: float):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = decay
        self.params = {name: p for name, p in model.named_parameters() if p.requires_grad}
        with torch.no_grad():
            self.shadow = {name: p.detach().clone().float() for name, p in self.params.items()}

    @torch.no_grad()
    def update(self) -> None:
        names = list(self.params)
        shadows = [_local(self.shadow[n]) for n in names]
        params = [_local(self.params[n]).to(shadows[i].dtype) for i, n in enumerate(names)]
        torch._foreach_lerp_(shadows, params, 1.0 - self.decay)

    def state_dict(self) -> dict[str, torch.Tensor]:
        """FQN -> shadow tensor (a DTensor when the model is sharded)."""
        return dict(self.shadow)

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        missing = sorted(set(self.shadow) - set(state))
        unexpected = sorted(set(state) - set(self.shadow))
        if missing or unexpected:
            raise ValueError(f"EMA state does not match the trainable parameters: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]} (did the freeze switches change?)")
        for name, value in state.items():
            if value is not self.shadow[name]:
                _local(self.shadow[name]).copy_(_local(value))
