"""Market data: loading, validation, repair, reporting, and the embedded synthetic market.

Data flows ``CSV/Parquet/DataFrame -> load_market_data -> MarketData -> TradingEnv``.
Every check here exists because dirty market data otherwise turns into inf/NaN returns
far away from its cause. The rule is: bad data raises a :class:`MarketDataError` that names
the offending rows and says how to fix them; nothing is dropped or changed unless the user
asked for it with ``repair=``, and every repair is counted in :meth:`MarketData.report`.

Conventions used throughout (indices are bar positions, 0-based):

- ``returns[t] = close[t] / close[t-1] - 1`` and ``log_returns[t] = log(close[t] / close[t-1])``;
  both are 0 at ``t = 0`` (no previous bar), so they align with the bars.
- ``forward_returns(h)[t] = close[t+h] / close[t] - 1``, NaN where ``t + h`` is past the end.
- Horizons are counted in bars. Durations such as ``"24h"`` are converted with the bar
  interval; gaps (weekends) are not bars, so a 24-bar horizon may span more than 24 hours.
"""

from __future__ import annotations

import hashlib
import math
import re
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from torch import Tensor

__all__ = [
    "MarketData",
    "MarketDataError",
    "load_market_data",
    "synthetic_market",
    "horizon_to_bars",
]

PRICE_COLUMNS = ("open", "high", "low", "close")
_MAX_EXAMPLES = 5  # rows shown in an error message; the total count is always given

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


class MarketDataError(ValueError):
    """Market data that pyppo refuses to train on; the message says what and how to fix it."""


def _ns(index: pd.DatetimeIndex) -> np.ndarray:
    """Timestamps as int64 nanoseconds (pandas 3 parses to second or microsecond units)."""
    return index.as_unit("ns").asi8


def _norm(name: object) -> str:
    return re.sub(r"[\s\-]+", "_", str(name).strip().lower())


def _examples(labels: Sequence[object], limit: int = _MAX_EXAMPLES) -> str:
    """``a, b, c, ... (N in total)``: a few examples plus the total count."""
    shown = ", ".join(str(x) for x in list(labels)[:limit])
    more = (
        f", ... ({len(labels)} in total)" if len(labels) > limit else f" ({len(labels)} in total)"
    )
    return shown + more


def _row_name(p: int, name: str) -> str:
    """How a user finds row ``p`` (0-based data row): the line in a file (the header is
    line 1), the position in a DataFrame."""
    return f"row {int(p)}" if name == "DataFrame" else f"line {int(p) + 2}"


def _row_examples(positions: np.ndarray, frame: pd.DataFrame, what: Any, name: str) -> str:
    """A few rows as ``line N (timestamp): what`` plus the total count."""
    items = []
    for p in positions[:_MAX_EXAMPLES]:
        items.append(f"{_row_name(p, name)} ({frame.index[p]}): {what(p)}")
    total = len(positions)
    tail = f"; ... {total} rows in total" if total > _MAX_EXAMPLES else f" ({total} in total)"
    return "; ".join(items) + tail


# ----------------------------------------------------------------------------- horizons


