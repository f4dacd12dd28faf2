"""report.md and PNG plots for a trained agent (what ``pyppo-eval`` writes)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from pyppo.config import RunConfig
from pyppo.evaluation import Backtest, backtest
from pyppo.metrics import nan_events_by_epoch, nan_events_table

POLICIES = ("agent", "buy_and_hold", "random")


def run_backtests(model: nn.Module, market, config: RunConfig, device: Any) -> dict[str, Backtest]:
    common = dict(
        window=config.env.window,
        fee=config.env.fee,
        allow_short=config.env.allow_short,
        device=device,
        seed=config.ppo.seed,
    )
    return {
        "agent": backtest(market, model, **common),
        "buy_and_hold": backtest(market, "buy_and_hold", **common),
        "random": backtest(market, "random", **common),
    }


def write_report(
    run_dir: Path,
    model: nn.Module,
    market,
    config: RunConfig,
    state: dict[str, Any],
    *,
    device: Any = "cpu",
) -> tuple[dict[str, dict[str, float]], Path]:
    """Backtest, then write ``report.md`` and the plots into ``run_dir``; returns the
    metrics by policy and the report's path."""
    results = run_backtests(model, market, config, device)
    metrics = {name: r.metrics() for name, r in results.items()}
    history = state["trainer"]["history"]
    plots = _plots(run_dir, market, results, history)

    index = market.frame.index
    lines = [
        "# pyppo evaluation",
        "",
        f"- checkpoint: update {state['trainer']['update']}, "
        f"{state['trainer']['env_steps']:,} env steps",
        f"- held-out bars: {len(market):,} ({index[0]} to {index[-1]}, bar {market.bar_interval})",
        f"- fee: {config.env.fee} per unit of position change",
        "",
        "## Backtest",
        "",
        "| policy | total return | Sharpe (annualized) | max drawdown | turnover/bar | hit rate |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name in POLICIES:
        m = metrics[name]
        lines.append(
            f"| {name} | {m['total_return']:+.2%} | {m['sharpe']:.2f} | "
            f"{m['max_drawdown']:.2%} | {m['turnover']:.3f} | {m['hit_rate']:.2%} |"
        )
    agent = metrics["agent"]
    lines += [
        "",
        "## Auxiliary heads (held-out)",
        "",
        "| head | correlation with realized | directional accuracy |",
        "| --- | ---: | ---: |",
    ]
    for name in results["agent"].preds:
        lines.append(
            f"| {name} | {agent[f'{name}_corr']:+.3f} | {agent[f'{name}_direction_acc']:.2%} |"
        )
    lines += [
        "",
        "## NaN/inf events during training",
        "",
        "```",
        nan_events_table(history),
        "```",
        "",
        "## Plots",
        "",
    ]
    lines += [f"![{p.stem}]({p.name})" for p in plots]
    path = run_dir / "report.md"
    path.write_text("\n".join(lines) + "\n")
    return metrics, path


def _plots(run_dir: Path, market, results: dict[str, Backtest], history: list[dict]) -> list[Path]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: report.md without plots (pip install matplotlib)")
        return []
    paths = []

    fig, ax = plt.subplots(figsize=(10, 4))
    for name in POLICIES:
        ax.plot(results[name].equity, label=name)
    ax.set(title="Equity on held-out bars (fees included)", xlabel="bar", ylabel="equity")
    ax.legend()
    paths.append(_save(fig, run_dir / "equity.png"))

    agent = results["agent"]
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, (name, pred) in zip(axes, agent.preds.items(), strict=False):
        ax.scatter(agent.targets[name.removeprefix("pred_")], pred, s=2, alpha=0.3)
        ax.set(title=f"{name} vs realized", xlabel="realized return", ylabel="predicted return")
    paths.append(_save(fig, run_dir / "predictions.png"))

    if history:
        fig, axes = plt.subplots(1, 3, figsize=(14, 4))
        steps = [r["env_steps"] for r in history]
        axes[0].plot(steps, [r["rollout/mean_episode_return"] for r in history])
        axes[0].set(title="mean episode return", xlabel="env steps")
        losses = [k for k in history[0] if k.startswith("loss/") and k != "loss/entropy"]
        for key in losses:
            axes[1].plot(steps, [r.get(key, np.nan) for r in history], label=key)
        axes[1].set(title="losses", xlabel="env steps", yscale="symlog")
        axes[1].legend(fontsize=7)
        per_epoch = nan_events_by_epoch(history)
        epochs = sorted(per_epoch)
        bottom = np.zeros(len(epochs))
        for kind in next(iter(per_epoch.values()), {}):
            counts = np.array([per_epoch[e][kind] for e in epochs], dtype=float)
            axes[2].bar(epochs, counts, bottom=bottom, label=kind)
            bottom += counts
        axes[2].set(title="NaN/inf events per epoch", xlabel="epoch")
        axes[2].legend(fontsize=7)
        paths.append(_save(fig, run_dir / "training.png"))
    return paths


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path
