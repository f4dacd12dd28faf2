"""The model's outputs and its auxiliary return heads, named once.

Every name a user reads about an auxiliary head comes from its horizon label (``"1h"``,
``"24h"``, :func:`pyppo.data.horizon_label`) and is declared here, in :class:`AuxHead`:

=================  ==================  ===========================================
what               default short head  where it appears
=================  ==================  ===========================================
``label``          ``1h``              horizons, report rows
``module``         ``aux_1h``          the model's submodule, its gradient-guard group
``loss_column``    ``loss/aux_1h``     the head's loss in metrics.csv (and
                                       ``nonfinite/loss/aux_1h``, its zeroed count)
``output``         ``pred_1h``         the model's output, predictions, report columns,
                                       ``nonfinite/output/pred_1h``
``loss_log_name``  ``aux_1h_loss``     ``aux_1h_loss was NaN/inf, setting to 0``
=================  ==================  ===========================================

The other two outputs (:data:`ACTION_LOGITS`, :data:`VALUE`) are fixed. Modules elsewhere
look names up here (:class:`AuxHeads`, :func:`output_specs`) instead of building them, so
that changing how a head is named means changing this file only (as TorchRL's losses keep
their tensordict keys in one ``_AcceptedKeys`` dataclass).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

ACTION_LOGITS = "action_logits"
VALUE = "value"
# The horizons of the two heads when nothing else says (the default market's).
DEFAULT_AUX_LABELS = ("1h", "24h")
# How the model-output NaN/inf message names an output, where it differs from the output.
_LOG_NAMES = {ACTION_LOGITS: "logits"}


@dataclass(frozen=True)
class AuxHead:
    """The names of one auxiliary head (see the module's table).

    :param label: the horizon's label, e.g. ``"1h"``.
    """

    label: str

    @property
    def module(self) -> str:
        """The head's submodule and gradient-guard group: ``aux_<label>``."""
        return f"aux_{self.label}"

    @property
    def output(self) -> str:
        """The head's model output and prediction: ``pred_<label>``."""
        return f"pred_{self.label}"

    @property
    def loss_column(self) -> str:
        """The metrics column of the head's loss: ``loss/aux_<label>``."""
        return f"loss/{self.module}"

    @property
    def loss_zeroed_column(self) -> str:
        """The metrics column counting minibatches whose loss was NaN/inf and zeroed:
        ``nonfinite/loss/aux_<label>``."""
        return f"nonfinite/loss/{self.module}"

    @property
    def loss_log_name(self) -> str:
        """How the aux-loss NaN/inf message names its loss: ``aux_<label>_loss``."""
        return f"{self.module}_loss"


@dataclass(frozen=True)
class AuxHeads:
    """The auxiliary heads of a model, in order (short horizon first).

    :param heads: one :class:`AuxHead` per horizon.
    """

    heads: tuple[AuxHead, ...]

    @classmethod
    def from_labels(cls, labels: Sequence[str]) -> AuxHeads:
        """The heads for horizon labels (``("1h", "24h")``); labels must be distinct."""
        labels = tuple(str(label) for label in labels)
        if len(set(labels)) != len(labels):
            raise ValueError(f"auxiliary horizon labels {list(labels)} must be distinct")
        return cls(tuple(AuxHead(label) for label in labels))

    def __iter__(self) -> Iterator[AuxHead]:
        return iter(self.heads)

    def __len__(self) -> int:
        return len(self.heads)

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(h.label for h in self.heads)

    @property
    def modules(self) -> tuple[str, ...]:
        """``aux_<label>`` per head: submodules, guard groups, loss names."""
        return tuple(h.module for h in self.heads)

    @property
    def loss_columns(self) -> tuple[str, ...]:
        """``loss/aux_<label>`` per head."""
        return tuple(h.loss_column for h in self.heads)

    @property
    def outputs(self) -> tuple[str, ...]:
        """``pred_<label>`` per head: the model's prediction outputs."""
        return tuple(h.output for h in self.heads)

    def output_names(self) -> tuple[str, ...]:
        """Every output of a model with these heads, in order: logits, value, predictions."""
        return (ACTION_LOGITS, VALUE, *self.outputs)

    def output_limits(self, aux_limit: float) -> dict[str, float]:
        """The clamp limit of each output: ``aux_limit`` for predictions, inf (only NaN/inf
        repaired) for logits and value."""
        return {
            name: aux_limit if name in self.outputs else math.inf for name in self.output_names()
        }


def output_log_name(output: str) -> str:
    """How ``Model output <name> contains NaN/inf`` names an output (``logits`` for the
    action logits, the output's own name otherwise)."""
    return _LOG_NAMES.get(output, output)