def horizon_to_bars(horizon: int | str | pd.Timedelta, bar_interval: pd.Timedelta) -> int:
    """Convert a horizon to a whole number of bars.

    An ``int`` is already in bars. A duration (``"1h"``, ``"24h"``, ``pd.Timedelta``) must be
    a positive whole multiple of ``bar_interval``; anything else is an error, because
    rounding would silently train the auxiliary heads on a different horizon than asked.
    """
    if isinstance(horizon, (bool, np.bool_)):
        raise MarketDataError(f"horizon {horizon!r} is not a duration or a number of bars")
    if isinstance(horizon, (int, np.integer)):
        if horizon < 1:
            raise MarketDataError(f"horizon of {horizon} bars: horizons must be at least 1 bar")
        return int(horizon)
    try:
        duration = pd.Timedelta(horizon)
    except (ValueError, TypeError) as err:
        raise MarketDataError(
            f"horizon {horizon!r} is neither a duration (like '1h', '24h', '1D') "
            "nor a number of bars"
        ) from err
    if duration < bar_interval:
        raise MarketDataError(
            f"horizon {horizon!r} is shorter than the bar interval ({_fmt_td(bar_interval)}); "
            f"use a horizon of at least one bar, or give horizons in bars, e.g. (1, 24)"
        )
    ratio = duration / bar_interval
    if abs(ratio - round(ratio)) > 1e-9:
        raise MarketDataError(
            f"horizon {horizon!r} is not a whole multiple of the bar interval "
            f"({_fmt_td(bar_interval)}); give it in bars instead, e.g. {max(1, round(ratio))}"
        )
    return int(round(ratio))


