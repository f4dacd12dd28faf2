"""report.md, equity.csv, trades.csv and PNG figures for a trained agent (what ``pyppo-eval``
writes).

Every policy (the agent, buy-and-hold, a seeded random policy) is backtested over the same
held-out bars with the same fees; the statistics are :func:`pyppo.stats.summary`'s, named as
backtesting.py names them and computed as :data:`pyppo.stats.CONVENTIONS` states, annualized
with the data's own bars per year. ``equity.csv`` and ``trades.csv`` let anyone recompute
them. With ``folds`` the same backtest is also scored on consecutive sub-periods: one model,
K periods (not walk-forward retraining).
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import nn

from pyppo import stats
from pyppo.checkpoint import Checkpoint
from pyppo.config import RunConfig
from pyppo.data import Universe, format_duration
from pyppo.evaluation import plots
from pyppo.evaluation.backtest import Backtest, backtest
from pyppo.evaluation.baselines import (
    DEFAULT_BASELINES,
    REFERENCE,
    REFERENCE_DECAY,
    BaselineSettings,
    ReferenceRule,
)
from pyppo.evaluation.portfolio import portfolio_backtest
from pyppo.evaluation.universe import (
    equal_weight,
    on_one_index,
    universe_backtests,
    universe_section,
    weights_frame,
    write_weights_csv,
)
from pyppo.evaluation.verdict import EVIDENCE_DSR, Significance, significance, verdict_line
from pyppo.features import compute_features
from pyppo.files import OutputSet
from pyppo.heads import AuxHeads
from pyppo.metrics import nan_events_table
from pyppo.population import EnsembleActorCritic, PopulationActorCritic

FOLD_KEYS = ("Return [%]", "Sharpe Ratio", "Max. Drawdown [%]")
# The cost multiples of the cost-sensitivity table.
COST_MULTIPLES = (0.0, 1.0, 2.0, 5.0)


def policy_names(baselines: BaselineSettings = DEFAULT_BASELINES) -> tuple[str, ...]:
    """Every policy of a report, in column order: the agent, then the baselines."""
    return ("agent", *baselines.names)


def backtest_settings(config: RunConfig) -> dict[str, Any]:
    """The run's backtest settings: window, costs, fill timing, actions, the random seed."""
    env = config.env
    return dict(
        window=env.window,
        fee=env.fee,
        spread=env.spread,
        fill=env.fill,
        allow_short=env.allow_short,
        seed=config.ppo.seed,
    )


def run_backtests(
    model: nn.Module,
    market,
    config: RunConfig,
    device: Any,
    baselines: BaselineSettings = DEFAULT_BASELINES,
) -> dict[str, Backtest]:
    """The agent and every baseline over every decision bar of ``market``."""
    common = backtest_settings(config)
    return {
        name: backtest(
            market, model if name == "agent" else name, device=device, baselines=baselines, **common
        )
        for name in policy_names(baselines)
    }


def policy_summaries(
    results: dict[str, Backtest], lo: int = 0, hi: int | None = None
) -> dict[str, dict[str, float]]:
    """:func:`pyppo.stats.summary` of each policy over bars ``[lo, hi)``."""
    hold = results["buy_and_hold"].returns
    return {
        name: stats.summary(
            result.returns[lo:hi],
            result.positions[lo:hi],
            result.bars_per_year,
            fees=result.fees[lo:hi],
            benchmark_returns=hold[lo:hi],
        )
        for name, result in results.items()
    }


