"""Finding the timestamp and price columns of a raw table, and parsing them strictly.

Column names are matched case-insensitively after normalising spaces/dashes to ``_``. Two
columns that could play the same role (``close`` and ``Close``, ``price`` and
``adj_close``, ``timestamp`` and ``date``, a DatetimeIndex and a timestamp column, or a
column and the copy pandas renamed ``close.1``) are an error naming both, unless
``price_col=``/``timestamp_col=`` says which one. Every timestamp must parse, within the
years pandas can represent (1678 to 2261), with a UTC offset on every row or on none, and
a day-first vs month-first ambiguity is an error, never a guess. Prices are read as
float64: a column of booleans or another non-numeric type is refused; in a column of text,
values that are not numbers become NaN, and their raw text is kept for the error message
of the price checks in :mod:`pyppo.data.checks`.
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from pyppo.data.errors import MAX_EXAMPLES, MarketDataError, row_name
from pyppo.data.timestamp_checks import check_range, check_zones, shown_value

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
)
_FALLBACK_TIMESTAMP_NAMES = ("unnamed:_0", "index")  # a saved index
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


def _dup_base(col: object, names: set[str]) -> str | None:
    """The name ``close.1`` is pandas' rename of a second ``close`` column in a file."""
    m = re.match(r"^(.*)\.(\d+)$", str(col))
    return m.group(1) if m and m.group(1) in names else None


def _candidates(frame: pd.DataFrame, names: Sequence[str]) -> list[Any]:
    """Every column whose normalised name (or that of the column it duplicates) is in
    ``names``, in column order."""
    strs = {str(c) for c in frame.columns}
    out = []
    for c in frame.columns:
        base = _dup_base(c, strs)
        if _norm(c) in names or (base is not None and _norm(base) in names):
            out.append(c)
    return out


def _describe(col: object, frame: pd.DataFrame | None = None) -> str:
    """``column 'close'``, explaining pandas' rename of a second ``close`` to ``close.1``."""
    base = _dup_base(col, {str(c) for c in frame.columns}) if frame is not None else None
    note = f" (a second {base!r} column in the file, renamed by pandas)" if base else ""
    return f"column {str(col)!r}{note}"


def _and(items: Sequence[str]) -> str:
    return ", ".join(items[:-1]) + " and " + items[-1] if len(items) > 1 else items[0]


def _ambiguous(name: str, options: Sequence[str], role: str, option: str | None) -> MarketDataError:
    """Two or more sources for one role: name them all and say how to choose."""
    if option is not None:
        fix = f"pass {option}='<column>' naming the one to use, or drop the other"
    else:
        fix = "drop or rename all but one of them"
    each = "both" if len(options) == 2 else "all"
    return MarketDataError(
        f"{name}: {_and(options)} could {each} be the {role}; pyppo does not guess which: {fix}"
    )


def _explicit_column(frame: pd.DataFrame, wanted: str, option: str, name: str) -> Any | None:
    """The column named by ``timestamp_col=``/``price_col=``: the one spelled exactly so, or
    the one matching it case-insensitively; two such columns are an error."""
    exact = [c for c in frame.columns if str(c) == str(wanted)]
    if len(exact) == 1:
        return exact[0]
    matches = exact or [c for c in frame.columns if _norm(c) == _norm(wanted)]
    if len(matches) > 1:
        raise MarketDataError(
            f"{name}: {option}={wanted!r} matches {_and([_describe(c) for c in matches])}; "
            "rename or drop all but one of them, or spell the column exactly"
        )
    return matches[0] if matches else None