def _fmt_td(td: pd.Timedelta) -> str:
    """'1h', '15min', '1D' style: short and the same as what users type."""
    seconds = td.total_seconds()
    for unit, size in (("D", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return str(td)


# ----------------------------------------------------------------------------- MarketData


@dataclass(frozen=True)
class RepairSummary:
    """What ``repair=`` changed: rows with NaN prices, rows with zero/negative prices, and
    how they were fixed (``dropped`` rows, ``filled`` rows)."""

    method: str | None = None
    nan_rows: int = 0
    nonpositive_rows: int = 0
    dropped: int = 0
    filled: int = 0

    @property
    def total(self) -> int:
        return self.dropped + self.filled

    def describe(self) -> str:
        if self.method is None or self.total == 0:
            return "none"
        parts = [
            f"{self.nan_rows} with NaN prices",
            f"{self.nonpositive_rows} with zero/negative prices",
        ]
        how = []
        if self.filled:
            how.append(f"{self.filled} forward-filled")
        if self.dropped:
            how.append(f"{self.dropped} dropped")
        return f"{self.total} rows ({', '.join(parts)}): {', '.join(how)}"


class MarketData:
    """A validated bar series: a pandas frame plus the tensors the environment needs.

    Attributes:
        frame: DataFrame indexed by a sorted, unique ``DatetimeIndex`` named ``timestamp``,
            float64 columns among ``open, high, low, close, volume`` (``close`` always).
        bar_interval: the inferred bar spacing (median spacing), a ``pd.Timedelta``.
        horizons: the auxiliary horizons in bars (used for the minimum-length check and
            :attr:`aux_targets`).
        horizon_labels: how those horizons were given (``"1h"``, ``"24h"``, or ``"3 bars"``).
        repair: a :class:`RepairSummary` of what ``repair=`` changed.
        planted: for :func:`synthetic_market` with ``bad_ticks``, the bar positions of every
            planted bad value by kind (``zero_price``, ``nan_bar``, ``spike``), else ``{}``.
        source: where the data came from (path, ``"DataFrame"``, ``"synthetic(...)"``).

    Use :func:`load_market_data` or :func:`synthetic_market` to make one; the constructor
    itself does not validate (that is how ``bad_ticks`` data gets past validation).
    """

    def __init__(
        self,
        frame: pd.DataFrame,
        *,
        bar_interval: pd.Timedelta | None = None,
        horizons: Sequence[int | str] = ("1h", "24h"),
        window: int = 60,
        repair: RepairSummary | None = None,
        planted: dict[str, np.ndarray] | None = None,
        source: str = "DataFrame",
    ) -> None:
        self.frame = frame
        self.bar_interval = (
            bar_interval if bar_interval is not None else infer_bar_interval(frame.index)
        )
        self.horizons = tuple(horizon_to_bars(h, self.bar_interval) for h in horizons)
        self.horizon_labels = tuple(
            f"{h} bars" if isinstance(h, (int, np.integer)) else str(h) for h in horizons
        )
        self._horizon_spec = tuple(horizons)
        self.window = int(window)
        self.repair = repair or RepairSummary()
        self.planted = {k: np.asarray(v, dtype=np.int64) for k, v in (planted or {}).items()}
        self.source = source
        close = frame["close"].to_numpy(dtype=np.float64)
        # Bad ticks (only possible via synthetic_market(bad_ticks=...)) legitimately produce
        # inf/NaN here; they are what the env's sanitizer is for, so don't warn about them.
        with np.errstate(divide="ignore", invalid="ignore"):
            simple = np.zeros_like(close)
            simple[1:] = close[1:] / close[:-1] - 1.0
            logr = np.zeros_like(close)
            logr[1:] = np.log(close[1:] / close[:-1])
        self._close = torch.from_numpy(close.copy())
        self._returns = torch.from_numpy(simple)
        self._log_returns = torch.from_numpy(logr)

    # -- tensors ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.frame)

    @property
    def close(self) -> Tensor:
        """Close prices, float64 tensor of shape (T,)."""
        return self._close

    @property
    def returns(self) -> Tensor:
        """Simple returns ``close[t]/close[t-1] - 1`` (0 at t=0), float64 (T,)."""
        return self._returns

    @property
    def log_returns(self) -> Tensor:
        """Log returns ``log(close[t]/close[t-1])`` (0 at t=0), float64 (T,)."""
        return self._log_returns

    def forward_returns(self, horizon: int | str | pd.Timedelta) -> Tensor:
        """Simple return from bar t to bar t+h: ``close[t+h]/close[t] - 1``, float64 (T,).

        ``horizon`` is in bars (int) or a duration converted with :attr:`bar_interval`.
        The last h entries are NaN: there is no future bar to look at (the env never uses them).
        """
        h = horizon_to_bars(horizon, self.bar_interval)
        close = self._close.numpy()
        out = np.full_like(close, np.nan)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[:-h] = close[h:] / close[:-h] - 1.0
        return torch.from_numpy(out)

    @property
    def aux_targets(self) -> Tensor:
        """Forward returns for every configured horizon, float64 (T, len(horizons))."""
        return torch.stack([self.forward_returns(h) for h in self.horizons], dim=1)

    # -- derived views ---------------------------------------------------------------------

    def split(self, train: float = 0.8) -> tuple[MarketData, MarketData]:
        """Split in time order into (train, test): the first ``train`` fraction of the bars and
        the rest. No shuffling: the test part is strictly later than the train part.

        Forward returns are computed within each part, so the train part never looks into
        the test part (its last bars simply have no forward return, and the env skips them).
        """
        if not 0.0 < train < 1.0:
            raise MarketDataError(f"split(train={train}): train must be a fraction in (0, 1)")
        cut = int(round(len(self) * train))
        parts = []
        for name, lo, hi in (("train", 0, cut), ("test", cut, len(self))):
            sub = self.frame.iloc[lo:hi]
            _check_length(
                sub,
                self.window,
                self.horizons,
                self.horizon_labels,
                what=f"the {name} part of split(train={train})",
            )
            planted = {k: v[(v >= lo) & (v < hi)] - lo for k, v in self.planted.items()}
            parts.append(
                MarketData(
                    sub,
                    bar_interval=self.bar_interval,
                    horizons=self._horizon_spec,
                    window=self.window,
                    repair=self.repair,
                    planted=planted,
                    source=f"{self.source}[{name} {lo}:{hi}]",
                )
            )
        return parts[0], parts[1]

    def gaps(self) -> tuple[int, int, pd.Timedelta]:
        """(number of gaps, number of missing bars, largest spacing). A gap is a spacing
        larger than the bar interval, e.g. a weekend in forex or stock data."""
        if len(self) < 2:
            return 0, 0, pd.Timedelta(0)
        spacing = np.diff(_ns(self.frame.index))
        step = self.bar_interval.value
        gap = spacing > step
        missing = int(np.sum(np.round(spacing[gap] / step) - 1))
        return int(gap.sum()), missing, pd.Timedelta(int(spacing.max()), unit="ns")

    def fingerprint(self) -> str:
        """A stable SHA-256 of the data (timestamps, column names and values, bit for bit).

        The trainer stores it in checkpoints so that resuming or evaluating on different
        data is noticed. Independent of where the data came from (path, DataFrame).
        """
        h = hashlib.sha256()
        h.update(np.ascontiguousarray(_ns(self.frame.index)).tobytes())
        for col in self.frame.columns:
            h.update(str(col).encode())
            h.update(np.ascontiguousarray(self.frame[col].to_numpy(np.float64)).tobytes())
        return h.hexdigest()

    def report(self) -> str:
        """A human-readable summary printed before training: bars, date range, interval,
        gaps, repaired rows, extreme returns (beyond ±100 %) and non-finite returns."""
        n = len(self)
        idx = self.frame.index
        n_gaps, missing, largest = self.gaps()
        simple = self._returns.numpy()
        finite = np.isfinite(simple) & np.isfinite(self._log_returns.numpy())
        extreme = int(np.sum(np.abs(simple[np.isfinite(simple)]) > 1.0))
        horizons = ", ".join(
            f"{lab} = {h} bar{'s' if h != 1 else ''}"
            for lab, h in zip(self.horizon_labels, self.horizons, strict=True)
        )
        lines = [
            f"market data: {self.source}",
            f"  bars:      {n:,} from {idx[0]} to {idx[-1]}",
            f"  interval:  {_fmt_td(self.bar_interval)} (median spacing)",
            f"  gaps:      {n_gaps:,} ({missing:,} missing bars; largest spacing {largest})"
            if n_gaps
            else "  gaps:      none",
            f"  repaired:  {self.repair.describe()}",
            f"  extreme returns beyond ±100%: {extreme:,}",
            f"  non-finite returns: {int(np.sum(~finite)):,}",
            f"  horizons:  {horizons}",
        ]
        if self.planted:
            planted = ", ".join(f"{k} {len(v)}" for k, v in self.planted.items())
            lines.append(f"  planted bad ticks (synthetic): {planted}")
        lines.append(f"  fingerprint: {self.fingerprint()[:16]}")
        return "\n".join(lines)

    def __repr__(self) -> str:
        return (
            f"MarketData({len(self)} bars, {self.frame.index[0]} .. {self.frame.index[-1]}, "
            f"interval={_fmt_td(self.bar_interval)}, source={self.source!r})"
        )


def infer_bar_interval(index: pd.DatetimeIndex) -> pd.Timedelta:
    """Median spacing between consecutive timestamps: robust to gaps such as weekends."""
    if len(index) < 2:
        raise MarketDataError("need at least 2 bars to infer the bar interval")
    spacing = np.diff(_ns(index))
    return pd.Timedelta(int(np.median(spacing)), unit="ns")


# ----------------------------------------------------------------------------- loading


def load_market_data(
    source: str | Path | pd.DataFrame,
    *,
    timestamp_col: str | None = None,
    timestamp_format: str | None = None,
    price_col: str | None = None,
    repair: str | None = None,
    window: int = 60,
    horizons: Sequence[int | str] = ("1h", "24h"),
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
        horizons: auxiliary horizons (durations or bars), used for the minimum-length check.

    Open/high/low/close are checked (NaN, zero/negative, high < low); volume is optional and
    kept as read (nothing in pyppo trains on it). Nothing is dropped or changed unless
    ``repair`` says so.

    Raises:
        MarketDataError: with the offending rows and what to do, see DESIGN.md.
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
    labels = tuple(f"{h} bars" if isinstance(h, (int, np.integer)) else str(h) for h in horizons)
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


def _check_length(
    frame: pd.DataFrame, window: int, horizons: Sequence[int], labels: Sequence[str], what: str
) -> None:
    """An agent needs ``window`` returns of history (window + 1 bars), one bar to act on that
    history, and ``max(horizons)`` more bars for the auxiliary targets."""
    longest = max(horizons) if len(horizons) else 1
    need = window + longest + 1
    if len(frame) < need:
        label = labels[list(horizons).index(longest)] if len(horizons) else "1 bar"
        raise MarketDataError(
            f"{what}: {len(frame)} bars is too few: need at least {need} = window {window} + "
            f"longest horizon {label} ({longest} bars) + 1. Use more data, a smaller window, or "
            "shorter horizons"
        )


# ----------------------------------------------------------------------------- synthetic market


@dataclass
class _Regime:
    drift: float  # mean log return per bar
    vol: float  # multiplier on the base volatility


@dataclass
class SyntheticParams:
    """Knobs of :func:`synthetic_market`, exposed so tests and docs can refer to them.

    The planted predictable component is short-horizon momentum: the next bar's
    standardized return loads with correlation ``momentum_corr`` on the mean of the last
    ``momentum_bars`` standardized returns, which the env's observation shows directly (the
    normalized return window and the momentum indicators). It pays more than the fees of
    trading it, but it is weak per bar: about 1 % of next-bar variance.
    """

    base_vol: float = 0.005  # hourly-ish volatility of log returns
    t_dof: float = 4.0  # Student-t degrees of freedom of the shocks (fat tails)
    garch_alpha: float = 0.08
    garch_beta: float = 0.90
    momentum_corr: float = 0.12
    momentum_bars: int = 3
    regime_stay: float = 0.998  # probability of staying in a regime each bar (~500 bars)
    regimes: tuple[_Regime, ...] = field(
        default_factory=lambda: (_Regime(3e-4, 0.9), _Regime(0.0, 0.7), _Regime(-3e-4, 1.4))
    )
    intraday_vol: float = 0.25  # amplitude of the time-of-day volatility pattern


def synthetic_market(
    n_bars: int = 20_000,
    interval: str | pd.Timedelta = "1h",
    seed: int = 0,
    bad_ticks: float = 0.0,
    *,
    start: str = "2020-01-01",
    window: int = 60,
    horizons: Sequence[int | str] = ("1h", "24h"),
    params: SyntheticParams | None = None,
) -> MarketData:
    """The embedded default market: deterministic for a seed, no files needed.

    Log returns follow a 3-state regime chain (bull/calm/bear: drift and volatility differ),
    GARCH(1,1) volatility clustering, Student-t shocks (fat tails), an intraday volatility
    pattern, and a small planted momentum component (see :class:`SyntheticParams`) so that a
    working agent and working auxiliary heads can beat chance and buy-and-hold.

    ``bad_ticks`` (a rate, e.g. 0.001) plants ``round(bad_ticks * n_bars)`` bad bars at
    distinct, non-adjacent random positions, cycling zero prices, NaN bars and +1000 %
    spikes (one bar at 11x its price, then back). They bypass validation;
    ``market.planted`` records the bar positions of each kind so tests can check that every
    bad value is counted downstream.
    """
    p = params or SyntheticParams()
    step = pd.Timedelta(interval)
    if n_bars < 2:
        raise MarketDataError(f"synthetic_market: n_bars={n_bars} is too few")
    if not 0.0 <= bad_ticks < 0.3:
        raise MarketDataError(f"synthetic_market: bad_ticks={bad_ticks} must be a rate in [0, 0.3)")
    rng = np.random.default_rng(seed)
    index = pd.date_range(start, periods=n_bars, freq=step, name="timestamp")

    # Regime path: a sticky Markov chain, jumping to a uniformly chosen other regime.
    k = len(p.regimes)
    switch = rng.random(n_bars) > p.regime_stay
    jumps = rng.integers(1, k, size=n_bars)
    regime = np.empty(n_bars, dtype=np.int64)
    regime[0] = rng.integers(k)
    for t in range(1, n_bars):
        regime[t] = (regime[t - 1] + jumps[t]) % k if switch[t] else regime[t - 1]
    drift = np.array([r.drift for r in p.regimes])[regime]
    regime_vol = np.array([r.vol for r in p.regimes])[regime]

    # Unit-variance Student-t shocks.
    shocks = rng.standard_t(p.t_dof, size=n_bars) * math.sqrt((p.t_dof - 2) / p.t_dof)
    hours = index.hour.to_numpy() + index.minute.to_numpy() / 60.0
    intraday = 1.0 + p.intraday_vol * np.cos(2 * np.pi * (hours - 15.0) / 24.0)

    # GARCH(1,1) on the standardized scale (variance targets 1), then scaled by regime and
    # time of day. z[t] is the standardized return the momentum term feeds on.
    omega = 1.0 - p.garch_alpha - p.garch_beta
    corr, m = p.momentum_corr, p.momentum_bars
    noise_scale = math.sqrt(1.0 - corr * corr)
    z = np.zeros(n_bars)
    logr = np.zeros(n_bars)
    var = 1.0
    for t in range(1, n_bars):
        var = omega + p.garch_alpha * z[t - 1] ** 2 + p.garch_beta * var
        lo = max(1, t - m)
        recent = z[lo:t]
        signal = recent.sum() / math.sqrt(m) if len(recent) else 0.0
        # Clip the signal so a fat-tailed shock cannot feed back into a runaway.
        signal = max(-3.0, min(3.0, signal))
        z[t] = corr * signal + noise_scale * shocks[t]
        sigma = p.base_vol * regime_vol[t] * intraday[t] * math.sqrt(var)
        logr[t] = drift[t] + sigma * z[t]

    close = 100.0 * np.exp(np.cumsum(logr))
    open_ = np.empty(n_bars)
    open_[0] = close[0]
    open_[1:] = close[:-1]
    wick = np.abs(rng.normal(0.0, 0.3 * p.base_vol, size=(2, n_bars)))
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])
    volume = np.round(1000.0 * np.exp(rng.normal(0.0, 0.3, n_bars)) * (1 + 50 * np.abs(logr)))
    frame = pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=index
    )

    planted: dict[str, np.ndarray] = {}
    n_bad = int(round(bad_ticks * n_bars))
    if n_bad:
        # Distinct, never adjacent positions (so each bad tick's effect on the returns is
        # separate and countable), never bar 0 (a series must start somewhere real):
        # sorted distinct k_i plus i are strictly increasing with gaps of at least 2.
        k = np.sort(rng.choice(np.arange(1, n_bars - n_bad), size=n_bad, replace=False))
        where = k + np.arange(n_bad)
        kinds = np.arange(n_bad) % 3
        rng.shuffle(kinds)
        planted = {
            "zero_price": where[kinds == 0],
            "nan_bar": where[kinds == 1],
            "spike": where[kinds == 2],
        }
        cols = ["open", "high", "low", "close"]
        frame.iloc[planted["zero_price"], [frame.columns.get_loc(c) for c in cols]] = 0.0
        frame.iloc[planted["nan_bar"], [frame.columns.get_loc(c) for c in cols]] = np.nan
        ci, hi = frame.columns.get_loc("close"), frame.columns.get_loc("high")
        frame.iloc[planted["spike"], ci] = frame.iloc[planted["spike"], ci] * 11.0  # +1000 %
        frame.iloc[planted["spike"], hi] = np.maximum(
            frame.iloc[planted["spike"], hi], frame.iloc[planted["spike"], ci]
        )
    label = (
        f"synthetic(n_bars={n_bars}, interval={_fmt_td(step)}, seed={seed}, bad_ticks={bad_ticks})"
    )
    return MarketData(
        frame,
        bar_interval=step,
        horizons=horizons,
        window=window,
        planted=planted,
        source=label,
    )
