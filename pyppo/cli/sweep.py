"""``pyppo-sweep``: search training settings with Optuna, scored on validation bars only.

Each trial trains its seeds as one population for a fixed budget of env steps on the training
bars and is scored by the interquartile mean over members of each member's best validation
Sharpe ratio (what ``best.pt`` keeps; a flat policy counts 0). The held-out test bars are
never scored: the study records the bars it scored on, and refuses a layout that would reach
them. The pruner may stop a trial after any epoch; a trial whose training goes non-finite or
fails is pruned with the reason recorded. Before writing the best settings, the top trials
are trained again on seeds the study never used (the winner's curse), and the best of those
goes to ``best.toml``, which carries ``selection.trials`` (the trials tried, for the deflated
Sharpe ratio) and ``selection.tuned_until`` (the last bar scored).

Settings given as flags are fixed and leave the search space; the rest of the space (the
default, :data:`DEFAULT_SPACE`, or ``--space FILE``) is searched. The study lives in
``RUN/study.db`` (SQLite): running the command again continues it; ``--storage URL`` shares
one study between machines; ``--workers N`` runs N local processes on it.
"""

from __future__ import annotations

import argparse
import csv
import logging
import math
import multiprocessing
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pyppo import stats
from pyppo.checkpoint import BEST_CHECKPOINT_CALLBACK
from pyppo.cli.common import (
    UserError,
    check_writable,
    load_data,
    make_env,
    make_model,
    run_cli,
    split_data,
)
from pyppo.cli.train import config_from_args, train_parser
from pyppo.config import RunConfig, apply, format_seeds, get, load_toml
from pyppo.data import Universe
from pyppo.device import resolve_device
from pyppo.evaluation import BestCheckpoint
from pyppo.files import write_text
from pyppo.metrics import VALIDATION_SHARPE
from pyppo.runlock import RunLock
from pyppo.training import NonFiniteParametersError, PPOTrainer, TrainingCallback

STUDY_NAME = "pyppo"
STUDY_FILE = "study.db"
TRIALS_FILE = "trials.csv"
BEST_FILE = "best.toml"
# How many of the best trials are trained again on fresh seeds before one is chosen.
RECHECK_TOP = 3
# Seeds the study never uses: the recheck's, far from any --seeds a user gives.
FRESH_SEED_OFFSET = 10_000

# The default search space: a setting's dotted name -> its range (low, high, and log for a
# log-uniform draw) or its choices.
DEFAULT_SPACE: dict[str, dict[str, Any]] = {
    "ppo.lr": {"low": 3e-5, "high": 3e-3, "log": True},
    "ppo.weight_decay": {"choices": [0.0, 1.0, 5.0, 20.0]},
    "ppo.entropy_coef": {"low": 1e-4, "high": 0.05, "log": True},
    "ppo.clip_epsilon": {"choices": [0.1, 0.2, 0.3]},
    "env.num_envs": {"choices": [64, 128, 256, 512]},
    "ppo.num_steps": {"choices": [32, 64, 128]},
    "ppo.num_minibatches": {"choices": [2, 4, 8, 16]},
    "ppo.num_epochs": {"choices": [2, 4, 8]},
    "ppo.gamma": {"choices": [0.9, 0.95, 0.99]},
    "ppo.gae_lambda": {"choices": [0.8, 0.9, 0.95]},
    "model.hidden_dim": {"choices": [64, 128, 256]},
    "ppo.aux_short_coef": {"low": 1e-3, "high": 1.0, "log": True},
    "ppo.aux_long_coef": {"low": 1e-3, "high": 1.0, "log": True},
    "ppo.max_grad_norm": {"choices": [0.5, 1.0, 5.0]},
}


