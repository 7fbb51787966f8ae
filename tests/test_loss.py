# SPDX-License-Identifier: Apache-2.0
"""The SRUM loss: per-token sums, sign of the reward weight, constraint term, normalisation."""
import math

import pytest
import torch

from srum.training.loss import RepelRule, flow_matching_terms, srum_loss


def test_terms_match_hand_computation():
    velocity = torch.tensor([[1.0, 2.0], [0.0, 0.0], [3.0, -1.0]])
    noise = torch.tensor([[1.0, 1.0], [1.0, 1.0], [0.0, 0.0]])
    x0 = torch.tensor([[0.0, 0.0], [1.0, 1.0], [-3.0, 1.0]])
    x0_gt = torch.zeros(3, 2)
    weight = torch.tensor([2.0, -1.0, 0.5])
    # eps - x0 = [[1, 1], [0, 0], [3, -1]] -> mse per token [0.5, 0, 0]
    # eps - x0_gt = [[1, 1], [1, 1], [0, 0]] -> mse per token [0.5, 1, 5]
    reward_sum, constraint_sum = flow_matching_terms(velocity, noise, x0, x0_gt, weight)
    assert reward_sum.item() == pytest.approx(2.0 * 0.5)
    assert constraint_sum.item() == pytest.approx(6.5)
    # x0_gt = None means the constraint image is the sample itself.
    _, same = flow_matching_terms(velocity, noise, x0, None, weight)
    assert same.item() == pytest.approx(0.5)


def test_bf16_inputs_are_accumulated_in_float32():
    torch.manual_seed(0)
    v, eps, x0 = (torch.randn(64, 16) for _ in range(3))
    ref, _ = flow_matching_terms(v, eps, x0, None, torch.ones(64))
    got, _ = flow_matching_terms(v.bfloat16(), eps.bfloat16(), x0.bfloat16(), None, torch.ones(64).bfloat16())
    assert got.dtype == torch.float32
    assert got.item() == pytest.approx(ref.item(), rel=2e-2)


def test_shape_errors():
    with pytest.raises(ValueError, match="weight must be"):
        flow_matching_terms(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2), None, torch.ones(4))
    with pytest.raises(ValueError, match="x0_gt shape"):
        flow_matching_terms(torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 2), torch.zeros(3, 3), torch.ones(3))
    with pytest.raises(ValueError, match="global_tokens"):
        srum_loss(torch.tensor(1.0), torch.tensor(1.0), 0.5, 0, 1)


def _one_step(weight_value, lambda_c, x0_gt=None, lr=0.1):
    """A linear "model" v = W @ features; returns distances to eps - x0 before and after one SGD step."""
    torch.manual_seed(0)
    n, d = 6, 4
    features = torch.randn(n, 3)
    layer = torch.nn.Linear(3, d, bias=False)
    noise, x0 = torch.randn(n, d), torch.randn(n, d)
    target = noise - x0
    distance = lambda: ((layer(features) - target) ** 2).mean().item()
    before = distance()
    reward_sum, constraint_sum = flow_matching_terms(layer(features), noise, x0, x0_gt,
                                                     torch.full((n,), weight_value))
    out = srum_loss(reward_sum, constraint_sum, lambda_c, global_tokens=n, world_size=1)
    torch.optim.SGD(layer.parameters(), lr=lr).zero_grad()
    out["loss"].backward()
    grad = layer.weight.grad.clone()
    with torch.no_grad():
        layer.weight -= lr * grad
    return before, distance(), grad


def test_positive_weight_preserves_negative_weight_repels():
    before, after, _ = _one_step(1.0, 0.0)
    assert after < before
    before, after, _ = _one_step(-1.0, 0.0)
    assert after > before
    _, _, zero_grad = _one_step(0.0, 0.0)
    assert torch.count_nonzero(zero_grad) == 0


def test_lambda_zero_ignores_constraint_image():
    torch.manual_seed(1)
    _, _, grad_a = _one_step(0.7, 0.0, x0_gt=torch.randn(6, 4))
    _, _, grad_b = _one_step(0.7, 0.0, x0_gt=torch.randn(6, 4) * 10)
    torch.testing.assert_close(grad_a, grad_b, atol=0, rtol=0)
    _, _, grad_c = _one_step(0.7, 0.5, x0_gt=torch.randn(6, 4))
    assert not torch.allclose(grad_a, grad_c)


