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

from torch import Tensor

from pyppo import stats
from pyppo.checkpoint import BEST, BEST_CHECKPOINT_CALLBACK
from pyppo.data import MarketData, Universe
from pyppo.evaluation.backtest import Backtest, backtest
from pyppo.evaluation.portfolio import portfolio_backtest
from pyppo.evaluation.universe import equal_weight
from pyppo.metrics import VALIDATION_SHARPE
from pyppo.portfolio_env import PortfolioEnv
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
    env's window, costs, fill timing and actions, record the score as ``validation/sharpe`` and save
    ``best.pt`` when it beats every earlier score of the run (a resumed run included: the
    best score is part of ``checkpoint.pt``).

    A population's members are scored one by one, and each keeps its own best: ``best.pt``
    holds, for every member, its weights of the epoch it scored best (the callback keeps
    them, in ``checkpoint.pt`` too), and its best scores, by which :class:`pyppo.Agent`
    picks a member.

    :param bars: the validation bars (after the training bars, before the held-out test bars);
        a universe's are scored by the equal-weight aggregate of the per-symbol backtests
        (:func:`pyppo.evaluation.universe.equal_weight`), or, when the trainer's env is a
        :class:`~pyppo.PortfolioEnv`, by the portfolio's own returns
        (:func:`pyppo.evaluation.portfolio.portfolio_backtest`).
    :param score: maps the validation backtest to the number to maximize.
    :param filename: the checkpoint the best model goes to, in the trainer's run dir.
    :param decisions: ``(start, stop)``: score only these decision bars of ``bars`` (a
        walk-forward's validation tail inside the whole market); default: all of them.
    """

    name = BEST_CHECKPOINT_CALLBACK
    columns = (VALIDATION_SHARPE,)

    def __init__(
        self,
        bars: MarketData | Universe,
        score: Callable[[Backtest], float] = validation_sharpe,
        *,
        filename: str = BEST,
        decisions: tuple[int, int] | None = None,
    ) -> None:
        self.bars = bars
        self.decisions = decisions or (None, None)
        self.score = score
        self.filename = filename
        self.best_score: float | list[float] = -math.inf
        # A population's: each member's weights of its best epoch (stacked), as best.pt has.
        self.best_weights: dict[str, Tensor] | None = None

    def evaluate(self, trainer: PPOTrainer) -> CallbackMetrics:
        env = trainer.env
        models = (
            [trainer.model]
            if trainer.members == 1
            else [trainer.model.member(k) for k in range(trainer.members)]
        )
        common = dict(
            window=env.window,
            fee=env.fee,
            fill=env.fill,
            allow_short=env.allow_short,
            device=trainer.device,
        )

        def validate(model: Any) -> Backtest:
            if isinstance(env, PortfolioEnv):
                limits = dict(max_weight=env.max_weight, max_gross=env.max_gross)
                run = portfolio_backtest(
                    self.bars, model, spread=env.spread_setting, **limits, **common
                )
                return run.portfolio
            span = dict(spread=env.spread, start=self.decisions[0], stop=self.decisions[1])
            if not isinstance(self.bars, Universe):
                return backtest(self.bars, model, **span, **common)
            per_symbol = {
                s: backtest(m, model, **span, **common) for s, m in self.bars.markets.items()
            }
            return equal_weight(per_symbol, "agent")

        scores = [self.score(validate(model)) for model in models]
        return {VALIDATION_SHARPE: scores[0] if trainer.members == 1 else scores}

    def on_result(self, trainer: PPOTrainer, rows: list[dict[str, float]]) -> bool:
        scores = [float(row[VALIDATION_SHARPE]) for row in rows]
        if trainer.members == 1:
            if scores[0] > self.best_score:
                self.best_score = scores[0]
                trainer.save(self.filename)
            return False
        best = self.best_score if isinstance(self.best_score, list) else [-math.inf] * len(rows)
        improved = [k for k, score in enumerate(scores) if score > best[k]]
        if improved:
            current = trainer.model.state_dict()
            if self.best_weights is None:
                self.best_weights = {
                    name: value.detach().clone() for name, value in current.items()
                }
            for k in improved:
                best[k] = scores[k]
                for name, value in current.items():
                    self.best_weights[name][k] = value[k]
            self.best_score = best
            trainer.save(self.filename, model_state=self.best_weights)
        return False

    def state_dict(self) -> dict[str, Any]:
        state: dict[str, Any] = {"best_score": self.best_score}
        if self.best_weights is not None:
            state["best_weights"] = self.best_weights
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        best = state["best_score"]
        self.best_score = [float(b) for b in best] if isinstance(best, list) else float(best)
        self.best_weights = state.get("best_weights")
