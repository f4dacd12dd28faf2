"""Callbacks: work the trainer runs between updates without knowing what it is.

Scoring a model on held-out bars and keeping the best one is evaluation, not training, so
the trainer does not do it: the caller passes a :class:`TrainingCallback` (as
Stable-Baselines3 passes an ``EvalCallback`` to ``learn``), e.g.
:class:`pyppo.evaluation.BestCheckpoint`. At the end of each update the trainer asks every
callback whether it is due; a due callback

1. :meth:`~TrainingCallback.evaluate`\\ s on rank 0 only (one process does the work) and
   returns its metrics, one value (or one per member) per name in
   :attr:`~TrainingCallback.columns`;
2. those metrics are broadcast to every process and merged into the update's metrics row,
   which is then written;
3. :meth:`~TrainingCallback.on_result` runs on every process with the update's rows (one,
   or one per member of a population), so that every process takes the same decision
   (saving a checkpoint is collective under ``torch.distributed``); it returns True to ask
   training to stop after this update.

A callback's :meth:`~TrainingCallback.state_dict` is saved inside ``checkpoint.pt`` under
its :attr:`~TrainingCallback.name`, so a resumed run continues it (the best score so far).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import torch

from pyppo.distributed import broadcast_floats

if TYPE_CHECKING:  # annotations only: the trainer imports this module
    from pyppo.training.trainer import PPOTrainer

# A callback's metrics: one float per column, or one per member of a population.
CallbackMetrics = dict[str, float | list[float]]


class TrainingCallback:
    """Base class of the trainer's callbacks (every method has a neutral default).

    :attr name: the key of its state in checkpoints; unique among a trainer's callbacks.
    :attr columns: the metric names :meth:`evaluate` returns; they become metrics columns
        (empty on updates where the callback is not due).
    """

    name: str = "callback"
    columns: tuple[str, ...] = ()

    def due(self, trainer: PPOTrainer, epoch_done: bool) -> bool:
        """Whether to run after this update (every process must answer the same; default:
        when the update ends a training epoch)."""
        return epoch_done

    def evaluate(self, trainer: PPOTrainer) -> CallbackMetrics:
        """The metrics of :attr:`columns` (called on rank 0 only)."""
        return {}

    def on_result(self, trainer: PPOTrainer, rows: list[dict[str, float]]) -> bool:
        """Act on the update's metrics rows (one per member), which hold the broadcast
        metrics of :attr:`columns` (called on every process, after the rows are written);
        True stops training."""
        return False

    def state_dict(self) -> dict[str, Any]:
        """What a resumed run needs to continue this callback, as plain data."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""


def broadcast_metrics(
    metrics: CallbackMetrics | None, columns: Sequence[str], members: int, device: torch.device
) -> CallbackMetrics:
    """Rank 0's metrics on every process (``metrics`` is ignored elsewhere): each column as a
    float (``members == 1``) or a list of ``members`` floats; a missing column is NaN."""
    flat: list[float] = []
    for column in columns:
        value = (metrics or {}).get(column, math.nan)
        values = [float(v) for v in value] if isinstance(value, (list, tuple)) else [float(value)]
        if len(values) != members:
            raise ValueError(f"callback metric {column!r}: {len(values)} values for {members}")
        flat += values
    flat = broadcast_floats(flat, device)
    out: CallbackMetrics = {}
    for k, column in enumerate(columns):
        values = flat[k * members : (k + 1) * members]
        out[column] = values[0] if members == 1 else values
    return out