def test_sft_baseline_is_plain_flow_matching():
    torch.manual_seed(2)
    v, eps, x0 = (torch.randn(10, 8) for _ in range(3))
    reward_sum, constraint_sum = flow_matching_terms(v, eps, x0, None, torch.ones(10))
    out = srum_loss(reward_sum, constraint_sum, 0.0, global_tokens=10, world_size=1)
    torch.testing.assert_close(out["loss"], torch.nn.functional.mse_loss(v, eps - x0))


def test_normalisation_over_ranks_equals_global_mean():
    """Two fake ranks with 3 and 9 tokens: the rank-average of their losses (what gradient
    averaging computes) equals the per-token mean over all 12 tokens, for loss and grads."""
    torch.manual_seed(3)
    d, lambda_c = 5, 0.5
    sizes = [3, 9]
    total = sum(sizes)
    v = torch.randn(total, d, requires_grad=True)
    eps, x0, x0_gt = (torch.randn(total, d) for _ in range(3))
    weight = torch.randn(total)

    rank_losses, reward_terms = [], []
    for lo, hi in ((0, 3), (3, 12)):
        r, c = flow_matching_terms(v[lo:hi], eps[lo:hi], x0[lo:hi], x0_gt[lo:hi], weight[lo:hi],
                                   repel=RepelRule("linear"))  # the literal formula, to compare with
        out = srum_loss(r, c, lambda_c, global_tokens=torch.tensor(total), world_size=len(sizes))
        assert not out["reward_term"].requires_grad and not out["constraint_term"].requires_grad
        rank_losses.append(out["loss"])
        reward_terms.append(out["reward_term"])
    averaged = sum(rank_losses) / len(sizes)

    mse = lambda target: ((v - target) ** 2).mean(dim=1)
    global_mean = (weight * mse(eps - x0) + lambda_c * mse(eps - x0_gt)).mean()
    torch.testing.assert_close(averaged, global_mean)
    torch.testing.assert_close(sum(reward_terms) / len(sizes), (weight * mse(eps - x0)).mean().detach())

    (grad_avg,) = torch.autograd.grad(averaged, v)
    (grad_ref,) = torch.autograd.grad(global_mean, v)
    torch.testing.assert_close(grad_avg, grad_ref)
    # The per-rank mean (the reference's normalisation) differs when token counts differ.
    per_rank_mean = sum(l * total / (len(sizes) * n) for l, n in zip(rank_losses, sizes)) / len(sizes)
    assert abs(per_rank_mean.item() - global_mean.item()) > 1e-3


# ---------------------------------------------------------------- bounded repel (issue 14)

def _token_loss(v, target_sample, target_gt, weight, lambda_c, repel):
    """Per-token loss of one token (as srum_loss computes it for one token on one rank)."""
    r, c = flow_matching_terms(v[None], torch.zeros_like(v)[None], -target_sample[None],
                               None if target_gt is None else -target_gt[None], torch.tensor([weight]), repel=repel)
    return srum_loss(r, c, lambda_c, global_tokens=1, world_size=1)["loss"]


ADMISSIBLE = [w / 4 for w in range(-4, 5)]  # alpha * R for signed scores and alpha in [0, 1]


def _lower_bound(repel, lambda_c, sample, other):
    """The rule's documented floor of the per-token loss over every admissible weight."""
    if repel.kind == "saturate":  # the repel term is at least w * tau, the constraint at least 0
        return min(ADMISSIBLE) * repel.scale
    # clamp: w_eff * |v - a|^2 + lambda_c * |v - b|^2 with w_eff + lambda_c > 0 has its minimum
    # w_eff * lambda_c / (w_eff + lambda_c) * |a - b|^2 (0 when b = a or w_eff >= 0)
    w_eff = max(min(ADMISSIBLE), repel.floor)
    gap = ((sample - other) ** 2).mean().item()
    return min(0.0, w_eff * lambda_c / (w_eff + lambda_c) * gap) if w_eff < 0 else 0.0


