"""pyppo-sweep: a tiny study end to end (SQLite in a temp dir), continued, shared by two
workers; a non-finite trial pruned with its reason; the test bars refused."""

from __future__ import annotations

import csv

import optuna
import pandas as pd
import pytest
from helpers import SMALL_RUN

from pyppo.cli import UserError, resolve_config, sweep_main
from pyppo.cli.sweep import Sweep, check_not_test, read_space
from pyppo.config import RunConfig, apply
from pyppo.training import NonFiniteParametersError, PPOTrainer

SPACE = """
[ppo.lr]
low = 1e-5
high = 1e-3
log = true

[ppo.entropy_coef]
choices = [0.0, 0.01]
"""
TINY = [*SMALL_RUN, "--seeds", "2", "--trial-steps", "2048"]  # one epoch: one validation


def trials_of(path):
    with open(path) as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_a_tiny_sweep_runs_continues_and_is_shared_by_two_workers(tmp_path, capsys):
    space = tmp_path / "space.toml"
    space.write_text(SPACE)
    run = tmp_path / "sweep"
    argv = [*TINY, "--space", str(space), "--run-dir", str(run)]
    assert sweep_main([*argv, "--trials", "3"]) == 0
    out = capsys.readouterr().out
    assert "trials done 3" in out and "recheck of trial" in out
    assert len(trials_of(run / "trials.csv")) == 3
    assert (run / "history.png").stat().st_size > 0
    config, _, _ = resolve_config(["--config", str(run / "best.toml")])
    assert config.selection.trials == 3 and config.selection.tuned_until is not None
    assert 1e-5 <= config.ppo.lr <= 1e-3 and config.ppo.entropy_coef in (0.0, 0.01)
    assert config.env.num_envs == 8  # fixed by a flag, so never searched

    # Running it again continues the study; two workers share it without duplicates.
    assert sweep_main([*argv, "--trials", "2", "--workers", "2"]) == 0
    rows = trials_of(run / "trials.csv")
    assert [int(r["trial"]) for r in rows] == list(range(5))
    assert all(r["state"] == "COMPLETE" for r in rows)
    again, _, _ = resolve_config(["--config", str(run / "best.toml")])
    assert again.selection.trials == 5


def test_a_trial_that_goes_non_finite_is_pruned_with_its_reason(tmp_path, monkeypatch):
    def explode(self, *args, **kwargs):
        raise NonFiniteParametersError("non-finite parameters after update 1 (member 1)")

    monkeypatch.setattr(PPOTrainer, "train", explode)
    config, _, _ = resolve_config([*SMALL_RUN, "--run-dir", str(tmp_path)])
    sweep = Sweep(tmp_path, config, read_space_text(tmp_path), trial_steps=64)
    study = optuna.create_study(direction="maximize")
    study.optimize(sweep.objective, n_trials=1)
    trial = study.trials[0]
    assert trial.state == optuna.trial.TrialState.PRUNED
    assert "non-finite" in trial.user_attrs["pruned_reason"]


def read_space_text(folder):
    path = folder / "space.toml"
    path.write_text(SPACE)
    return read_space(path)


def test_the_test_bars_are_refused_and_a_bad_space_is_a_clear_error(tmp_path):
    with pytest.raises(UserError, match="inside the held-out test bars"):
        check_not_test(pd.Timestamp("2022-01-02"), pd.Timestamp("2022-01-01"))
    check_not_test(pd.Timestamp("2021-12-31"), pd.Timestamp("2022-01-01"))
    config = apply(RunConfig(), {"data": {"bars": 3000}})
    ranges = Sweep(tmp_path, config, {}, 64).bars()[2]
    assert ranges["scored_on"][1] < ranges["never_scored"][0]
    bad = tmp_path / "bad.toml"
    bad.write_text("[ppo.lr]\nlow = 1e-5\n")
    with pytest.raises(UserError, match="needs low and high, or choices"):
        read_space(bad)
    bad.write_text("[ppo.learning_rate]\nchoices = [1e-4]\n")
    with pytest.raises(UserError, match="unknown setting ppo.learning_rate"):
        read_space(bad)
