"""Baselines, fill timing and costs: positions and P&L against hand computations, and the
same numbers from the env and the backtest."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from pyppo import MarketDataError, TradingEnv, synthetic_market
from pyppo.data import MarketData
from pyppo.evaluation import backtest
from pyppo.evaluation.baselines import (
    REFERENCE,
    BaselineSettings,
    ReferenceRule,
    baseline_positions,
    reference_positions,
    standardized_returns,
)
from pyppo.execution import cost_per_unit, gap_log_returns
from pyppo.inference import action_positions

SHORT = action_positions(True)
LONG_ONLY = action_positions(False)


def bars(closes, opens=None) -> MarketData:
    index = pd.date_range("2024-01-01", periods=len(closes), freq="1h", name="timestamp")
    frame = pd.DataFrame({"close": np.asarray(closes, dtype=np.float64)}, index=index)
    if opens is not None:
        frame["open"] = np.asarray(opens, dtype=np.float64)
    return MarketData(frame, horizons=(1, 2), window=2)


def test_momentum_and_reversion_by_hand():
    log_returns = np.array([0.0, 0.01, 0.02, -0.05, 0.01, 0.01, 0.01, -0.01])
    settings = BaselineSettings(ma_fast=2, ma_slow=3, momentum_bars=2)
    decisions = np.arange(2, 8)
    # Sums of the last two returns at bars 2..7: .03, -.03, -.04, .02, .02, 0.
    momentum = baseline_positions("momentum_2", log_returns, decisions, SHORT, settings)
    np.testing.assert_array_equal(momentum, [1, -1, -1, 1, 1, 0])
    reversion = baseline_positions("reversion_2", log_returns, decisions, SHORT, settings)
    np.testing.assert_array_equal(reversion, [-1, 1, 1, -1, -1, 0])
    long_only = baseline_positions("reversion_2", log_returns, decisions, LONG_ONLY, settings)
    np.testing.assert_array_equal(long_only, [0, 1, 1, 0, 0, 0])
    # Bar 1 lacks a second return: flat there.
    assert baseline_positions("momentum_2", log_returns, np.array([1]), SHORT, settings)[0] == 0


def test_ma_cross_by_hand():
    log_returns = np.array([0.0, 0.1, 0.1, -0.3, 0.0, 0.2])
    settings = BaselineSettings(ma_fast=2, ma_slow=3, momentum_bars=1)
    # Log prices 0, .1, .2, -.1, -.1, .1. At bar 2: fast (.1+.2)/2=.15 > slow .1 -> long;
    # bar 3: .05 < .0667 -> short; bar 4: -.1 < 0 -> short; bar 5: 0 > -.0333 -> long.
    positions = baseline_positions("ma_cross_2_3", log_returns, np.arange(2, 6), SHORT, settings)
    np.testing.assert_array_equal(positions, [1, -1, -1, 1])
    with pytest.raises(ValueError, match="shorter than the slow"):
        BaselineSettings(ma_fast=30, ma_slow=10)


def test_baselines_run_through_the_backtest_with_the_agents_timing():
    market = synthetic_market(1_000, seed=3)
    result = backtest(market, "momentum_3", window=60)
    returns = market.log_returns.numpy()
    # The decision at bar t uses bars up to t and earns bar t + 1's return.
    t = 60 + np.arange(len(result.positions))
    expected = np.sign(returns[t] + returns[t - 1] + returns[t - 2])
    np.testing.assert_array_equal(result.positions, expected)
    assert set(BaselineSettings().names) == {
        "buy_and_hold",
        "random",
        "ma_cross_10_30",
        "momentum_3",
        "reversion_3",
    }


def test_next_open_fills_and_the_spread_by_hand():
    # Closes 100, 100, 102, 101, 103, 104; opens chosen so that every bar has a gap.
    closes = [100.0, 100.0, 102.0, 101.0, 103.0, 104.0]
    opens = [100.0, 99.0, 101.0, 103.0, 102.0, 105.0]
    market = bars(closes, opens)
    fee, spread = 0.001, 4.0  # 4 bp spread: 2 bp per unit of change
    cost = fee + 0.0002
    assert cost_per_unit(fee, spread) == pytest.approx(cost)
    # Decisions at bars 2 and 3 (window 2, longest horizon 2): buy-and-hold goes long at
    # bar 2 and holds over bars 3 and 4.
    result = backtest(market, "buy_and_hold", window=2, fee=fee, spread=spread, fill="next_open")
    r3, r4 = np.log(101 / 102), np.log(103 / 101)
    g3 = np.log(103 / 102)  # bar 3's open against bar 2's close: earned while still flat
    expected = [0 * g3 + 1 * (r3 - g3) - cost, r4]
    np.testing.assert_allclose(result.log_returns, expected, rtol=1e-6)
    close_fill = backtest(market, "buy_and_hold", window=2, fee=fee, spread=spread)
    np.testing.assert_allclose(close_fill.log_returns, [r3 - cost, r4], rtol=1e-6)
    # The env computes the same step.
    env = TradingEnv(
        market,
        num_envs=1,
        episode_length=2,
        window=2,
        fee=fee,
        spread=spread,
        fill="next_open",
        starts="sequential",
    )
    env.reset()
    rewards = [float(env.step(torch.tensor([2]))[1][0]) for _ in range(2)]
    np.testing.assert_allclose(rewards, expected, rtol=1e-6)


def test_next_open_fills_need_an_open_column():
    market = bars([100.0, 101.0, 102.0, 103.0, 104.0, 105.0])
    with pytest.raises(MarketDataError, match="no open column"):
        gap_log_returns(market, "next_open")
    with pytest.raises(MarketDataError, match="no open column"):
        TradingEnv(market, num_envs=1, episode_length=1, window=2, fill="next_open")
    with pytest.raises(ValueError, match="fill='noon'"):
        backtest(market, "buy_and_hold", window=2, fill="noon")


def test_close_fills_without_a_spread_are_the_plain_env():
    market = synthetic_market(600, seed=1)
    plain = TradingEnv(market, num_envs=4, episode_length=50)
    priced = TradingEnv(market, num_envs=4, episode_length=50, fill="close", spread=0.0)
    plain.reset(seed=3)
    priced.reset(seed=3)
    for step in range(20):
        actions = torch.tensor([step % 3, 2, 0, 1])
        assert torch.equal(plain.step(actions)[1], priced.step(actions)[1])


def test_the_env_span_keeps_every_reward_and_label_inside_it():
    market = synthetic_market(2_000, seed=1)
    longest = max(market.horizons)
    env = TradingEnv(market, num_envs=16, episode_length=50, span=(500, 1200))
    env.reset(seed=0)
    for _ in range(120):
        assert int(env.bar_index.min()) >= 500
        assert int(env.bar_index.max()) + longest < 1200
        env.step(torch.randint(0, 3, (16,)))
    with pytest.raises(MarketDataError, match="bars 500..559 are too few"):
        TradingEnv(market, num_envs=1, episode_length=50, span=(500, 560))


def test_the_reference_rule_by_hand():
    r = np.array([0.0, 0.02, -0.01, 0.03, -0.02])
    z = standardized_returns(r, decay=0.5)
    # Bar 1 has no earlier squared return: 0. Then v = .02^2, then .5 v + .5 (-.01)^2, ...
    v1 = 0.02**2
    v2 = 0.5 * v1 + 0.5 * 0.01**2
    v3 = 0.5 * v2 + 0.5 * 0.03**2
    np.testing.assert_allclose(z, [0, 0, -0.01 / v1**0.5, 0.03 / v2**0.5, -0.02 / v3**0.5])
    bars = np.array([2, 3, 4])
    # k = 2: the mean of z[t-1], z[t]; momentum takes its sign, reversion the opposite.
    expected = np.sign([z[1] + z[2], z[2] + z[3], z[3] + z[4]])
    np.testing.assert_array_equal(reference_positions(z, bars, 2, 1, SHORT), expected)
    np.testing.assert_array_equal(reference_positions(z, bars, 2, -1, SHORT), -expected)
    assert len(ReferenceRule.every()) == 8
    market = synthetic_market(1_000, seed=3)
    result = backtest(market, ReferenceRule(3, 1), window=60)
    assert result.policy == REFERENCE and np.isfinite(result.log_returns).all()
