"""The acceptance run of the trainer: the documented default command learns the planted
edge of the synthetic market, and the evaluation shows it."""

from __future__ import annotations

import csv

import pytest

from pyppo.cli import evaluate_run, train_main

# End to end: the README's default training run.
pytestmark = pytest.mark.slow


def test_default_run_beats_buy_and_hold_and_random(tmp_path):
    run = tmp_path / "run"
    # Exactly the README's training command (on the CPU), about half a minute here.
    assert train_main(["--epochs", "10", "--run-dir", str(run), "--quiet", "--device", "cpu"]) == 0
    metrics, report = evaluate_run(run, device="cpu")

    agent, hold, random = metrics["agent"], metrics["buy_and_hold"], metrics["random"]
    assert agent["sharpe"] > hold["sharpe"]
    assert agent["sharpe"] > random["sharpe"]
    assert agent["pred_1h_corr"] > 0.0
    for name in (
        "report.md",
        "equity.png",
        "predictions.png",
        "training.png",
        "best.pt",
        "checkpoint.pt",
        "metrics.csv",
    ):
        assert (run / name).is_file(), name
    assert "| agent |" in report.read_text()
    rows = list(csv.DictReader(open(run / "metrics.csv")))
    assert len(rows) == 20 and rows[-1]["epoch"] == "10"
