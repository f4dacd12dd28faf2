"""Backtest statistics: hand-computed small cases, edge cases, and agreement with empyrical."""

from __future__ import annotations

import math
import statistics

import numpy as np
import pytest

from pyppo import stats
from pyppo.stats import (
    CONVENTIONS,
    SUMMARY_KEYS,
    DrawdownPeriod,
    annual_volatility,
    cagr,
    drawdowns,
    equity,
    sharpe_ratio,
    sortino_ratio,
    summary,
    trades,
)

approx = pytest.approx


def test_equity_starts_at_one_and_compounds():
    np.testing.assert_allclose(equity([0.1, -0.5, 1.0]), [1.0, 1.1, 0.55, 1.1])
    np.testing.assert_array_equal(equity([]), [1.0])


def test_drawdown_periods_by_hand():
    curve = [1.0, 1.2, 0.9, 1.0, 1.2, 1.3, 1.04, 1.1]
    dd, periods = drawdowns(curve)
    np.testing.assert_allclose(dd, [0, 0, 0.25, 1 / 6, 0, 0, 0.2, 1 - 1.1 / 1.3], atol=1e-15)
    assert periods == [
        DrawdownPeriod(start=1, trough=2, end=4, depth=approx(0.25), duration=3, recovered=True),
        # not recovered: it runs to the last point
        DrawdownPeriod(start=5, trough=6, end=7, depth=approx(0.2), duration=2, recovered=False),
    ]


def test_drawdown_from_the_start_flat_peaks_and_ties():
    # The first bar loses: the period starts at the initial 1.0.
    assert drawdowns([1.0, 0.8, 1.0])[1] == [DrawdownPeriod(0, 1, 2, approx(0.2), 2, True)]
    # A flat stretch at the peak: the period starts at its last point; ties: first trough.
    assert drawdowns([1.0, 1.0, 0.5, 0.5, 1.0])[1] == [DrawdownPeriod(1, 2, 4, 0.5, 3, True)]
    # Never under water.
    dd, periods = drawdowns([1.0, 1.0, 1.1, 1.2])
    assert periods == [] and not dd.any()
    assert drawdowns([])[1] == []
    with pytest.raises(ValueError, match="first value"):
        drawdowns([0.0, 1.0])


def test_trade_includes_the_fees_of_entering_and_leaving():
    # Flat, long for 2 bars, flat. Fee 0.001 paid on entering (bar 1) and leaving (bar 3).
    positions = [0, 1, 1, 0, 0]
    fees = [0, 0.001, 0, 0.001, 0]
    returns = [0.0, 0.02 - 0.001, 0.01, -0.001, 0.0]
    t = trades(positions, returns, fees)
    assert len(t) == 1
    assert t.entry.tolist() == [1] and t.exit.tolist() == [2] and t.bars.tolist() == [2]
    assert t.direction.tolist() == [1] and t.is_open.tolist() == [False]
    assert t.returns[0] == approx(1.019 * 1.01 * 0.999 - 1, rel=1e-12)
    # Without fees, the fee of leaving stays on the flat bar after the trade.
    assert trades(positions, returns).returns[0] == approx(1.019 * 1.01 - 1, rel=1e-12)


def test_flip_is_two_trades_splitting_the_fee_and_the_last_is_open():
    # Long 2 bars, flip to short (|change| = 2 units: fee 0.002 on bar 2), short to the end.
    positions = [1, 1, -1, -1]
    fees = [0.001, 0, 0.002, 0]
    returns = [0.01 - 0.001, 0.02, 0.03 - 0.002, -0.01]
    t = trades(positions, returns, fees)
    assert t.entry.tolist() == [0, 2] and t.exit.tolist() == [1, 3]
    assert t.direction.tolist() == [1, -1] and t.is_open.tolist() == [False, True]
    # Half of bar 2's fee factor closes the long, the other half opens the short.
    half = math.sqrt(1 - 0.002)
    assert t.returns[0] == approx(1.009 * 1.02 * half - 1, rel=1e-12)
    assert t.returns[1] == approx(1.028 / half * 0.99 - 1, rel=1e-12)
    # The trades compound back to the equity: the fee is split, not counted twice.
    assert np.prod(1 + t.returns) == approx(equity(returns)[-1], rel=1e-12)


def test_no_trades_and_position_sizes():
    t = trades([0, 0, 0], [0.01, -0.02, 0.0])
    assert len(t) == 0 and t.returns.shape == (0,)
    assert len(trades([], [])) == 0
    # Resizing in one direction stays one trade.
    assert trades([0.5, 1.0, 0.0], [0.01, 0.02, 0.0]).entry.tolist() == [0]


