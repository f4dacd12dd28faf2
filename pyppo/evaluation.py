"""Backtests on held-out bars: the trained policy against buy-and-hold and a random policy.

One long episode steps through every decision bar of the market in order, so the numbers
are those of a trader who held the agent's positions bar after bar, fees included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from pyppo import ops
from pyppo.data import MarketData
from pyppo.env import TradingEnv


@dataclass
class Backtest:
    """Per-bar record of one policy over a market (all numpy arrays of equal length).

    ``preds`` holds the model's auxiliary predictions per bar, keyed by output name
    (``"pred_" + label`` for each of the market's horizon labels, e.g. ``"pred_1h"``), and
    ``targets`` the realized forward returns they predict, keyed by label (``"1h"``): a label
    is in ``targets`` exactly when ``"pred_" + label`` is in ``preds``. Both are empty for
    ``"buy_and_hold"`` and ``"random"``.
    """

    policy: str
    log_returns: np.ndarray  # the strategy's net log return per bar (position x return - fee)
    positions: np.ndarray  # position held over each bar (-1, 0, +1)
    market_returns: np.ndarray  # the market's log return over each bar (sanitized, ±1)
    bars_per_year: float
    preds: dict[str, np.ndarray] = field(default_factory=dict)  # "pred_<label>" -> (bars,)
    targets: dict[str, np.ndarray] = field(default_factory=dict)  # "<label>" -> (bars,)

    @property
    def equity(self) -> np.ndarray:
        return np.exp(np.cumsum(self.log_returns))

    def metrics(self) -> dict[str, float]:
        r = self.log_returns
        equity = self.equity
        peak = np.maximum.accumulate(np.concatenate([[1.0], equity]))[1:]
        active = self.positions != 0
        hits = np.sign(self.positions[active]) == np.sign(self.market_returns[active])
        changes = np.abs(np.diff(np.concatenate([[0.0], self.positions])))
        out = {
            "total_return": float(equity[-1] - 1.0) if len(r) else 0.0,
            "sharpe": sharpe(r, self.bars_per_year),
            "max_drawdown": float(np.max(1.0 - equity / peak)) if len(r) else 0.0,
            "turnover": float(changes.mean()) if len(r) else 0.0,
            "hit_rate": float(hits.mean()) if hits.size else float("nan"),
            "bars": float(len(r)),
        }
        for label, target in self.targets.items():
            pred = self.preds[f"pred_{label}"]
            if pred.size:
                out[f"pred_{label}_corr"] = correlation(pred, target)
                out[f"pred_{label}_direction_acc"] = (
                    float(np.mean(np.sign(pred[target != 0]) == np.sign(target[target != 0])))
                    if np.any(target != 0)
                    else float("nan")
                )
        return out


def sharpe(log_returns: np.ndarray, bars_per_year: float) -> float:
    """Annualized Sharpe ratio of per-bar returns (0 when they do not vary)."""
    if len(log_returns) < 2:
        return 0.0
    std = float(np.std(log_returns, ddof=1))
    if std == 0.0 or not math.isfinite(std):
        return 0.0
    return float(np.mean(log_returns) / std * math.sqrt(bars_per_year))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    if len(a) < 2 or np.std(a) == 0 or np.std(b) == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def bars_per_year(market: MarketData) -> float:
    """Bars per year as the data actually has them (weekend gaps included)."""
    index = market.frame.index
    years = (index[-1] - index[0]).total_seconds() / (365.25 * 24 * 3600)
    return (len(index) - 1) / years if years > 0 else float(len(index))


@torch.no_grad()
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
    """Run ``policy`` over every decision bar of ``market`` in order.

    ``policy``: a model whose ``forward(obs)`` returns ``action_logits`` (acts greedily,
    and its ``pred_<label>`` outputs, one per label in ``market.horizon_labels``, are
    recorded when present), ``"buy_and_hold"`` or ``"random"`` (uniform actions, seeded).
    The auxiliary horizons are the market's (``market.horizons``).
    """
    steps = market.decision_bars(window)
    env = TradingEnv(
        market,
        num_envs=1,
        episode_length=steps,
        window=window,
        fee=fee,
        allow_short=allow_short,
        device=device,
        seed=seed,
        starts="sequential",
    )
    long_action = env.single_action_space.n - 1
    gen = torch.Generator(device=env.device).manual_seed(seed)
    obs, info = env.reset(seed=seed)
    rewards, positions, bars = [], [], []
    preds: dict[str, list] = {f"pred_{label}": [] for label in env.aux_labels}
    targets: list = []
    name = policy if isinstance(policy, str) else "agent"
    for _ in range(steps):
        if policy == "buy_and_hold":
            action = torch.full((1,), long_action, device=env.device)
        elif policy == "random":
            action = torch.randint(0, long_action + 1, (1,), generator=gen, device=env.device)
        else:
            out = policy(obs)
            action = out["action_logits"].argmax(-1)
            for key in preds:
                if key in out:
                    preds[key].append(out[key].reshape(-1)[:1])
            targets.append(info["aux_targets"][:1])
        bars.append(env.bar_index[:1] + 1)  # the bar whose return this step realizes
        obs, reward, _, _, info = env.step(action)
        rewards.append(reward[:1])
        positions.append(env.position[:1].clone())
    rewards_np = torch.cat(rewards).double().cpu().numpy()
    positions_np = torch.cat(positions).double().cpu().numpy()
    # The market's own return over each bar, sanitized as the env sanitizes it.
    market_np = ops.sanitize(market.log_returns[torch.cat(bars).cpu()], 1.0)[0].numpy()
    result = Backtest(name, rewards_np, positions_np, market_np, bars_per_year(market))
    if targets:
        t = torch.cat(targets).double().cpu().numpy()
        for j, label in enumerate(env.aux_labels):
            key = f"pred_{label}"
            if preds[key]:
                result.preds[key] = torch.cat(preds[key]).double().cpu().numpy()
                result.targets[label] = t[:, j]
    return result
