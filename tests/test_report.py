"""The evaluation report: statistics anyone can recompute from equity.csv and trades.csv, that
agree with an independent library, sub-periods, and figures a person reads at a glance."""

from __future__ import annotations

import json
import math

import numpy as np
import pandas as pd
import pytest
from helpers import SMALL_RUN

from pyppo import stats, synthetic_market
from pyppo.cli import eval_main, evaluate_run, train_main
from pyppo.data import bars_per_year
from pyppo.evaluation.plots import NO_EVENTS, predictions_figure, training_figure
from pyppo.heads import DEFAULT_AUX_LABELS, AuxHeads

# End to end: trained runs, evaluated.
pytestmark = pytest.mark.slow

SMALL = [*SMALL_RUN, "--bars", "4000"]


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    run = tmp_path_factory.mktemp("report") / "run"
    assert train_main([*SMALL, "--run-dir", str(run), "--epochs", "2"]) == 0
    return run


DEFAULT_HEADS = AuxHeads.from_labels(DEFAULT_AUX_LABELS)


def test_statistics_recompute_from_equity_csv_and_agree_with_empyrical(run):
    empyrical = pytest.importorskip("empyrical")
    metrics, report = evaluate_run(run, device="cpu")
    equity = pd.read_csv(run / "equity.csv", index_col="timestamp", parse_dates=True)
    assert list(equity.columns) == [
        "agent",
        "buy_and_hold",
        "random",
        "position",
        "ma_cross_10_30",
        "momentum_3",
        "reversion_3",
    ]
    returns = equity["agent"].pct_change().to_numpy(copy=True)
    returns[0] = equity["agent"].iloc[0] - 1.0
    per_year = bars_per_year(equity.index)  # hourly bars without gaps: 8766
    agent = metrics["agent"]
    assert agent["Sharpe Ratio"] == pytest.approx(
        empyrical.sharpe_ratio(returns, annualization=per_year), rel=0.01
    )
    assert agent["Sortino Ratio"] == pytest.approx(
        empyrical.sortino_ratio(returns, annualization=per_year), rel=0.01
    )
    assert agent["Max. Drawdown [%]"] / 100 == pytest.approx(
        empyrical.max_drawdown(returns), rel=0.01
    )
    assert agent["CAGR [%]"] / 100 == pytest.approx(
        empyrical.cagr(returns, annualization=per_year), rel=0.01
    )
    # trades.csv holds every trade of the agent.
    trades = pd.read_csv(run / "trades.csv")
    assert len(trades) == agent["# Trades"]
    assert set(trades["direction"]) <= {"long", "short"}
    text = report.read_text()
    for key in stats.SUMMARY_KEYS:
        assert f"| {key} |" in text, key
    assert "Conventions:" in text and "ddof=1" in text
    # The verdict first, then costs, turnover and significance for every policy.
    assert text.split("\n")[2].startswith("Verdict: ")
    assert "fill: close" in text and "## Trading and costs" in text and "## Significance" in text
    summary = json.loads((run / "report.json").read_text())
    assert summary["verdict"] == text.split("\n")[2]
    assert set(summary["verdicts"]) == set(equity.columns) - {"position"}
    assert all(v.startswith("Verdict: ") for v in summary["verdicts"].values())
    assert summary["significance"]["agent"]["trials"] == 1
    # How close to learnable: the reference rule and the heads' linear predictor.
    assert "## How close to learnable" in text and "reference (k and sign picked" in text
    assert "linear predictor's" in text and metrics["reference"]["sharpe"] > 0


def test_folds_on_the_default_run_and_on_an_hourly_csv(run, tmp_path, capsys):
    assert eval_main([str(run), "--device", "cpu", "--folds", "4"]) == 0
    text = (run / "report.md").read_text()
    assert "4 held-out sub-periods (one model" in text
    assert all(f"\n| {k} | " in text for k in range(1, 5)) and "| mean ± std |" in text

    frame = synthetic_market(3000, seed=5).frame
    path = tmp_path / "hourly.csv"
    frame.to_csv(path)
    csv_run = tmp_path / "csv_run"
    assert (
        train_main([*SMALL, "--run-dir", str(csv_run), "--total-steps", "512", "--data", str(path)])
        == 0
    )
    assert eval_main([str(csv_run), "--device", "cpu", "--folds", "4"]) == 0
    assert "| mean ± std |" in (csv_run / "report.md").read_text()
    assert eval_main([str(csv_run), "--device", "cpu", "--folds", "-1"]) == 2


