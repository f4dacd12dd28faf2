"""The money of a portfolio of symbols: one batched, guarded tensor function.

A portfolio holds a weight per symbol (a fraction of equity, negative when short; the rest
is cash). A decision on calendar bar t's close sets new target weights; the step's growth of
equity, from bar t's close to bar t+1's, is::

    growth = (1 + sum_i w_prev_i * g_i - sum_i c_i * |w_i - w_prev_i|) * (1 + sum_i w_i * x_i)

``c_i`` is symbol i's cost per unit of weight change (fee + its spread / 2); ``g_i`` the
simple return from bar t's close to the fill (0 with close fills, the gap to bar t+1's open
with next-open fills) and ``x_i`` the simple return from the fill to bar t+1's close. The
reward is ``log(growth)``, the portfolio's net log return. Between fills, weights are kept
at their targets (the holdings are resized each bar at no charge; a slot scheme with
weights in ``{-1/N, 0, +1/N}`` changes a weight only when its slot flips).

What can and cannot fill, the rules of :mod:`pyppo.data.universe`:

- a symbol that cannot fill on this decision (no bar of its own at the fill: its price
  would be made up) keeps its weight; its returns over bars it lacks are 0 (the last price
  is carried) and the move arrives with its next real bar;
- a symbol not listed at bar t+1 (delisted after bar t) is closed: its weight goes to 0 at
  bar t's close, at its last real price, and the cost is paid;
- the target weights are clipped to ``±max_weight`` per symbol and scaled down so that the
  gross exposure ``sum_i |w_i|`` is at most ``max_gross``.

Guarded like every realized return in pyppo: log returns are sanitized (non-finite -> 0,
clamped to ±1) before they are turned into simple returns, so a bad tick costs nothing
and can never make the equity negative or NaN; counts come back with the result.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from pyppo import ops
from pyppo.features import RETURN_LIMIT

__all__ = ["PortfolioStep", "limit_weights", "portfolio_step"]


@dataclass
class PortfolioStep:
    """One step of :func:`portfolio_step` for a batch of portfolios.

    :param log_return: ``(B,)`` the net log return (the reward).
    :param weights: ``(B, N)`` the weights held after the decision.
    :param costs: ``(B,)`` fees and spreads paid, as a fraction of the equity.
    :param sanitized: ``[nonfinite, clamped]`` counts of the returns that were guarded.
    """

    log_return: Tensor
    weights: Tensor
    costs: Tensor
    sanitized: Tensor


def limit_weights(target: Tensor, max_weight: float = 1.0, max_gross: float = 1.0) -> Tensor:
    """``target`` clipped to ``±max_weight`` per symbol and scaled down (never up) so that
    every row's gross exposure is at most ``max_gross``.

    :param target: ``(B, N)`` target weights.
    """
    clipped = target.clamp(-max_weight, max_weight)
    gross = clipped.abs().sum(-1, keepdim=True)
    scale = torch.where(gross > max_gross, max_gross / gross.clamp_min(1e-12), 1.0)
    return clipped * scale


def portfolio_step(
    previous: Tensor,
    target: Tensor,
    log_returns: Tensor,
    gaps: Tensor,
    can_fill: Tensor,
    listed_next: Tensor,
    cost: Tensor | float,
    *,
    max_weight: float = 1.0,
    max_gross: float = 1.0,
) -> PortfolioStep:
    """The money of one decision for a batch of ``B`` portfolios over ``N`` symbols (see the
    module). Every tensor is ``(B, N)`` (or broadcasts to it) on one device.

    :param previous: the weights held before the decision.
    :param target: the weights asked for.
    :param log_returns: each symbol's log return from bar t's close to bar t+1's (0 where it
        has no bar; its last price is carried).
    :param gaps: the part of it before the fill, ``log(open[t+1] / close[t])`` for
        next-open fills, zeros for close fills.
    :param can_fill: bool, the symbol has a real price at the fill.
    :param listed_next: bool, the symbol is listed at bar t+1 (False: delisted, closed now).
    :param cost: cost per unit of weight change, one for all or ``(N,)`` per symbol.
    :param max_weight: the per-symbol limit on ``|weight|``.
    :param max_gross: the limit on the sum of ``|weight|``.
    """
    returns = log_returns.to(torch.float32).clone()
    gap = gaps.to(torch.float32).clone()
    counts = ops.sanitize_(returns, RETURN_LIMIT) + ops.sanitize_(gap, RETURN_LIMIT)
    wanted = limit_weights(target, max_weight, max_gross)
    weights = torch.where(can_fill, wanted, previous)
    weights = torch.where(listed_next, weights, torch.zeros_like(weights))
    costs = ((weights - previous).abs() * cost).sum(-1)
    before_fill = 1.0 + (previous * torch.expm1(gap)).sum(-1) - costs
    after_fill = 1.0 + (weights * torch.expm1(returns - gap)).sum(-1)
    # Weights within the gross limit and returns within exp(±1) keep growth above 0 unless
    # the limits allow leverage; the floor keeps the log finite whatever the settings.
    growth = (before_fill * after_fill).clamp_min(1e-6)
    return PortfolioStep(torch.log(growth), weights, costs, counts)
