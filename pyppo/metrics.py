"""What a training run records: the metric names, the schema of metrics.csv, its reader
and the NaN-event tables (no torch: the report reads these).

Every update writes one row. Its columns are fixed by :class:`MetricSchema` before the first
row (so metrics.csv has one header for the whole run) and are grouped by prefix, the way
CleanRL and Stable-Baselines3 group TensorBoard scalars::

    update, epoch, env_steps              where the run is
    perf/...                              steps_per_sec, rollout_seconds, update_seconds
    loss/...                              policy, value, entropy, aux_<label> (one per head)
    train/...                             lr, approx_kl, clip_fraction, explained_variance,
                                          grad_norm, clip_coef
    rollout/...                           mean_step_reward, mean_episode_return
    validation/sharpe                     a callback's columns, e.g. the greedy policy's
                                          Sharpe on validation bars (empty when not run)
    nonfinite/grad/<group>                NaN/inf gradient elements zeroed, per guard group
    nonfinite/output/<output>             NaN/inf model outputs repaired, per output
    nonfinite/loss/aux_<label>            minibatches whose auxiliary loss was NaN/inf -> 0
    guard/skipped_steps                   optimizer steps skipped (nan_policy="skip")
    sanitized/<source>/<what>/nonfinite   NaN/inf rewards or aux targets zeroed, by the env
    sanitized/<source>/<what>/clamped     or the buffer, and values clamped to +-100 %

The run-time half (device counters, the row across processes, the writers, the progress
bar) is :mod:`pyppo.training.recorder`.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from pyppo.heads import AuxHeads, output_log_name

logger = logging.getLogger("pyppo")

PERF = ("perf/steps_per_sec", "perf/rollout_seconds", "perf/update_seconds")
TRAIN_EXTRA = ("train/lr", "train/explained_variance")
ROLLOUT = ("rollout/mean_step_reward", "rollout/mean_episode_return")
# What one minibatch step reports, in order; then loss/aux_<label> per head, then the guard's.
STEP_STATS = ("loss/policy", "loss/value", "loss/entropy", "train/approx_kl", "train/clip_fraction")
GUARD_STATS = ("train/grad_norm", "train/clip_coef")
VALIDATION_SHARPE = "validation/sharpe"
# A population's rows: which member, and its seed.
MEMBER, SEED = "member", "seed"
METRICS_FILE = "metrics.csv"  # in the run dir
SKIPPED_STEPS = "guard/skipped_steps"

# Which NaN/inf event a counter column belongs to, for the per-epoch table.
NAN_EVENT_KINDS = {
    "gradients": "nonfinite/grad/",
    "outputs": "nonfinite/output/",
    "aux losses": "nonfinite/loss/",
    "rewards/targets": "sanitized/",
}


def update_stats(heads: AuxHeads, *, aux: bool, guards: bool) -> list[str]:
    """The statistics one minibatch step reports, in order: the step's own, then
    ``loss/aux_<label>`` per head (``aux``), then the guard's (``guards``)."""
    return [*STEP_STATS, *(heads.loss_columns if aux else ()), *(GUARD_STATS if guards else ())]


@dataclass(frozen=True)
class MetricSchema:
    """The column names of one run's metrics, in order.

    :param guard_groups: the gradient guard's groups (``trunk``, ``actor``, ... ``aux_1h``).
    :param output_names: the model outputs whose NaN/inf are counted.
    :param heads: the auxiliary heads (their losses and loss counters).
    :param sanitizers: ``(source, what)`` pairs that count sanitized values, e.g.
        ``("env", "returns")``, ``("buffer", "rewards")``.
    :param extra: columns filled by callbacks (``validation/sharpe``).
    :param population: rows are a population's, one per member: ``member`` and ``seed``
        columns follow ``update``.
    """

    guard_groups: Sequence[str]
    output_names: Sequence[str]
    heads: AuxHeads
    sanitizers: Sequence[tuple[str, str]]
    extra: Sequence[str] = ()
    population: bool = False

    @property
    def stats(self) -> list[str]:
        """The statistics of the PPO update: losses by name, KL, clipping, gradient norm."""
        return update_stats(self.heads, aux=True, guards=True)

    @property
    def columns(self) -> list[str]:
        return [
            "update",
            *((MEMBER, SEED) if self.population else ()),
            "epoch",
            "env_steps",
            *PERF,
            *self.stats,
            *TRAIN_EXTRA,
            *ROLLOUT,
            *self.extra,
            *(f"nonfinite/grad/{g}" for g in self.guard_groups),
            *(f"nonfinite/output/{o}" for o in self.output_names),
            *(head.loss_zeroed_column for head in self.heads),
            SKIPPED_STEPS,
            *(
                f"sanitized/{s}/{w}/{kind}"
                for s, w in self.sanitizers
                for kind in ("nonfinite", "clamped")
            ),
        ]


