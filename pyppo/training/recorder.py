"""What a training run records while it runs: device counters, the metrics row across
processes, metrics.csv and TensorBoard, the progress bar.

The names and the schema these write are :mod:`pyppo.metrics` (which the report reads
without torch); this module is the run-time half.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from pyppo.distributed import all_reduce_sum_, rank_and_world
from pyppo.files import replaced
from pyppo.metrics import METRICS_FILE, SKIPPED_STEPS, MetricSchema, nan_event_count


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
            z(len(schema.heads)),
            z(()),
        )

    def row(self, schema: MetricSchema) -> dict[str, float]:
        """The counter columns of a metrics row (reads the counters)."""
        row: dict[str, float] = {}
        for columns, counts in (
            ([f"nonfinite/grad/{g}" for g in schema.guard_groups], self.grads),
            ([f"nonfinite/output/{o}" for o in schema.output_names], self.outputs),
            ([head.loss_zeroed_column for head in schema.heads], self.aux_losses),
        ):
            row.update(zip(columns, counts.tolist(), strict=True))
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


# Columns that are the same on every process (already global), and those that add up over
# processes; every other column is averaged over them.
GLOBAL_COLUMNS = (
    "update",
    "epoch",
    "env_steps",
    "nonfinite/grad/",
    SKIPPED_STEPS,
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

    Each row is appended and fsynced before the trainer saves the checkpoint that covers it.
    The checkpoint holds every row up to its update (``history``), so a resumed run starts
    metrics.csv afresh from it: rows a killed run wrote after its last checkpoint go, rows
    lost or deleted come back (with a note), and TensorBoard purges its events after that
    step. Each update appears exactly once.

    :param run_dir: the run's folder; ``None`` writes nothing.
    :param columns: the schema's columns (the CSV header).
    :param history: the rows of the state training continues from (empty for a new run).
    :param resume_from: ``(update, env_steps)`` of that state, or None for a new run.
    """

    def __init__(
        self,
        run_dir: Path | None,
        columns: Sequence[str],
        *,
        history: Sequence[dict[str, float]] = (),
        resume_from: tuple[int, int] | None = None,
    ) -> None:
        self.run_dir = run_dir
        self.columns = list(columns)
        self.history = list(history)
        self.resume_from = resume_from
        self._started = False
        self._tensorboard: Any = None

    def write(self, row: dict[str, float]) -> None:
        if self.run_dir is None:
            return
        path = self.run_dir / METRICS_FILE
        if not self._started:
            self._start(path)
        with open(path, "a", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore", restval="")
            writer.writerow(row)
            f.flush()
            os.fsync(f.fileno())
        board = self._board()
        if board is not None:
            for key, value in row.items():
                if key not in ("update", "env_steps") and value == value:
                    board.add_scalar(key, value, int(row["env_steps"]))

    def _start(self, path: Path) -> None:
        """metrics.csv with its header and the rows of :attr:`history`, replacing the file."""
        if self.resume_from is not None:
            on_disk = _rows_up_to(path, self.resume_from[0])
            if on_disk != len(self.history):
                print(
                    f"note: {path} held {on_disk} of the {len(self.history)} rows up to update "
                    f"{self.resume_from[0]}; they are rewritten from the checkpoint"
                )
        with replaced(path) as tmp, open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=self.columns, extrasaction="ignore", restval="")
            writer.writeheader()
            writer.writerows(self.history)
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
        """Write out TensorBoard's buffered events."""
        if self._tensorboard:
            self._tensorboard.flush()


def _rows_up_to(path: Path, update: int) -> int:
    """How many rows of the metrics.csv at ``path`` belong to updates up to ``update``."""
    if not path.is_file():
        return 0
    with open(path, newline="") as f:
        return sum(1 for r in csv.DictReader(f) if r.get("update") and float(r["update"]) <= update)


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
        text = self.describe(row)
        if self.bar is not None:
            self.bar.set_description_str(text, refresh=False)
            self.bar.update(1)
        elif self.enabled and (
            self.done == self.total or self.done % max(1, self.total // 10) == 0
        ):
            print(f"update {self.done}/{self.total} | {text}", flush=True)

    @staticmethod
    def describe(row: dict[str, float]) -> str:
        """The progress line's text for one update's metrics row (never NaN: before the first
        episode ends there is no episode return to show)."""
        episode = row["rollout/mean_episode_return"]
        shown = f"{episode:+.3f}" if episode == episode else "-"
        return (
            f"epoch {row['epoch']:.0f} | {row['perf/steps_per_sec']:,.0f} steps/s | return "
            f"{shown} | NaN events {nan_event_count(row)}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