@pytest.mark.parametrize("rule", ["saturate", "saturate_small", "clamp"])
@pytest.mark.parametrize("lambda_c", [0.0, 0.5, 1.0])
def test_loss_is_bounded_below_for_every_admissible_weight(rule, lambda_c):
    """Moving the prediction ever further from the sample (the repel direction), with the
    constraint image the sample itself or another image, never takes the loss below the
    rule's floor, and gradient descent on the prediction stays finite. The rules are built
    as the trainer builds them (clamp: floor -0.5 * lambda_c)."""
    from srum.training.config import LossConfig
    loss_cfg = {"saturate": LossConfig(), "saturate_small": LossConfig(repel_scale=0.25),
                "clamp": LossConfig(repel="clamp")}[rule]
    repel = loss_cfg.repel_rule(lambda_c)
    torch.manual_seed(4)
    sample, other, direction = torch.randn(3, 8).unbind(0)
    for weight in ADMISSIBLE:
        for gt in (None, other):
            bound = _lower_bound(repel, lambda_c, sample, sample if gt is None else other) - 1e-5
            for k in (0.0, 1.0, 10.0, 1e3, 1e5):
                value = _token_loss(sample + k * direction, sample, gt, weight, lambda_c, repel).item()
                assert value >= bound, (weight, gt is None, k, value)
            v = (sample + 0.1 * direction).clone().requires_grad_(True)
            opt = torch.optim.SGD([v], lr=0.5)
            for _ in range(100):
                opt.zero_grad()
                loss = _token_loss(v, sample, gt, weight, lambda_c, repel)
                loss.backward()
                opt.step()
            assert torch.isfinite(v).all() and v.detach().abs().max() < 50, (weight, lambda_c, rule)
            assert loss.item() >= bound


def test_literal_formula_is_unbounded_where_the_rules_are_not():
    """The case the bound is for: w = -0.9 (g >= 0.8, s = -1), lambda_c = 0.5, x0 = x0_gt:
    the literal loss is -0.4 * mse, so it falls without end; both rules stop it."""
    torch.manual_seed(5)
    sample, direction = torch.randn(2, 8).unbind(0)
    far = sample + 1e4 * direction
    assert _token_loss(far, sample, None, -0.9, 0.5, RepelRule("linear")).item() < -1e6
    assert _token_loss(far, sample, None, -0.9, 0.5, RepelRule("saturate")).item() > 0.0  # constraint wins far out
    assert _token_loss(far, sample, None, -0.9, 0.5, RepelRule("clamp", floor=-0.25)).item() > 0.0
    # the training config offers no unbounded rule
    from srum.training.config import LossConfig
    with pytest.raises(Exception):
        from srum.config import build
        build(LossConfig, {"repel": "linear"}, "loss")


def test_saturating_repel_pushes_like_the_formula_near_the_sample_and_stops_at_a_distance():
    """Near the sample the saturating term has the literal gradient; with x0 = x0_gt the
    minimum of w * tau * (1 - exp(-m / tau)) + lambda_c * m is at m = tau * ln(-w / lambda_c)."""
    torch.manual_seed(6)
    sample, direction = torch.randn(2, 8).unbind(0)
    v = (sample + 1e-3 * direction).requires_grad_(True)
    (g_sat,) = torch.autograd.grad(_token_loss(v, sample, None, -0.6, 0.0, RepelRule("saturate")), v)
    (g_lin,) = torch.autograd.grad(_token_loss(v, sample, None, -0.6, 0.0, RepelRule("linear")), v)
    torch.testing.assert_close(g_sat, g_lin, rtol=1e-3, atol=1e-7)
    v = (sample + 0.05 * direction).clone().requires_grad_(True)
    opt = torch.optim.SGD([v], lr=0.5)
    for _ in range(2000):
        opt.zero_grad()
        _token_loss(v, sample, None, -1.0, 0.5, RepelRule("saturate")).backward()
        opt.step()
    mse = ((v.detach() - sample) ** 2).mean().item()
    assert mse == pytest.approx(math.log(2.0), rel=1e-3)


def test_positive_weights_and_official_maps_are_unchanged_by_the_rule():
    torch.manual_seed(7)
    v, eps, x0 = (torch.randn(20, 4) for _ in range(3))
    weight = torch.rand(20)  # official weights are in [0, 1]
    expected, _ = flow_matching_terms(v, eps, x0, None, weight, repel=RepelRule("linear"))
    for rule in (RepelRule("saturate", scale=0.3), RepelRule("clamp", floor=-0.1)):
        got, _ = flow_matching_terms(v, eps, x0, None, weight, repel=rule)
        torch.testing.assert_close(got, expected)


def test_training_config_builds_the_rule():
    from srum.training.config import LossConfig
    with pytest.raises(ValueError, match="repel_floor"):
        LossConfig(repel="clamp", repel_floor=1.0)
    with pytest.raises(ValueError, match="repel_scale"):
        LossConfig(repel_scale=0.0)
