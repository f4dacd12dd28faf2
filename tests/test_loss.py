"""The PPO loss against a minibatch computed by hand."""

from __future__ import annotations

import math

import torch

from pyppo.loss import ppo_loss

LN2 = math.log(2.0)


def minibatch(aux_nan: bool = False):
    """Two samples, two actions. Uniform logits: log p = log 0.5 for both actions; the old
    policy gave action 1 probability 0.25, so the ratios are [1, 2]. Advantages [1, -1]
    normalize to themselves (mean 0, population std 1)."""
    preds = torch.tensor([[0.1, 0.2], [0.3, -0.2]])
    if aux_nan:
        preds[0, 1] = float("nan")
    return dict(
        logits=torch.zeros(2, 2, requires_grad=True),
        values=torch.tensor([0.5, -0.5]),
        actions=torch.tensor([0, 1]),
        old_logprobs=torch.tensor([math.log(0.5), math.log(0.25)]),
        advantages=torch.tensor([1.0, -1.0]),
        returns=torch.tensor([1.0, 0.0]),
        clip_epsilon=0.2,
        value_coef=0.5,
        entropy_coef=0.01,
        aux_predictions=preds,
        aux_targets=torch.tensor([[0.0, 0.0], [0.1, 0.0]]),
        aux_scale=torch.tensor([0.5, 2.0]),
        aux_coefs=torch.tensor([0.1, 0.1]),
    )


def close(tensor: torch.Tensor, value: float) -> bool:
    return abs(float(tensor.detach()) - value) < 1e-6


def test_every_term_matches_the_hand_computation():
    terms = ppo_loss(**minibatch())
    # sample 0: A=+1, r=1 -> max(-1, -1) = -1; sample 1: A=-1, r=2 -> max(2, 1.2) = 2
    assert close(terms.policy, 0.5)
    assert close(terms.value, 0.5 * (0.25 + 0.25) / 2)
    assert close(terms.entropy, LN2)
    assert close(terms.approx_kl, (0 + (1 - LN2)) / 2)  # (r - 1) - log r
    assert close(terms.clip_fraction, 0.5)  # only r = 2 left [0.8, 1.2]
    # aux: MSE per head / scale = [0.025 / 0.5, 0.04 / 2]
    torch.testing.assert_close(terms.aux, torch.tensor([0.05, 0.02]))
    assert not terms.aux_zeroed.any()
    assert close(terms.total, 0.5 + 0.5 * 0.125 - 0.01 * LN2 + 0.1 * 0.05 + 0.1 * 0.02)


def test_policy_gradient_only_flows_through_unclipped_samples():
    batch = minibatch()
    ppo_loss(**batch).total.backward()
    grad = batch["logits"].grad
    # Sample 1's ratio is clipped (2 > 1.2 with a negative advantage picks the unclipped
    # branch: max(2, 1.2) = 2, so it does get a gradient); sample 0 at r = 1 does too.
    assert torch.isfinite(grad).all() and grad.abs().sum() > 0
    # Entropy at uniform logits has zero gradient; the policy term moves action 0 up for
    # sample 0 (positive advantage) and action 1 down for sample 1.
    assert grad[0, 0] < 0 < grad[0, 1]
    assert grad[1, 1] > 0 > grad[1, 0]


def test_a_nonfinite_aux_loss_is_zeroed_and_flagged():
    terms = ppo_loss(**minibatch(aux_nan=True))
    assert terms.aux_zeroed.tolist() == [False, True]
    torch.testing.assert_close(terms.aux, torch.tensor([0.05, 0.0]))
    assert torch.isfinite(terms.total)
    unguarded = ppo_loss(**minibatch(aux_nan=True), guard_aux=False)
    assert torch.isnan(unguarded.total) and unguarded.aux_zeroed.tolist() == [False, True]


def test_without_aux_heads_the_total_has_three_terms():
    batch = {k: v for k, v in minibatch().items() if not k.startswith("aux_")}
    terms = ppo_loss(**batch)
    assert terms.aux.numel() == 0 and terms.aux_zeroed.numel() == 0
    assert close(terms.total, 0.5 + 0.5 * 0.125 - 0.01 * LN2)
