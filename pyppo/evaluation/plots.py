"""The report's figures, made to be read at a glance: few ticks with thousands separators, no
offset or power-of-ten axis labels, one panel per quantity and scale, and a sentence instead
of an empty panel.

Each function returns a matplotlib ``Figure`` (the Agg backend: no display needed); the
report saves them as PNGs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from pyppo.evaluation.baselines import DEFAULT_BASELINES
from pyppo.heads import AuxHeads
from pyppo.metrics import VALIDATION_SHARPE, nan_events_by_epoch

# The agent and the baselines (of their default lengths), one colour each everywhere.
COLORS = dict(
    zip(
        ("agent", *DEFAULT_BASELINES.names),
        ("tab:blue", "tab:gray", "tab:orange", "tab:green", "tab:red", "tab:purple"),
        strict=True,
    )
)
NO_EVENTS = "no NaN/inf events"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def readable(ax: Any, *, x_integer: bool = False, percent: bool = False) -> None:
    """Few ticks, thousands separators, no offset text on both axes of ``ax``."""
    from matplotlib.ticker import FuncFormatter, MaxNLocator

    def number(value: float, _: object) -> str:
        if percent:
            return f"{value:.0%}" if abs(value) >= 0.01 or value == 0 else f"{value:.1%}"
        if value == 0 or abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.3g}"

    if not _is_date_axis(ax.xaxis):
        ax.xaxis.set_major_locator(MaxNLocator(5, integer=x_integer))
        ax.xaxis.set_major_formatter(
            FuncFormatter(lambda v, _: f"{v:,.0f}" if x_integer or abs(v) >= 1000 else f"{v:.3g}")
        )
    ax.yaxis.set_major_locator(MaxNLocator(5))
    ax.yaxis.set_major_formatter(FuncFormatter(number))
    ax.grid(alpha=0.3)


def epoch_ticks(ax: Any, epochs: Sequence[int]) -> None:
    """Whole epochs on the x axis: each one when they are few."""
    from matplotlib.ticker import FixedLocator, MaxNLocator

    ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    ax.xaxis.set_major_locator(
        FixedLocator(sorted(set(epochs))) if len(set(epochs)) <= 8 else MaxNLocator(6, integer=True)
    )


def _is_date_axis(axis: Any) -> bool:
    import matplotlib.dates as mdates

    return isinstance(
        axis.get_major_formatter(), (mdates.ConciseDateFormatter, mdates.AutoDateFormatter)
    )


def _dates(ax: Any) -> None:
    import matplotlib.dates as mdates

    locator = mdates.AutoDateLocator(maxticks=6)
    ax.xaxis.set_major_locator(locator)
    ax.xaxis.set_major_formatter(mdates.ConciseDateFormatter(locator))


def equity_figure(timestamps: Any, equity: Mapping[str, np.ndarray]) -> Any:
    """Equity curves of the policies (fees included) over their drawdown below the peak."""
    plt = _pyplot()
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(10, 6), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]}
    )
    for name, curve in equity.items():
        top.plot(timestamps, curve, label=name, color=COLORS.get(name), lw=1.2)
        peak = np.maximum.accumulate(np.concatenate([[1.0], curve]))[1:]
        bottom.plot(timestamps, curve / peak - 1.0, color=COLORS.get(name), lw=1.0)
    top.set(title="Equity on held-out bars (fees included)", ylabel="equity (start = 1)")
    top.legend(loc="upper left")
    bottom.set(ylabel="drawdown")
    for ax in (top, bottom):
        _dates(ax)
        readable(ax, percent=ax is bottom)
    fig.tight_layout()
    return fig


def weights_figure(weights: Any) -> Any:
    """Each symbol's weight at every bar (a ``(timestamps, symbols)`` DataFrame): one row per
    symbol, long in blue, short in red, flat white."""
    plt = _pyplot()
    from matplotlib.dates import date2num

    symbols = list(weights.columns)
    fig, ax = plt.subplots(figsize=(10, 1.2 + 0.25 * len(symbols)))
    limit = float(np.abs(weights.to_numpy()).max()) or 1.0
    times = date2num(weights.index.to_pydatetime())
    image = ax.imshow(
        weights.to_numpy().T,
        aspect="auto",
        interpolation="nearest",
        cmap="RdBu",
        vmin=-limit,
        vmax=limit,
        extent=(times[0], times[-1], len(symbols) - 0.5, -0.5),
    )
    ax.set_yticks(range(len(symbols)), symbols)
    _dates(ax)
    ax.set(title="The agent's weight in each symbol on held-out bars (share of equity)")
    fig.colorbar(image, ax=ax, pad=0.01)
    fig.tight_layout()
    return fig


def walkforward_figure(
    timestamps: Any, equity: Mapping[str, np.ndarray], boundaries: Sequence[Any]
) -> Any:
    """Out-of-sample equity of the agent and the baselines over the concatenated test
    windows, each window's start marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(10, 5))
    for name, curve in equity.items():
        width = 1.8 if name == "agent" else 1.0
        ax.plot(timestamps, curve, label=name, color=COLORS.get(name), lw=width)
    for k, start in enumerate(boundaries):
        ax.axvline(start, color="black", lw=0.8, ls=":", alpha=0.7)
        ax.annotate(
            f"window {k + 1}",
            (start, 0),
            xycoords=("data", "axes fraction"),
            xytext=(3, 4),
            textcoords="offset points",
            fontsize=8,
        )
    ax.set(
        title="Walk-forward: out-of-sample equity (costs included)",
        ylabel="equity (start = 1)",
    )
    ax.legend(loc="upper left", fontsize=8)
    _dates(ax)
    readable(ax)
    fig.tight_layout()
    return fig