def log_nan_events(row: dict[str, float], schema: MetricSchema) -> None:
    """Log the fixed messages users grep for, once per update, for every gradient group,
    model output and auxiliary loss hit; a population's name the member after the fixed
    text (``NaN/inf gradient detected in aux_1h (member 3): ...``)."""
    where = f" (member {int(row[MEMBER])})" if MEMBER in row else ""
    for group in schema.guard_groups:
        if row[f"nonfinite/grad/{group}"]:
            logger.warning(
                "NaN/inf gradient detected in %s%s: %d non-finite elements zeroed this update",
                group,
                where,
                row[f"nonfinite/grad/{group}"],
            )
    for name in schema.output_names:
        if row[f"nonfinite/output/{name}"]:
            logger.warning(
                "Model output %s contains NaN/inf%s (%d elements this update)",
                output_log_name(name),
                where,
                row[f"nonfinite/output/{name}"],
            )
    for head in schema.heads:
        if row[head.loss_zeroed_column]:
            logger.warning(
                "%s was NaN/inf, setting to 0%s (%d minibatches this update)",
                head.loss_log_name,
                where,
                row[head.loss_zeroed_column],
            )


def read_metrics(path: str | Path) -> Iterator[dict[str, float]]:
    """Rows of a metrics.csv as dicts of floats (an empty cell is NaN)."""
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            yield {k: float(v) if v not in ("", None) else math.nan for k, v in row.items()}


# -- NaN/inf events -------------------------------------------------------------------------


def nan_event_kind(column: str) -> str | None:
    """Which kind of NaN/inf event a column counts (``"gradients"``, ...), or None."""
    for kind, prefix in NAN_EVENT_KINDS.items():
        if column.startswith(prefix):
            return None if prefix == "sanitized/" and column.endswith("/clamped") else kind
    return None


def nan_event_count(row: dict[str, float]) -> int:
    """All NaN/inf events in one metrics row."""
    return int(sum(v for k, v in row.items() if nan_event_kind(k) and v == v))


def nan_events_by_epoch(history: Sequence[dict[str, float]]) -> dict[int, dict[str, int]]:
    """NaN/inf events per training epoch and kind."""
    table: dict[int, dict[str, int]] = {}
    for row in history:
        per_kind = table.setdefault(int(row["epoch"]), dict.fromkeys(NAN_EVENT_KINDS, 0))
        for key, value in row.items():
            kind = nan_event_kind(key)
            if kind is not None and value == value:
                per_kind[kind] += int(value)
    return table


def nan_events_table(history: Sequence[dict[str, float]]) -> str:
    """The end-of-training table: NaN/inf events per epoch, to see whether they decrease."""
    table = nan_events_by_epoch(history)
    kinds = list(NAN_EVENT_KINDS)
    lines = [
        "NaN/inf events per epoch (all zeroed or repaired; counts are exact)",
        "epoch  " + "  ".join(f"{k:>15}" for k in kinds) + "            total",
    ]
    for epoch, counts in sorted(table.items()):
        lines.append(
            f"{epoch:>5}  "
            + "  ".join(f"{counts[k]:>15,}" for k in kinds)
            + f"  {sum(counts.values()):>15,}"
        )
    return "\n".join(lines)
