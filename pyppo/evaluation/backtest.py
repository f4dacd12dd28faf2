"""Backtests: a policy run over every decision bar of a market, fees included.

:func:`backtest` runs a model through the one inference path (:mod:`pyppo.inference`:
outputs per position, then the greedy walk); buy-and-hold and the random policy know their
positions up front and are plain numpy. Rewards are computed as the env computes them
(:func:`net_returns`, on log returns sanitized with the env's op and limit), and every
statistic of a :class:`Backtest` comes from :mod:`pyppo.stats`, on the simple returns a
trader would see.

Dirty bars. A bar whose log return had to be repaired (NaN/inf: a zero or missing price) or
clamped (beyond ±1: a spike) does not close at a real price, so nothing is filled there: the
position held into it is kept (:func:`pyppo.inference.walk`'s ``no_fill``), and the moves up
to it are booked at the next bar with a real price (the equity is not marked to a price no
one could trade at). On clean bars this is exactly what stepping a one-env
:class:`pyppo.TradingEnv` gives; on dirty ones the env's rewards would pay for trades at
prices that never existed (a spike's +172 % and its way back down), which a backtest must
not.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from pyppo import ops, stats
from pyppo.data import MarketData, MarketDataError
from pyppo.evaluation.baselines import (
    DEFAULT_BASELINES,
    BaselineSettings,
    ReferenceRule,
    baseline_positions,
)
from pyppo.execution import cost_per_unit, gap_log_returns, step_rewards
from pyppo.features import RETURN_LIMIT
from pyppo.heads import AuxHeads
from pyppo.inference import action_positions, policy_outputs, walk


@dataclass
class Backtest:
    """Per-bar record of one policy over a market (numpy arrays of equal length, one entry
    per traded bar).

    ``preds`` holds the model's auxiliary predictions at each decision bar and ``targets`` the
    realized forward returns they predict, both keyed by the head's output name
    (``"pred_1h"``); both are empty for ``"buy_and_hold"`` and ``"random"``.
    """

    policy: str
    log_returns: np.ndarray  # the strategy's net log return per bar (position x return - fee)
    positions: np.ndarray  # position held over each bar (-1, 0, +1)
    market_returns: np.ndarray  # the market's log return over each bar (sanitized, ±1)
    timestamps: pd.DatetimeIndex  # the bar each return belongs to (decision bar + 1)
    bars_per_year: float
    fee: float  # fee per unit of position change
    # Bars whose return was repaired or clamped: no fill at their close, their move booked at
    # the next real price (see the module's docstring).
    repaired: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    preds: dict[str, np.ndarray] = field(default_factory=dict)  # "pred_<label>" -> (bars,)
    targets: dict[str, np.ndarray] = field(default_factory=dict)  # "pred_<label>" -> (bars,)
    spread: float = 0.0  # bid-ask spread in basis points, half paid per unit of change
    fill: str = "close"  # pyppo.execution.FILLS
    start_position: float = 0.0  # held before the first bar

    @property
    def cost(self) -> float:
        """What one unit of position change costs: ``fee + spread / 2``."""
        return cost_per_unit(self.fee, self.spread)

    @property
    def changes(self) -> np.ndarray:
        """``|position - previous position|`` on each bar (the turnover)."""
        return np.abs(np.diff(np.concatenate([[self.start_position], self.positions])))

    @property
    def equity(self) -> np.ndarray:
        """Growth of 1 unit of capital after each bar."""
        return np.exp(np.cumsum(self.log_returns))

    @property
    def returns(self) -> np.ndarray:
        """Per-bar simple net returns (fees included): what :mod:`pyppo.stats` takes."""
        return np.expm1(self.log_returns)

    @property
    def fees(self) -> np.ndarray:
        """The costs (fee and spread) paid on each bar, as a fraction of the equity at its
        start."""
        return -np.expm1(-self.cost * self.changes)

    @property
    def sharpe(self) -> float:
        """The annualized Sharpe ratio (:func:`pyppo.stats.sharpe_ratio`; NaN when flat)."""
        return stats.sharpe_ratio(self.returns, self.bars_per_year)

    def sharpe_at_cost(self, multiple: float) -> float:
        """The Sharpe ratio with the costs scaled by ``multiple``, the positions kept."""
        log_returns = self.log_returns + (1.0 - multiple) * self.cost * self.changes
        return stats.sharpe_ratio(np.expm1(log_returns), self.bars_per_year)

    def metrics(self) -> dict[str, float]:
        """Total return, annualized Sharpe (NaN when the policy never trades), max drawdown,
        turnover per bar, hit rate, bar count and, per prediction, its correlation with the
        realized return and its direction accuracy (``pred_1h_corr``,
        ``pred_1h_direction_acc``)."""
        r = self.returns
        active = self.positions != 0
        hits = np.sign(self.positions[active]) == np.sign(self.market_returns[active])
        changes = self.changes
        equity = stats.equity(r)
        drawdown, _ = stats.drawdowns(equity)
        out = {
            "total_return": float(equity[-1] - 1.0),
            "sharpe": self.sharpe,
            "max_drawdown": float(drawdown.max()) if len(r) else 0.0,
            "turnover": float(changes.mean()) if len(r) else 0.0,
            "hit_rate": float(hits.mean()) if hits.size else float("nan"),
            "bars": float(len(r)),
        }
        for name, pred in self.preds.items():
            out[f"{name}_corr"] = stats.correlation(pred, self.targets[name])
            out[f"{name}_direction_acc"] = stats.direction_accuracy(pred, self.targets[name])
        return out


def net_returns(
    positions: np.ndarray,
    returns: np.ndarray,
    fee: float,
    start_position: float = 0.0,
    gaps: np.ndarray | None = None,
) -> np.ndarray:
    """Per-bar rewards as :class:`pyppo.TradingEnv` computes them, in float32
    (:func:`pyppo.execution.step_rewards`): ``position * return - fee * |position - previous
    position|`` with close fills, the gap earned by the previous position with next-open
    fills.

    :param positions: (B,) the position held over each bar.
    :param returns: (B,) the sanitized log return of each of those bars.
    :param fee: cost per unit of position change (with a spread: ``fee + spread / 2``).
    :param start_position: the position held before the first bar.
    :param gaps: (B,) the sanitized opening gap of each bar (next-open fills), or None.
    """
    pos = np.asarray(positions, dtype=np.float32)
    previous = np.concatenate([np.array([start_position], dtype=np.float32), pos[:-1]])
    bar = np.asarray(returns, dtype=np.float32)
    gap = np.zeros_like(bar) if gaps is None else np.asarray(gaps, dtype=np.float32)
    return step_rewards(previous, pos, bar, gap, np.float32(fee))


def backtest(
    market: MarketData,
    policy: str | nn.Module | ReferenceRule,
    *,
    window: int = 60,
    fee: float = 1e-4,
    allow_short: bool = True,
    device: str | torch.device = "cpu",
    seed: int = 0,
    spread: float = 0.0,
    fill: str = "close",
    start: int | None = None,
    stop: int | None = None,
    start_position: float = 0.0,
    baselines: BaselineSettings = DEFAULT_BASELINES,
) -> Backtest:
    """Run ``policy`` over the decision bars of ``market`` in order, from ``start_position``.

    The decision bars are ``window .. window + market.decision_bars(window) - 1`` (or
    ``[start, stop)`` within them); the position taken at bar t is held over bar t + 1,
    whose sanitized log return it earns, less ``fee + spread / 2`` per unit of position
    change, filled at bar t's close or bar t+1's open (:mod:`pyppo.execution`). With close
    fills the result is what a one-env :class:`pyppo.TradingEnv` stepped through those bars
    would give.

    :param market: the bars (any length that leaves at least one decision bar).
    :param policy: a model (see :func:`pyppo.inference.policy_outputs`) acting greedily
        through :func:`pyppo.inference.walk`, whose predictions for the market's horizons
        (``pred_<label>``) are recorded when present; or a baseline's name
        (:mod:`pyppo.evaluation.baselines`: ``"buy_and_hold"``, ``"random"`` (seeded with
        ``seed``), ``"ma_cross_10_30"``, ``"momentum_3"``, ``"reversion_3"``).
    :param window: the return window of the observation.
    :param fee: cost per unit of position change.
    :param allow_short: short/flat/long actions, else flat/long.
    :param device: where the model's forward passes run.
    :param seed: seeds the random policy.
    :param spread: the bid-ask spread in basis points (half paid per unit of change).
    :param fill: ``"close"`` or ``"next_open"``.
    :param start: the first decision bar (default ``window``; at least that).
    :param stop: one past the last decision bar (default: the last with a next bar and
        every horizon ahead).
    :param start_position: the position held before the first decision (a walk-forward
        window carries the previous window's last position over).
    :param baselines: the baselines' lengths.
    """
    longest = max(max(market.horizons, default=1), 1)
    first = window if start is None else max(int(start), window)
    last = window + market.decision_bars(window) if stop is None else int(stop)
    steps = last - first
    if steps < 1 or last + longest > len(market):
        raise MarketDataError(
            f"{len(market)} bars leave no decision bar in [{first}, {last}) for window "
            f"{window} and longest horizon {longest} bars: need at least "
            f"{window + longest + 1}"
        )
    bars = np.arange(first, last + 1, dtype=np.int64)  # decisions, then one more
    returns32, repaired = _sanitized(market.log_returns, bars)
    gaps32, gap_repaired = _sanitized(gap_log_returns(market, fill), bars)
    # A decision at bar t fills at bar t's close (or t+1's open): not at a repaired price.
    no_fill = repaired[:-1] | gap_repaired[1:]
    bars = bars[:-1]
    choices = action_positions(allow_short)
    outputs: dict[str, np.ndarray] = {}  # the agent's, per bar
    if isinstance(policy, ReferenceRule):
        clean = _sanitized(market.log_returns, np.arange(len(market)))[0]
        positions = _hold_where_no_fill(
            policy.positions(clean, bars, choices), no_fill, start_position
        )
        name = policy.name
    elif isinstance(policy, str):
        positions = baseline_positions(
            policy,
            _sanitized(market.log_returns, np.arange(len(market)))[0],
            bars,
            choices,
            baselines,
            seed,
        )
        positions = _hold_where_no_fill(positions, no_fill, start_position)
        name = policy
    else:
        outs = policy_outputs(policy, market, window, allow_short, device, start=first, stop=last)
        run = walk(outs, start_position=start_position, no_fill=no_fill)
        positions, outputs, name = run.positions, run.outputs, "agent"
    # Each position earns the next bar's sanitized return, booked where a price is real.
    cost = cost_per_unit(fee, spread)
    gaps = gaps32[1:] if fill != "close" else None
    earned = net_returns(positions, returns32[1:], cost, start_position, gaps).astype(np.float64)
    result = Backtest(
        name,
        _booked_at_real_prices(earned, repaired[1:]),
        positions.astype(np.float64),
        returns32[1:].astype(np.float64),
        market.frame.index[bars + 1],
        market.bars_per_year,
        fee,
        repaired=repaired[1:],
        spread=spread,
        fill=fill,
        start_position=start_position,
    )
    heads = AuxHeads.from_labels(market.horizon_labels)
    for head, horizon in zip(heads, market.horizons, strict=True):
        if head.output in outputs:
            target = market.forward_returns(horizon)[torch.from_numpy(bars)].to(torch.float32)
            pred = outputs[head.output].reshape(steps, -1)[:, 0]
            result.preds[head.output] = pred.astype(np.float64)
            clean = ops.sanitize(target, RETURN_LIMIT)[0]
            result.targets[head.output] = clean.numpy().astype(np.float64)
    return result


def _sanitized(log_returns: torch.Tensor, bars: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The log return of each of ``bars`` (from the bar before), float32 and sanitized as the
    env sanitizes it, and whether the sanitizer changed it (NaN/inf repaired, or clamped)."""
    raw = log_returns[torch.from_numpy(bars)].to(torch.float32)
    clean = ops.sanitize(raw, RETURN_LIMIT)[0]
    changed = ~torch.eq(clean, raw)  # NaN compares unequal: repaired
    return clean.numpy(), changed.numpy()


def _hold_where_no_fill(
    positions: np.ndarray, no_fill: np.ndarray, start_position: float = 0.0
) -> np.ndarray:
    """``positions`` with the position before each no-fill bar kept over it
    (``start_position`` before the first bar)."""
    held = positions.copy()
    previous = np.float32(start_position)
    for i in np.flatnonzero(no_fill):
        held[i] = held[i - 1] if i > 0 else previous
    return held


def _booked_at_real_prices(earned: np.ndarray, repaired: np.ndarray) -> np.ndarray:
    """Per-bar log returns with the moves of repaired bars booked at the next bar with a
    real price (sums are unchanged up to that bar; moves after the last real price are not
    booked: there is no price to mark them at)."""
    if not repaired.any():
        return earned
    total = np.cumsum(earned)
    real = np.flatnonzero(~repaired)
    marked = np.zeros(len(earned))
    # At each bar, the running total as of the last bar with a real price (0 before one).
    last = np.searchsorted(real, np.arange(len(earned)), side="right") - 1
    has = last >= 0
    marked[has] = total[real[last[has]]]
    return np.diff(marked, prepend=0.0)
