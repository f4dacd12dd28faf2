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
    """Per-bar record of one policy over a market (all numpy arrays of equal length)."""

    policy: str
    log_returns: np.ndarray  # the strategy's net log return per bar (position x return - fee)
    positions: np.ndarray  # position held over each bar (-1, 0, +1)
    market_returns: np.ndarray  # the market's log return over each bar (sanitized, ±1)
    bars_per_year: float
    pred_1h: np.ndarray = field(default_factory=lambda: np.empty(0))
    pred_24h: np.ndarray = field(default_factory=lambda: np.empty(0))
    target_1h: np.ndarray = field(default_factory=lambda: np.empty(0))
    target_24h: np.ndarray = field(default_factory=lambda: np.empty(0))

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
        for name, pred, target in (("1h", self.pred_1h, self.target_1h),
                                   ("24h", self.pred_24h, self.target_24h)):
            if pred.size:
                out[f"pred_{name}_corr"] = correlation(pred, target)
                out[f"pred_{name}_direction_acc"] = float(
                    np.mean(np.sign(pred[target != 0]) == np.sign(target[target != 0]))
                ) if np.any(target != 0) else float("nan")
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
    aux_horizons: tuple = ("1h", "24h"),
    device: str | torch.device = "cpu",
    seed: int = 0,
) -> Backtest:
    """Run ``policy`` over every decision bar of ``market`` in order.

    ``policy``: a model whose ``forward(obs)`` returns ``action_logits`` (acts greedily,
    and its ``pred_1h``/``pred_24h`` are recorded when present), ``"buy_and_hold"`` or
    ``"random"`` (uniform actions, seeded).
    """
    steps = TradingEnv.decision_bars(market, window, aux_horizons)
    env = TradingEnv(market, num_envs=1, episode_length=steps, window=window, fee=fee,
                     aux_horizons=aux_horizons, allow_short=allow_short, device=device,
                     seed=seed, starts="sequential")
    long_action = env.single_action_space.n - 1
    gen = torch.Generator(device=env.device).manual_seed(seed)
    obs, info = env.reset(seed=seed)
    rewards, positions, bars = [], [], []
    preds: dict[str, list] = {"pred_1h": [], "pred_24h": []}
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
        if preds["pred_1h"]:
            result.pred_1h = torch.cat(preds["pred_1h"]).double().cpu().numpy()
            result.target_1h = t[:, 0]
        if preds["pred_24h"] and t.shape[1] > 1:
            result.pred_24h = torch.cat(preds["pred_24h"]).double().cpu().numpy()
            result.target_24h = t[:, 1]
    return result
