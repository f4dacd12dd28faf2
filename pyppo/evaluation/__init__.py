"""Evaluation: backtests on bars the agent did not train on, validation during training as a
callback, and the report ``pyppo-eval`` writes.

- :mod:`~pyppo.evaluation.backtest`: :func:`backtest` and its :class:`Backtest` result;
- :mod:`~pyppo.evaluation.validation`: :class:`BestCheckpoint`, the callback that keeps
  ``best.pt``;
- :mod:`~pyppo.evaluation.report`: report.md, equity.csv, trades.csv and the figures;
- :mod:`~pyppo.evaluation.plots`: the figures.

Statistics come from :mod:`pyppo.stats`; model outputs from :mod:`pyppo.inference`.
"""

from pyppo.evaluation.backtest import Backtest, backtest, net_returns
from pyppo.evaluation.validation import BestCheckpoint, validation_sharpe

__all__ = ["Backtest", "BestCheckpoint", "backtest", "net_returns", "validation_sharpe"]
