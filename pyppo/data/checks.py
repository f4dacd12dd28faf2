"""The checks of :func:`~pyppo.data.load_market_data` on parsed bars, and ``repair=``.

Timestamps (:func:`check_order`): unique; no single mistyped timestamp (a row beyond
``_TYPO_FACTOR`` times the median bar spacing from both neighbours while they are regular,
or at the first or last row from its one neighbour while the spacing next to it is regular,
see :func:`_timestamp_typos`); sorted.

Prices (:func:`check_prices`), open/high/low/close; each bad row is counted once, under
the first of these that applies:

1. NaN or missing;
2. infinite (``inf``/``-inf``, also a number too large for a float such as ``1e400``);
3. zero or negative;
4. inconsistent: high < low, or open or close outside [low, high], each with a relative
   tolerance of ``OHLC_TOLERANCE`` for float round-off.

With ``repair=None`` they are an error naming the rows. ``repair="drop"`` drops every bad
row. ``repair="ffill"`` replaces each NaN, infinite, zero or negative value with the last
good value of its column; a row that is inconsistent (as read, or once filled) takes the
whole open/high/low/close of the bar before it (itself good or repaired), since which of its
values is wrong cannot be told. Rows before the first good value of a column cannot be
filled: they are dropped (and counted as dropped). Inconsistent rows that are most of the
data are a mislabelled or swapped column, not bad ticks: an error even with ``repair=``.

Last (:func:`check_returns`): the return between consecutive closes must be a finite
number above -100 %, which prices that are each finite and positive can still miss (a
close of ``1e-320`` then ``100``).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from pyppo.data.errors import (
    MAX_EXAMPLES,
    MarketDataError,
    examples_text,
    row_examples,
    row_name,
)
from pyppo.data.horizons import format_duration
from pyppo.data.market import RepairSummary, as_nanoseconds

__all__ = ["OHLC_TOLERANCE", "PRICE_COLUMNS"]

PRICE_COLUMNS = ("open", "high", "low", "close")
OHLC_TOLERANCE = 1e-9  # relative: open/close may exceed high (or undercut low) by this much
_TYPO_FACTOR = 100  # a timestamp this many median spacings from both neighbours: a typo


# ----------------------------------------------------------------------------- timestamps


def check_order(frame: pd.DataFrame, name: str) -> None:
    """Unique timestamps, no single mistyped timestamp, sorted; else a MarketDataError."""
    idx = frame.index
    dup = np.flatnonzero(idx.duplicated(keep=False))
    if len(dup):
        stamps = sorted({str(idx[p]) for p in dup})
        rows = ", ".join(row_name(p, name) for p in dup[:MAX_EXAMPLES])
        raise MarketDataError(
            f"{name}: duplicate timestamps: {examples_text(stamps)} ({rows}"
            f"{', ...' if len(dup) > MAX_EXAMPLES else ''}; {len(dup)} rows involved). Each bar "
            "needs a unique timestamp: remove the duplicates (e.g. df[~df.index.duplicated()]) "
            "or check the timestamp column and timestamp_format"
        )
    ns = as_nanoseconds(idx)
    typos, spacing = _timestamp_typos(ns)
    back = np.flatnonzero(np.diff(ns) < 0) + 1
    # A typo in the middle also breaks the order; the typo is the better explanation when
    # the rows without it are in order.
    if len(typos) and not (np.diff(np.delete(ns, typos)) < 0).any():
        raise MarketDataError(_typo_message(idx, typos, spacing, name))
    if len(back):
        shown = "; ".join(
            f"{row_name(p, name)} ({idx[p]}) comes after {idx[p - 1]}" for p in back[:MAX_EXAMPLES]
        )
        raise MarketDataError(
            f"{name}: timestamps are not sorted ({len(back)} places go back in time): {shown}. "
            "Sort the data by time first, e.g. df.sort_index() or df.sort_values('timestamp')"
        )


def _timestamp_typos(ns: np.ndarray) -> tuple[np.ndarray, float]:
    """Rows whose timestamp looks mistyped, and the median spacing ``m`` (in ns).

    With ``far = _TYPO_FACTOR * m``: a row in the middle is a typo when it is more than
    ``far`` from both neighbours while they are regular (the next comes after the previous,
    at most ``far`` later); the first or last row when it is more than ``far`` from its one
    neighbour while the spacing next to it is regular (positive, at most ``far``), and that
    spacing is larger than every spacing between the other rows (so that one bar before the
    first overnight gap of minute data, a gap the data has every night, is no typo).
    Weekend and holiday gaps (48 hours in hourly forex data, 4 days in daily stock data)
    are far below ``far``; a long gap in sorted data has regular rows on each side of it,
    so a row in the middle is only ever a typo when it also breaks the order.
    """
    n = len(ns)
    if n < 3:
        return np.zeros(0, dtype=np.int64), 0.0
    t = ns.astype(np.float64)  # differences of int64 ns can overflow across centuries
    d = np.diff(t)
    m = float(np.median(np.abs(d)))
    far = _TYPO_FACTOR * m
    if m <= 0:
        return np.zeros(0, dtype=np.int64), m
    is_far = np.abs(d) > far
    regular = (d > 0) & (d <= far)
    around = t[2:] - t[:-2]  # previous to next, skipping the row between
    middle = is_far[:-1] & is_far[1:] & (around > 0) & (around <= far)
    typos = list(np.flatnonzero(middle) + 1)
    inner = float(np.abs(d[1:-1]).max()) if n > 3 else 0.0
    if is_far[0] and regular[1] and abs(d[0]) > inner:
        typos.insert(0, 0)
    if is_far[-1] and regular[-2] and abs(d[-1]) > inner:
        typos.append(n - 1)
    return np.asarray(typos, dtype=np.int64), m


def _typo_message(idx: pd.DatetimeIndex, typos: np.ndarray, spacing: float, name: str) -> str:
    n = len(idx)
    step = format_duration(pd.Timedelta(int(spacing), unit="ns"))
    far = f"beyond {_TYPO_FACTOR}x the median bar spacing ({step}) from"
    items = []
    for p in typos[:MAX_EXAMPLES]:
        if 0 < p < n - 1:
            gap = format_duration(idx[p + 1] - idx[p - 1])
            items.append(
                f"{row_name(p, name)} has {idx[p]}, {far} both neighbours "
                f"({row_name(p - 1, name)}: {idx[p - 1]}, {row_name(p + 1, name)}: "
                f"{idx[p + 1]}), while they are regular ({gap} apart)"
            )
        else:
            q, r = (1, 2) if p == 0 else (n - 2, n - 3)
            gap = format_duration(abs(idx[q] - idx[r]))
            items.append(
                f"{row_name(p, name)} has {idx[p]}, {far} its one neighbour "
                f"({row_name(q, name)}: {idx[q]}), while the spacing next to it is regular "
                f"({gap})"
            )
    total = f"; ... {len(typos)} rows in total" if len(typos) > MAX_EXAMPLES else ""
    return (
        f"{name}: a timestamp looks mistyped: {'; '.join(items)}{total}. Correct the timestamp "
        "(e.g. its year), or remove the row"
    )


# ----------------------------------------------------------------------------- prices


def _inconsistent(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Rows with high < low, and rows with open or close outside [low, high], each beyond
    the relative tolerance (NaN compares as consistent)."""
    n = len(frame)
    swapped = np.zeros(n, dtype=bool)
    outside = np.zeros(n, dtype=bool)
    high = frame["high"].to_numpy() if "high" in frame.columns else None
    low = frame["low"].to_numpy() if "low" in frame.columns else None
    with np.errstate(invalid="ignore", over="ignore"):
        if high is not None and low is not None:
            swapped = high < low - OHLC_TOLERANCE * np.abs(low)
        for c in ("open", "close"):
            if c not in frame.columns:
                continue
            x = frame[c].to_numpy()
            if high is not None:
                outside |= x > high + OHLC_TOLERANCE * np.abs(high)
            if low is not None:
                outside |= x < low - OHLC_TOLERANCE * np.abs(low)
    return swapped, outside & ~swapped


