"""load_market_data: OHLCV bars from a CSV path, a Parquet path or a DataFrame, validated.

Data flows ``CSV/Parquet/DataFrame -> load_market_data -> MarketData -> TradingEnv``.
Every check here exists because dirty market data otherwise turns into inf/NaN returns
far away from its cause. The rule is: bad data raises a :class:`MarketDataError` that names
the offending rows and says how to fix them; nothing is dropped or changed unless the user
asked for it with ``repair=``, and every repair is counted in :meth:`MarketData.report`.

The order of the checks: read the file, find and parse the timestamp and price columns
(:mod:`pyppo.data.parsing`), then check that timestamps are unique and sorted, that prices
are finite and positive with high >= low (or repair them), and that there are enough bars
for the window and the longest horizon.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pyppo.data.errors import (
    _MAX_EXAMPLES,
    MarketDataError,
    _examples,
    _row_examples,
    _row_name,
)
from pyppo.data.horizons import horizon_label, horizon_to_bars
from pyppo.data.market import (
    MarketData,
    RepairSummary,
    _check_length,
    _ns,
    infer_bar_interval,
)
from pyppo.data.parsing import _extract_prices, _extract_timestamps

__all__ = ["load_market_data"]

PRICE_COLUMNS = ("open", "high", "low", "close")


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
            ``Time`` columns, or an unnamed first column (a saved index).
        timestamp_format: a ``strftime`` format such as ``"%d/%m/%Y %H:%M"``, for timestamps
            pyppo cannot parse or that are ambiguous (day-first vs month-first).
        price_col: the price column when it is not called close/price/last/adj close.
        repair: ``None`` (default: bad prices are an error), ``"drop"`` (drop rows with NaN,
            zero or negative prices) or ``"ffill"`` (replace them with the last good value).
            Repairs are counted in :meth:`MarketData.report`.
        window: the observation window in bars, used for the minimum-length check.
        horizons: the auxiliary horizons, durations or bars (see :mod:`pyppo.data.horizons`),
            kept as :attr:`MarketData.horizons` and :attr:`MarketData.horizon_labels`: the
            env's auxiliary targets follow them. Also used for the minimum-length check.

    Open/high/low/close are checked (NaN, zero/negative, high < low); volume is optional and
    kept as read (nothing in pyppo trains on it). Nothing is dropped or changed unless
    ``repair`` says so.

    Raises:
        MarketDataError: naming the offending rows and saying what to do.
    """
    if repair not in (None, "drop", "ffill"):
        raise MarketDataError(f"repair={repair!r}: use None, 'drop' or 'ffill'")
    raw, name = _read(source)
    if len(raw) == 0:
        raise MarketDataError(f"{name}: no rows")
    stamps, rest = _extract_timestamps(raw, timestamp_col, timestamp_format, name)
    frame = _extract_prices(rest, price_col, name)
    frame.index = pd.DatetimeIndex(stamps, name="timestamp")
    _check_order(frame, name)
    frame, summary = _check_prices(frame, repair, name)
    if len(frame) < 2:
        raise MarketDataError(f"{name}: only {len(frame)} bar(s) left; need a series of bars")
    interval = infer_bar_interval(frame.index)
    if interval <= pd.Timedelta(0):
        raise MarketDataError(f"{name}: could not infer a positive bar interval")
    bars = tuple(horizon_to_bars(h, interval) for h in horizons)
    labels = tuple(horizon_label(h) for h in horizons)
    _check_length(frame, window, bars, labels, what=name)
    return MarketData(
        frame,
        bar_interval=interval,
        horizons=horizons,
        window=window,
        repair=summary,
        source=name,
    )


def _read(source: str | Path | pd.DataFrame) -> tuple[pd.DataFrame, str]:
    if isinstance(source, pd.DataFrame):
        return source.copy(), "DataFrame"
    path = Path(source)
    if not path.exists():
        raise MarketDataError(
            f"market data file not found: {path} (absolute: {path.resolve()}); check the path, "
            "or leave the data option out to train on the embedded synthetic market"
        )
    if path.is_dir():
        raise MarketDataError(f"{path} is a directory; pass a CSV or Parquet file")
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] in (".parquet", ".pq"):
        try:
            frame = pd.read_parquet(path)
        except ImportError as err:
            raise MarketDataError(
                f"{path}: reading Parquet needs pyarrow: pip install pyarrow"
            ) from err
    else:
        try:
            frame = pd.read_csv(path)
            # A single column whose name holds ';' or tabs: the file uses another separator
            # (common in European exports). Read it again with that one.
            if len(frame.columns) == 1:
                header = str(frame.columns[0])
                for sep in (";", "\t", "|"):
                    if sep in header:
                        frame = pd.read_csv(path, sep=sep)
                        break
        except (pd.errors.ParserError, UnicodeDecodeError, pd.errors.EmptyDataError) as err:
            raise MarketDataError(f"{path}: not a readable CSV file ({err})") from err
    return frame, str(path)