def test_trades_and_flat_bars_compound_to_the_equity():
    rng = np.random.default_rng(3)
    n, fee = 500, 0.0005
    positions = rng.choice([-1.0, 0.0, 1.0], size=n, p=[0.3, 0.3, 0.4])
    positions = np.repeat(positions, 4)[:n]  # runs of several bars
    price = rng.normal(0, 0.01, n)
    change = np.abs(np.diff(positions, prepend=0.0))
    fees = -np.expm1(-fee * change)  # the env's log-reward fee, as a fraction of equity
    returns = np.expm1(positions * np.log1p(price) - fee * change)
    t = trades(positions, returns, fees)
    flat = positions == 0
    # A flat bar earns nothing; its fee (if it closes a trade) goes to that trade.
    assert np.prod(1 + t.returns) == approx(equity(returns)[-1], rel=1e-9)
    assert len(t) == np.count_nonzero(np.diff(np.sign(positions), prepend=0.0) * ~flat)


R10 = [0.0, 0.019, -0.01, -0.001, 0.0, 0.009, -0.02, 0.008, 0.02, -0.01]
P10 = [0, 1, 1, 0, 0, -1, -1, 1, 1, 1]
F10 = [0, 0.001, 0, 0.001, 0, 0.001, 0, 0.002, 0, 0]
B10 = [0.01, 0.02, -0.01, 0.03, -0.02, -0.01, 0.02, 0.01, 0.02, -0.01]


def test_summary_every_key_on_ten_bars():
    # Asset returns B10; strategy R10 = position * asset return - fee, fee 0.001 per unit.
    s = summary(R10, P10, 252, fees=F10, benchmark_returns=B10)
    assert list(s) == list(SUMMARY_KEYS)
    eq_end = 1.019 * 0.99 * 0.999 * 1.009 * 0.98 * 1.008 * 1.02 * 0.99
    # Peak 1.019 after bar 1, trough after bar 6, recovered after bar 8; a new peak there,
    # then down 1 % on the last bar, not recovered.
    depth1, depth2 = 1 - 0.99 * 0.999 * 1.009 * 0.98, 0.01
    growth = eq_end ** (252 / 10) - 1
    mean = 0.015 / 10
    downside = math.sqrt((0.01**2 + 0.001**2 + 0.02**2 + 0.01**2) / 10)
    # Trades: long bars 1-2 (exit fee on bar 3), short 5-6 (flip on bar 7: half its fee),
    # long 7-9, open at the end.
    half = math.sqrt(0.998)
    t1, t2, t3 = 1.019 * 0.99 * 0.999 - 1, 1.009 * 0.98 * half - 1, 1.008 / half * 1.02 * 0.99 - 1
    expected = {
        "Return [%]": (eq_end - 1) * 100,
        "Buy & Hold Return [%]": (math.prod(1 + b for b in B10) - 1) * 100,
        "CAGR [%]": growth * 100,
        "Volatility (Ann.) [%]": statistics.stdev(R10) * math.sqrt(252) * 100,
        "Sharpe Ratio": mean / statistics.stdev(R10) * math.sqrt(252),
        "Sortino Ratio": mean / downside * math.sqrt(252),
        "Calmar Ratio": growth / depth1,
        "Max. Drawdown [%]": -depth1 * 100,
        "Avg. Drawdown [%]": -(depth1 + depth2) / 2 * 100,
        "Max. Drawdown Duration": 7,  # from the peak after bar 1 to the recovery after bar 8
        "Avg. Drawdown Duration": (7 + 1) / 2,
        "Exposure Time [%]": 70.0,
        "# Trades": 3,
        "Win Rate [%]": 200 / 3,
        "Best Trade [%]": t3 * 100,
        "Worst Trade [%]": t2 * 100,
        "Avg. Trade [%]": (((1 + t1) * (1 + t2) * (1 + t3)) ** (1 / 3) - 1) * 100,
        "Profit Factor": (t1 + t3) / -t2,
        "Expectancy [%]": (t1 + t2 + t3) / 3 * 100,
    }
    for key, value in expected.items():
        assert s[key] == approx(value, rel=1e-9), key
        assert isinstance(s[key], float), key
    assert math.isnan(summary(R10, P10, 252)["Buy & Hold Return [%]"])


def test_summary_without_bars():
    s = summary([], [], 252)
    assert s["Return [%]"] == 0.0 and s["# Trades"] == 0.0
    assert s["Max. Drawdown [%]"] == 0.0 and s["Max. Drawdown Duration"] == 0.0
    zero_keys = {"Return [%]", "# Trades", "Max. Drawdown [%]", "Max. Drawdown Duration"}
    assert all(math.isnan(s[k]) for k in set(SUMMARY_KEYS) - zero_keys), s


def test_constant_returns_and_no_trades():
    s = summary([0.001] * 20, [0] * 20, 252)
    assert math.isnan(s["Sharpe Ratio"]) and s["Volatility (Ann.) [%]"] == 0.0
    assert s["Sortino Ratio"] == math.inf  # no losing bar, positive mean
    assert s["Max. Drawdown [%]"] == 0.0 and math.isnan(s["Calmar Ratio"])
    assert math.isnan(s["Avg. Drawdown [%]"]) and math.isnan(s["Avg. Drawdown Duration"])
    assert s["Exposure Time [%]"] == 0.0 and s["# Trades"] == 0.0
    for key in ("Win Rate [%]", "Best Trade [%]", "Avg. Trade [%]", "Profit Factor"):
        assert math.isnan(s[key]), key
    zero = summary([0.0] * 5, [0] * 5, 252)
    assert math.isnan(zero["Sharpe Ratio"]) and math.isnan(zero["Sortino Ratio"])
    assert zero["CAGR [%]"] == 0.0
    assert math.isnan(sharpe_ratio([0.01], 252)) and math.isnan(annual_volatility([0.01], 252))