def window_sharpes_figure(
    agent: np.ndarray, baselines: Mapping[str, np.ndarray], members_label: str = "seeds"
) -> Any:
    """Each window's Sharpe ratio of every seed (dots) against the baselines' (short lines).

    :param agent: (W, S) Sharpe per window and seed.
    :param baselines: name -> (W,) Sharpe per window.
    """
    plt = _pyplot()
    windows, seeds = agent.shape
    fig, ax = plt.subplots(figsize=(max(6, 1.6 * windows + 3), 4.5))
    x = np.arange(1, windows + 1)
    jitter = np.linspace(-0.12, 0.12, seeds) if seeds > 1 else np.zeros(1)
    for k in range(seeds):
        ax.scatter(
            x + jitter[k],
            agent[:, k],
            color=COLORS["agent"],
            s=22,
            zorder=3,
            label=f"agent ({members_label})" if k == 0 else None,
        )
    for name, values in baselines.items():
        ax.hlines(values, x - 0.3, x + 0.3, color=COLORS.get(name), lw=2, label=name)
    ax.axhline(0, color="black", lw=0.6)
    ax.set(title="Sharpe ratio per test window", xlabel="test window", ylabel="Sharpe ratio")
    ax.set_xticks(x)
    ax.legend(loc="best", fontsize=8)
    readable(ax, x_integer=True)
    ax.set_xticks(x)
    fig.tight_layout()
    return fig


def predictions_figure(preds: Mapping[str, np.ndarray], targets: Mapping[str, np.ndarray]) -> Any:
    """Each return prediction against the realized return it predicts (simple returns; both
    keyed by the prediction's name)."""
    from matplotlib.ticker import FuncFormatter

    plt = _pyplot()
    fig, axes = plt.subplots(1, max(len(preds), 1), figsize=(10, 4), squeeze=False)
    for ax, (name, pred) in zip(axes[0], preds.items(), strict=False):
        ax.scatter(targets[name], pred, s=2, alpha=0.3)
        # Equal scales and the line of perfect predictions: how far from it is what counts.
        values = np.concatenate([np.asarray(targets[name]), np.asarray(pred)])
        reach = float(np.nanmax(np.abs(values))) if values.size else 0.0
        reach = reach * 1.05 if reach > 0 else 0.01
        ax.plot([-reach, reach], [-reach, reach], color="gray", lw=0.8, ls="--", label="y = x")
        ax.set(xlim=(-reach, reach), ylim=(-reach, reach), aspect="equal")
        ax.set(title=f"{name} vs realized", xlabel="realized return", ylabel="predicted return")
        ax.legend(loc="upper left", fontsize=8)
        readable(ax, percent=True)
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:.1%}"))
    fig.tight_layout()
    return fig


