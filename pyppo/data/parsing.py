"""Finding the timestamp and price columns of a raw table, and parsing them strictly.

Column names are matched case-insensitively after normalising spaces/dashes to ``_``. Every
timestamp must parse, and a day-first vs month-first ambiguity is an error, never a guess.
Prices are read as float64; values that are not numbers become NaN, and their raw text is
kept for the error message of the price checks in :mod:`pyppo.data.loading`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from pyppo.data.errors import _MAX_EXAMPLES, MarketDataError, _row_name

# Accepted column names, matched case-insensitively after normalising spaces/dashes to "_".
_TIMESTAMP_NAMES = (
    "timestamp",
    "datetime",
    "date_time",
    "time_stamp",
    "ts",
    "time",
    "date",
    "open_time",
    "opentime",
    "unnamed:_0",
    "index",
)
_COLUMN_ALIASES = {
    "open": ("open", "o", "open_price"),
    "high": ("high", "h", "high_price"),
    "low": ("low", "l", "low_price"),
    "close": ("close", "c", "close_price", "price", "last", "adj_close", "adjclose"),
    "volume": ("volume", "v", "vol"),
}
_ISO_DATE = re.compile(r"^\s*\d{4}-\d{1,2}-\d{1,2}")


def _norm(name: object) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def _find_column(frame: pd.DataFrame, names: Sequence[str]) -> Any | None:
    by_norm = {_norm(c): c for c in frame.columns}
    for n in names:
        if n in by_norm:
            return by_norm[n]
    return None


def _extract_timestamps(
    raw: pd.DataFrame, timestamp_col: str | None, fmt: str | None, name: str
) -> tuple[pd.DatetimeIndex, pd.DataFrame]:
    """Find the timestamp source, parse it, and return (timestamps, the other columns)."""
    columns = [str(c) for c in raw.columns]
    if timestamp_col is not None:
        col = _find_column(raw, [_norm(timestamp_col)])
        if col is None:
            if raw.index.name is not None and _norm(raw.index.name) == _norm(timestamp_col):
                return _parse_timestamps(raw.index.to_series(), fmt, name), raw.reset_index(
                    drop=True
                )
            raise MarketDataError(
                f"{name}: timestamp_col={timestamp_col!r} not found; columns are {columns}"
            )
        return _parse_timestamps(raw[col], fmt, name, col), raw.drop(columns=[col])
    # A DataFrame that already has a datetime index (also what Parquet round-trips give).
    if isinstance(raw.index, pd.DatetimeIndex):
        return _parse_timestamps(raw.index.to_series(), fmt, name, "index"), raw.reset_index(
            drop=True
        )
    # Separate Date and Time columns, e.g. "2024-01-02","13:00" (common in broker exports).
    date_col, time_col = _find_column(raw, ["date"]), _find_column(raw, ["time"])
    if (
        date_col is not None
        and time_col is not None
        and not _looks_like_full_datetime(raw[time_col])
    ):
        joined = raw[date_col].astype(str).str.strip() + " " + raw[time_col].astype(str).str.strip()
        label = f"{date_col} + {time_col}"
        return _parse_timestamps(joined, fmt, name, label), raw.drop(columns=[date_col, time_col])
    col = _find_column(raw, _TIMESTAMP_NAMES)
    if col is None and len(raw.columns) and not _is_price_name(raw.columns[0]):
        col = raw.columns[0]  # an unnamed or oddly named first column: maybe a saved index
        if pd.api.types.is_numeric_dtype(raw[col]) and not _looks_like_epoch(raw[col]):
            col = None
    if col is None:
        raise MarketDataError(
            f"{name}: no timestamp column found; columns are {columns}. Name it 'timestamp' "
            f"(or Date/Time/datetime), or pass timestamp_col='<column>'"
        )
    return _parse_timestamps(raw[col], fmt, name, col), raw.drop(columns=[col])


def _is_price_name(col: object) -> bool:
    return any(_norm(col) in names for names in _COLUMN_ALIASES.values())


def _looks_like_full_datetime(values: pd.Series) -> bool:
    sample = values.dropna().astype(str).head(5)
    return bool(len(sample)) and all(_ISO_DATE.match(v) or "/" in v for v in sample)


def _looks_like_epoch(values: pd.Series) -> bool:
    v = pd.to_numeric(values, errors="coerce").dropna()
    return len(v) > 0 and bool((v > 1e8).all())  # seconds since 1973 or finer units


def _parse_epoch(values: pd.Series) -> pd.Series:
    v = pd.to_numeric(values, errors="coerce")
    magnitude = float(v.abs().median())
    unit = (
        "s"
        if magnitude < 1e11
        else "ms"
        if magnitude < 1e14
        else "us"
        if magnitude < 1e17
        else "ns"
    )
    return pd.to_datetime(v, unit=unit, errors="coerce")


def _to_datetime(values: pd.Series, **kwargs: Any) -> pd.Series:
    """pandas' parser, quiet (its format-inference warnings are replaced by our errors), and
    converting mixed UTC offsets to UTC instead of failing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pd.to_datetime(values, errors="coerce", **kwargs)
        except (ValueError, TypeError):
            try:
                return pd.to_datetime(values, errors="coerce", utc=True, **kwargs)
            except (ValueError, TypeError):
                return pd.Series(pd.NaT, index=values.index)


