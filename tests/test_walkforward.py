"""Walk-forward retraining: the purge (a property over sizes and horizons), the run end to end
with its report, and a resume that retrains nothing finished."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import SMALL_RUN
from hypothesis import given, settings
from hypothesis import strategies as st

from pyppo.cli import walkforward_main
from pyppo.evaluation.walkforward import WalkForwardSettings, beat_share, plan_windows


@settings(max_examples=300, deadline=None)
@given(
    n_bars=st.integers(200, 20_000),
    obs_window=st.integers(1, 120),
    horizon=st.integers(0, 200),
    windows=st.integers(1, 8),
    embargo=st.integers(0, 50),
    sliding=st.booleans(),
    test_fraction=st.floats(0.05, 0.9),
    validation_fraction=st.floats(0.05, 0.5),
)
def test_no_training_or_validation_label_reaches_the_next_part(
    n_bars, obs_window, horizon, windows, embargo, sliding, test_fraction, validation_fraction
):
    layout = WalkForwardSettings(
        windows=windows,
        span="sliding" if sliding else "expanding",
        test_fraction=test_fraction,
        validation_fraction=validation_fraction,
        embargo=embargo,
    )
    try:
        planned = plan_windows(n_bars, obs_window, horizon, layout)
    except ValueError as err:
        assert "too few" in str(err)
        return
    h = max(horizon, 1)
    assert len(planned) == windows
    for w, nxt in zip(planned, planned[1:], strict=False):
        assert w.test[1] == nxt.test[0]  # contiguous test windows
    assert len({w.test[1] - w.test[0] for w in planned}) == 1 and planned[-1].test[1] <= n_bars - h
    for w in planned:
        # As the env trains on a span: decisions t >= max(lo, window) with t + h < hi.
        train = range(max(w.train[0], obs_window), w.train[1] - h)
        assert len(train) > 0 and len(range(*w.validation)) >= 2
        # Every label of a decision t reaches at most t + h (the reward: t + 1).
        assert train[-1] + h < w.validation[0] - embargo
        assert w.validation[1] - 1 + h < w.test[0] - embargo
        assert w.validation[0] >= w.train[1]


def test_too_few_bars_are_a_clear_error():
    with pytest.raises(ValueError, match="too few for 8 walk-forward windows"):
        plan_windows(300, 60, 24, WalkForwardSettings(windows=8))


def test_beat_share_counts_runs_per_window():
    agent = np.array([[1.0, 3.0], [0.0, 5.0]])
    share, (lo, hi) = beat_share(agent, np.array([2.0, 1.0]))
    assert share == 0.5 and lo <= share <= hi


WALK = [*SMALL_RUN, "--epochs", "1", "--windows", "2", "--seeds", "2", "--quiet"]


@pytest.mark.slow
def test_a_walk_forward_runs_end_to_end_and_resumes_without_retraining(tmp_path, capsys):
    run = tmp_path / "wf"
    assert walkforward_main([*WALK, "--run-dir", str(run)]) == 0
    for name in ("report.md", "report.json", "equity.csv", "walkforward.png", "windows.png"):
        assert (run / name).stat().st_size > 0, name
    text = (run / "report.md").read_text()
    assert text.split("\n")[2].startswith("Verdict: ")
    summary = json.loads((run / "report.json").read_text())
    assert [w["window"] for w in summary["windows"]] == [1, 2]
    assert all(len(w["seed_sharpes"]) == 2 for w in summary["windows"])
    assert set(summary["beats"]) == {
        "buy_and_hold",
        "random",
        "ma_cross_10_30",
        "momentum_3",
        "reversion_3",
    }
    assert summary["verdicts"]["agent"] == summary["verdict"]
    equity = np.loadtxt(run / "equity.csv", delimiter=",", skiprows=1, usecols=(1, 2))
    first, last = summary["windows"][0]["test"][0], summary["windows"][1]["test"][1]
    assert len(equity) == last - first  # the test windows, concatenated

    # An interrupted walk: window 2 never finished. The resume reads window 1 back.
    kept = {p: p.stat().st_mtime_ns for p in (run / "window_1").iterdir()}
    (run / "window_2" / "test.npz").unlink()
    (run / "report.md").unlink()
    capsys.readouterr()
    assert walkforward_main(["--resume", "--run-dir", str(run)]) == 0
    out = capsys.readouterr().out
    assert "window 1: done earlier, read back" in out and "window 2: resuming" in out
    assert {p: p.stat().st_mtime_ns for p in (run / "window_1").iterdir()} == kept
    again = json.loads((run / "report.json").read_text())
    assert again["windows"][0] == summary["windows"][0]
    assert again["windows"][1] == summary["windows"][1]  # its checkpoint was complete

    # A second walk into the same dir, or a resume with other settings, is refused.
    assert walkforward_main([*WALK, "--run-dir", str(run)]) == 2
    assert "already holds a walk-forward" in capsys.readouterr().err
    assert walkforward_main(["--resume", "--run-dir", str(run), "--epochs", "3"]) == 2
    assert "cannot resume with other settings (epochs)" in capsys.readouterr().err