def extract_timestamps(
    raw: pd.DataFrame, timestamp_col: str | None, fmt: str | None, name: str
) -> tuple[pd.DatetimeIndex, pd.DataFrame]:
    """Find the timestamp source, parse it, and return (timestamps, the other columns)."""
    columns = [str(c) for c in raw.columns]
    if timestamp_col is not None:
        col = _explicit_column(raw, timestamp_col, "timestamp_col", name)
        if col is None:
            if raw.index.name is not None and _norm(raw.index.name) == _norm(timestamp_col):
                return _parse_timestamps(
                    raw.index.to_series(), fmt, name, raw.index.name
                ), raw.reset_index(drop=True)
            raise MarketDataError(
                f"{name}: timestamp_col={timestamp_col!r} not found; columns are {columns}"
            )
        return _parse_timestamps(raw[col], fmt, name, col), raw.drop(columns=[col])
    named = _candidates(raw, _TIMESTAMP_NAMES)
    # Separate Date and Time columns, e.g. "2024-01-02","13:00" (common in broker exports).
    date_cols, time_cols = _candidates(raw, ["date"]), _candidates(raw, ["time"])
    split = (
        len(date_cols) == 1
        and len(time_cols) == 1
        and not _looks_like_full_datetime(raw[time_cols[0]])
    )
    options: list[str] = []
    # A DataFrame that already has a datetime index (also what Parquet round-trips give).
    has_index = isinstance(raw.index, pd.DatetimeIndex)
    if has_index:
        label = f" {raw.index.name!r}" if raw.index.name is not None else ""
        options.append(f"the DatetimeIndex{label}")
    if split:
        options.append(f"the columns {str(date_cols[0])!r} + {str(time_cols[0])!r}")
        named = [c for c in named if c not in (date_cols[0], time_cols[0])]
    options += [_describe(c, raw) for c in named]
    if len(options) > 1:
        raise _ambiguous(name, options, "timestamps", "timestamp_col")
    if has_index:
        return _parse_timestamps(raw.index.to_series(), fmt, name, "index"), raw.reset_index(
            drop=True
        )
    if split:
        date_col, time_col = date_cols[0], time_cols[0]
        joined = raw[date_col].astype(str).str.strip() + " " + raw[time_col].astype(str).str.strip()
        label = f"{date_col} + {time_col}"
        return _parse_timestamps(joined, fmt, name, label), raw.drop(columns=[date_col, time_col])
    if not named:
        # A saved index ("Unnamed: 0", "index") only when no column is named like a time.
        named = _candidates(raw, _FALLBACK_TIMESTAMP_NAMES)
        if len(named) > 1:
            raise _ambiguous(
                name, [_describe(c, raw) for c in named], "timestamps", "timestamp_col"
            )
    col = named[0] if named else None
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
    v = v.where(np.isfinite(v) & (v.abs() < 9e18))  # beyond int64 time: unparseable
    try:
        return pd.to_datetime(v, unit=unit, errors="coerce")
    except (ValueError, OverflowError):  # out of range for pandas: reported as unparseable
        return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")


