"""Pure-torch references of pyppo's kernels: the executable spec.

Tests compare every kernel against these on adversarial inputs, and the benchmarks use
them as the "unfused" baseline. They favour clarity over speed.
"""

from __future__ import annotations

import torch
from torch import Tensor


def rounded_limit(limit: float, dtype: torch.dtype) -> float:
    """``limit`` rounded to ``dtype``, as ``torch.clamp`` rounds a Python scalar: the limit
    every sanitize kernel actually applies."""
    return torch.tensor(limit, dtype=dtype).item()


def sanitize(x: Tensor, limit: float = 1.0) -> tuple[Tensor, Tensor]:
    """NaN/+inf/-inf -> 0, finite values outside [-limit, limit] clamped.

    ``limit`` is first rounded to ``x``'s dtype, as ``torch.clamp`` does with a Python
    scalar. Returns ``(y, counts)`` with counts = int64 ``[nonfinite, clamped]``.

    The gradient flows (unchanged) only where ``x`` was finite and inside
    ``[-limit, limit]``; it is exactly 0 elsewhere, even where the incoming gradient is
    NaN, because ``torch.where`` selects rather than multiplies.
    """
    lim = rounded_limit(limit, x.dtype)
    nonfinite = ~torch.isfinite(x)
    zeroed = torch.where(nonfinite, torch.zeros((), dtype=x.dtype, device=x.device), x.detach())
    clamped = zeroed.abs() > lim
    passes = ~nonfinite & ~clamped
    y = torch.where(passes, x, zeroed.clamp(-lim, lim))
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


def guard_gradients_(
    grads: list[Tensor],
    group_ids: list[int],
    num_groups: int,
    max_norm: float,
    skip_nonfinite: bool = False,
    num_members: int = 1,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Reference of ``pyppo.ops.guard_gradients_``; modifies ``grads`` in place.

    With ``num_members = M > 1`` dim 0 of every gradient is the member (the gradients of a
    population's stacked parameters): each member is guarded on its own, exactly as if its
    slices ``g[k]`` were guarded alone (what one member's NaN or norm does stays in it).
    For each member:

    1. NaN/+inf/-inf elements are counted per group and set to 0.
    2. The squared L2 norm of what is left is summed per group (float32 per tensor,
       float64 across tensors); ``total = sqrt(sum over groups)``.
    3. ``coef = min(1, max_norm / (total + 1e-6))``, computed in float64 and rounded to
       float32.
    4. ``skip_nonfinite`` and any of its elements was non-finite: its gradients are zeroed.
       Otherwise, when ``coef < 1``, its gradients are multiplied by ``coef`` in float32
       (float64 for float64 gradients) and rounded once to their dtype.

    Returns ``(counts int64, norms float32, total_norm float32, clip_coef float32)`` on the
    gradients' device (CPU for an empty list), shaped ``[num_groups], [num_groups], [], []``
    for one member and ``[M, num_groups], [M, num_groups], [M], [M]`` for M.
    """
    if num_members > 1:
        results = [
            guard_gradients_([g[k] for g in grads], group_ids, num_groups, max_norm, skip_nonfinite)
            for k in range(num_members)
        ]
        return tuple(torch.stack(parts) for parts in zip(*results, strict=True))  # type: ignore[return-value]
    device = grads[0].device if grads else torch.device("cpu")
    counts = torch.zeros(num_groups, dtype=torch.int64, device=device)
    sum_sq = torch.zeros(num_groups, dtype=torch.float64, device=device)
    for g, gid in zip(grads, group_ids, strict=True):
        bad = ~torch.isfinite(g)
        counts[gid] += bad.sum()
        g.masked_fill_(bad, 0)
        acc_dtype = torch.float64 if g.dtype == torch.float64 else torch.float32
        sum_sq[gid] += g.to(acc_dtype).square().sum().to(torch.float64)
    total = sum_sq.sum().sqrt()
    coef = torch.clamp(max_norm / (total + 1e-6), max=1.0).to(torch.float32)
    if skip_nonfinite and bool(counts.sum() > 0):
        for g in grads:
            g.zero_()
    elif coef < 1:
        for g in grads:  # multiplied in float32 (float64 for float64), rounded once
            acc_dtype = torch.float64 if g.dtype == torch.float64 else torch.float32
            g.copy_(g.to(acc_dtype) * coef.to(acc_dtype))
    return counts, sum_sq.sqrt().to(torch.float32), total.to(torch.float32), coef


def count_nonfinite(tensors: list[Tensor]) -> Tensor:
    """Number of NaN/+inf/-inf elements of each tensor, as one int64 tensor."""
    device = tensors[0].device if tensors else torch.device("cpu")
    return torch.tensor(
        [int((~torch.isfinite(t)).sum()) for t in tensors], dtype=torch.int64, device=device
    )