def write_report(
    run_dir: Path,
    model: nn.Module,
    market,
    config: RunConfig,
    checkpoint: Checkpoint,
    *,
    device: Any = "cpu",
    folds: int = 0,
    validation=None,
    history: list[dict[str, float]] | None = None,
    population: PopulationActorCritic | None = None,
    picked: int | None = None,
    training=None,
) -> tuple[dict[str, dict[str, float]], Path]:
    """Backtest, then write ``report.md``, ``equity.csv``, ``trades.csv`` and the figures
    into ``run_dir``; returns the metrics by policy and the report's path.

    :param checkpoint: the checkpoint ``model`` comes from (its update, its heads).
    :param population: the population ``model`` is member ``picked`` of (the one validation
        picks): the report then also scores every member and their ensemble (metrics
        ``"member 0"``..., ``"ensemble"``).
    :param folds: also score ``folds`` consecutive sub-periods of the held-out bars.
    :param validation: the validation bars, for buy-and-hold's Sharpe on them in the
        learning-curve figure.
    :param history: the whole run's metrics rows (default: the checkpoint's, which end at
        its update).
    :param training: the training bars, to fit the linear predictor the heads are compared
        with (the comparison is left out without them).
    """
    if isinstance(market, Universe):
        return write_universe_report(run_dir, model, market, config, checkpoint, device=device)
    results = run_backtests(model, market, config, device)
    policies = tuple(results)
    fee = config.env.fee
    train_env = (checkpoint.run_config or config).env
    trained = {"fee": train_env.fee, "spread": train_env.spread, "fill": train_env.fill}
    summaries = policy_summaries(results)
    metrics = {name: {**results[name].metrics(), **summaries[name]} for name in policies}
    agent = results["agent"]
    times = agent.timestamps
    trades = stats.trades(agent.positions, agent.returns, agent.fees)

    history = checkpoint.trainer.history if history is None else history
    hold_sharpe = None
    if validation is not None:
        hold_sharpe = backtest(
            validation,
            "buy_and_hold",
            window=config.env.window,
            fee=fee,
            allow_short=config.env.allow_short,
        ).sharpe
    heads = AuxHeads.from_labels(market.horizon_labels)
    figures = {
        "equity.png": plots.equity_figure(times, {k: r.equity for k, r in results.items()}),
        "predictions.png": plots.predictions_figure(agent.preds, agent.targets),
    }
    if history:
        figures["training.png"] = plots.training_figure(history, hold_sharpe, heads)

    scored = None
    if population is not None:
        scored = _population_backtests(population, market, config, device)
    judged, verdicts = _significance(results, config, scored)
    lines = [
        "# pyppo evaluation",
        "",
        verdicts["agent"],
        "",
        f"- checkpoint: update {checkpoint.trainer.update}, "
        f"{checkpoint.trainer.env_steps:,} env steps",
        f"- held-out bars: {len(market):,} ({market.frame.index[0]} to "
        f"{market.frame.index[-1]}, {format_duration(market.bar_interval)} bars); "
        f"{len(times):,} traded",
        f"- {_costs_line(agent, trained)}",
        f"- {agent.bars_per_year:,.0f} bars a year (the data's own, gaps included)",
        *_warnings(agent),
        "",
        *_statistics_section(summaries, len(times)),
        f"Conventions: {' '.join(stats.CONVENTIONS.split())} A policy that never trades has "
        "no Sharpe ratio (shown as 'no trades'; it counts as 0 where Sharpes are ranked). "
        "Every trade of the agent is in trades.csv, every bar's equity in equity.csv.",
        "",
    ]
    lines += _costs_section(results)
    lines += _significance_section(judged, config.selection.trials, len(times))
    learnable, reference = _learnable_section(market, config, agent, judged["agent"], training)
    lines += learnable
    metrics["reference"] = reference
    if folds:
        lines += _folds_section(results, times, folds)
    if scored is not None:
        seeds = checkpoint.config.member_seeds
        lines += _population_section(scored, results["buy_and_hold"], seeds, picked)
        metrics.update({name: {**r.metrics()} for name, r in scored.items()})
    lines += [
        "## Auxiliary heads (held-out)",
        "",
        *markdown_table(
            ["head", "correlation with realized", "directional accuracy"],
            [
                [
                    name,
                    f"{metrics['agent'][f'{name}_corr']:+.3f}",
                    f"{metrics['agent'][f'{name}_direction_acc']:.2%}",
                ]
                for name in agent.preds
            ],
        ),
        "",
        "## NaN/inf events during training",
        "",
        "```",
        nan_events_table(history),
        "```",
        "",
        "## Figures",
        "",
        *(f"![{Path(f).stem}]({f})" for f in figures),
    ]
    # Every output appears at once, or none does (an old report stays whole).
    with OutputSet(run_dir) as out:
        _write_equity_csv(out.path("equity.csv"), results)
        _write_trades_csv(out.path("trades.csv"), times, trades)
        for name, fig in figures.items():
            plots.save(fig, out.path(name))
        out.write_text("report.md", "\n".join(lines) + "\n")
        summary = {
            "verdict": verdicts["agent"],
            "verdicts": verdicts,
            "significance": {name: j.to_dict() for name, j in judged.items()},
            "execution": {"fee": agent.fee, "spread_bps": agent.spread, "fill": agent.fill},
            "bars": len(times),
            "metrics": metrics,
        }
        out.write_text("report.json", json.dumps(plain_json(summary), indent=2) + "\n")
    for name, j in judged.items():
        metrics[name].update(psr=j.psr, dsr=j.dsr, evidence=float(j.evidence))
    return metrics, run_dir / "report.md"


