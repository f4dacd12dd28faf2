"""Backtesting a portfolio agent: the greedy policy walked through a universe's calendar in a
one-portfolio :class:`~pyppo.PortfolioEnv`, so the money is the env's (the one
:func:`pyppo.portfolio.portfolio_step`).

The result is the portfolio's own :class:`Backtest` (its net returns; its position is the
net weight, ``sum_i w_i``) and, per symbol, a :class:`Backtest` of its sleeve: the symbol's
slot (-1, 0, +1) and the sleeve's return, ``N`` times the symbol's contribution to the
portfolio's return (to first order: its weights times its returns, less its costs; the
sleeves' mean is the portfolio's return to about 1e-5 a bar), so that the per-symbol tables
and ``weights.csv`` of :mod:`pyppo.evaluation.universe` read the same for pooled and
portfolio agents.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pyppo.data import Universe
from pyppo.data.market import bars_per_year
from pyppo.evaluation.backtest import Backtest
from pyppo.heads import AuxHeads
from pyppo.portfolio_env import PortfolioEnv

__all__ = ["PortfolioRun", "portfolio_backtest"]


@dataclass
class PortfolioRun:
    """:param portfolio: the portfolio's backtest.
    :param sleeves: symbol -> its sleeve's backtest (see the module)."""

    portfolio: Backtest
    sleeves: dict[str, Backtest]


@torch.inference_mode()
def portfolio_backtest(
    universe: Universe,
    model: nn.Module,
    *,
    window: int = 60,
    fee: float = 1e-4,
    spread: float | Mapping[str, float] = 0.0,
    fill: str = "close",
    allow_short: bool = True,
    device: Any = "cpu",
    max_weight: float = 1.0,
    max_gross: float = 1.0,
) -> PortfolioRun:
    """Walk ``model`` greedily (the most likely slot of each symbol) over every decision bar
    of ``universe``'s calendar (each with a window behind it and every horizon ahead), from
    a flat portfolio."""
    # The decision bars of the per-symbol backtests: each with every horizon ahead.
    steps = len(universe) - window - max(max(universe.horizons, default=1), 1)
    env = PortfolioEnv(
        universe,
        num_envs=1,
        episode_length=steps,
        window=window,
        fee=fee,
        allow_short=allow_short,
        device=device,
        starts="sequential",
        spread=spread,
        fill=fill,
        max_weight=max_weight,
        max_gross=max_gross,
    )
    n = env.num_symbols
    heads = AuxHeads.from_labels(universe.horizon_labels)
    obs, info = env.reset()
    was_training = model.training
    model.eval()
    rewards = np.empty(steps)
    weights = np.empty((steps, n))
    tradable = np.empty((steps, n), dtype=bool)
    preds = {name: np.full((steps, n), np.nan) for name in heads.outputs}
    targets = {name: np.full((steps, n), np.nan) for name in heads.outputs}
    bars = np.empty(steps, dtype=np.int64)
    try:
        for k in range(steps):
            out = model(obs)
            can = env.tradable()[0].cpu().numpy()
            tradable[k], bars[k] = can, int(env.bar_index[0])
            aux = info["aux_targets"].view(n, -1).cpu().numpy()
            for j, name in enumerate(heads.outputs):
                if name in out:
                    preds[name][k, can] = out[name][0].cpu().numpy()[can]
                    targets[name][k, can] = aux[can, j]
            obs, reward, _, _, info = env.step(out["action_logits"].argmax(-1))
            rewards[k] = float(reward[0])
            weights[k] = info["weights"][0].cpu().numpy()
    finally:
        model.train(was_training)
    times = universe.calendar[bars + 1]
    returns, gaps = (
        x.cpu().numpy().astype(np.float64) for x in env.realized_returns(torch.from_numpy(bars + 1))
    )
    simple = np.expm1(returns)
    costs = env.cost_per_symbol.cpu().numpy()
    previous = np.vstack([np.zeros((1, n)), weights[:-1]])
    # Each symbol's part of the step's growth, to first order (the portfolio's own return
    # is the env's, exact): the gap on the old weight, the rest on the new, less costs.
    contributions = (
        previous * np.expm1(gaps)
        + weights * np.expm1(returns - gaps)
        - costs * np.abs(weights - previous)
    )
    listed = universe.listed()[bars + 1]
    per_year = bars_per_year(times)
    mean_spread = float(np.mean(list(env.spread.values())))
    common = dict(bars_per_year=per_year, fee=fee, spread=mean_spread, fill=fill)
    benchmark = np.log1p(np.where(listed, simple, 0.0).sum(1) / np.maximum(listed.sum(1), 1))
    portfolio = Backtest("agent", rewards, weights.sum(1), benchmark, times, **common)
    sleeves = {}
    for i, symbol in enumerate(universe.symbols):
        live = listed[:, i]
        sleeve = Backtest(
            "agent",
            np.log1p(np.clip(n * contributions[live, i], -0.999999, None)),
            n * weights[live, i],
            returns[live, i],
            times[live],
            **common,
        )
        for name in heads.outputs:
            sleeve.preds[name] = preds[name][live, i]
            sleeve.targets[name] = targets[name][live, i]
        sleeves[symbol] = sleeve
    return PortfolioRun(portfolio, sleeves)
