"""MarketDataError, and the helpers that name the offending rows in its messages.

The rule of :mod:`pyppo.data`: bad data raises a :class:`MarketDataError` that names the
offending rows and says how to fix them. A message shows a few rows (``MAX_EXAMPLES``) and
always the total count. Rows are named the way a user finds them: ``line N`` of a file (the
header is line 1; blank lines, which the CSV reader skips, are counted where the reader
recorded where each row came from, see :class:`DataSource`), ``row N`` of a DataFrame.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["MarketDataError"]

MAX_EXAMPLES = 5  # rows shown in an error message; the total count is always given


class MarketDataError(ValueError):
    """Market data that pyppo refuses to train on; the message says what and how to fix it."""


class DataSource(str):
    """The name of the data in messages (a path, or ``"DataFrame"``), carrying the file line
    of each data row when the file has blank lines (``lines[p]`` is the 1-based line of data
    row ``p``); ``lines`` is ``None`` when data row ``p`` is simply on line ``p + 2``. For one
    symbol's rows of a long DataFrame, ``lines[p]`` is the row's position in the whole frame."""

    lines: np.ndarray | None

    def __new__(cls, name: str, lines: np.ndarray | None = None) -> DataSource:
        obj = super().__new__(cls, name)
        obj.lines = lines
        return obj


def examples_text(labels: Sequence[object], limit: int = MAX_EXAMPLES) -> str:
    """``a, b, c, ... (N in total)``: a few examples plus the total count."""
    shown = ", ".join(str(x) for x in list(labels)[:limit])
    more = (
        f", ... ({len(labels)} in total)" if len(labels) > limit else f" ({len(labels)} in total)"
    )
    return shown + more


def row_name(p: int, name: str) -> str:
    """How a user finds row ``p`` (0-based data row): the line in a file (the header is
    line 1), the position in a DataFrame."""
    if name == "DataFrame":
        rows = getattr(name, "lines", None)  # a symbol's rows of a long table: their positions
        return f"row {int(rows[p]) if rows is not None and 0 <= p < len(rows) else int(p)}"
    lines = getattr(name, "lines", None)
    if lines is not None and 0 <= p < len(lines):
        return f"line {int(lines[p])}"
    return f"line {int(p) + 2}"


def row_examples(positions: np.ndarray, frame: pd.DataFrame, what: Any, name: str) -> str:
    """A few rows as ``line N (timestamp): what`` plus the total count."""
    items = []
    for p in positions[:MAX_EXAMPLES]:
        items.append(f"{row_name(p, name)} ({frame.index[p]}): {what(p)}")
    total = len(positions)
    tail = f"; ... {total} rows in total" if total > MAX_EXAMPLES else f" ({total} in total)"
    return "; ".join(items) + tail