def check_prices(
    frame: pd.DataFrame, repair: str | None, name: str
) -> tuple[pd.DataFrame, RepairSummary]:
    """Find the bad rows (see the module docstring); raise, or repair and count them."""
    price_cols = [c for c in PRICE_COLUMNS if c in frame.columns]
    prices = frame[price_cols].to_numpy(dtype=np.float64)
    _check_volume(frame, name)
    _check_float32_range(frame, prices, name)
    nan_row = np.isnan(prices).any(axis=1)
    inf_row = np.isinf(prices).any(axis=1) & ~nan_row
    nonpos_row = (prices <= 0).any(axis=1) & ~nan_row & ~inf_row
    good = ~(nan_row | inf_row | nonpos_row)
    swapped, outside = _inconsistent(frame)
    swapped &= good
    outside &= good
    ohlc_row = swapped | outside
    raw_text = frame.attrs.get("raw_text", {})

    def describe(p: int) -> str:
        bits = []
        for c in price_cols:
            v = frame[c].iat[p]
            if np.isnan(v) and c in raw_text and p in raw_text[c].index:
                text = raw_text[c][p]
                point = text.replace(",", ".")
                comma = f": a decimal comma? write {point!r}" if "," in text else ""
                bits.append(f"{c}={text!r} (not a number{comma})")
            elif not np.isfinite(v) or v <= 0:
                bits.append(f"{c}={v}")
        return ", ".join(bits)

    def describe_ohlc(p: int) -> str:
        v = {c: frame[c].iat[p] for c in price_cols}
        if swapped[p]:
            return f"high={v['high']} < low={v['low']}"
        bits = []
        for c in ("open", "close"):
            if c in v and "high" in v and v[c] > v["high"] * (1 + OHLC_TOLERANCE):
                bits.append(f"{c}={v[c]} > high={v['high']}")
            if c in v and "low" in v and v[c] < v["low"] * (1 - OHLC_TOLERANCE):
                bits.append(f"{c}={v[c]} < low={v['low']}")
        return ", ".join(bits)

    fix = "pass repair='drop' to drop these rows or repair='ffill' to forward-fill them"
    kinds = [
        (nan_row, "NaN/missing prices", describe),
        (inf_row, "infinite prices", describe),
        (nonpos_row, "zero or negative prices", describe),
        (ohlc_row, "open/high/low/close that do not fit together", describe_ohlc),
    ]
    if ohlc_row.sum() > len(frame) / 2:
        # Most rows: a column problem, not bad ticks; repair would destroy the data.
        raise MarketDataError(_ohlc_message(frame, swapped, outside, describe_ohlc, name, None))
    if repair is None:
        for rows, what, how in kinds:
            if not rows.any():
                continue
            others = [
                f"{int(r.sum())} rows with {w}" for r, w, _ in kinds if r is not rows and r.any()
            ]
            also = f" (also {'; '.join(others)})" if others else ""
            if rows is ohlc_row:
                raise MarketDataError(_ohlc_message(frame, swapped, outside, how, name, fix) + also)
            raise MarketDataError(
                f"{name}: {what} in {int(rows.sum())} rows: "
                f"{row_examples(np.flatnonzero(rows), frame, how, name)}. "
                f"Fix the file, or {fix}{also}"
            )
    summary = RepairSummary(method=repair)
    bad = ~good | ohlc_row
    counts = {
        "nan_rows": int(nan_row.sum()),
        "nonpositive_rows": int(nonpos_row.sum()),
        "inf_rows": int(inf_row.sum()),
        "inconsistent_rows": int(ohlc_row.sum()),
    }
    if repair == "drop" and bad.any():
        frame = frame.loc[~bad]
        summary = RepairSummary("drop", dropped=int(bad.sum()), **counts)
    elif repair == "ffill" and bad.any():
        frame, kept = _ffill(frame, price_cols, ohlc_row)
        summary = RepairSummary(
            "ffill", dropped=int((~kept).sum()), filled=int((bad & kept).sum()), **counts
        )
    frame.attrs.pop("raw_text", None)
    return frame, summary