def _smooth(values: np.ndarray, width: int) -> np.ndarray:
    if len(values) < width or width < 2:
        return values
    kernel = np.ones(width) / width
    return np.convolve(values, kernel, mode="valid")


def training_figure(
    history: Sequence[dict[str, float]], buy_and_hold_sharpe: float | None, heads: AuxHeads
) -> Any:
    """Learning at a glance: the greedy policy's validation Sharpe per epoch against
    buy-and-hold, the smoothed per-step reward, NaN/inf events per epoch, and the losses
    (``heads``' auxiliary losses too), one panel each."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, 3, figsize=(14, 7))
    steps = np.array([r["env_steps"] for r in history], dtype=float)

    ax = axes[0, 0]
    validated = [
        (r["epoch"], r[VALIDATION_SHARPE])
        for r in history
        if r.get(VALIDATION_SHARPE) == r.get(VALIDATION_SHARPE)
    ]
    if validated:
        epochs, sharpe = zip(*validated, strict=True)
        ax.plot(epochs, sharpe, marker="o", color=COLORS["agent"], label="agent (greedy)")
        if buy_and_hold_sharpe is not None:
            ax.axhline(
                buy_and_hold_sharpe, color=COLORS["buy_and_hold"], ls="--", label="buy and hold"
            )
        ax.legend(loc="best", fontsize=8)
    else:
        ax.text(
            0.5, 0.5, "no validation backtests", ha="center", va="center", transform=ax.transAxes
        )
    ax.set(title="validation Sharpe per epoch", xlabel="epoch")
    readable(ax, x_integer=True)
    if validated:
        epoch_ticks(ax, epochs)

    ax = axes[0, 1]
    reward = np.array([r["rollout/mean_step_reward"] for r in history], dtype=float)
    width = max(1, len(reward) // 10)
    ax.plot(steps, reward, color="lightgray", lw=0.8, label="per update")
    if width > 1:
        smoothed = _smooth(reward, width)
        ax.plot(
            steps[len(steps) - len(smoothed) :],
            smoothed,
            color=COLORS["agent"],
            label=f"mean of {width} updates",
        )
    ax.set(title="reward per step (training)", xlabel="env steps")
    ax.legend(loc="best", fontsize=8)
    readable(ax, x_integer=True)

    ax = axes[0, 2]
    per_epoch = nan_events_by_epoch(history)
    epochs = sorted(per_epoch)
    total = sum(sum(counts.values()) for counts in per_epoch.values())
    if total == 0:
        ax.text(0.5, 0.5, NO_EVENTS, ha="center", va="center", transform=ax.transAxes, fontsize=12)
        ax.set_xticks([])
        ax.set_yticks([])
    else:
        bottom = np.zeros(len(epochs))
        for kind in next(iter(per_epoch.values())):
            counts = np.array([per_epoch[e][kind] for e in epochs], dtype=float)
            ax.bar(epochs, counts, bottom=bottom, label=kind)
            bottom += counts
        ax.legend(loc="best", fontsize=8)
        readable(ax, x_integer=True)
        epoch_ticks(ax, epochs)
    ax.set(title="NaN/inf events per epoch (all repaired)", xlabel="epoch")

    losses = [("loss/policy", "policy loss"), ("loss/value", "value loss")]
    for ax, (key, title) in zip(axes[1, :2], losses, strict=True):
        ax.plot(steps, [r.get(key, np.nan) for r in history], color=COLORS["agent"])
        ax.set(title=title, xlabel="env steps")
        readable(ax, x_integer=True)
    ax = axes[1, 2]
    aux = [head for head in heads if history and head.loss_column in history[0]]
    for head in aux:
        ax.plot(steps, [r.get(head.loss_column, np.nan) for r in history], label=head.module)
    ax.set(title="auxiliary losses (1 = predicting the mean)", xlabel="env steps")
    if aux:
        ax.legend(loc="best", fontsize=8)
    readable(ax, x_integer=True)
    fig.tight_layout()
    return fig


def save(fig: Any, path: Any) -> Any:
    """Save ``fig`` as a PNG at ``path`` (whatever its suffix) and close it."""
    fig.savefig(path, dpi=110, format="png")
    _pyplot().close(fig)
    return path
