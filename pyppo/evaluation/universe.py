"""Evaluating an agent over a universe of symbols (pooled training's report).

Each symbol is backtested on its own bars with the one backtest (:func:`backtest`), the
agent and every fixed baseline alike. The universe's result is the **equal-weight
aggregate**: one sleeve per symbol holding ``1 / symbols`` of the capital, rebalanced to
equal sleeves every bar; a symbol without a bar at a timestamp (closed, not yet listed,
delisted) earns nothing there (its sleeve is cash). Buy-and-hold aggregated this way is
the equal-weight benchmark the agent is measured against (beta, correlation).

The auxiliary heads are also judged across symbols at each bar, as Qlib reports signals:
the information coefficient (IC) of a bar is the rank correlation, over the symbols trading
then, of the predicted and the realized forward return; the report gives the mean IC and
the ICIR (mean / standard deviation of the per-bar ICs).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pyppo import stats
from pyppo.data.market import bars_per_year
from pyppo.data.universe import Universe
from pyppo.evaluation.backtest import Backtest, backtest

__all__ = ["equal_weight", "information_coefficients", "beta_and_correlation"]

# Fewer symbols than this at a bar give no cross-sectional rank correlation there.
MIN_SYMBOLS_FOR_IC = 3


def universe_backtests(
    universe: Universe, policies: Mapping[str, Any], settings: dict[str, Any], device: Any
) -> dict[str, dict[str, Backtest]]:
    """Every policy's backtest on every symbol: ``{policy: {symbol: Backtest}}``.

    :param policies: policy name -> a model or a baseline's name (what :func:`backtest`
        takes).
    :param settings: :func:`backtest`'s keyword settings (window, costs, fill, actions).
    """
    return {
        name: {
            symbol: backtest(market, policy, device=device, **settings)
            for symbol, market in universe.markets.items()
        }
        for name, policy in policies.items()
    }


def _frame(per_symbol: Mapping[str, Backtest], values: str) -> pd.DataFrame:
    """``(timestamps, symbols)``: one attribute of every symbol's backtest on the union of
    their timestamps (NaN where a symbol has no bar)."""
    return pd.DataFrame(
        {s: pd.Series(getattr(r, values), index=r.timestamps) for s, r in per_symbol.items()}
    ).sort_index()


def equal_weight(per_symbol: Mapping[str, Backtest], policy: str) -> Backtest:
    """The equal-weight aggregate of one policy's per-symbol backtests (see the module)."""
    first = next(iter(per_symbol.values()))
    simple = _frame(per_symbol, "returns")
    count = len(per_symbol)
    portfolio = simple.fillna(0.0).sum(axis=1).to_numpy() / count
    market = np.expm1(_frame(per_symbol, "market_returns")).fillna(0.0).sum(axis=1) / count
    # The share of equity each symbol's position is (held through the bars it lacks).
    weights = _frame(per_symbol, "positions").ffill().fillna(0.0) / count
    times = pd.DatetimeIndex(simple.index)
    return Backtest(
        policy,
        np.log1p(portfolio),
        weights.sum(axis=1).to_numpy(),
        np.log1p(market.to_numpy()),
        times,
        bars_per_year(times) if len(times) > 1 else first.bars_per_year,
        first.fee,
        spread=first.spread,
        fill=first.fill,
    )


def on_one_index(results: Mapping[str, Backtest]) -> dict[str, Backtest]:
    """``results`` on the union of their timestamps (no return where a policy has no bar, its
    position held), so that they can be compared bar by bar."""
    times = pd.DatetimeIndex(sorted(set().union(*(r.timestamps for r in results.values()))))
    out = {}
    for name, r in results.items():
        if len(r.timestamps) == len(times) and (r.timestamps == times).all():
            out[name] = r
            continue
        out[name] = dataclasses.replace(
            r,
            log_returns=_reindexed(r, "log_returns", times).fillna(0.0).to_numpy(),
            positions=_reindexed(r, "positions", times).ffill().fillna(0.0).to_numpy(),
            market_returns=_reindexed(r, "market_returns", times).fillna(0.0).to_numpy(),
            timestamps=times,
            repaired=np.zeros(len(times), dtype=bool),
            preds={},
            targets={},
        )
    return out


def _reindexed(result: Backtest, values: str, times: pd.DatetimeIndex) -> pd.Series:
    return pd.Series(getattr(result, values), index=result.timestamps).reindex(times)


def weights_frame(per_symbol: Mapping[str, Backtest]) -> pd.DataFrame:
    """``(timestamps, symbols)``: each symbol's position as a share of the aggregate's
    equity (``position / symbols``), held through the bars it lacks, 0 outside its life."""
    positions = _frame(per_symbol, "positions")
    held = positions.ffill()
    for symbol, result in per_symbol.items():
        held.loc[held.index > result.timestamps[-1], symbol] = 0.0
    return held.fillna(0.0) / len(per_symbol)


