"""``pyppo-eval``: backtest a trained agent on data it has not seen, honestly.

The checkpoint is loaded safely (no code runs, NaN weights are refused), the model is rebuilt
from the checkpoint's own description, the run's data must still be the data it trained on
(fingerprint), and other data is evaluated with a warning when it overlaps the training period.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import pandas as pd

from pyppo.checkpoint import (
    Checkpoint,
    build_model,
    find_checkpoint,
    load_checkpoint,
    validated_member,
)
from pyppo.cli.common import (
    Parser,
    UserError,
    check_writable,
    data_exists,
    load_data,
    resolved_data_path,
    run_cli,
    split_data,
)
from pyppo.config import RunConfig, apply
from pyppo.data import Universe
from pyppo.device import resolve_device
from pyppo.evaluation.report import write_report
from pyppo.execution import FILLS
from pyppo.metrics import METRICS_FILE, read_metrics
from pyppo.population import PopulationActorCritic
from pyppo.runlock import RunLock

# What pyppo-eval writes into the run dir.
REPORT_FILES = (
    "report.md",
    "report.json",
    "equity.csv",
    "trades.csv",
    "equity.png",
    "predictions.png",
    "training.png",
    "weights.csv",
    "weights.png",
)


def eval_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="pyppo-eval",
        description="Backtest a trained agent on the held-out bars against buy-and-hold and a "
        "random policy; writes report.md and plots into the run directory.",
    )
    p.add_argument("run", help="a run directory (uses best.pt, else checkpoint.pt) or a .pt file")
    p.add_argument(
        "--data", default=None, help="evaluate on this file instead of the run's held-out split"
    )
    p.add_argument("--device", default=None)
    p.add_argument(
        "--folds",
        type=int,
        default=0,
        metavar="K",
        help="also score K consecutive sub-periods of the held-out bars",
    )
    p.add_argument(
        "--fee", type=float, default=None, help="evaluate at this fee (default: the run's)"
    )
    p.add_argument(
        "--spread",
        type=float,
        default=None,
        metavar="BP",
        help="evaluate at this bid-ask spread in basis points (default: the run's)",
    )
    p.add_argument(
        "--fill",
        choices=FILLS,
        default=None,
        help="evaluate with this fill timing (default: the run's)",
    )
    p.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    return p


def evaluation_data(config: RunConfig, checkpoint: Checkpoint, data: str | None):
    """``(bars to evaluate on, validation bars or None, training bars or None)``: the run's
    held-out split (its data checked against the training fingerprint), or ``data`` (with a
    warning when it overlaps the training period)."""
    if data:
        config = apply(config, {"data": {"path": resolved_data_path(data), "bad_ticks": 0.0}})
        market, _ = load_data(config, {"data.horizons"})
        period = checkpoint.data
        if period is not None:
            start, end = pd.Timestamp(period.train_start), pd.Timestamp(period.train_end)
            index = market.calendar if isinstance(market, Universe) else market.frame.index
            overlap = int(((index >= start) & (index <= end)).sum())
            if overlap:
                print(
                    f"warning: {overlap:,} of the {len(index):,} bars evaluated lie in the "
                    f"training period ({start} to {end}): the results flatter the agent",
                    file=sys.stderr,
                )
        return market, None, None
    if config.data.path and not data_exists(config.data.path):
        raise UserError(
            f"the run's data file {config.data.path} is gone",
            "pass --data FILE to evaluate on a file",
        )
    market, _ = load_data(config, {"data.horizons"})
    if market.fingerprint() != checkpoint.data_fingerprint:
        raise UserError(
            f"the data at {config.data.path or market.source} changed since the run "
            "trained on it (its fingerprint differs)",
            "restore the original file, or pass --data FILE to evaluate on new data",
        )
    train, validation, test = split_data(market)
    return test, validation, train


def evaluate_run(
    run: str | Path,
    *,
    data: str | None = None,
    device: str | None = None,
    folds: int = 0,
    costs: dict[str, Any] | None = None,
) -> tuple[dict[str, dict[str, float]], Path]:
    """Backtest a run's best checkpoint (else its last) on the held-out bars, or on ``data``;
    write report.md, report.json and the plots. Returns ``(metrics by policy, report path)``.

    :param costs: env settings to evaluate at instead of the run's (``fee``, ``spread``,
        ``fill``): train at one cost, evaluate at another.
    """
    path = find_checkpoint(run)
    resolved = resolve_device(device)
    checkpoint = load_checkpoint(path)
    check_writable(path.parent, "the run dir", REPORT_FILES)
    if checkpoint.run_config is None:
        raise UserError(
            f"checkpoint {path} was not written by pyppo-train (it has no run configuration)",
            "evaluate it with your own code",
        )
    if checkpoint.agent.model is None:
        raise UserError(
            f"checkpoint {path} holds a model other than TradingActorCritic",
            "evaluate it with your own code",
        )
    if folds < 0:
        raise UserError(f"--folds {folds}", "give a number of sub-periods >= 1, or leave it out")
    config = checkpoint.run_config
    test, validation, training = evaluation_data(config, checkpoint, data)
    if config.env.portfolio and not isinstance(test, Universe):
        raise UserError(
            "a portfolio agent trades several symbols together, and the data is one series",
            "pass a folder, a glob, several files or a table with a symbol column to --data",
        )
    if folds and isinstance(test, Universe):
        raise UserError(
            "--folds scores sub-periods of one series; this run trades several symbols",
            "leave --folds out (the report has a per-symbol table instead)",
        )
    if costs:
        try:
            config = apply(config, {"env": costs})
        except ValueError as err:
            raise UserError(str(err)) from None
    model = build_model(checkpoint.agent.model, checkpoint.model, source=path).to(resolved)
    population, picked = None, None
    if isinstance(model, PopulationActorCritic):
        # The statistics' agent is the member validation picks; every member is scored too.
        population, picked = model, validated_member(checkpoint)
        model = population.member(0 if picked is None else picked)
    # The whole run's learning curve, not only up to the (best) checkpoint's update.
    metrics_csv = path.parent / METRICS_FILE
    history = list(read_metrics(metrics_csv)) if metrics_csv.is_file() else None
    # A reader's lock: other evaluations may run beside it, a training of the run may not.
    with RunLock(path.parent, exclusive=False, command="pyppo-eval"):
        return write_report(
            path.parent,
            model,
            test,
            config,
            checkpoint,
            device=resolved,
            folds=folds,
            validation=validation,
            history=history,
            population=population,
            picked=picked,
            training=training,
        )


def eval_main(argv: list[str] | None = None) -> int:
    """``pyppo-eval``: returns the exit code (0, or 2 on an error)."""
    return run_cli(_evaluate, argv)


def _evaluate(argv: list[str]) -> int:
    args = eval_parser().parse_args(argv)
    costs = {k: v for k in ("fee", "spread", "fill") if (v := getattr(args, k)) is not None}
    _, report = evaluate_run(
        args.run, data=args.data, device=args.device, folds=args.folds, costs=costs
    )
    print(report.read_text())
    return 0
