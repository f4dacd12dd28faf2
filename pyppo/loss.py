"""The clipped PPO loss with auxiliary return heads, as a pure function of one minibatch.

:func:`ppo_loss` returns its terms by name (as TorchRL's ``ClipPPOLoss`` does), so the
trainer, tests and users' own loops read ``terms.policy`` rather than positions in a tuple::

    total = policy + value_coef * value - entropy_coef * entropy + sum_k aux_coef_k * aux_k

- policy: the clipped surrogate ``max(-A * r, -A * clip(r, 1 - eps, 1 + eps))`` averaged,
  with advantages normalized over the minibatch;
- value: ``0.5 * (V - returns)^2`` averaged;
- aux_k: the mean squared error of head k's (clamped) prediction against its (sanitized)
  target, divided by the target's variance over the rollout (``aux_scale``): returns of
  ~0.5 % would otherwise give losses of ~1e-5 and heads that never learn; 1.0 means no
  better than predicting the mean. With ``guard_aux``, a non-finite auxiliary loss is set
  to 0 and flagged in ``aux_zeroed`` (the trainer counts and logs it).

A population's minibatch has a leading member dimension (``(M, B)`` instead of ``(B,)``):
every mean and normalization is then taken per member (over the batch, the last dimension),
each term is ``(M,)``, and ``total`` is the sum of the members' totals, so that each member's
parameters get exactly the gradient of its own loss.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class PPOLossTerms:
    """The named terms of one minibatch's loss (0-d tensors unless noted)."""

    total: Tensor  # what backward() is called on (the members' totals summed)
    policy: Tensor
    value: Tensor
    entropy: Tensor
    aux: Tensor  # [num_aux] auxiliary losses (after zeroing); empty without aux losses
    aux_zeroed: Tensor  # bool [num_aux]: that auxiliary loss was NaN/inf and set to 0
    # A population's terms have a leading member dimension: [M], [M, num_aux].
    approx_kl: Tensor  # (r - 1) - log r averaged: the "k3" KL estimate, no gradient
    clip_fraction: Tensor  # share of samples whose ratio left [1 - eps, 1 + eps], no gradient


def log_prob(logits: Tensor, actions: Tensor, joint: bool = False) -> Tensor:
    """Log-probability of ``actions`` under the categorical distribution of ``logits``.

    ``joint``: ``logits`` are ``(..., N, A)`` with one independent categorical per symbol
    of a portfolio and ``actions`` ``(..., N)``; the joint log-probability is their sum
    (a symbol the model masked has a one-hot distribution: it adds 0, with no gradient).
    """
    picked = _pick(torch.log_softmax(logits, dim=-1), actions)
    return picked.sum(-1) if joint else picked


def log_prob_and_entropy(
    logits: Tensor, actions: Tensor, joint: bool = False
) -> tuple[Tensor, Tensor]:
    """:func:`log_prob` and the distribution's entropy, from one log-softmax (``joint``:
    both summed over the symbols)."""
    log_p = torch.log_softmax(logits, dim=-1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    picked = _pick(log_p, actions)
    return (picked.sum(-1), entropy.sum(-1)) if joint else (picked, entropy)


def _pick(log_p: Tensor, actions: Tensor) -> Tensor:
    return log_p.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)


def ppo_loss(
    logits: Tensor,
    values: Tensor,
    actions: Tensor,
    old_logprobs: Tensor,
    advantages: Tensor,
    returns: Tensor,
    *,
    clip_epsilon: float | Tensor,
    value_coef: float,
    entropy_coef: float | Tensor,
    aux_predictions: Tensor | None = None,
    aux_targets: Tensor | None = None,
    aux_scale: Tensor | None = None,
    aux_coefs: Tensor | None = None,
    guard_aux: bool = True,
    advantage_stats: tuple[Tensor, Tensor] | None = None,
    joint_actions: bool = False,
) -> PPOLossTerms:
    """The loss of one minibatch of ``B`` samples (of each of ``M`` members: every argument
    then has a leading ``(M, ...)``).

    :param logits: ``(B, A)`` action logits of the current policy.
    :param values: ``(B,)`` value estimates of the current critic.
    :param actions: ``(B,)`` actions taken in the rollout.
    :param old_logprobs: ``(B,)`` their log-probabilities under the rollout's policy.
    :param advantages: ``(B,)`` GAE advantages (normalized here over the minibatch).
    :param returns: ``(B,)`` value targets.
    :param clip_epsilon: the ratio clip (a population's may be ``(M, 1)``: one per member).
    :param value_coef: weight of the value loss.
    :param entropy_coef: weight of the entropy bonus (or ``(M,)``: one per member).
    :param aux_predictions: ``(B, K)`` auxiliary predictions, or None for no aux losses.
    :param aux_targets: ``(B, K)`` their targets.
    :param aux_scale: ``(K,)`` the targets' variance over the rollout (the MSE's unit).
    :param aux_coefs: ``(K,)`` weights of the auxiliary losses (or ``(M, K)``).
    :param guard_aux: set a non-finite auxiliary loss to 0 (and flag it) instead of letting
        it into ``total``.
    :param advantage_stats: ``(mean, std)`` to normalize the advantages with, instead of the
        minibatch's own (across processes: the global minibatch's); ``(M,)`` each for a
        population.
    :param joint_actions: ``logits`` are ``(B, N, A)`` and ``actions`` ``(B, N)``: one
        categorical per symbol of a portfolio, whose log-probabilities and entropies are
        summed (:func:`log_prob`).
    """
    logprob, entropy = log_prob_and_entropy(logits, actions, joint_actions)
    logratio = logprob - old_logprobs
    ratio = logratio.exp()
    with torch.no_grad():
        approx_kl = ((ratio - 1) - logratio).mean(-1)
        clip_fraction = ((ratio - 1.0).abs() > clip_epsilon).float().mean(-1)
    if advantage_stats is None:
        advantage_stats = (advantages.mean(-1), advantages.std(-1, unbiased=False))
    mean, std = (stat.unsqueeze(-1) for stat in advantage_stats)
    adv = (advantages - mean) / (std + 1e-8)
    clipped = ratio.clamp(1 - clip_epsilon, 1 + clip_epsilon)
    policy = torch.max(-adv * ratio, -adv * clipped).mean(-1)
    value = 0.5 * ((values - returns) ** 2).mean(-1)
    entropy_mean = entropy.mean(-1)
    total = policy + value_coef * value - entropy_coef * entropy_mean

    if aux_predictions is None:
        aux = logits.new_zeros((*logits.shape[:-2], 0))
        aux_zeroed = torch.zeros(aux.shape, dtype=torch.bool, device=logits.device)
    else:
        aux = ((aux_predictions - aux_targets) ** 2).mean(-2) / aux_scale
        aux_zeroed = ~torch.isfinite(aux)
        if guard_aux:
            aux = torch.where(aux_zeroed, torch.zeros_like(aux), aux)
        total = total + (aux_coefs * aux).sum(-1)
    return PPOLossTerms(
        total.sum(), policy, value, entropy_mean, aux, aux_zeroed, approx_kl, clip_fraction
    )