# Prices are computed with in float32 on the device (returns, features): beyond this they are
# infinite there.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def _check_float32_range(frame: pd.DataFrame, prices: np.ndarray, name: str) -> None:
    """Finite prices too large for float32 are an error (they would be inf in training)."""
    huge = (np.abs(prices) > FLOAT32_MAX).any(axis=1) & np.isfinite(prices).all(axis=1)
    if huge.any():
        where = row_examples(np.flatnonzero(huge), frame, lambda p: "too large", name)
        raise MarketDataError(
            f"{name}: prices above {FLOAT32_MAX:.3g} (the float32 range pyppo computes in) in "
            f"{int(huge.sum())} rows: {where}. Rescale the prices (divide every price column "
            "by the same power of ten)"
        )


def _check_volume(frame: pd.DataFrame, name: str) -> None:
    """A volume that is not a number is an error, not a silent NaN (pyppo does not train on
    volume, so dropping the column is a fix too)."""
    junk = frame.attrs.get("raw_text", {}).get("volume")
    if junk is None or junk.empty:
        return
    rows = np.asarray(junk.index, dtype=np.int64)
    raise MarketDataError(
        f"{name}: the volume is not a number in {len(rows)} rows: "
        f"{row_examples(rows, frame, lambda p: repr(junk[p]), name)}. Fix those values, or "
        "drop the volume column (pyppo does not train on volume)"
    )


