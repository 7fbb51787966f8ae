# SPDX-License-Identifier: Apache-2.0
"""The SRUM training loss.

    L = sum_n w_n * mse(v_n, eps_n - x0_n) + lambda_c * sum_n mse(v_n, eps_n - x0gt_n)
        -------------------------------------------------------------------------------
                          number of latent tokens on all ranks

where ``w_n = alpha * R`` is the reward weight of latent token ``n`` (from
:func:`srum.rewards.reward_weights`), ``x0`` the sample's clean latent and ``x0gt`` the
constraint image's latent (the same image unless the record names another).
Positive weight pulls the velocity towards the sample's target ("preserve"); negative
weight pushes it away ("repel"); the constraint term keeps the model near the data.

Plain flow matching (the SFT baseline) is the special case ``w_n = 1`` and
``lambda_c = 0``. Tokens of plain samples (t2i, cot rows) in a run that mixes them with
reward records have ``w_n = 1`` and take no part in the constraint term
(``constraint_weight`` 0), so they are plain flow matching whatever ``lambda_c`` is.

Negative weights ("repel") are bounded. Taken literally, the formula has no minimum when a
token's weight is below ``-lambda_c`` and the constraint image is the sample (the released
data): the per-token loss is ``(w + lambda_c) * mse`` and training pushes the prediction away
forever. The paper's intent is to push away from badly drawn regions, not to infinity, so a
negative weight goes through a :class:`RepelRule`:

* ``saturate`` (default): ``w * tau * (1 - exp(-mse / tau))`` for ``w < 0``. It equals
  ``w * mse`` near the sample (same push at the start) and levels off at ``w * tau``
  once the prediction is a few ``tau`` away, so the per-token loss is at least ``w * tau``;
  with the constraint term the minimum sits at a finite distance (``mse = tau * ln(-w /
  lambda_c)`` when ``x0 = x0gt`` and ``-w > lambda_c``).
* ``clamp``: the weight is raised to ``max(w, floor)`` with ``floor = -repel_floor *
  lambda_c`` (``repel_floor`` < 1), so ``w + lambda_c > 0``: a quadratic with a minimum,
  whatever the constraint image. With ``lambda_c = 0`` nothing is repelled.
* ``linear``: the literal formula, unbounded; for analysis only (the training config does
  not offer it).

Positive weights are never changed; the official map (weights in [0, 1]) is unaffected.

Text samples (vqa answers, cot plans) add a cross-entropy term normalised the same way
by the number of cross-entropy tokens on all ranks (:func:`text_ce_sum`); the trainer
weighs the two with ``loss.mse_weight`` and ``loss.ce_weight``.

Normalisation: each rank computes *sums* over its own tokens (:func:`flow_matching_terms`),
the trainer all-reduces the token count, and :func:`srum_loss` divides by that global count
and multiplies by the world size, because FSDP/DDP *average* gradients over ranks. The
averaged gradient is then the gradient of the global per-token mean, whatever the
per-rank token counts are. (The reference averages per rank first, which over-weights
tokens on ranks that happen to hold fewer of them.)
"""
from __future__ import annotations

import dataclasses
from typing import Literal

import torch

__all__ = ["RepelRule", "flow_matching_terms", "srum_loss", "text_ce_sum"]


@dataclasses.dataclass(frozen=True)
class RepelRule:
    """What a negative reward weight does (see the module docstring).

    kind: ``"saturate"``, ``"clamp"`` or ``"linear"``; scale: ``tau`` of ``saturate`` (> 0);
    floor: the smallest weight ``clamp`` lets through (<= 0)."""

    kind: Literal["saturate", "clamp", "linear"] = "saturate"
    scale: float = 1.0
    floor: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in ("saturate", "clamp", "linear"):
            raise ValueError(f"repel kind must be saturate, clamp or linear, got {self.kind!r}")
        if not self.scale > 0:
            raise ValueError(f"repel scale must be > 0, got {self.scale}")
        if self.floor > 0:
            raise ValueError(f"repel floor must be <= 0, got {self.floor}")

    def weighted(self, weight: torch.Tensor, mse: torch.Tensor) -> torch.Tensor:
        """[N] weights, [N] per-token mse -> [N] reward-term contributions."""
        if self.kind == "linear":
            return weight * mse
        if self.kind == "clamp":
            return weight.clamp(min=self.floor) * mse
        # saturate: tau * (1 - exp(-mse / tau)) = -tau * expm1(-mse / tau), for w < 0 only
        bounded = -self.scale * torch.expm1(-mse / self.scale)
        return weight * torch.where(weight < 0, bounded, mse)


def _per_token_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[N, D], [N, D] -> [N]: mean squared error over each token's D numbers, in float32."""
    return (prediction.float() - target.float()).pow(2).mean(dim=-1)


