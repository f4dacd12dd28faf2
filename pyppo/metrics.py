"""What a training run records: the metric names, their writers, and the NaN-event tables.

Every update writes one row. Its columns are fixed by :class:`MetricSchema` before the first
row (so metrics.csv has one header for the whole run) and are grouped by prefix, the way
CleanRL and Stable-Baselines3 group TensorBoard scalars::

    update, epoch, env_steps              where the run is
    perf/...                              steps_per_sec, rollout_seconds, update_seconds
    loss/...                              policy, value, entropy, aux_<label> (one per head)
    train/...                             lr, approx_kl, clip_fraction, explained_variance,
                                          grad_norm, clip_coef
    rollout/...                           mean_step_reward, mean_episode_return
    validation/sharpe                     the greedy policy's Sharpe on validation bars
                                          (updates that end an epoch; empty otherwise)
    nonfinite/grad/<group>                NaN/inf gradient elements zeroed, per guard group
    nonfinite/output/<output>             NaN/inf model outputs repaired, per output
    nonfinite/loss/aux_<label>            minibatches whose auxiliary loss was NaN/inf -> 0
    guard/skipped_steps                   optimizer steps skipped (nan_policy="skip")
    sanitized/<source>/<what>/nonfinite   NaN/inf rewards or aux targets zeroed, by the env
    sanitized/<source>/<what>/clamped     or the buffer, and values clamped to +-100 %

docs/design.md has the table of these names against the columns of earlier versions.
"""

from __future__ import annotations

import csv
import logging
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pyppo.distributed import all_reduce_sum_, rank_and_world

logger = logging.getLogger("pyppo")

PERF = ("perf/steps_per_sec", "perf/rollout_seconds", "perf/update_seconds")
TRAIN_EXTRA = ("train/lr", "train/explained_variance")
ROLLOUT = ("rollout/mean_step_reward", "rollout/mean_episode_return")
# What one minibatch step reports, in order; then loss/aux_<label> per head, then the guard's.
STEP_STATS = ("loss/policy", "loss/value", "loss/entropy", "train/approx_kl", "train/clip_fraction")
GUARD_STATS = ("train/grad_norm", "train/clip_coef")
VALIDATION_SHARPE = "validation/sharpe"
SKIPPED_STEPS = "guard/skipped_steps"

# Which NaN/inf event a counter column belongs to, for the per-epoch table.
NAN_EVENT_KINDS = {
    "gradients": "nonfinite/grad/",
    "outputs": "nonfinite/output/",
    "aux losses": "nonfinite/loss/",
    "rewards/targets": "sanitized/",
}


@dataclass(frozen=True)
class MetricSchema:
    """The column names of one run's metrics, in order.

    :param guard_groups: the gradient guard's groups (``trunk``, ``actor``, ... ``aux_1h``).
    :param output_names: the model outputs whose NaN/inf are counted.
    :param aux_names: the auxiliary heads (``aux_1h``, ``aux_24h``); empty without them.
    :param sanitizers: ``(source, what)`` pairs that count sanitized values, e.g.
        ``("env", "returns")``, ``("buffer", "rewards")``.
    """

    guard_groups: Sequence[str]
    output_names: Sequence[str]
    aux_names: Sequence[str]
    sanitizers: Sequence[tuple[str, str]]

    @property
    def stats(self) -> list[str]:
        """The statistics of the PPO update: losses by name, KL, clipping, gradient norm."""
        return [*STEP_STATS, *(f"loss/{name}" for name in self.aux_names), *GUARD_STATS]

    @property
    def columns(self) -> list[str]:
        return [
            "update",
            "epoch",
            "env_steps",
            *PERF,
            *self.stats,
            *TRAIN_EXTRA,
            *ROLLOUT,
            VALIDATION_SHARPE,
            *(f"nonfinite/grad/{g}" for g in self.guard_groups),
            *(f"nonfinite/output/{o}" for o in self.output_names),
            *(f"nonfinite/loss/{name}" for name in self.aux_names),
            SKIPPED_STEPS,
            *(
                f"sanitized/{s}/{w}/{kind}"
                for s, w in self.sanitizers
                for kind in ("nonfinite", "clamped")
            ),
        ]


@dataclass
class NaNCounters:
    """One update's NaN/inf counters, int64 device tensors until the row is written (one host
    read per update, not per minibatch)."""

    grads: Tensor  # per guard group: gradient elements zeroed
    outputs: Tensor  # per model output: elements repaired
    aux_losses: Tensor  # per auxiliary head: minibatches whose loss was zeroed
    skipped: Tensor  # optimizer steps skipped (nan_policy="skip")

    @classmethod
    def zeros(cls, schema: MetricSchema, device: torch.device) -> NaNCounters:
        def z(n: int | tuple) -> Tensor:
            return torch.zeros(n, dtype=torch.int64, device=device)

        return cls(
            z(len(schema.guard_groups)),
            z(len(schema.output_names)),
            z(len(schema.aux_names)),
            z(()),
        )

    def row(self, schema: MetricSchema) -> dict[str, float]:
        """The counter columns of a metrics row (reads the counters)."""
        row: dict[str, float] = {}
        for prefix, names, counts in (
            ("nonfinite/grad/", schema.guard_groups, self.grads),
            ("nonfinite/output/", schema.output_names, self.outputs),
            ("nonfinite/loss/", schema.aux_names, self.aux_losses),
        ):
            row.update(zip([prefix + n for n in names], counts.tolist(), strict=True))
        row[SKIPPED_STEPS] = int(self.skipped)
        return row