def _statistics_section(summaries: dict[str, dict[str, float]], bars: int) -> list[str]:
    """The backtest statistics table: one row per statistic, one column per policy."""
    return [
        "## Backtest statistics",
        "",
        *markdown_table(
            ["statistic", *summaries],
            [
                [_label(key, bars), *(_fmt_statistic(key, row[key]) for row in summaries.values())]
                for key in stats.SUMMARY_KEYS
            ],
        ),
        "",
    ]


def write_universe_report(
    run_dir: Path,
    model: nn.Module,
    universe: Universe,
    config: RunConfig,
    checkpoint: Checkpoint,
    *,
    device: Any = "cpu",
) -> tuple[dict[str, dict[str, float]], Path]:
    """The report of an agent over a universe (:mod:`pyppo.evaluation.universe`): the
    statistics table of the equal-weight aggregates (the agent's, buy-and-hold's: the
    benchmark, each fixed baseline's), the per-symbol table, beta and correlation to the
    benchmark, the heads' IC/ICIR; ``report.md``, ``report.json``, ``equity.csv``,
    ``weights.csv`` and ``equity.png`` into ``run_dir``."""
    settings = backtest_settings(config)
    if config.env.portfolio:
        baselines = {name: name for name in policy_names() if name != "agent"}
        backtests = universe_backtests(universe, baselines, settings, device)
        aggregates = {
            name: equal_weight(per_symbol, name) for name, per_symbol in backtests.items()
        }
        env = config.env
        walk_settings = {k: v for k, v in settings.items() if k != "seed"}
        limits = dict(max_weight=env.max_weight, max_gross=env.max_gross)
        run = portfolio_backtest(universe, model, device=device, **limits, **walk_settings)
        backtests = {"agent": run.sleeves, **backtests}
        aggregates = {"agent": run.portfolio, **aggregates}
        how = (
            "the agent is one portfolio (a short/flat/long slot of 1/"
            f"{len(universe.symbols)} of the equity per symbol, the rest cash); the baselines "
            "are equal-weight aggregates of their per-symbol runs, buy_and_hold the "
            "equal-weight benchmark"
        )
    else:
        policies = {name: model if name == "agent" else name for name in policy_names()}
        backtests = universe_backtests(universe, policies, settings, device)
        aggregates = {
            name: equal_weight(per_symbol, name) for name, per_symbol in backtests.items()
        }
        how = (
            f"every column is an equal-weight aggregate: one sleeve per symbol, 1/"
            f"{len(universe.symbols)} of the capital each, rebalanced every bar; buy_and_hold "
            "is the equal-weight benchmark"
        )
    aggregates = on_one_index(aggregates)
    summaries = policy_summaries(aggregates)
    metrics = {name: {**aggregates[name].metrics(), **summaries[name]} for name in aggregates}
    judged, verdicts = _significance(aggregates, config, None)
    agent = aggregates["agent"]
    times = agent.timestamps
    section, numbers = universe_section(backtests, aggregates, _fmt, markdown_table)
    title = "a portfolio of symbols" if config.env.portfolio else "a universe of symbols (pooled)"
    lines = [
        f"# pyppo evaluation: {title}",
        "",
        verdicts["agent"],
        "",
        f"- checkpoint: update {checkpoint.trainer.update}, "
        f"{checkpoint.trainer.env_steps:,} env steps",
        f"- held-out: {len(universe.symbols)} symbols, {len(universe):,} calendar bars "
        f"({universe.calendar[0]} to {universe.calendar[-1]}, "
        f"{format_duration(universe.bar_interval)} bars); {len(times):,} traded",
        f"- {how}",
        "",
        *_statistics_section(summaries, len(times)),
        *section,
        *_significance_section(judged, config.selection.trials, len(times)),
        "## Figures",
        "",
        "![equity](equity.png)",
        "",
        "![weights](weights.png)",
        "",
        "Every symbol's position as a share of the aggregate's equity, at every bar, is in "
        "weights.csv; every policy's aggregate equity in equity.csv.",
    ]
    figures = {
        "equity.png": plots.equity_figure(times, {k: r.equity for k, r in aggregates.items()}),
        "weights.png": plots.weights_figure(weights_frame(backtests["agent"])),
    }
    with OutputSet(run_dir) as out:
        _write_equity_csv(out.path("equity.csv"), aggregates)
        write_weights_csv(out.path("weights.csv"), backtests["agent"])
        for name, fig in figures.items():
            plots.save(fig, out.path(name))
        out.write_text("report.md", "\n".join(lines) + "\n")
        summary = {
            "verdict": verdicts["agent"],
            "verdicts": verdicts,
            "significance": {name: j.to_dict() for name, j in judged.items()},
            "universe": numbers,
            "bars": len(times),
            "metrics": metrics,
        }
        out.write_text("report.json", json.dumps(plain_json(summary), indent=2) + "\n")
    return metrics, run_dir / "report.md"