def information_coefficients(per_symbol: Mapping[str, Backtest], head: str) -> np.ndarray:
    """Per bar (with at least :data:`MIN_SYMBOLS_FOR_IC` symbols trading), the Spearman rank
    correlation across symbols of the head's prediction and the realized forward return.
    Bars where either side does not vary across symbols are skipped."""
    preds = pd.DataFrame(
        {s: pd.Series(r.preds[head], index=r.timestamps) for s, r in per_symbol.items()}
    )
    targets = pd.DataFrame(
        {s: pd.Series(r.targets[head], index=r.timestamps) for s, r in per_symbol.items()}
    )
    out = []
    for p, t in zip(preds.to_numpy(), targets.to_numpy(), strict=True):
        ok = np.isfinite(p) & np.isfinite(t)
        if ok.sum() < MIN_SYMBOLS_FOR_IC or np.ptp(p[ok]) == 0 or np.ptp(t[ok]) == 0:
            continue
        out.append(_rank_correlation(p[ok], t[ok]))
    return np.asarray(out, dtype=np.float64)


def _rank_correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation (ties get their mean rank)."""
    return float(np.corrcoef(pd.Series(a).rank().to_numpy(), pd.Series(b).rank().to_numpy())[0, 1])


def beta_and_correlation(returns: np.ndarray, benchmark: np.ndarray) -> tuple[float, float]:
    """The beta and the correlation of ``returns`` to ``benchmark`` (NaN when the benchmark
    does not vary)."""
    if len(returns) < 2 or np.var(benchmark) == 0:
        return math.nan, math.nan
    beta = float(np.cov(returns, benchmark)[0, 1] / np.var(benchmark, ddof=1))
    return beta, stats.correlation(returns, benchmark)


def universe_section(
    backtests: dict[str, dict[str, Backtest]],
    aggregates: dict[str, Backtest],
    fmt: Any,
    table: Any,
) -> tuple[list[str], dict[str, Any]]:
    """The report's universe section (per-symbol table, beta/correlation, IC/ICIR) and its
    numbers for report.json."""
    agent = backtests["agent"]
    symbols = list(agent)
    baselines = [name for name in backtests if name not in ("agent", "buy_and_hold")]
    total = sum(r.returns.sum() for r in agent.values())
    rows, numbers = [], {}
    for symbol in symbols:
        mine = agent[symbol]
        fixed = {name: backtests[name][symbol].sharpe for name in baselines}
        best = max(fixed, key=lambda n: stats.sharpe_for_ranking(fixed[n]))
        contribution = mine.returns.sum() / len(symbols)
        numbers[symbol] = {
            "sharpe": mine.sharpe,
            "total_return": float(mine.equity[-1] - 1.0),
            "buy_and_hold_return": float(backtests["buy_and_hold"][symbol].equity[-1] - 1.0),
            "contribution": float(contribution),
            "best_baseline": best,
            "best_baseline_sharpe": fixed[best],
        }
        rows.append(
            [
                symbol,
                f"{len(mine.returns):,}",
                fmt(mine.sharpe),
                f"{100 * (mine.equity[-1] - 1):+.2f}",
                f"{100 * (backtests['buy_and_hold'][symbol].equity[-1] - 1):+.2f}",
                f"{best} {fmt(fixed[best])}",
                f"{100 * contribution:+.3f}",
                f"{mine.returns.sum() / total:.0%}" if total else "n/a",
            ]
        )
    hold = aggregates["buy_and_hold"].returns
    beta, corr = beta_and_correlation(aggregates["agent"].returns, hold)
    lines = [
        "## Per symbol",
        "",
        *table(
            [
                "symbol",
                "bars",
                "agent Sharpe",
                "agent return [%]",
                "buy & hold return [%]",
                "best fixed baseline (Sharpe)",
                "contribution [%]",
                "share of the agent's sum",
            ],
            rows,
        ),
        "",
        "Contribution: the symbol's summed per-bar returns over the number of symbols (its "
        "sleeve's share of the equal-weight aggregate's summed returns).",
        "",
        "## Against the equal-weight benchmark",
        "",
        f"- beta of the agent's aggregate to equal-weight buy-and-hold: {fmt(beta)}; "
        f"correlation: {fmt(corr)}",
        "",
    ]
    ic_rows, ic_numbers = [], {}
    for head in next(iter(agent.values())).preds:
        ics = information_coefficients(agent, head)
        mean = float(ics.mean()) if len(ics) else math.nan
        std = float(ics.std(ddof=1)) if len(ics) > 1 else math.nan
        icir = mean / std if std and math.isfinite(std) and std > 0 else math.nan
        ic_numbers[head] = {"ic": mean, "icir": icir, "bars": len(ics)}
        ic_rows.append([head, f"{len(ics):,}", fmt(mean), fmt(icir)])
    if ic_rows:
        lines += [
            "## Auxiliary heads across symbols (IC)",
            "",
            *table(["head", "bars", "mean IC", "ICIR"], ic_rows),
            "",
            f"IC: each bar's Spearman rank correlation across the symbols trading then (at "
            f"least {MIN_SYMBOLS_FOR_IC}) of the predicted and the realized forward return; "
            "ICIR: the mean IC over the ICs' standard deviation.",
            "",
        ]
    return lines, {
        "symbols": numbers,
        "beta": beta,
        "correlation": corr,
        "ic": ic_numbers,
    }


def write_weights_csv(path: Path, per_symbol: Mapping[str, Backtest]) -> None:
    """``weights.csv``: each symbol's share of the aggregate's equity at every bar."""
    frame = weights_frame(per_symbol)
    frame.index.name = "timestamp"
    frame.to_csv(path)
