"""Command lines: ``pyppo-train`` (scripts/train_rl_agent.py, :mod:`pyppo.cli.train`),
``pyppo-eval`` (scripts/evaluate_agent.py, :mod:`pyppo.cli.evaluate`), ``pyppo-walkforward``
(scripts/walk_forward.py, :mod:`pyppo.cli.walkforward`), ``pyppo-sweep`` (scripts/sweep.py,
:mod:`pyppo.cli.sweep`), ``pyppo-predict`` and
``pyppo-export``; what they share is in :mod:`pyppo.cli.common`."""

from pyppo.cli.common import (
    UserError,
    load_data,
    make_env,
    make_model,
    run_cli,
    split_data,
)
from pyppo.cli.evaluate import eval_main, eval_parser, evaluate_run
from pyppo.cli.predict import export_main, predict_main
from pyppo.cli.sweep import sweep_main, sweep_parser
from pyppo.cli.train import resolve_config, train_main, train_parser
from pyppo.cli.walkforward import walkforward_main, walkforward_parser

__all__ = [
    "UserError",
    "eval_main",
    "eval_parser",
    "evaluate_run",
    "export_main",
    "predict_main",
    "load_data",
    "make_env",
    "make_model",
    "resolve_config",
    "run_cli",
    "split_data",
    "sweep_main",
    "sweep_parser",
    "train_main",
    "train_parser",
    "walkforward_main",
    "walkforward_parser",
]