def overlapping_labels(fig) -> list[str]:
    """Tick labels that touch another label of the same axis (from the rendered extents)."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    bad = []
    for ax in fig.axes:
        for axis in (ax.xaxis, ax.yaxis):
            boxes = [
                (t.get_text(), t.get_window_extent(renderer))
                for t in axis.get_ticklabels()
                if t.get_visible() and t.get_text()
            ]
            for (a, box_a), (b, box_b) in zip(boxes, boxes[1:], strict=False):
                if box_a.overlaps(box_b):
                    bad.append(f"{ax.get_title()}: {a!r} / {b!r}")
            texts = [a for a, _ in boxes]
            if len(texts) != len(set(texts)):
                bad.append(f"{ax.get_title()}: repeated labels {texts}")
    return bad


def test_figures_read_at_a_glance(run):
    evaluate_run(run, device="cpu")
    history = [dict(r) for r in pd.read_csv(run / "metrics.csv").to_dict("records")]
    for row in history:
        row["validation/sharpe"] = float(row["validation/sharpe"])
    fig = training_figure(history, buy_and_hold_sharpe=1.0, heads=DEFAULT_HEADS)
    assert overlapping_labels(fig) == []
    for ax in fig.axes:
        assert ax.xaxis.get_offset_text().get_text() == ""
        assert ax.yaxis.get_offset_text().get_text() == ""
    nan_panel = next(ax for ax in fig.axes if ax.get_title().startswith("NaN/inf"))
    assert NO_EVENTS in [t.get_text() for t in nan_panel.texts]  # a clean run says so
    for name in ("equity.png", "predictions.png", "training.png"):
        assert (run / name).stat().st_size > 10_000


def test_a_run_with_bad_ticks_shows_its_events(tmp_path):
    run = tmp_path / "run"
    assert (
        train_main([*SMALL, "--run-dir", str(run), "--total-steps", "512", "--bad-ticks", "0.01"])
        == 0
    )
    history = pd.read_csv(run / "metrics.csv").to_dict("records")
    fig = training_figure(history, None, DEFAULT_HEADS)
    nan_panel = next(ax for ax in fig.axes if ax.get_title().startswith("NaN/inf"))
    assert NO_EVENTS not in [t.get_text() for t in nan_panel.texts]
    assert len(nan_panel.patches) > 0 and not math.isnan(nan_panel.get_ylim()[1])
    assert overlapping_labels(fig) == []


def test_large_step_counts_get_thousands_separators():
    history = [
        {
            "epoch": 1 + i // 10,
            "env_steps": 8192 * (i + 1),
            "validation/sharpe": np.nan,
            "rollout/mean_step_reward": 1e-4 * i,
            "loss/policy": -0.05 + 1e-3 * i,
            "loss/value": 1.1 - 0.01 * i,
            "loss/aux_1h": 1.0,
        }
        for i in range(40)
    ]
    fig = training_figure(history, None, DEFAULT_HEADS)
    fig.canvas.draw()
    labels = [t.get_text() for t in fig.axes[1].xaxis.get_ticklabels() if t.get_text()]
    assert any("," in label for label in labels) and len(labels) <= 7
    assert overlapping_labels(fig) == []


def test_a_bad_ticks_held_out_set_gives_sane_statistics_and_says_so(tmp_path):
    run = tmp_path / "run"
    args = [*SMALL, "--run-dir", str(run), "--total-steps", "512", "--bad-ticks", "0.01"]
    assert train_main(args) == 0
    metrics, report = evaluate_run(run, device="cpu")
    text = report.read_text()
    assert "held-out bars had a non-finite or out-of-range price move" in text
    for policy in ("agent", "buy_and_hold", "random"):
        stats_ = metrics[policy]
        assert -100 <= stats_["Return [%]"] < 1_000, (policy, stats_["Return [%]"])
        assert math.isfinite(stats_["CAGR [%]"]) and abs(stats_["Sharpe Ratio"]) < 20
    for line in text.splitlines():  # no 30-digit numbers in the tables
        if line.startswith("| "):
            cells = [c.strip().replace(",", "") for c in line.split("|")[2:-1]]
            numbers = [c for c in cells if c.lstrip("-").replace(".", "", 1).isdigit()]
            assert all(len(n) < 15 for n in numbers), line


def test_too_few_held_out_bars_are_flagged_beside_the_sharpe(tmp_path):
    run = tmp_path / "run"
    args = [*SMALL_RUN, "--bars", "600", "--window", "20", "--total-steps", "256"]
    assert train_main([*args, "--run-dir", str(run)]) == 0  # 120 held-out bars, 76 traded
    _, report = evaluate_run(run, device="cpu")
    text = report.read_text()
    assert "warning: only 76 traded bars" in text and "Sharpe Ratio (only 76 bars" in text


def test_the_predictions_figure_has_equal_axes_and_the_line_of_perfect_predictions():
    rng = np.random.default_rng(0)
    target = rng.normal(0, 0.01, 500)
    fig = predictions_figure({"pred_1h": 0.3 * target}, {"pred_1h": target})
    ax = fig.axes[0]
    assert ax.get_xlim() == ax.get_ylim()
    assert any(line.get_label() == "y = x" for line in ax.get_lines())