def _parse_timestamps(
    values: pd.Series, fmt: str | None, name: str, label: object = "timestamp"
) -> pd.DatetimeIndex:
    """Parse timestamps strictly: every value must parse, and a day-first vs month-first
    ambiguity is an error unless exactly one reading works for every row."""
    values = values.reset_index(drop=True)
    hint = "pass timestamp_format= with a strftime format, e.g. timestamp_format='%d/%m/%Y %H:%M'"
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    elif fmt is not None:
        parsed = _to_datetime(values, format=fmt)
        hint = f"timestamp_format={fmt!r} does not match them; check the format"
    elif pd.api.types.is_numeric_dtype(values):
        if _looks_like_epoch(values):
            parsed = _parse_epoch(values)
            hint = "numbers are read as Unix epoch time; pass timestamp_format= if they are not"
        else:
            # Small numbers such as a saved row number (0, 1, 2, ...) are not times.
            parsed = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")
            hint = (
                "these numbers are too small to be Unix epoch times (a saved row number?); "
                "pass timestamp_col= naming the column that holds the timestamps"
            )
    else:
        text = values.astype(str).str.strip()
        if text.head(20).map(lambda v: bool(_ISO_DATE.match(v))).all():
            # YYYY-MM-DD is never ambiguous (and dayfirst=True would misread it).
            parsed = _to_datetime(text, format="ISO8601")
        else:
            parsed = _resolve_day_month(text, name, label)
    bad = np.flatnonzero(pd.isna(parsed).to_numpy())
    if len(bad):
        shown = "; ".join(f"{_row_name(p, name)}: {values.iloc[p]!r}" for p in bad[:_MAX_EXAMPLES])
        total = f" ({len(bad)} of {len(values)} rows)"
        raise MarketDataError(
            f"{name}: cannot parse timestamps in column {label!s}{total}: {shown}; {hint}"
        )
    idx = pd.DatetimeIndex(parsed)
    return idx


def _resolve_day_month(text: pd.Series, name: str, label: object) -> pd.Series:
    """Parse with month-first and with day-first reading. If only one reading parses every
    row (a day above 12 proves which is which), use it; if both do and they disagree, the
    data is ambiguous and the user must say which (we never guess with a user's dates)."""
    month_first = _to_datetime(text, dayfirst=False)
    day_first = _to_datetime(text, dayfirst=True)
    mf_ok, df_ok = month_first.notna().all(), day_first.notna().all()
    if mf_ok and df_ok:
        differ = np.flatnonzero((month_first != day_first).to_numpy())
        if len(differ) == 0:
            return month_first
        p = differ[0]
        sample = text.iloc[p]
        raise MarketDataError(
            f"{name}: timestamps in column {label!s} are ambiguous: {sample!r} "
            f"({_row_name(p, name)}) "
            f"reads as {day_first.iloc[p]:%Y-%m-%d} day-first or {month_first.iloc[p]:%Y-%m-%d} "
            f"month-first, and no day above 12 settles it ({len(differ)} rows differ). Pass "
            f"timestamp_format='{_guess_format(sample, True)}' (day-first) or "
            f"timestamp_format='{_guess_format(sample, False)}' (month-first)"
        )
    if df_ok:
        return day_first
    if mf_ok:
        return month_first
    # Neither reading parses everything: report the rows the better reading fails on.
    return month_first if month_first.notna().sum() >= day_first.notna().sum() else day_first


def _guess_format(sample: str, dayfirst: bool) -> str:
    m = re.match(r"^(\d{1,2})([/.\-])(\d{1,2})\2(\d{2,4})(.*)$", sample)
    if not m:
        return "%d/%m/%Y %H:%M" if dayfirst else "%m/%d/%Y %H:%M"
    sep, year, rest = m.group(2), m.group(4), m.group(5).strip()
    date = f"%d{sep}%m" if dayfirst else f"%m{sep}%d"
    date += f"{sep}{'%Y' if len(year) == 4 else '%y'}"
    if rest:
        time = "%H:%M:%S" if rest.count(":") >= 2 else "%H:%M" if ":" in rest else "%H"
        date += " " + time
    return date


def _extract_prices(rest: pd.DataFrame, price_col: str | None, name: str) -> pd.DataFrame:
    """OHLCV columns by name (case-insensitive), as float64; at least a close."""
    found: dict[str, Any] = {}
    if price_col is not None:
        col = _find_column(rest, [_norm(price_col)])
        if col is None:
            raise MarketDataError(
                f"{name}: price_col={price_col!r} not found; "
                f"columns are {[str(c) for c in rest.columns]}"
            )
        found["close"] = col
    for key, aliases in _COLUMN_ALIASES.items():
        if key in found:
            continue
        col = _find_column(rest, aliases)
        if col is not None and col not in found.values():
            found[key] = col
    if "close" not in found:
        raise MarketDataError(
            f"{name}: no price column found; columns are {[str(c) for c in rest.columns]}. "
            "pyppo needs a 'close' column (or price/last/adj close); pass price_col='<column>' "
            "to use another one"
        )
    out = pd.DataFrame(index=rest.index)
    for key in ("open", "high", "low", "close", "volume"):
        if key not in found:
            continue
        raw = rest[found[key]]
        numeric = pd.to_numeric(raw, errors="coerce").astype(np.float64)
        out[key] = numeric
        # Keep the raw text of values that are not numbers, for the NaN error message.
        junk = numeric.isna() & raw.notna()
        if junk.any():
            out.attrs.setdefault("raw_text", {})[key] = raw[junk].astype(str)
    return out.reset_index(drop=True)