def _folds_section(results: dict[str, Backtest], times: pd.DatetimeIndex, folds: int) -> list[str]:
    """Each of ``folds`` consecutive sub-periods of the one backtest, then mean and spread."""
    n = len(results["agent"].log_returns)
    if folds > n:
        raise ValueError(f"--folds {folds}: only {n} traded bars (use fewer folds)")
    bounds = np.linspace(0, n, folds + 1).astype(int)
    columns = [f"{p} {k}" for p in ("agent", "buy_and_hold") for k in FOLD_KEYS]
    rows, values = [], []
    for k, (lo, hi) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        s = policy_summaries(results, lo, hi)
        fold = [s[p][key] for p in ("agent", "buy_and_hold") for key in FOLD_KEYS]
        values.append(fold)
        rows.append(
            [str(k + 1), str(times[lo].date()), str(times[hi - 1].date()), *map(_fmt, fold)]
        )
    table = np.array(values, dtype=float)
    mean = np.nanmean(table, axis=0)
    spread = np.nanstd(table, axis=0, ddof=1) if folds > 1 else np.zeros(len(columns))
    rows.append(
        [
            "mean ± std",
            "",
            "",
            *(f"{_fmt(m)} ± {_fmt(s)}" for m, s in zip(mean, spread, strict=True)),
        ]
    )
    return [
        f"## {folds} held-out sub-periods (one model, scored on consecutive periods)",
        "",
        *markdown_table(["period", "from", "to", *columns], rows),
        "",
    ]


def _population_backtests(
    population: PopulationActorCritic, market, config: RunConfig, device: Any
) -> dict[str, Backtest]:
    """Every member's backtest (``"member 0"``...) and the ensemble's."""
    common = backtest_settings(config)
    models = {f"member {k}": population.member(k) for k in range(population.members)}
    models["ensemble"] = EnsembleActorCritic(population).eval()
    return {name: backtest(market, m, device=device, **common) for name, m in models.items()}


