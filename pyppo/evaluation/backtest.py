"""Backtests: a policy run over every decision bar of a market, fees included.

:func:`backtest` runs a model through the one inference path (:mod:`pyppo.inference`:
outputs per position, then the greedy walk); buy-and-hold and the random policy know their
positions up front and are plain numpy. Rewards are computed as the env computes them
(:func:`net_returns`), and every statistic of a :class:`Backtest` comes from
:mod:`pyppo.stats`, on the simple returns a trader would see.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch import nn

from pyppo import ops, stats
from pyppo.data import MarketData, MarketDataError
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
    fee: float  # cost per unit of position change
    preds: dict[str, np.ndarray] = field(default_factory=dict)  # "pred_<label>" -> (bars,)
    targets: dict[str, np.ndarray] = field(default_factory=dict)  # "pred_<label>" -> (bars,)

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
        """The fee paid on each bar, as a fraction of the equity at its start."""
        changes = np.abs(np.diff(np.concatenate([[0.0], self.positions])))
        return -np.expm1(-self.fee * changes)

    @property
    def sharpe(self) -> float:
        """The annualized Sharpe ratio (:func:`pyppo.stats.sharpe_ratio`; NaN when flat)."""
        return stats.sharpe_ratio(self.returns, self.bars_per_year)

    def metrics(self) -> dict[str, float]:
        """Total return, annualized Sharpe (NaN when the policy never trades), max drawdown,
        turnover per bar, hit rate, bar count and, per prediction, its correlation with the
        realized return and its direction accuracy (``pred_1h_corr``,
        ``pred_1h_direction_acc``)."""
        r = self.returns
        active = self.positions != 0
        hits = np.sign(self.positions[active]) == np.sign(self.market_returns[active])
        changes = np.abs(np.diff(np.concatenate([[0.0], self.positions])))
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
    positions: np.ndarray, returns: np.ndarray, fee: float, start_position: float = 0.0
) -> np.ndarray:
    """Per-bar rewards as :class:`pyppo.TradingEnv` computes them, in float32:
    ``position * return - fee * |position - previous position|``.

    :param positions: (B,) the position held over each bar.
    :param returns: (B,) the sanitized log return of each of those bars.
    :param fee: cost per unit of position change.
    :param start_position: the position held before the first bar.
    """
    pos = np.asarray(positions, dtype=np.float32)
    previous = np.concatenate([np.array([start_position], dtype=np.float32), pos[:-1]])
    cost = np.abs(pos - previous) * np.float32(fee)
    return pos * np.asarray(returns, dtype=np.float32) - cost


def backtest(
    market: MarketData,
    policy: str | nn.Module,
    *,
    window: int = 60,
    fee: float = 1e-4,
    allow_short: bool = True,
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Backtest:
    """Run ``policy`` over every decision bar of ``market`` in order, starting flat.

    The decision bars are ``window .. window + market.decision_bars(window) - 1``; the
    position taken at bar t is held over bar t + 1, whose sanitized log return it earns,
    less ``fee`` per unit of position change. The result is what a one-env
    :class:`pyppo.TradingEnv` stepped through those bars would give.

    :param market: the bars (any length that leaves at least one decision bar).
    :param policy: a model (see :func:`pyppo.inference.policy_outputs`) acting greedily
        through :func:`pyppo.inference.walk`, whose predictions for the market's horizons
        (``pred_<label>``) are recorded when present; ``"buy_and_hold"`` (long throughout)
        or ``"random"`` (uniform actions drawn from a CPU generator seeded with ``seed``).
    :param window: the return window of the observation.
    :param fee: cost per unit of position change.
    :param allow_short: short/flat/long actions, else flat/long.
    :param device: where the model's forward passes run.
    :param seed: seeds the random policy.
    """
    steps = market.decision_bars(window)
    if steps < 1:
        longest = max(market.horizons, default=1)
        raise MarketDataError(
            f"{len(market)} bars leave no decision bar for window {window} and longest "
            f"horizon {longest} bars: need at least {window + max(longest, 1) + 1}"
        )
    bars = np.arange(window, window + steps, dtype=np.int64)
    choices = action_positions(allow_short)
    outputs: dict[str, np.ndarray] = {}  # the agent's, per bar
    if isinstance(policy, str):
        if policy == "buy_and_hold":
            positions = np.full(steps, choices[-1], dtype=np.float32)
        elif policy == "random":
            gen = torch.Generator().manual_seed(seed)
            positions = choices[torch.randint(0, len(choices), (steps,), generator=gen).numpy()]
        else:
            raise ValueError(f"policy={policy!r}: use a model, 'buy_and_hold' or 'random'")
        name = policy
    else:
        stop = window + steps
        run = walk(policy_outputs(policy, market, window, allow_short, device, stop=stop))
        positions, outputs, name = run.positions, run.outputs, "agent"
    # The return each position earns: the next bar's, sanitized as the env sanitizes it.
    raw = market.log_returns[torch.from_numpy(bars + 1)]
    returns32 = ops.sanitize(raw.to(torch.float32), 1.0)[0].numpy()
    result = Backtest(
        name,
        net_returns(positions, returns32, fee).astype(np.float64),
        positions.astype(np.float64),
        ops.sanitize(raw, 1.0)[0].numpy(),
        market.frame.index[bars + 1],
        market.bars_per_year,
        fee,
    )
    heads = AuxHeads.from_labels(market.horizon_labels)
    for head, horizon in zip(heads, market.horizons, strict=True):
        if head.output in outputs:
            target = market.forward_returns(horizon)[torch.from_numpy(bars)].to(torch.float32)
            pred = outputs[head.output].reshape(steps, -1)[:, 0]
            result.preds[head.output] = pred.astype(np.float64)
            result.targets[head.output] = ops.sanitize(target, 1.0)[0].numpy().astype(np.float64)
    return result