def test_profit_factor_without_losing_trades_and_total_loss():
    s = summary([0.01, 0.0, 0.02], [1, 0, 1], 252)
    assert s["# Trades"] == 2.0 and s["Win Rate [%]"] == 100.0
    assert s["Profit Factor"] == math.inf
    assert summary([-0.01, 0.0], [1, 0], 252)["Profit Factor"] == 0.0
    assert math.isnan(summary([0.0, 0.0], [1, 0], 252)["Profit Factor"])
    ruin = summary([0.1, -1.0, 0.0], [1, -1, 0], 252)
    assert ruin["Avg. Trade [%]"] == -100.0 and ruin["CAGR [%]"] == -100.0
    assert ruin["Max. Drawdown [%]"] == -100.0


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="one per bar"):
        summary([0.01, 0.02], [1], 252)
    with pytest.raises(ValueError, match="NaN"):
        summary([0.01, math.nan], [1, 1], 252)
    with pytest.raises(ValueError, match="bars_per_year"):
        summary([0.01], [1], 0)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        trades([1, 0], [0.0, 0.0], [0.0, -0.1])
    with pytest.raises(ValueError, match="1-D"):
        equity([[0.01]])
    assert "Sortino" in CONVENTIONS and "ddof=1" in CONVENTIONS


def _drift_returns() -> np.ndarray:
    return np.random.default_rng(0).normal(0.0005, 0.01, 2000)


def _long_drawdown_returns() -> np.ndarray:
    # Up for 400 bars, down for 1,000, partly back over the last 600.
    drift = np.concatenate([np.full(400, 0.002), np.full(1000, -0.0015), np.full(600, 0.001)])
    return drift + np.random.default_rng(1).normal(0.0, 0.008, 2000)


@pytest.mark.parametrize("make_returns", [_drift_returns, _long_drawdown_returns])
@pytest.mark.parametrize("bars_per_year", [252.0, 8760.0])
def test_agrees_with_empyrical(make_returns, bars_per_year):
    ep = pytest.importorskip("empyrical")
    r = make_returns()
    s = summary(r, np.ones_like(r), bars_per_year)
    checks = {
        "Sharpe Ratio": ep.sharpe_ratio(r, risk_free=0, annualization=bars_per_year),
        "Sortino Ratio": ep.sortino_ratio(r, required_return=0, annualization=bars_per_year),
        "Max. Drawdown [%]": ep.max_drawdown(r) * 100,
        "CAGR [%]": ep.cagr(r, annualization=bars_per_year) * 100,
        "Volatility (Ann.) [%]": ep.annual_volatility(r, annualization=bars_per_year) * 100,
        "Calmar Ratio": ep.calmar_ratio(r, annualization=bars_per_year),
    }
    for key, theirs in checks.items():
        # Within 1 % relative; being the same formulas, they in fact agree to rounding.
        assert s[key] == approx(theirs, rel=1e-9), key
    assert sharpe_ratio(r, bars_per_year) == s["Sharpe Ratio"]
    assert sortino_ratio(r, bars_per_year) == s["Sortino Ratio"]
    assert cagr(r, bars_per_year) * 100 == s["CAGR [%]"]
    # The equity curve is empyrical's after the initial 1.0; the deepest period its max.
    np.testing.assert_allclose(equity(r)[1:], ep.cum_returns(r, starting_value=1.0), rtol=1e-12)
    periods = drawdowns(equity(r))[1]
    assert max(p.depth for p in periods) == approx(-ep.max_drawdown(r), rel=1e-12)


@pytest.mark.parametrize("n", [1, 3, 4, 5, 8, 13, 64])
def test_iqm_is_the_quarter_trimmed_mean(n):
    scipy_stats = pytest.importorskip("scipy.stats")
    x = np.random.default_rng(n).standard_t(3, size=n)
    assert stats.iqm(x) == pytest.approx(float(scipy_stats.trim_mean(x, 0.25)), rel=1e-12)


def test_the_bootstrap_interval_is_reproducible_and_stratified():
    x = np.random.default_rng(1).normal(size=(3, 10))  # 3 windows x 10 seeds
    a = stats.bootstrap_ci(x, seed=4)
    assert a == stats.bootstrap_ci(x, seed=4) and a != stats.bootstrap_ci(x, seed=5)
    assert a[0] < stats.iqm(x.ravel()) < a[1]
    # Stratified: a window whose runs all agree keeps its weight in every replicate.
    same = np.vstack([np.zeros(10), np.ones(10)])
    lo, hi = stats.bootstrap_ci(same, statistic=np.mean, reps=500)
    assert lo == hi == 0.5
    with pytest.raises(ValueError, match="finite"):
        stats.bootstrap_ci([1.0, np.nan])
