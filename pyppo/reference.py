"""Pure-torch references of pyppo's kernels: the executable spec.

Tests compare every kernel against these on adversarial inputs, and the benchmarks use
them as the "unfused" baseline. They favour clarity over speed.
"""

from __future__ import annotations

import torch
from torch import Tensor


def sanitize(x: Tensor, limit: float = 1.0) -> tuple[Tensor, Tensor]:
    """NaN/+inf/-inf -> 0, finite values outside [-limit, limit] clamped.

    ``limit`` is first rounded to ``x``'s dtype, as ``torch.clamp`` does with a Python
    scalar. Returns ``(y, counts)`` with counts = int64 ``[nonfinite, clamped]``.
    """
    lim = torch.tensor(limit, dtype=x.dtype).item()
    nonfinite = ~torch.isfinite(x)
    y = torch.where(nonfinite, torch.zeros((), dtype=x.dtype, device=x.device), x)
    clamped = y.abs() > lim
    y = y.clamp(-lim, lim)
    counts = torch.stack([nonfinite.sum(), clamped.sum()]).to(torch.int64)
    return y, counts


def gae(
    rewards: Tensor,
    values: Tensor,
    episode_starts: Tensor,
    last_values: Tensor,
    last_episode_starts: Tensor,
    gamma: float = 0.99,
    gae_lambda: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation, the plain backward loop over steps.

    ``rewards``, ``values``, ``episode_starts``: ``(T, N)``; ``last_values``,
    ``last_episode_starts``: ``(N,)``. ``episode_starts[t, n] = 1`` when observation ``t`` of
    env ``n`` begins an episode. Start tensors of dtype bool / uint8 mean "nonzero = start";
    float ones are used as numbers. Returns ``(advantages, returns)`` in the dtype of
    ``rewards``::

        next_nonterminal = 1 - episode_starts[t+1]   (1 - last_episode_starts at t = T-1)
        next_value       = values[t+1]               (last_values at t = T-1)
        delta[t] = rewards[t] + gamma * next_value * next_nonterminal - values[t]
        adv[t]   = delta[t] + gamma * gae_lambda * next_nonterminal * adv[t+1]
        returns  = adv + values
    """

    def as_value_dtype(starts: Tensor) -> Tensor:
        if starts.dtype in (torch.bool, torch.uint8):
            starts = starts != 0
        return starts.to(rewards.dtype)

    starts = as_value_dtype(episode_starts)
    last_starts = as_value_dtype(last_episode_starts)
    advantages = torch.empty_like(rewards)
    last_gae = torch.zeros_like(last_values)
    for t in reversed(range(rewards.shape[0])):
        if t == rewards.shape[0] - 1:
            next_nonterminal = 1 - last_starts
            next_value = last_values
        else:
            next_nonterminal = 1 - starts[t + 1]
            next_value = values[t + 1]
        delta = rewards[t] + gamma * next_value * next_nonterminal - values[t]
        last_gae = delta + gamma * gae_lambda * next_nonterminal * last_gae
        advantages[t] = last_gae
    return advantages, advantages + values
