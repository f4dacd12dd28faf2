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
from pyppo.metrics import MEMBER, METRICS_FILE, SEED, SKIPPED_STEPS, MetricSchema, nan_event_count


@dataclass
class NaNCounters:
    """One update's NaN/inf counters, int64 device tensors until the rows are written (one
    host read per update, not per minibatch). A population's have a leading member
    dimension."""

    grads: Tensor  # per guard group: gradient elements zeroed
    outputs: Tensor  # per model output: elements repaired
    aux_losses: Tensor  # per auxiliary head: minibatches whose loss was zeroed
    skipped: Tensor  # optimizer steps skipped (nan_policy="skip")

    @classmethod
    def zeros(cls, schema: MetricSchema, device: torch.device, members: int = 1) -> NaNCounters:
        lead = () if members == 1 else (members,)

        def z(n: int | tuple) -> Tensor:
            return torch.zeros(
                (*lead, *((n,) if isinstance(n, int) else n)), dtype=torch.int64, device=device
            )

        return cls(
            z(len(schema.guard_groups)),
            z(len(schema.output_names)),
            z(len(schema.heads)),
            z(()),
        )

    def columns(self, schema: MetricSchema) -> dict[str, Tensor]:
        """The counter columns, each a tensor (one value, or one per member)."""
        named = {}
        for names, counts in (
            ([f"nonfinite/grad/{g}" for g in schema.guard_groups], self.grads),
            ([f"nonfinite/output/{o}" for o in schema.output_names], self.outputs),
            ([head.loss_zeroed_column for head in schema.heads], self.aux_losses),
        ):
            named.update(zip(names, counts.unbind(-1), strict=True))
        named[SKIPPED_STEPS] = self.skipped
        return named


def sanitized_columns(counts: dict[tuple[str, str], Tensor]) -> dict[str, Tensor]:
    """The ``sanitized/...`` columns from ``[nonfinite, clamped]`` counts by (source, what),
    each a tensor (one value, or one per member for ``(M, 2)`` counts)."""
    named = {}
    for (source, what), count in counts.items():
        nonfinite, clamped = count.unbind(-1)
        named[f"sanitized/{source}/{what}/nonfinite"] = nonfinite
        named[f"sanitized/{source}/{what}/clamped"] = clamped
    return named


def member_rows(
    shared: dict[str, float], columns: dict[str, Tensor], members: int
) -> list[dict[str, float]]:
    """One metrics row per member: the ``shared`` values, then ``columns`` (tensors of one
    value, or one per member), read back in two transfers (counts stay integers)."""
    rows = [dict(shared) for _ in range(members)]
    for dtype in (torch.int64, torch.float64):
        names = [
            n for n, v in columns.items() if (v.dtype == torch.int64) == (dtype == torch.int64)
        ]
        if not names:
            continue
        table = torch.stack([columns[n].to(dtype).reshape(-1).expand(members) for n in names])
        for row, values in zip(rows, table.t().tolist(), strict=True):
            row.update(zip(names, values, strict=True))
    return rows


# Columns that are the same on every process (already global), and those that add up over
# processes; every other column is averaged over them.
GLOBAL_COLUMNS = (
    "update",
    "epoch",
    "env_steps",
    MEMBER,
    SEED,
    "nonfinite/grad/",
    SKIPPED_STEPS,
)
SUMMED_COLUMNS = ("nonfinite/output/", "nonfinite/loss/", "sanitized/", "perf/steps_per_sec")


def reduce_rows(rows: list[dict[str, float]], device: torch.device) -> list[dict[str, float]]:
    """The metrics rows (one per member) for all processes: counters summed, losses and
    statistics averaged (one all-reduce; the rows themselves in a single process)."""
    world = rank_and_world()[1]
    if world == 1:
        return rows
    values = all_reduce_sum_(
        torch.tensor([list(row.values()) for row in rows], dtype=torch.float64, device=device)
    ).tolist()
    reduced = []
    for row, totals in zip(rows, values, strict=True):
        out = {}
        for (key, local), total in zip(row.items(), totals, strict=True):
            if key.startswith(GLOBAL_COLUMNS):
                out[key] = local
            else:
                out[key] = total if key.startswith(SUMMED_COLUMNS) else total / world
        reduced.append(out)
    return reduced


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
        board = self._board(int(row.get(MEMBER, 0)))
        if board is not None:
            for key, value in row.items():
                if key not in ("update", "env_steps", MEMBER, SEED) and value == value:
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

    def _board(self, member: int) -> Any:
        """The TensorBoard writer of ``member``: ``tensorboard/``, or one run per member
        (``tensorboard/member_3``) for a population."""
        if self._tensorboard is False or self.run_dir is None:
            return None
        if self._tensorboard is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                self._tensorboard = False
                return None
            self._summary_writer = SummaryWriter
            self._tensorboard = {}
        if member not in self._tensorboard:
            folder = self.run_dir / "tensorboard"
            if MEMBER in self.columns:
                folder = folder / f"member_{member}"
            purge = None if self.resume_from is None else self.resume_from[1] + 1
            self._tensorboard[member] = self._summary_writer(str(folder), purge_step=purge)
        return self._tensorboard[member]

    def flush(self) -> None:
        """Write out TensorBoard's buffered events."""
        for board in (self._tensorboard or {}).values():
            board.flush()


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

    def update(self, rows: list[dict[str, float]]) -> None:
        """One update's rows (one per member)."""
        self.done += 1
        text = self.describe(rows)
        if self.bar is not None:
            self.bar.set_description_str(text, refresh=False)
            self.bar.update(1)
        elif self.enabled and (
            self.done == self.total or self.done % max(1, self.total // 10) == 0
        ):
            print(f"update {self.done}/{self.total} | {text}", flush=True)

    @staticmethod
    def describe(rows: list[dict[str, float]]) -> str:
        """The progress line's text for one update's rows (the members' mean episode return,
        their NaN events together; never NaN: before the first episode ends there is no
        episode return to show)."""
        returns = [r["rollout/mean_episode_return"] for r in rows]
        returns = [x for x in returns if x == x]
        shown = f"{sum(returns) / len(returns):+.3f}" if returns else "-"
        first = rows[0]
        return (
            f"epoch {first['epoch']:.0f} | {first['perf/steps_per_sec']:,.0f} steps/s | return "
            f"{shown} | NaN events {sum(nan_event_count(r) for r in rows)}"
        )

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
