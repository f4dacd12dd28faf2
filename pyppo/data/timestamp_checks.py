"""Checks of parsed timestamps that pandas lets through: years outside the range a
``datetime64[ns]`` holds, and a column that mixes times with and without a UTC offset."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from pyppo.data.errors import MAX_EXAMPLES, MarketDataError, row_name


def shown_value(value: object) -> str:
    """A raw value as a message shows it: text quoted, anything else as printed."""
    return repr(value) if isinstance(value, str) else str(value)


# The years a timestamp may have: pandas' nanosecond timestamps span 1677-09-21 to 2262-04-11.
_FIRST_YEAR, _LAST_YEAR = 1678, 2261


def check_range(idx: pd.DatetimeIndex, values: pd.Series, name: str, label: object) -> None:
    """Every timestamp within the years pandas can represent in nanoseconds."""
    utc = idx.tz_convert(None) if idx.tz is not None else idx
    seconds = utc.to_numpy().astype("datetime64[s]").astype(np.int64)
    lo = (pd.Timestamp(f"{_FIRST_YEAR}-01-01") - pd.Timestamp(0)) // pd.Timedelta("1s")
    hi = (pd.Timestamp(f"{_LAST_YEAR + 1}-01-01") - pd.Timestamp(0)) // pd.Timedelta("1s")
    out = np.flatnonzero((seconds < lo) | (seconds >= hi))
    if len(out):
        shown = "; ".join(
            f"{row_name(p, name)}: {shown_value(values.iloc[p])}" for p in out[:MAX_EXAMPLES]
        )
        raise MarketDataError(
            f"{name}: timestamps out of range in column {label!s} ({len(out)} of {len(idx)} "
            f"rows): {shown}; pyppo reads years {_FIRST_YEAR} to {_LAST_YEAR}. Fix the year "
            "(a typo?)"
            + (
                " or pass timestamp_format= if the numbers are not Unix epoch time"
                if pd.api.types.is_numeric_dtype(values)
                else ""
            )
        )


# A time of day followed by a UTC offset or zone: "12:00Z", "12:00:00+02:00", "12:00 UTC".
_ZONE = re.compile(r"\d:\d{2}(?::\d{2}(?:[.,]\d+)?)?\s*(?:Z|UTC|GMT|[+-]\d{2}(?::?\d{2})?)$", re.I)


def check_zones(text: pd.Series, name: str, label: object) -> None:
    """Timestamps with a UTC offset mixed with timestamps without one: pandas would read the
    latter as UTC, a guess about the user's data that pyppo does not make."""
    zoned = text.str.contains(_ZONE).to_numpy(dtype=bool)
    if zoned.all() or not zoned.any():
        return
    plain, with_zone = np.flatnonzero(~zoned), np.flatnonzero(zoned)
    shown = "; ".join(f"{row_name(p, name)}: {text.iloc[p]!r}" for p in plain[:MAX_EXAMPLES])
    raise MarketDataError(
        f"{name}: timestamps in column {label!s} mix UTC offsets and none: "
        f"{len(plain)} of {len(text)} rows have no offset ({shown}), while e.g. "
        f"{row_name(with_zone[0], name)} has one ({text.iloc[with_zone[0]]!r}); pyppo cannot "
        "tell which time zone the rows without one are in. Give every timestamp an offset "
        "(or none)"
    )