# Fewer members than this make the population's confidence interval unreliable.
MIN_MEMBERS_FOR_INTERVALS = 5
BOOTSTRAP_REPS, BOOTSTRAP_SEED = 2000, 0


def _population_section(
    scored: dict[str, Backtest], hold: Backtest, seeds: tuple[int, ...], picked: int | None
) -> list[str]:
    """The population table: each member, then mean, median, IQM and a bootstrap interval of
    Sharpe and return, the share beating buy-and-hold, and the ensemble."""
    members = [name for name in scored if name.startswith("member ")]
    sharpe = np.array([stats.sharpe_for_ranking(scored[m].sharpe) for m in members])
    returns = np.array([100 * float(scored[m].equity[-1] - 1) for m in members])
    hold_sharpe = stats.sharpe_for_ranking(hold.sharpe)

    def row(label: str, result: Backtest) -> list[str]:
        summary = stats.summary(result.returns, result.positions, result.bars_per_year)
        beats = stats.sharpe_for_ranking(result.sharpe) > hold_sharpe
        return [
            label,
            _fmt_statistic("Sharpe Ratio", result.sharpe),
            _fmt(summary["Return [%]"]),
            _fmt(summary["Max. Drawdown [%]"]),
            _fmt(summary["Exposure Time [%]"]),
            "yes" if beats else "no",
        ]

    rows = []
    for k, name in enumerate(members):
        mark = " (validation's pick)" if k == picked else ""
        rows.append(row(f"member {k}, seed {seeds[k]}{mark}", scored[name]))
    aggregates = [
        ("mean", float(np.mean(sharpe)), float(np.mean(returns))),
        ("median", float(np.median(sharpe)), float(np.median(returns))),
        ("IQM", stats.iqm(sharpe), stats.iqm(returns)),
    ]
    for label, s, r in aggregates:
        rows.append([label, _fmt(s), _fmt(r), "", "", ""])
    ci = [
        stats.bootstrap_ci(x, reps=BOOTSTRAP_REPS, seed=BOOTSTRAP_SEED) for x in (sharpe, returns)
    ]
    rows.append(["IQM, 95 % CI", *(f"{_fmt(lo)} to {_fmt(hi)}" for lo, hi in ci), "", "", ""])
    rows.append(row("**ensemble** (mean action probabilities, greedy)", scored["ensemble"]))
    beating = int(np.sum(sharpe > hold_sharpe))
    lines = [
        f"## Population: {len(members)} members",
        "",
        *markdown_table(
            [
                "member",
                "Sharpe Ratio",
                "Return [%]",
                "Max. Drawdown [%]",
                "Exposure Time [%]",
                "beats buy & hold",
            ],
            rows,
        ),
        "",
        f"{beating} of {len(members)} members beat buy-and-hold's Sharpe ratio "
        f"({_fmt(hold.sharpe)}) on these bars. The interquartile mean (IQM) averages the "
        "middle half of the members; its 95 % interval is a percentile bootstrap over members "
        f"({BOOTSTRAP_REPS} replicates, seed {BOOTSTRAP_SEED}). A member that never trades "
        "counts with a Sharpe ratio of 0. The agent of the statistics above is the member "
        "validation picked (never one chosen on these bars).",
    ]
    if len(members) < MIN_MEMBERS_FOR_INTERVALS:
        lines.append(
            f"- **warning: {len(members)} members are too few for a reliable interval** "
            f"(train at least {MIN_MEMBERS_FOR_INTERVALS}: --seeds {MIN_MEMBERS_FOR_INTERVALS})."
        )
    return [*lines, ""]