def sanitized_row(counts: dict[tuple[str, str], Tensor]) -> dict[str, float]:
    """The ``sanitized/...`` columns from ``[nonfinite, clamped]`` counts by (source, what)."""
    row: dict[str, float] = {}
    for (source, what), count in counts.items():
        nonfinite, clamped = count.tolist()
        row[f"sanitized/{source}/{what}/nonfinite"] = nonfinite
        row[f"sanitized/{source}/{what}/clamped"] = clamped
    return row


def log_nan_events(row: dict[str, float], schema: MetricSchema) -> None:
    """Log the fixed messages users grep for, once per update, for every gradient group,
    model output and auxiliary loss hit."""
    for group in schema.guard_groups:
        if row[f"nonfinite/grad/{group}"]:
            logger.warning(
                "NaN/inf gradient detected in %s: %d non-finite elements zeroed this update",
                group,
                row[f"nonfinite/grad/{group}"],
            )
    for name in schema.output_names:
        if row[f"nonfinite/output/{name}"]:
            logger.warning(
                "Model output %s contains NaN/inf (%d elements this update)",
                name.replace("action_logits", "logits"),
                row[f"nonfinite/output/{name}"],
            )
    for name in schema.aux_names:
        if row[f"nonfinite/loss/{name}"]:
            logger.warning(
                "%s_loss was NaN/inf, setting to 0 (%d minibatches this update)",
                name,
                row[f"nonfinite/loss/{name}"],
            )


# Columns that are the same on every process (already global), and those that add up over
# processes; every other column is averaged over them.
GLOBAL_COLUMNS = (
    "update",
    "epoch",
    "env_steps",
    "nonfinite/grad/",
    SKIPPED_STEPS,
    VALIDATION_SHARPE,
)
SUMMED_COLUMNS = ("nonfinite/output/", "nonfinite/loss/", "sanitized/", "perf/steps_per_sec")


def reduce_row(row: dict[str, float], device: torch.device) -> dict[str, float]:
    """One metrics row for all processes: counters summed, losses and statistics averaged
    (one all-reduce; the row itself in a single process)."""
    world = rank_and_world()[1]
    if world == 1:
        return row
    values = all_reduce_sum_(
        torch.tensor(list(row.values()), dtype=torch.float64, device=device)
    ).tolist()
    out = {}
    for (key, local), total in zip(row.items(), values, strict=True):
        if key.startswith(GLOBAL_COLUMNS):
            out[key] = local
        else:
            out[key] = total if key.startswith(SUMMED_COLUMNS) else total / world
    return out


class MetricsWriter:
    """Writes metric rows to ``run_dir/metrics.csv`` and, when the ``tensorboard`` package
    is installed, to ``run_dir/tensorboard`` (scalars by the same names, x = env steps).

    :param run_dir: the run's folder; ``None`` writes nothing.
    :param columns: the schema's columns (the CSV header).
    :param resume_from: ``(update, env_steps)`` of the state training continues from, or
        None for a new run. Rows a killed run wrote after that state are dropped from
        metrics.csv, and TensorBoard purges its events after that step, so each update
        appears exactly once.
    """

    def __init__(
        self, run_dir: Path | None, columns: Sequence[str], *, resume_from: tuple[int, int] | None
    ) -> None:
        self.run_dir = run_dir
        self.columns = list(columns)
        self.resume_from = resume_from
        self._started = False
        self._tensorboard: Any = None

    def write(self, row: dict[str, float]) -> None:
        if self.run_dir is None:
            return
        path = self.run_dir / "metrics.csv"
        if not self._started:
            self._start(path)
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore", restval="")
            writer.writerow(row)
        board = self._board()
        if board is not None:
            for key, value in row.items():
                if key not in ("update", "env_steps") and value == value:
                    board.add_scalar(key, value, int(row["env_steps"]))

    def _start(self, path: Path) -> None:
        """A new metrics.csv with its header, or a resumed one cut after ``resume_from``."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        kept: list[dict[str, str]] = []
        if self.resume_from is not None and path.exists():
            with open(path, newline="") as f:
                kept = [
                    r
                    for r in csv.DictReader(f)
                    if r.get("update") and float(r["update"]) <= self.resume_from[0]
                ]
        tmp = path.with_name(".metrics.csv.tmp")
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore", restval="")
            writer.writeheader()
            writer.writerows(kept)
        tmp.replace(path)
        self._started = True

    def _board(self) -> Any:
        if self._tensorboard is None and self.run_dir is not None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._tensorboard = False
            else:
                purge = None if self.resume_from is None else self.resume_from[1] + 1
                self._tensorboard = SummaryWriter(
                    str(self.run_dir / "tensorboard"), purge_step=purge
                )
        return self._tensorboard or None

    def flush(self) -> None:
        if self._tensorboard:
            self._tensorboard.flush()


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


class ProgressBar:
    """A tqdm bar over updates when tqdm is installed and wanted; otherwise a line every
    10 % of the updates (or nothing with ``enabled=False``)."""

    def __init__(self, total: int, done: int, enabled: bool) -> None:
        self.total, self.done, self.enabled = total, done, enabled
        self.bar = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                pass
            else:
                self.bar = tqdm(total=total, initial=done, unit="update", dynamic_ncols=True)

    def update(self, row: dict[str, float]) -> None:
        self.done += 1
        text = (
            f"epoch {row['epoch']:.0f} | {row['perf/steps_per_sec']:,.0f} steps/s | return "
            f"{row['rollout/mean_episode_return']:+.3f} | NaN events {nan_event_count(row)}"
        )
        if self.bar is not None:
            self.bar.set_description_str(text, refresh=False)
            self.bar.update(1)
        elif self.enabled and (
            self.done == self.total or self.done % max(1, self.total // 10) == 0
        ):
            print(f"update {self.done}/{self.total} | {text}", flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