def _to_datetime(values: pd.Series, **kwargs: Any) -> pd.Series:
    """pandas' parser, quiet (its format-inference warnings are replaced by our errors), and
    converting mixed UTC offsets to UTC instead of failing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return pd.to_datetime(values, errors="coerce", **kwargs)
        except (ValueError, TypeError, OverflowError):
            try:
                return pd.to_datetime(values, errors="coerce", utc=True, **kwargs)
            except (ValueError, TypeError, OverflowError):
                return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns]")


def _parse_timestamps(
    values: pd.Series, fmt: str | None, name: str, label: object = "timestamp"
) -> pd.DatetimeIndex:
    """Parse timestamps strictly: every value must parse, within the years pandas can
    represent, with a UTC offset on every row or on none, and a day-first vs month-first
    ambiguity is an error unless exactly one reading works for every row."""
    values = values.reset_index(drop=True)
    missing = values.isna().to_numpy()
    hint = "pass timestamp_format= with a strftime format, e.g. timestamp_format='%d/%m/%Y %H:%M'"
    text = None
    if pd.api.types.is_datetime64_any_dtype(values):
        parsed = values
    elif pd.api.types.is_numeric_dtype(values) and fmt is None:
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
        if missing.any():
            values_or_empty = values.astype(object).where(~missing, "")
        else:
            values_or_empty = values
        text = values_or_empty.astype(str).str.strip()
        given = text[text != ""] if missing.any() or (text == "").any() else text
        if fmt is not None:
            parsed = _to_datetime(text, format=fmt)
            hint = f"timestamp_format={fmt!r} does not match them; check the format"
        elif len(given) and given.head(20).map(lambda v: bool(_ISO_DATE.match(v))).all():
            # YYYY-MM-DD is never ambiguous (and dayfirst=True would misread it).
            parsed = _to_datetime(text, format="ISO8601")
        else:
            parsed = _resolve_day_month(text, name, label)
    bad = np.flatnonzero(pd.isna(parsed).to_numpy())
    if len(bad):

        def show(p: int) -> str:
            empty = missing[p] or (text is not None and text.iloc[p] == "")
            return f"{row_name(p, name)}: {'empty' if empty else shown_value(values.iloc[p])}"

        shown = "; ".join(show(p) for p in bad[:MAX_EXAMPLES])
        total = f" ({len(bad)} of {len(values)} rows)"
        raise MarketDataError(
            f"{name}: cannot parse timestamps in column {label!s}{total}: {shown}; {hint}"
        )
    idx = pd.DatetimeIndex(parsed)
    check_range(idx, values, name, label)
    if text is not None and idx.tz is not None:
        check_zones(text, name, label)
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
            f"({row_name(p, name)}) "
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


def extract_prices(rest: pd.DataFrame, price_col: str | None, name: str) -> pd.DataFrame:
    """OHLCV columns by name (case-insensitive), as float64; at least a close."""
    found: dict[str, Any] = {}
    if price_col is not None:
        col = _explicit_column(rest, price_col, "price_col", name)
        if col is None:
            raise MarketDataError(
                f"{name}: price_col={price_col!r} not found; "
                f"columns are {[str(c) for c in rest.columns]}"
            )
        found["close"] = col
    for key, aliases in _COLUMN_ALIASES.items():
        if key in found:
            continue
        cols = [c for c in _candidates(rest, aliases) if c not in found.values()]
        if len(cols) > 1:
            role = "volume" if key == "volume" else f"{key} price"
            option = "price_col" if key == "close" else None
            raise _ambiguous(name, [_describe(c, rest) for c in cols], role, option)
        if cols:
            found[key] = cols[0]
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
        numeric = _to_float(raw, key, found[key], name)
        out[key] = numeric
        # Keep the raw text of values that are not numbers, for the NaN error message.
        junk = numeric.isna() & raw.notna()
        if junk.any():
            out.attrs.setdefault("raw_text", {})[key] = raw[junk].astype(str)
    return out.reset_index(drop=True)


def _to_float(raw: pd.Series, key: str, col: object, name: str) -> pd.Series:
    """A price (or volume) column as float64. Numbers are taken as they are; text is parsed
    per value (values that are not numbers become NaN); booleans and other types are an
    error naming the column."""
    dtype = raw.dtype
    kind = None
    if isinstance(dtype, pd.CategoricalDtype):
        kind = "categories"
    elif pd.api.types.is_bool_dtype(dtype):
        kind = "booleans (True/False)"
    elif pd.api.types.is_numeric_dtype(dtype) and not pd.api.types.is_complex_dtype(dtype):
        values = raw.to_numpy(dtype=np.float64, na_value=np.nan)
        return pd.Series(values, index=raw.index)
    elif pd.api.types.is_object_dtype(dtype) or pd.api.types.is_string_dtype(dtype):
        given = raw.dropna()
        if pd.api.types.is_object_dtype(dtype) and any(
            isinstance(v, (bool, np.bool_)) for v in given
        ):
            kind = "booleans (True/False)"
        else:
            numeric = pd.to_numeric(raw, errors="coerce")
            values = pd.Series(numeric.to_numpy(dtype=np.float64, na_value=np.nan), raw.index)
            if len(given) == 0 or values.notna().any():
                return values
            more = ", ..." if len(given) > 3 else ""
            kind = f"text, not one number ({', '.join(repr(str(v)) for v in given.iloc[:3])}{more})"
    if kind is None:
        kind = f"{dtype} values"
    what = "the volume" if key == "volume" else f"the {key} price"
    fix = "pass price_col= naming the column that holds the prices, or " if key == "close" else ""
    if kind.startswith("text") and raw.astype(str).str.contains(",", regex=False).any():
        fix = (
            "for decimal commas, read the file with pd.read_csv(path, sep=';', decimal=',') "
            "and pass the DataFrame; else "
        )
    raise MarketDataError(
        f"{name}: column {str(col)!r} ({what}) holds {kind}; prices must be numbers: "
        f"{fix}convert the column to numbers (e.g. df[{str(col)!r}].astype(float))"
    )