def _costs_line(agent: Backtest, trained: dict[str, Any]) -> str:
    """Fill timing and costs as evaluated, and as trained when they differ."""
    fill = {
        "close": "a decision on a bar's close fills at that close",
        "next_open": "a decision on a bar's close fills at the next bar's open",
    }[agent.fill]
    line = (
        f"fill: {agent.fill} ({fill}); costs: fee {agent.fee:g} + spread {agent.spread:g} bp "
        f"/ 2 = {agent.cost * 1e4:.2f} bp per unit of position change"
    )
    evaluated = {"fee": agent.fee, "spread": agent.spread, "fill": agent.fill}
    if trained != evaluated:
        line += (
            f" (trained at fee {trained['fee']:g}, spread {trained['spread']:g} bp, fill "
            f"{trained['fill']})"
        )
    return line


def _costs_section(results: dict[str, Backtest]) -> list[str]:
    """Turnover, the share of gross P&L paid in costs, and the Sharpe ratio at cost
    multiples (positions kept: the agent's observations do not hold the costs)."""
    rows = []
    for name, result in results.items():
        changes = result.changes
        paid = float(np.sum(result.cost * changes))
        gross = float(np.sum(result.log_returns)) + paid
        share = paid / gross if gross > 0 else math.nan
        sharpes = [result.sharpe_at_cost(multiple) for multiple in COST_MULTIPLES]
        rows.append(
            [
                name,
                f"{changes.mean():.4f}" if len(changes) else "n/a",
                _fmt(float(changes.mean() * result.bars_per_year)) if len(changes) else "n/a",
                f"{100 * share:.1f}" if math.isfinite(share) else "n/a (gross P&L <= 0)",
                *(_fmt_statistic("Sharpe Ratio", v) for v in sharpes),
            ]
        )
    header = [
        "policy",
        "turnover per bar",
        "turnover per year",
        "costs [% of gross P&L]",
        *(f"Sharpe at {m:g}x costs" for m in COST_MULTIPLES),
    ]
    return [
        "## Trading and costs",
        "",
        *markdown_table(header, rows),
        "",
        "Turnover: mean |position change| per bar (a flip from short to long counts 2). Gross "
        "P&L: the log return before costs. The cost-sensitivity columns keep each policy's "
        "positions and scale the costs.",
        "",
    ]


def _learnable_section(
    market, config: RunConfig, agent: Backtest, judged: Significance, training
) -> tuple[list[str], dict[str, float]]:
    """How close the agent comes to what the market makes learnable: the reference rule (the
    best lag and sign on these bars: an upper mark, not a baseline) beside the agent, and the
    heads beside the best linear predictor fit on the training bars."""
    common = backtest_settings(config)
    candidates = [(rule, backtest(market, rule, **common)) for rule in ReferenceRule.every()]
    rule, best = max(candidates, key=lambda pair: stats.sharpe_for_ranking(pair[1].sharpe))
    ratio = agent.sharpe / best.sharpe if best.sharpe > 0 else math.nan
    exposure = float(np.mean(agent.positions != 0)) if len(agent.positions) else math.nan
    reference = {
        "sharpe": best.sharpe,
        "lags": float(rule.lags),
        "sign": float(rule.sign),
        "agent_ratio": ratio,
    }
    rows = [
        [
            "agent",
            _fmt_statistic("Sharpe Ratio", agent.sharpe),
            _fmt(ratio),
            f"{100 * exposure:.1f}",
            f"{agent.changes.mean():.4f}",
            _fmt(judged.psr),
        ],
        [
            f"{REFERENCE}: k = {rule.lags}, {'momentum' if rule.sign > 0 else 'reversion'}",
            _fmt_statistic("Sharpe Ratio", best.sharpe),
            "1.00",
            f"{100 * float(np.mean(best.positions != 0)):.1f}",
            f"{best.changes.mean():.4f}",
            _fmt(stats.probabilistic_sharpe_ratio(stats.sharpe_moments(best.returns))),
        ],
    ]
    lines = [
        "## How close to learnable",
        "",
        *markdown_table(
            ["policy", "Sharpe Ratio", "of the reference", "exposure [%]", "turnover", "PSR"],
            rows,
        ),
        "",
        "The reference trades the sign of the mean of the last k volatility-standardized "
        f"returns (each log return over the root of an exponentially weighted mean, decay "
        f"{REFERENCE_DECAY}, of the earlier squared ones), held over the next bar with the same "
        "costs; k in 1..4 and momentum or reversion are picked on these very bars, so it is "
        "an upper mark of what a simple rule could have made here, not a policy to beat.",
        "",
    ]
    if training is not None and agent.preds:
        heads = AuxHeads.from_labels(market.horizon_labels)
        rows = []
        for head, horizon in zip(heads, market.horizons, strict=True):
            if head.output not in agent.preds:
                continue
            linear = linear_predictions(training, market, config.env.window, horizon)
            linear = linear[: len(agent.targets[head.output])]
            mine = stats.correlation(agent.preds[head.output], agent.targets[head.output])
            best_linear = stats.correlation(linear, agent.targets[head.output])
            reference[f"{head.output}_linear_corr"] = best_linear
            rows.append(
                [head.output, f"{mine:+.3f}", f"{best_linear:+.3f}", _fmt(mine / best_linear)]
            )
        lines += [
            *markdown_table(
                ["head", "correlation", "linear predictor's", "ratio"],
                rows,
            ),
            "",
            "The linear predictor: least squares of the realized return on the same "
            "observation (every feature, position flat), fit on the training bars.",
            "",
        ]
    return lines, reference