def _check_order(frame: pd.DataFrame, name: str) -> None:
    idx = frame.index
    dup = np.flatnonzero(idx.duplicated(keep=False))
    if len(dup):
        stamps = sorted({str(idx[p]) for p in dup})
        rows = ", ".join(_row_name(p, name) for p in dup[:_MAX_EXAMPLES])
        raise MarketDataError(
            f"{name}: duplicate timestamps: {_examples(stamps)} ({rows}"
            f"{', ...' if len(dup) > _MAX_EXAMPLES else ''}; {len(dup)} rows involved). Each bar "
            "needs a unique timestamp: remove the duplicates (e.g. df[~df.index.duplicated()]) "
            "or check the timestamp column and timestamp_format"
        )
    back = np.flatnonzero(np.diff(_ns(idx)) < 0) + 1
    if len(back):
        shown = "; ".join(
            f"{_row_name(p, name)} ({idx[p]}) comes after {idx[p - 1]}"
            for p in back[:_MAX_EXAMPLES]
        )
        raise MarketDataError(
            f"{name}: timestamps are not sorted ({len(back)} places go back in time): {shown}. "
            "Sort the data by time first, e.g. df.sort_index() or df.sort_values('timestamp')"
        )


def _check_prices(
    frame: pd.DataFrame, repair: str | None, name: str
) -> tuple[pd.DataFrame, RepairSummary]:
    price_cols = [c for c in PRICE_COLUMNS if c in frame.columns]
    prices = frame[price_cols].to_numpy()
    nan_row = np.isnan(prices).any(axis=1)
    nonpos_row = (prices <= 0).any(axis=1)  # NaN compares False, so rows are disjoint-ish
    nonpos_row &= ~nan_row
    raw_text = frame.attrs.get("raw_text", {})

    def describe(p: int) -> str:
        bits = []
        for c in price_cols:
            v = frame[c].iat[p]
            if np.isnan(v) and c in raw_text and p in raw_text[c].index:
                bits.append(f"{c}={raw_text[c][p]!r} (not a number)")
            elif np.isnan(v) or v <= 0:
                bits.append(f"{c}={v}")
        return ", ".join(bits)

    _check_high_low(frame, name)
    summary = RepairSummary(method=repair)
    if repair is None:
        fix = "pass repair='drop' to drop these rows or repair='ffill' to forward-fill them"
        if nan_row.any():
            raise MarketDataError(
                f"{name}: NaN/missing prices in {int(nan_row.sum())} rows: "
                f"{_row_examples(np.flatnonzero(nan_row), frame, describe, name)}. "
                f"Fix the file, or {fix}"
            )
        if nonpos_row.any():
            raise MarketDataError(
                f"{name}: zero or negative prices in {int(nonpos_row.sum())} rows: "
                f"{_row_examples(np.flatnonzero(nonpos_row), frame, describe, name)}. "
                f"Fix the file, or {fix}"
            )
    elif nan_row.any() or nonpos_row.any():
        bad = nan_row | nonpos_row
        if repair == "drop":
            frame = frame.loc[~bad]
            summary = RepairSummary(
                "drop", int(nan_row.sum()), int(nonpos_row.sum()), dropped=int(bad.sum())
            )
        else:
            # Forward-fill each price column from its last good value. Rows before the first
            # good value cannot be filled; they are dropped and counted as dropped.
            cleaned = frame.copy()
            for c in price_cols:
                col = cleaned[c]
                cleaned[c] = col.where(col > 0).ffill()
            leading = cleaned[price_cols].isna().any(axis=1).to_numpy()
            cleaned = cleaned.loc[~leading]
            summary = RepairSummary(
                "ffill",
                int(nan_row.sum()),
                int(nonpos_row.sum()),
                dropped=int(leading.sum()),
                filled=int((bad & ~leading).sum()),
            )
            frame = cleaned
    frame.attrs.pop("raw_text", None)
    if summary.filled:
        _check_high_low(frame, name + " after repair='ffill'")
    return frame, summary


def _check_high_low(frame: pd.DataFrame, name: str) -> None:
    if "high" not in frame.columns or "low" not in frame.columns:
        return
    high, low = frame["high"].to_numpy(), frame["low"].to_numpy()
    rows = np.flatnonzero(high < low)
    if len(rows):
        raise MarketDataError(
            f"{name}: high < low in {len(rows)} rows: "
            f"{_row_examples(rows, frame, lambda p: f'high={high[p]} < low={low[p]}', name)}. "
            "Check that the high and low columns are not swapped or mislabelled"
        )