def _optuna() -> Any:
    try:
        import optuna
    except ImportError:
        raise UserError(
            "pyppo-sweep needs Optuna, which is not installed",
            "pip install 'pyppo[sweep]' (or pip install optuna)",
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # pyppo prints the progress
    return optuna


# -- the command line -----------------------------------------------------------------------


def sweep_parser() -> argparse.ArgumentParser:
    p = train_parser(
        prog="pyppo-sweep",
        description="Search training settings with Optuna on validation bars (never the "
        "held-out test bars); writes RUN/best.toml, a trials table and plots.",
    )
    group = p.add_argument_group("sweep")
    group.add_argument("--trials", type=int, default=20, help="trials to run (default: 20)")
    group.add_argument(
        "--trial-steps",
        type=int,
        default=500_000,
        help="env steps per member each trial trains (default: %(default)s)",
    )
    group.add_argument("--space", metavar="FILE", help="the search space (TOML)")
    group.add_argument(
        "--storage",
        metavar="URL",
        help="an Optuna storage URL shared by many processes or machines "
        "(default: sqlite in the run dir)",
    )
    group.add_argument("--workers", type=int, default=1, help="local worker processes")
    return p


def sweep_main(argv: list[str] | None = None) -> int:
    """``pyppo-sweep``: returns the exit code (0, or 2 on an error)."""
    return run_cli(_sweep, argv)


def _sweep(argv: list[str]) -> int:
    args = sweep_parser().parse_args(argv)
    config, explicit = config_from_args(args)
    if args.trials < 1 or args.trial_steps < 1 or args.workers < 1:
        raise UserError("--trials, --trial-steps and --workers must be >= 1")
    space = read_space(args.space) if args.space else dict(DEFAULT_SPACE)
    fixed = sorted(name for name in space if name in explicit)
    for name in fixed:  # a flag given fixes the setting
        del space[name]
    run_dir = Path(config.run_dir or f"runs/sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    check_writable(run_dir, "the sweep dir")
    run_dir.mkdir(parents=True, exist_ok=True)
    sweep = Sweep(run_dir, config, space, args.trial_steps, args.storage)
    with RunLock(run_dir, exclusive=True, command="pyppo-sweep"):
        return _run_sweep(sweep, args, space, fixed)


def _run_sweep(sweep: Sweep, args: argparse.Namespace, space: dict, fixed: list[str]) -> int:
    config, run_dir = sweep.config, sweep.run_dir
    if args.storage is None:
        sweep.fail_leftovers()  # the sweep dir is locked: a running trial is a leftover
    print(
        f"sweep in {run_dir}: {args.trials} trials of {args.trial_steps:,} env steps per member, "
        f"seeds {format_seeds(config.ppo.member_seeds)}, searching {', '.join(space) or 'nothing'}"
        + (f"; fixed by flags: {', '.join(fixed)}" if fixed else "")
    )
    sweep.run(args.trials, args.workers)
    best = sweep.finish()
    print(f"best settings: {best} (pyppo-train --config {best})")
    return 0


def read_space(path: str | Path) -> dict[str, dict[str, Any]]:
    """A search space from a TOML file: one table per setting, ``[ppo.lr]`` with ``low``,
    ``high`` (and ``log = true``), or ``choices = [...]``."""
    values = load_toml(path)
    space: dict[str, dict[str, Any]] = {}
    for section, settings in values.items():
        for name, spec in (settings or {}).items():
            dotted = f"{section}.{name}"
            if not isinstance(spec, dict) or not (
                "choices" in spec or {"low", "high"} <= set(spec)
            ):
                raise UserError(
                    f"search space {path}: {dotted} needs low and high, or choices",
                    "e.g. [ppo.lr] low = 1e-5, high = 1e-3, log = true",
                )
            try:
                get(RunConfig(), dotted)
            except AttributeError:
                raise UserError(f"search space {path}: unknown setting {dotted}") from None
            space[dotted] = spec
    return space


# -- the study ------------------------------------------------------------------------------


class PruneOnValidation(TrainingCallback):
    """Reports the population's validation IQM to the trial after every epoch and stops
    training when the pruner says so (the trial is then pruned)."""

    name = "sweep_pruner"

    def __init__(self, trial: Any) -> None:
        self.trial = trial
        self.pruned = False

    def on_result(self, trainer: PPOTrainer, rows: list[dict[str, float]]) -> bool:
        scores = [stats.sharpe_for_ranking(float(row[VALIDATION_SHARPE])) for row in rows]
        self.trial.report(stats.iqm(np.array(scores)), step=trainer.update)
        self.pruned = self.trial.should_prune()
        return self.pruned


class Sweep:
    """One study: its storage, the bars it trains and scores on, and its trials.

    :param run_dir: the sweep's directory (study.db, trials/, best.toml, the table, plots).
    :param config: the base settings (the searched ones are drawn per trial).
    :param space: the search space (:data:`DEFAULT_SPACE`'s form).
    :param trial_steps: env steps per member each trial trains.
    :param storage: an Optuna storage URL, or None for ``RUN/study.db``.
    """

    def __init__(
        self,
        run_dir: Path,
        config: RunConfig,
        space: dict[str, dict[str, Any]],
        trial_steps: int,
        storage: str | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.config = apply(config, {"quiet": True})
        self.space = space
        self.trial_steps = trial_steps
        self.storage_url = storage or f"sqlite:///{(run_dir / STUDY_FILE).resolve()}"
        self._bars: tuple[Any, Any, dict[str, list[str]]] | None = None

    def storage(self) -> Any:
        optuna = _optuna()
        # Heartbeats are marked experimental in Optuna; they are what fails stale trials.
        warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
        if self.storage_url.startswith("sqlite:"):
            # A busy timeout, so that local workers wait for each other's writes; heartbeats,
            # so that trials left running by a killed process are failed on the next start.
            return optuna.storages.RDBStorage(
                self.storage_url,
                engine_kwargs={"connect_args": {"timeout": 60}},
                heartbeat_interval=30,
                grace_period=90,
            )
        return optuna.storages.RDBStorage(self.storage_url, heartbeat_interval=30, grace_period=90)

    def fail_leftovers(self) -> None:
        """Mark trials a killed run left RUNNING as failed (their worker is gone)."""
        optuna = _optuna()
        study = self.study()
        for trial in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
            study.tell(trial.number, state=optuna.trial.TrialState.FAIL)
            print(f"trial {trial.number} was left running by an interrupted sweep: failed")

    def study(self) -> Any:
        optuna = _optuna()
        study = optuna.create_study(
            study_name=STUDY_NAME,
            storage=self.storage(),
            direction="maximize",
            load_if_exists=True,
            sampler=optuna.samplers.TPESampler(),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=1),
        )
        return study

    # -- data: training and validation bars only ---------------------------------------------

    def bars(self) -> tuple[Any, Any, dict[str, list[str]]]:
        """(training bars, validation bars, the ranges scored): the data's first two parts;
        the held-out test part is never trained or scored on. Loaded once; worker processes
        get them with the pickled Sweep."""
        if self._bars is None:
            self._bars = self._load_bars()
        return self._bars

    def _load_bars(self) -> tuple[Any, Any, dict[str, list[str]]]:
        market, _ = load_data(self.config, set())
        if isinstance(market, Universe):
            raise UserError(
                "pyppo-sweep tunes on one series; --data names several symbols",
                "give it one symbol's file (pyppo-train and pyppo-eval take a universe)",
            )
        train, validation, test = split_data(market)
        ranges = {
            "trained_on": [str(train.frame.index[0]), str(train.frame.index[-1])],
            "scored_on": [str(validation.frame.index[0]), str(validation.frame.index[-1])],
            "never_scored": [str(test.frame.index[0]), str(test.frame.index[-1])],
        }
        check_not_test(validation.frame.index[-1], test.frame.index[0])
        return train, validation, ranges

    # -- trials ------------------------------------------------------------------------------

    def run(self, trials: int, workers: int) -> None:
        """Run ``trials`` more trials, in ``workers`` local processes."""
        optuna = _optuna()
        study = self.study()
        optuna.storages.fail_stale_trials(study)  # left RUNNING by a killed process
        _, _, ranges = self.bars()
        study.set_user_attr("ranges", ranges)
        study.set_user_attr("trial_steps", self.trial_steps)
        if workers == 1:
            self._optimize(trials, threads=torch.get_num_threads())
            return
        threads = max(1, (os.cpu_count() or 1) // workers)
        shares = [trials // workers + (k < trials % workers) for k in range(workers)]
        context = multiprocessing.get_context("spawn")
        procs = [
            context.Process(target=_worker, args=(self, share, threads))
            for share in shares
            if share
        ]
        for proc in procs:
            proc.start()
        for proc in procs:
            proc.join()
        failed = [p.exitcode for p in procs if p.exitcode]
        if failed:
            raise UserError(f"{len(failed)} sweep worker(s) failed (exit codes {failed})")

    def _optimize(self, trials: int, threads: int) -> None:
        torch.set_num_threads(threads)
        study = self.study()
        study.optimize(self.objective, n_trials=trials, callbacks=[_progress])

    def settings_of(self, trial: Any) -> dict[str, Any]:
        """The trial's drawn settings, by dotted name."""
        drawn = {}
        for name, spec in self.space.items():
            if "choices" in spec:
                drawn[name] = trial.suggest_categorical(name, list(spec["choices"]))
            elif isinstance(spec["low"], int) and isinstance(spec["high"], int):
                drawn[name] = trial.suggest_int(
                    name, spec["low"], spec["high"], log=spec.get("log", False)
                )
            else:
                drawn[name] = trial.suggest_float(
                    name, float(spec["low"]), float(spec["high"]), log=spec.get("log", False)
                )
        return drawn

    def objective(self, trial: Any) -> float:
        optuna = _optuna()
        drawn = self.settings_of(trial)
        try:
            config = apply_dotted(self.config, drawn)
        except ValueError as err:
            trial.set_user_attr("pruned_reason", f"invalid settings: {err}")
            raise optuna.TrialPruned() from None
        folder = self.run_dir / "trials" / f"trial_{trial.number}"
        score, pruned, reason = self.train_and_score(config, folder, trial)
        if pruned:
            trial.set_user_attr("pruned_reason", reason)
            raise optuna.TrialPruned()
        return score

    def train_and_score(
        self, config: RunConfig, folder: Path, trial: Any = None
    ) -> tuple[float, bool, str]:
        """Train ``config``'s population for the trial budget; returns (the IQM over members
        of their best validation Sharpe, pruned, why)."""
        train, validation, _ = self.bars()
        device = resolve_device(self.config.device)
        callbacks: list[TrainingCallback] = [BestCheckpoint(validation)]
        pruner = PruneOnValidation(trial) if trial is not None else None
        if pruner is not None:
            callbacks.append(pruner)
        try:
            env = make_env(train, config, device)
            model = make_model(env, config)
            trainer = PPOTrainer(
                model,
                env,
                config.ppo,
                device=device,
                run_dir=folder,
                callbacks=callbacks,
                progress=False,
            )
            trainer.train(total_steps=self.trial_steps)
        except NonFiniteParametersError as err:
            return math.nan, True, f"training went non-finite: {err}"
        except (ValueError, RuntimeError) as err:
            return math.nan, True, f"training failed: {' '.join(str(err).split())}"
        if pruner is not None and pruner.pruned:
            return math.nan, True, f"pruned at update {trainer.update} by the median pruner"
        scores = np.array([stats.sharpe_for_ranking(s) for s in best_scores(trainer)])
        return stats.iqm(scores), False, ""

    # -- the result ---------------------------------------------------------------------------

    def finish(self) -> Path:
        """Recheck the top trials on fresh seeds, write best.toml, the table and the plots;
        returns best.toml's path."""
        optuna = _optuna()
        study = self.study()
        done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
        if not done:
            raise UserError("no trial completed", "run more trials, or look at trials.csv")
        top = sorted(done, key=lambda t: t.value, reverse=True)[:RECHECK_TOP]
        seeds = self.config.ppo.member_seeds
        fresh = ",".join(str(FRESH_SEED_OFFSET + s) for s in seeds)
        rechecked = []
        for t in top:
            config = apply_dotted(self.config, t.params)
            config = apply(
                config,
                {
                    "ppo": {
                        "seeds": fresh if len(seeds) > 1 else None,
                        "seed": FRESH_SEED_OFFSET + seeds[0],
                    }
                },
            )
            score, _, _ = self.train_and_score(
                config, self.run_dir / "recheck" / f"trial_{t.number}"
            )
            rechecked.append((score if math.isfinite(score) else -math.inf, t))
            print(
                f"recheck of trial {t.number} on fresh seeds: {score:.2f} "
                f"(in the study {t.value:.2f})"
            )
        _, winner = max(rechecked, key=lambda pair: pair[0])
        ranges = study.user_attrs.get("ranges", {})
        best = apply_dotted(self.config, winner.params)
        best = apply(
            best,
            {
                "selection": {
                    "trials": len(study.trials),
                    "tuned_until": ranges.get("scored_on", [None, None])[1],
                },
                "run_dir": None,
                "quiet": False,
            },
        )
        path = self.run_dir / BEST_FILE
        write_text(path, best.to_toml())
        self._write_table(study)
        self._write_plots(study, len(done))
        return path

    def _write_table(self, study: Any) -> None:
        names = sorted({name for t in study.trials for name in t.params})
        with open(self.run_dir / TRIALS_FILE, "w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["trial", "state", "score", *names, "note"])
            for t in study.trials:
                writer.writerow(
                    [
                        t.number,
                        t.state.name,
                        "" if t.value is None else f"{t.value:.4f}",
                        *(t.params.get(n, "") for n in names),
                        t.user_attrs.get("pruned_reason", ""),
                    ]
                )

    def _write_plots(self, study: Any, completed: int) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from optuna.visualization import matplotlib as optuna_plots

        ax = optuna_plots.plot_optimization_history(study)
        ax.figure.savefig(self.run_dir / "history.png", dpi=110, bbox_inches="tight")
        plt.close(ax.figure)
        if completed < 3 or len(self.space) < 2:
            print(f"parameter importances skipped: {completed} completed trial(s) are too few")
            return
        ax = optuna_plots.plot_param_importances(study)
        ax.figure.savefig(self.run_dir / "importances.png", dpi=110, bbox_inches="tight")
        plt.close(ax.figure)


def _worker(sweep: Sweep, trials: int, threads: int) -> None:
    logging.basicConfig(level=logging.WARNING)
    sweep._optimize(trials, threads)


def _progress(study: Any, trial: Any) -> None:
    optuna = _optuna()
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = max((t.value for t in done), default=math.nan)
    print(
        f"trials done {len(study.trials)} (completed {len(done)}), best so far {best:.2f}",
        flush=True,
    )


def best_scores(trainer: PPOTrainer) -> list[float]:
    """Each member's best validation Sharpe, as :class:`BestCheckpoint` kept it, or the
    final model's when the budget ended before the first epoch did."""
    callback = next(cb for cb in trainer.callbacks if cb.name == BEST_CHECKPOINT_CALLBACK)
    best = callback.best_score  # -inf until the first epoch ends, then one per member
    best = [float(b) for b in best] if isinstance(best, list) else [float(best)] * trainer.members
    if all(math.isfinite(b) for b in best):
        return best
    final = callback.evaluate(trainer)[VALIDATION_SHARPE]
    final = final if isinstance(final, list) else [final]
    return [max(b, f) for b, f in zip(best, final, strict=True)]


def apply_dotted(config: RunConfig, values: dict[str, Any]) -> RunConfig:
    """``config`` with settings given by dotted name (``{"ppo.lr": 1e-4}``)."""
    nested: dict[str, Any] = {}
    for name, value in values.items():
        section, _, key = name.rpartition(".")
        (nested.setdefault(section, {}) if section else nested)[key] = value
    return apply(config, nested)


def check_not_test(last_scored: Any, first_test: Any) -> None:
    """Refuse a study that would score on the held-out test bars."""
    if last_scored >= first_test:
        raise UserError(
            f"the sweep would score on bars up to {last_scored}, inside the held-out test "
            f"bars (from {first_test})",
            "tune on the training and validation bars only",
        )