def linear_predictions(training, market, window: int, horizon: int) -> np.ndarray:
    """The least-squares linear prediction of the ``horizon``-bar forward return from the
    observation (position flat), fit on ``training``'s decision bars, at ``market``'s."""

    def design(bars) -> tuple[np.ndarray, np.ndarray]:
        rows = np.arange(window, window + bars.decision_bars(window))
        table = compute_features(bars, window, "cpu").observe(torch.from_numpy(rows))
        table = table.numpy().astype(np.float64)
        target = bars.forward_returns(horizon).numpy()[rows]
        target = np.clip(np.nan_to_num(target, nan=0.0, posinf=0.0, neginf=0.0), -1.0, 1.0)
        return np.column_stack([table, np.ones(len(rows))]), target

    x_train, y_train = design(training)
    coef, *_ = np.linalg.lstsq(x_train, y_train, rcond=None)
    x_test, _ = design(market)
    return x_test @ coef


def _significance(
    results: dict[str, Backtest], config: RunConfig, scored: dict[str, Backtest] | None
) -> tuple[dict[str, Significance], dict[str, str]]:
    """Each policy's significance and verdict line (the agent's with its members' interval
    and their record against buy-and-hold, for a population)."""
    returns = {name: r.returns for name, r in results.items()}
    baselines = tuple(name for name in results if name != "agent")
    bars_per_year = results["agent"].bars_per_year
    trials = config.selection.trials
    judged = {
        name: significance(returns, name, baselines, bars_per_year, trials) for name in results
    }
    extra: dict[str, Any] = {}
    if scored is not None:
        members = [n for n in scored if n.startswith("member ")]
        sharpe = np.array([stats.sharpe_for_ranking(scored[m].sharpe) for m in members])
        hold = stats.sharpe_for_ranking(results["buy_and_hold"].sharpe)
        extra = dict(
            interval=stats.bootstrap_ci(sharpe, reps=BOOTSTRAP_REPS, seed=BOOTSTRAP_SEED),
            beats_hold=(int(np.sum(sharpe > hold)), len(members)),
        )
    verdicts = {
        name: verdict_line(j, **(extra if name == "agent" else {})) for name, j in judged.items()
    }
    return judged, verdicts


