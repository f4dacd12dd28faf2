"""Training: :class:`PPOTrainer` and what its loop is made of.

- :mod:`~pyppo.training.trainer`: the loop (rollout, update, callbacks, checkpoint cadence);
- :mod:`~pyppo.training.rollout`: the policy steps the env, transitions fill the buffer;
- :mod:`~pyppo.training.update`: minibatch steps (forward, loss, backward, guard, Adam);
- :mod:`~pyppo.training.recorder`: device counters, metrics rows, writers, progress bar;
- :mod:`~pyppo.training.callbacks`: work run between updates (validation, best.pt);
- :mod:`~pyppo.training.stop`: SIGINT/SIGTERM as a stop request read between updates.

Nothing here knows about backtests or reports (:mod:`pyppo.evaluation` plugs in through
callbacks).
"""

from pyppo.training.callbacks import TrainingCallback
from pyppo.training.stop import StopRequest, TrainingInterrupted, stop_on_signals
from pyppo.training.trainer import NonFiniteParametersError, PPOTrainer

__all__ = [
    "NonFiniteParametersError",
    "PPOTrainer",
    "StopRequest",
    "TrainingCallback",
    "TrainingInterrupted",
    "stop_on_signals",
]