def flow_matching_terms(velocity: torch.Tensor, noise: torch.Tensor, x0: torch.Tensor,
                        x0_gt: torch.Tensor | None, weight: torch.Tensor,
                        constraint_weight: torch.Tensor | None = None,
                        repel: RepelRule = RepelRule()) -> tuple[torch.Tensor, torch.Tensor]:
    """Reward-weighted and constraint flow-matching terms of one rank, as SUMS over tokens.

    Args:
        velocity: [N, D] predicted velocity for N latent tokens (D = p*p*z numbers each).
        noise: [N, D] the noise eps used to build x_t.
        x0: [N, D] clean latent of the rewarded sample (target of the reward term).
        x0_gt: [N, D] clean latent of the constraint image; None = the same as ``x0``.
        weight: [N] per-token reward weight ``alpha * R`` (any sign).
        constraint_weight: [N] per-token weight of the constraint term (1 reward records,
            0 plain samples and padding); None = 1 for every token.
        repel: how negative weights act (bounded by default; see :class:`RepelRule`).

    Returns:
        (reward_sum, constraint_sum), float32 scalars:
        ``sum_n weight_n * mse(velocity_n, noise_n - x0_n)`` (negative weights through
        ``repel``) and
        ``sum_n mse(velocity_n, noise_n - x0_gt_n)``, where mse averages over D.
        They are sums, not means: :func:`srum_loss` divides by the token count over ALL ranks.
    """
    if velocity.ndim != 2:
        raise ValueError(f"velocity must be [N, D], got shape {tuple(velocity.shape)}")
    for name, tensor in (("noise", noise), ("x0", x0), ("x0_gt", x0_gt)):
        if tensor is not None and tensor.shape != velocity.shape:
            raise ValueError(f"{name} shape {tuple(tensor.shape)} != velocity shape {tuple(velocity.shape)}")
    if weight.shape != velocity.shape[:1]:
        raise ValueError(f"weight must be [N] = [{velocity.shape[0]}], got shape {tuple(weight.shape)}")
    if constraint_weight is not None and constraint_weight.shape != velocity.shape[:1]:
        raise ValueError(f"constraint_weight must be [N] = [{velocity.shape[0]}], got shape "
                         f"{tuple(constraint_weight.shape)}")
    mse_sample = _per_token_mse(velocity, noise - x0)
    reward_sum = repel.weighted(weight.float(), mse_sample).sum()
    mse_gt = mse_sample if x0_gt is None else _per_token_mse(velocity, noise - x0_gt)
    if constraint_weight is not None:
        return reward_sum, (constraint_weight.float() * mse_gt).sum()
    return reward_sum, mse_gt.sum()


def text_ce_sum(logits: torch.Tensor, labels: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of next-token ``logits`` [N, vocab] against ``labels`` [N], summed with
    per-token ``weight`` [N] (1 real, 0 padding), in float32. A SUM: the trainer divides
    by the number of cross-entropy tokens on all ranks."""
    if logits.ndim != 2 or labels.shape != logits.shape[:1] or weight.shape != labels.shape:
        raise ValueError(f"need logits [N, V], labels [N], weight [N]; got {tuple(logits.shape)}, "
                         f"{tuple(labels.shape)}, {tuple(weight.shape)}")
    ce = torch.nn.functional.cross_entropy(logits.float(), labels, reduction="none")
    return (weight.float() * ce).sum()


def srum_loss(reward_sum: torch.Tensor, constraint_sum: torch.Tensor, lambda_c: float,
              global_tokens: int | torch.Tensor, world_size: int) -> dict[str, torch.Tensor]:
    """Combine one rank's sums into the loss to backpropagate.

    Args:
        reward_sum, constraint_sum: from :func:`flow_matching_terms` on this rank.
        lambda_c: weight of the constraint term (0.5 in the paper; 0 with unit weights =
            plain flow matching).
        global_tokens: number of latent tokens in this step over ALL ranks (all-reduced).
        world_size: number of ranks whose gradients are averaged.

    Returns:
        ``{"loss", "reward_term", "constraint_term"}``. ``loss`` =
        ``(reward_sum + lambda_c * constraint_sum) * world_size / global_tokens``: after the
        gradient average over ranks it equals the global per-token mean. The two terms are
        detached and normalised the same way (their mean over ranks is the global mean).
    """
    tokens = global_tokens.item() if isinstance(global_tokens, torch.Tensor) else global_tokens
    if tokens <= 0:
        raise ValueError(f"global_tokens must be positive, got {tokens}")
    if world_size < 1:
        raise ValueError(f"world_size must be >= 1, got {world_size}")
    scale = world_size / float(tokens)
    reward_term = reward_sum * scale
    constraint_term = constraint_sum * scale
    loss = reward_term + lambda_c * constraint_term if lambda_c else reward_term
    return {"loss": loss, "reward_term": reward_term.detach(), "constraint_term": constraint_term.detach()}