def _significance_section(judged: dict[str, Significance], trials: int, bars: int) -> list[str]:
    rows = [
        [
            name,
            _fmt_statistic("Sharpe Ratio", j.sharpe),
            _fmt(j.psr),
            _fmt(j.dsr),
            _fmt(j.min_track_record),
            _fmt(j.dsr_vs_hold),
            f"{_fmt(j.dsr_vs_best)} ({j.best_baseline})" if j.best_baseline else "n/a",
            "yes" if j.evidence else "no",
        ]
        for name, j in judged.items()
    ]
    header = [
        "policy",
        "Sharpe Ratio",
        "PSR",
        "DSR",
        "min. track record [bars]",
        "DSR vs buy & hold",
        "DSR vs best other baseline",
        "evidence of an edge",
    ]
    return [
        "## Significance",
        "",
        *markdown_table(header, rows),
        "",
        f"One window of {bars:,} bars, {trials} configuration(s) tried "
        "(selection.trials): a single held-out period says little about another; "
        "pyppo-walkforward retrains over several. An edge is claimed only when the DSR of the "
        f"active returns against buy-and-hold and against the best other baseline are both "
        f">= {EVIDENCE_DSR}. {' '.join(stats.SIGNIFICANCE_CONVENTIONS.split())}",
        "",
    ]


def plain_json(value: Any) -> Any:
    """``value`` with NaN and inf as None (strict JSON) and numpy scalars as floats."""
    if isinstance(value, dict):
        return {str(k): plain_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_json(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    return value


def _write_equity_csv(path: Path, results: dict[str, Backtest]) -> None:
    times = results["agent"].timestamps
    # The columns of earlier versions keep their places; the newer baselines follow.
    first = ("agent", "buy_and_hold", "random")
    frame = pd.DataFrame({name: results[name].equity for name in first}, index=times)
    frame["position"] = results["agent"].positions
    for name, result in results.items():
        if name not in first:
            frame[name] = result.equity
    frame.index.name = "timestamp"
    frame.to_csv(path)


def _write_trades_csv(path: Path, times: pd.DatetimeIndex, trades: stats.Trades) -> None:
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["entry", "exit", "direction", "bars", "return_pct", "open"])
        for i in range(len(trades)):
            writer.writerow(
                [
                    times[trades.entry[i]],
                    times[trades.exit[i]],
                    "long" if trades.direction[i] > 0 else "short",
                    int(trades.exit[i] - trades.entry[i] + 1),
                    f"{100 * trades.returns[i]:.6f}",
                    bool(trades.is_open[i]),
                ]
            )


# Fewer traded bars than this give a Sharpe ratio too noisy to mean much.
MIN_BARS_FOR_STATISTICS = 100


def _warnings(agent: Backtest) -> list[str]:
    """The report's warnings about its own numbers: dirty bars, too few bars."""
    lines = []
    repaired = int(agent.repaired.sum())
    if repaired:
        lines.append(
            f"- **warning: {repaired:,} held-out bars had a non-finite or out-of-range price "
            "move** (zero or missing prices, spikes beyond a log return of ±1), repaired or "
            "clamped as in training. No policy trades at such a bar's price: positions are "
            "held through it and its move is booked at the next real price."
        )
    n = len(agent.log_returns)
    if n < MIN_BARS_FOR_STATISTICS:
        lines.append(
            f"- **warning: only {n} traded bars**: too few for the Sharpe ratio and the other "
            f"statistics to mean much (take at least {MIN_BARS_FOR_STATISTICS})."
        )
    return lines


def _label(key: str, bars: int) -> str:
    """A statistic's row label, the Sharpe ratio's flagged when the bars are too few."""
    if key == "Sharpe Ratio" and bars < MIN_BARS_FOR_STATISTICS:
        return f"{key} (only {bars} bars: unreliable)"
    return key


def _fmt_statistic(key: str, value: float) -> str:
    """A statistic for the table: a NaN Sharpe ratio means the policy never traded."""
    if key == "Sharpe Ratio" and isinstance(value, float) and math.isnan(value):
        return "no trades"
    return _fmt(value)


def _fmt(value: float) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "inf" if value > 0 else "-inf"
    integral = float(value).is_integer() and abs(value) < 1e15
    return f"{value:,.0f}" if integral or abs(value) >= 1000 else f"{value:.2f}"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join(["---"] * len(header)) + " |",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]
