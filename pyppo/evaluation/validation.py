"""Validation during training, as a callback: score the greedy policy on held-out bars after
every epoch and keep the best model as ``best.pt`` (Stable-Baselines3's ``EvalCallback``).

The score is the validation Sharpe ratio of :func:`pyppo.stats.sharpe_ratio`, the same
function the report prints, on the simple net returns of a :func:`backtest`; a policy that
never trades has no Sharpe (NaN) and ranks as 0 (:func:`pyppo.stats.sharpe_for_ranking`).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from pyppo import stats
from pyppo.checkpoint import BEST, BEST_CHECKPOINT_CALLBACK
from pyppo.data import MarketData
from pyppo.evaluation.backtest import Backtest, backtest
from pyppo.metrics import VALIDATION_SHARPE
from pyppo.training import PPOTrainer, TrainingCallback
from pyppo.training.callbacks import CallbackMetrics


def validation_sharpe(result: Backtest) -> float:
    """The score :class:`BestCheckpoint` ranks by default: the backtest's Sharpe ratio, 0 for
    a policy that never trades.

    :param result: the greedy policy's backtest on the validation bars.
    """
    return stats.sharpe_for_ranking(result.sharpe)


class BestCheckpoint(TrainingCallback):
    """After every training epoch, backtest the trainer's greedy policy on ``bars`` with the
    env's window, fee and actions, record the score as ``validation/sharpe`` and save
    ``best.pt`` when it beats every earlier score of the run (a resumed run included: the
    best score is part of ``checkpoint.pt``).

    :param bars: the validation bars (after the training bars, before the held-out test bars).
    :param score: maps the validation backtest to the number to maximize.
    :param filename: the checkpoint the best model goes to, in the trainer's run dir.
    """

    name = BEST_CHECKPOINT_CALLBACK
    columns = (VALIDATION_SHARPE,)

    def __init__(
        self,
        bars: MarketData,
        score: Callable[[Backtest], float] = validation_sharpe,
        *,
        filename: str = BEST,
    ) -> None:
        self.bars = bars
        self.score = score
        self.filename = filename
        self.best_score = -math.inf

    def evaluate(self, trainer: PPOTrainer) -> CallbackMetrics:
        env = trainer.env
        result = backtest(
            self.bars,
            trainer.model,
            window=env.window,
            fee=env.fee,
            allow_short=env.allow_short,
            device=trainer.device,
        )
        return {VALIDATION_SHARPE: self.score(result)}

    def on_result(self, trainer: PPOTrainer, metrics: CallbackMetrics) -> bool:
        score = metrics[VALIDATION_SHARPE]
        if score > self.best_score:
            self.best_score = float(score)
            trainer.save(self.filename)
        return False

    def state_dict(self) -> dict[str, Any]:
        return {"best_score": self.best_score}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best_score = float(state["best_score"])
