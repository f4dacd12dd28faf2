"""Evaluation: backtests on bars the agent did not train on, validation during training as a
callback, and the report ``pyppo-eval`` writes.

- :mod:`~pyppo.evaluation.backtest`: :func:`backtest` and its :class:`Backtest` result;
- :mod:`~pyppo.evaluation.validation`: :class:`BestCheckpoint`, the callback that keeps
  ``best.pt``;
- :mod:`~pyppo.evaluation.universe`: a universe's per-symbol backtests, their equal-weight
  aggregate, weights, IC/ICIR, beta;
- :mod:`~pyppo.evaluation.portfolio`: :func:`portfolio_backtest`, a portfolio agent's walk;
- :mod:`~pyppo.evaluation.report`: report.md, equity.csv, trades.csv (weights.csv for a
  universe) and the figures;
- :mod:`~pyppo.evaluation.plots`: the figures.

Statistics come from :mod:`pyppo.stats`; model outputs from :mod:`pyppo.inference`.
"""

from pyppo.evaluation.backtest import Backtest, backtest, net_returns
from pyppo.evaluation.portfolio import PortfolioRun, portfolio_backtest
from pyppo.evaluation.universe import equal_weight
from pyppo.evaluation.validation import BestCheckpoint, validation_sharpe

__all__ = [
    "Backtest",
    "BestCheckpoint",
    "PortfolioRun",
    "backtest",
    "equal_weight",
    "net_returns",
    "portfolio_backtest",
    "validation_sharpe",
]