def _ffill(
    frame: pd.DataFrame, price_cols: list[str], ohlc_row: np.ndarray
) -> tuple[pd.DataFrame, np.ndarray]:
    """``repair="ffill"`` (see the module docstring): the repaired frame, and which rows of
    ``frame`` it kept (the others had nothing before them to fill from)."""
    cleaned = frame.copy()
    for c in price_cols:
        col = cleaned[c]
        cleaned[c] = col.where(np.isfinite(col) & (col > 0))
    cleaned.loc[ohlc_row, price_cols] = np.nan
    cleaned[price_cols] = cleaned[price_cols].ffill()
    # A row made inconsistent by filling one of its values takes the bar before it whole.
    swapped, outside = _inconsistent(cleaned)
    redo = swapped | outside
    if redo.any():
        cleaned.loc[redo, price_cols] = np.nan
        cleaned[price_cols] = cleaned[price_cols].ffill()
    kept = ~cleaned[price_cols].isna().any(axis=1).to_numpy()
    return cleaned.loc[kept], kept


def _ohlc_message(
    frame: pd.DataFrame,
    swapped: np.ndarray,
    outside: np.ndarray,
    how: object,
    name: str,
    fix: str | None,
) -> str:
    """The error for rows whose open/high/low/close do not fit together; ``fix`` is the
    repair= advice, ``None`` when so many rows are affected that repair= does not apply."""
    rows = np.flatnonzero(swapped | outside)
    heads = []
    if swapped.any():
        heads.append(f"high < low in {int(swapped.sum())} rows")
    if outside.any():
        heads.append(f"open/close outside [low, high] in {int(outside.sum())} rows")
    which = "high and low" if swapped.any() else "open/high/low/close"
    if fix is None:
        advice = (
            f"That is {len(rows)} of {len(frame)} rows: a column problem rather than bad "
            "ticks, so repair= does not apply. Fix the data"
        )
    else:
        advice = f"Fix the data, {fix}"
    return (
        f"{name}: {', '.join(heads)}: {row_examples(rows, frame, how, name)}. Check that the "
        f"{which} columns are not swapped or mislabelled. {advice}, or drop the high and low "
        "columns (pyppo trades on close; high and low are only checked)"
    )


def check_returns(frame: pd.DataFrame, name: str) -> None:
    """The return between consecutive closes is finite and above -100 %."""
    close = frame["close"].to_numpy(dtype=np.float64)
    with np.errstate(over="ignore", under="ignore", divide="ignore", invalid="ignore"):
        ratio = close[1:] / close[:-1]
    rows = np.flatnonzero(~np.isfinite(ratio) | (ratio <= 0)) + 1
    if len(rows):
        shown = row_examples(rows, frame, lambda p: f"close {close[p - 1]!r} -> {close[p]!r}", name)
        raise MarketDataError(
            f"{name}: the return from the bar before is not a finite number in {len(rows)} "
            f"rows: {shown}. Prices this far apart cannot both be right: fix the data"
        )
