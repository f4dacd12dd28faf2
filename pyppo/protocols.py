"""What the trainer may use of an environment or a model beyond the basics, declared.

The trainer works with any gymnasium-style vector env and any module whose ``forward(obs)``
returns ``action_logits`` and ``value``. Environments and models that offer more (pyppo's
:class:`~pyppo.TradingEnv` and :class:`~pyppo.TradingActorCritic` offer all of it) declare
it by having these members; the trainer checks with ``isinstance`` against these protocols.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

from torch import Tensor


@runtime_checkable
class SanitizingEnv(Protocol):
    """Sanitizes what it hands out and counts it. ``sanitize_counts()`` returns running
    int64 ``[nonfinite, clamped]`` device tensors by name (``"returns"``,
    ``"aux_targets"``); the trainer records their change per update."""

    def sanitize_counts(self) -> dict[str, Tensor]: ...


@runtime_checkable
class EpochEnv(Protocol):
    """Knows how many steps per env cover its data once (``train(epochs=...)`` needs it)."""

    steps_per_epoch: int


@runtime_checkable
class AuxTargetEnv(Protocol):
    """Hands out ``info["aux_targets"]`` for the horizons named by ``aux_labels``
    (``("1h", "24h")``): the model's heads and the metrics are named after them."""

    aux_labels: tuple[str, ...]


@runtime_checkable
class StatefulEnv(Protocol):
    """Can save and restore everything that decides its future (for exact resume)."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


@runtime_checkable
class PopulationModel(Protocol):
    """Several models in one: ``members`` of them, with stacked parameters; ``forward`` takes
    ``(members, batch, obs)`` and returns ``(members, batch, ...)`` outputs
    (:class:`pyppo.population.PopulationActorCritic`)."""

    members: int


@runtime_checkable
class OutputGuardedModel(Protocol):
    """Repairs its own non-finite outputs and counts them. ``output_names`` names the counts;
    ``take_output_counts()`` returns the int64 counts since the previous call and resets
    them (a device tensor: no host sync)."""

    output_names: tuple[str, ...]

    def take_output_counts(self) -> Tensor: ...


@runtime_checkable
class Describable(Protocol):
    """``describe()`` returns, as plain data, what it takes to rebuild the object without
    the training data; checkpoints store it."""

    def describe(self) -> dict[str, Any]: ...
