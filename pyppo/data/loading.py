"""load_market_data: OHLCV bars from a CSV path, a Parquet path or a DataFrame, validated.

Data flows ``CSV/Parquet/DataFrame -> load_market_data -> MarketData -> TradingEnv``.
Every check here exists because dirty market data otherwise turns into inf/NaN returns
far away from its cause. The rule is: bad data raises a :class:`MarketDataError` that names
the offending rows and says how to fix them; nothing is dropped or changed unless the user
asked for it with ``repair=``, and every repair is counted in :meth:`MarketData.report`.

The order of the checks: read the file (:mod:`pyppo.data.reading`), find and parse the
timestamp and price columns (:mod:`pyppo.data.parsing`), then check that timestamps are
unique, free of single typos and sorted, that prices are finite and positive with open and
close within [low, high] (or repair them), that the returns between closes are finite
(:mod:`pyppo.data.checks`), and that there are enough bars for the window and the longest
horizon.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd

from pyppo.data.checks import check_order, check_prices, check_returns
from pyppo.data.errors import DataSource, MarketDataError, examples_text
from pyppo.data.horizons import horizon_label, horizon_to_bars
from pyppo.data.market import MarketData, check_length, infer_bar_interval
from pyppo.data.parsing import extract_prices, extract_timestamps
from pyppo.data.reading import read_table

__all__ = ["load_market_data"]


def load_market_data(
    source: str | Path | pd.DataFrame,
    *,
    timestamp_col: str | None = None,
    timestamp_format: str | None = None,
    price_col: str | None = None,
    repair: str | None = None,
    window: int = 60,
    horizons: Sequence[int | str | pd.Timedelta] = ("1h", "24h"),
) -> MarketData:
    """Load and validate OHLCV bars from a CSV path, a Parquet path or a DataFrame.

    Args:
        source: ``.csv`` (optionally compressed) or ``.parquet``/``.pq`` path, or a DataFrame.
        timestamp_col: the timestamp column. By default pyppo uses a DatetimeIndex, a column
            named like timestamp/datetime/date/time (case-insensitive), separate ``Date`` and
            ``Time`` columns, or an unnamed first column (a saved index); two of these are an
            error (pass ``timestamp_col`` to choose).
        timestamp_format: a ``strftime`` format such as ``"%d/%m/%Y %H:%M"``, for timestamps
            pyppo cannot parse or that are ambiguous (day-first vs month-first).
        price_col: the price column when it is not called close/price/last/adj close, or
            when two columns are (``Close`` and ``Adj Close``: an error unless this says
            which).
        repair: ``None`` (default: bad prices are an error), ``"drop"`` (drop rows with NaN,
            infinite, zero or negative prices, or open/close outside [low, high]) or
            ``"ffill"`` (replace bad values with the last good value of their column; a row
            whose open/high/low/close do not fit together takes the previous bar's whole).
            See :mod:`pyppo.data.checks`. Repairs are counted in :meth:`MarketData.report`.
        window: the observation window in bars, used for the minimum-length check.
        horizons: the auxiliary horizons, durations or bars (see :mod:`pyppo.data.horizons`),
            kept as :attr:`MarketData.horizons` and :attr:`MarketData.horizon_labels`: the
            env's auxiliary targets follow them. Also used for the minimum-length check.

    Open/high/low/close are checked (NaN, infinite, zero/negative, high < low, open/close
    outside [low, high]); volume is optional, must be numeric, and is kept as read (nothing
    in pyppo trains on it). Nothing is dropped or changed unless ``repair`` says so.

    Raises:
        MarketDataError: for any data pyppo cannot read or trust (an unreadable, corrupt,
            truncated or empty file included), naming the file, the offending rows or
            column, and saying what to do.
    """
    if repair not in (None, "drop", "ffill"):
        raise MarketDataError(f"repair={repair!r}: use None, 'drop' or 'ffill'")
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise MarketDataError(f"window={window!r}: the observation window is a whole number >= 1")
    if isinstance(horizons, (str, int)) or len(horizons) == 0:
        raise MarketDataError(
            f"horizons={horizons!r}: give a sequence of one or more horizons, e.g. ('1h', '24h')"
        )
    raw, name = read_table(source)
    return market_from_table(
        raw,
        name,
        timestamp_col=timestamp_col,
        timestamp_format=timestamp_format,
        price_col=price_col,
        repair=repair,
        window=window,
        horizons=horizons,
    )


def market_from_table(
    raw: pd.DataFrame,
    name: DataSource,
    *,
    timestamp_col: str | None,
    timestamp_format: str | None,
    price_col: str | None,
    repair: str | None,
    window: int,
    horizons: Sequence[int | str | pd.Timedelta],
) -> MarketData:
    """Validate a raw table already read (by :func:`load_market_data`, or one symbol's rows
    of a long-format table), with ``name`` naming it and its rows in messages."""
    if len(raw) == 0:
        raise MarketDataError(f"{name}: no rows; the data needs a header and bars")
    dup = raw.columns[raw.columns.duplicated()]
    if len(dup):
        raise MarketDataError(
            f"{name}: columns appear more than once: {examples_text([repr(str(c)) for c in dup])}; "
            "drop or rename the copies"
        )
    stamps, rest = extract_timestamps(raw, timestamp_col, timestamp_format, name)
    frame = extract_prices(rest, price_col, name)
    frame.index = pd.DatetimeIndex(stamps, name="timestamp")
    check_order(frame, name)
    frame, summary = check_prices(frame, repair, name)
    check_returns(frame, name)
    if len(frame) < 2:
        raise MarketDataError(f"{name}: only {len(frame)} bar(s) left; need a series of bars")
    interval = infer_bar_interval(frame.index)
    if interval <= pd.Timedelta(0):
        raise MarketDataError(f"{name}: could not infer a positive bar interval")
    bars = tuple(horizon_to_bars(h, interval) for h in horizons)
    labels = tuple(horizon_label(h) for h in horizons)
    check_length(frame, window, bars, labels, what=name)
    return MarketData(
        frame,
        bar_interval=interval,
        horizons=horizons,
        window=window,
        repair=summary,
        source=str(name),
    )
