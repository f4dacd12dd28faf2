"""How a decision becomes a trade: when it fills and what it costs, for training and
backtests alike.

A decision is taken on bar t's close (the observation holds bar t). It fills either at that
close (``fill="close"``: the idealized default) or at bar t+1's open (``fill="next_open"``).
The return over bar t+1, ``r = log(close[t+1] / close[t])``, is then split in two: the gap
``g = log(open[t+1] / close[t])``, earned by the position held before the decision, and the
rest ``r - g``, earned by the new position. With close fills ``g = 0``. So the log reward of
a step is::

    reward = previous * g + position * (r - g) - cost * |position - previous|
    cost   = fee + spread / 2 (per unit of position change)

``spread`` is the quoted bid-ask spread as a fraction (the ``--spread`` setting is in basis
points): buying pays half of it above the mid, selling half below, on top of the fee. Both
``r`` and ``g`` are sanitized as every realized return is (NaN/inf -> 0, clamped to ±1).
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from pyppo.data import MarketData, MarketDataError

FILLS = ("close", "next_open")
BASIS_POINT = 1e-4


def cost_per_unit(fee: float, spread_bps: float = 0.0) -> float:
    """What one unit of position change costs, as a log-return: ``fee + spread / 2``.

    :param fee: the fee per unit of position change (1e-4 = 1 basis point).
    :param spread_bps: the quoted bid-ask spread in basis points, paid half on each side.
    """
    return float(fee) + float(spread_bps) * BASIS_POINT / 2


def check_fill(fill: str) -> str:
    """``fill`` if it names a fill timing, else a ``ValueError`` naming the choices."""
    if fill not in FILLS:
        raise ValueError(f"fill={fill!r}: use one of {', '.join(FILLS)}")
    return fill


def gap_log_returns(market: MarketData, fill: str) -> Tensor:
    """The part of each bar's log return that the position held *before* the decision earns:
    ``log(open[t] / close[t-1])`` for next-open fills (0 at bar 0), zeros for close fills.
    float64 ``(T,)``, unsanitized (NaN/inf where a price is bad).

    :raises MarketDataError: next-open fills on data without an ``open`` column.
    """
    check_fill(fill)
    n = len(market)
    if fill == "close":
        return torch.zeros(n, dtype=torch.float64)
    if "open" not in market.frame.columns:
        raise MarketDataError(
            f"fill next_open needs an open price per bar, and {market.source} has no open "
            "column: add one, or use fill close"
        )
    opens = market.frame["open"].to_numpy(dtype=np.float64)
    close = market.close.numpy()
    gap = np.zeros(n)
    with np.errstate(divide="ignore", invalid="ignore"):
        gap[1:] = np.log(opens[1:] / close[:-1])
    return torch.from_numpy(gap)


def step_rewards(
    previous: Tensor | np.ndarray,
    position: Tensor | np.ndarray,
    bar_return: Tensor | np.ndarray,
    gap: Tensor | np.ndarray,
    cost: float,
) -> Tensor | np.ndarray:
    """The log reward of holding ``position`` over a bar after ``previous`` (elementwise):
    ``previous * gap + position * (bar_return - gap) - cost * |position - previous|``.
    Returns and gaps already sanitized; works on tensors and numpy arrays alike."""
    return previous * gap + position * (bar_return - gap) - cost * abs(position - previous)
