"""MarketData: a validated bar series and the tensors the environment needs.

Conventions used throughout (indices are bar positions, 0-based):

- ``returns[t] = close[t] / close[t-1] - 1`` and ``log_returns[t] = log(close[t] / close[t-1])``;
  both are 0 at ``t = 0`` (no previous bar), so they align with the bars.
- ``forward_returns(h)[t] = close[t+h] / close[t] - 1``, NaN where ``t + h`` is past the end.
- Horizons are counted in bars (see :mod:`pyppo.data.horizons`). Durations such as ``"24h"``
  are converted with the bar interval; gaps (weekends) are not bars, so a 24-bar horizon may
  span more than 24 hours.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from pyppo.data.errors import MarketDataError
from pyppo.data.horizons import format_duration, horizon_label, horizon_to_bars

__all__ = [
    "MarketData",
    "MarketDataError",
    "RepairSummary",
    "bars_per_year",
    "infer_bar_interval",
]


def as_nanoseconds(index: pd.DatetimeIndex) -> np.ndarray:
    """Timestamps as int64 nanoseconds (pandas 3 parses to second or microsecond units)."""
    return index.as_unit("ns").asi8


@dataclass(frozen=True)
class RepairSummary:
    """What ``repair=`` changed: the bad rows by kind (NaN, zero/negative or infinite
    prices, open/close outside [low, high] or high < low; each row counted once, under the
    first that applies of NaN, infinite, zero/negative, inconsistent) and how they were
    fixed (``dropped`` rows, ``filled`` rows)."""

    method: str | None = None
    nan_rows: int = 0
    nonpositive_rows: int = 0
    dropped: int = 0
    filled: int = 0
    inf_rows: int = 0
    inconsistent_rows: int = 0

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
        if self.inf_rows:
            parts.append(f"{self.inf_rows} with infinite prices")
        if self.inconsistent_rows:
            parts.append(f"{self.inconsistent_rows} with open/close outside [low, high]")
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
        horizons: the auxiliary horizons in bars, in the order given (used for the
            minimum-length check, :attr:`aux_targets` and :meth:`decision_bars`).
        horizon_labels: the label of each horizon (:func:`horizon_label`: ``"1h"``,
            ``"24h"``, ``"3bars"``), in the same order; names such as ``pred_1h`` are built
            from them, so two horizons may not share a label.
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
        horizons: Sequence[int | str | pd.Timedelta] = ("1h", "24h"),
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
        self.horizon_labels = tuple(horizon_label(h) for h in horizons)
        if len(set(self.horizon_labels)) < len(self.horizon_labels):
            raise MarketDataError(
                f"horizons {list(horizons)!r} give the labels {list(self.horizon_labels)}: "
                "each horizon needs its own label (it names the auxiliary head); give each "
                "horizon once"
            )
        self._horizon_spec = tuple(horizons)  # as given, so that split() keeps them
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

    def decision_bars(self, window: int) -> int:
        """Bars an agent can act on: each needs ``window`` returns behind it (t >= window),
        a next bar for the reward and every horizon ahead (t + longest <= T - 1)."""
        longest = max(self.horizons, default=0)
        return len(self) - max(longest, 1) - window

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
            check_length(
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

    @property
    def bars_per_year(self) -> float:
        """Bars a year as the data has them, gaps included: :func:`bars_per_year` of the
        index (about 8766 for hourly bars without gaps, 6,260 for hourly forex bars)."""
        return bars_per_year(self.frame.index)

    def gaps(self) -> tuple[int, int, pd.Timedelta]:
        """(number of gaps, number of missing bars, largest spacing). A gap is a spacing
        larger than the bar interval, e.g. a weekend in forex or stock data."""
        if len(self) < 2:
            return 0, 0, pd.Timedelta(0)
        spacing = np.diff(as_nanoseconds(self.frame.index))
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
        h.update(np.ascontiguousarray(as_nanoseconds(self.frame.index)).tobytes())
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
        horizons = (
            ", ".join(
                f"{lab} = {h} bar{'s' if h != 1 else ''}"
                for lab, h in zip(self.horizon_labels, self.horizons, strict=True)
            )
            or "none"
        )
        lines = [
            f"market data: {self.source}",
            f"  bars:      {n:,} from {idx[0]} to {idx[-1]}",
            f"  interval:  {format_duration(self.bar_interval)} (median spacing)",
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
            f"interval={format_duration(self.bar_interval)}, source={self.source!r})"
        )


def infer_bar_interval(index: pd.DatetimeIndex) -> pd.Timedelta:
    """Median spacing between consecutive timestamps: robust to gaps such as weekends."""
    if len(index) < 2:
        raise MarketDataError("need at least 2 bars to infer the bar interval")
    spacing = np.diff(as_nanoseconds(index))
    return pd.Timedelta(int(np.median(spacing)), unit="ns")


_YEAR = pd.Timedelta(days=365.25)


def bars_per_year(index: pd.DatetimeIndex) -> float:
    """Bars a year as the data has them, gaps (weekends, holidays) included, robust to a
    few outlier timestamps.

    With the ``n`` timestamps sorted, ``t[0] <= ... <= t[n-1]``, and ``k = n // 100 + 1``
    dropped at each end (about 1 %, at least one; fewer when ``n < 4``: ``k`` is at most
    ``(n - 2) // 2``)::

        bars_per_year = (n - 1 - 2k) / ((t[n-1-k] - t[k]) / 365.25 days)

    the bar spacings counted over the central span, per year. Hourly bars without gaps
    give 24 * 365.25 = 8766; hourly bars on weekdays only (forex) about 120 * 52.18 =
    6,261; daily stock bars about 252. One mistyped timestamp (the year 2042 in data of
    2020) lands at an end of the sorted order and is dropped, so it does not move the
    result.

    Raises:
        MarketDataError: fewer than 2 timestamps, or the central span is zero.
    """
    if len(index) < 2:
        raise MarketDataError(f"bars_per_year needs at least 2 bars, got {len(index)}")
    idx = pd.DatetimeIndex(index)
    per_unit = pd.Timedelta(1, unit=idx.unit).value  # ns in one tick of the index' unit
    t = np.sort(idx.asi8.astype(np.float64) * per_unit)  # any unit, no overflow
    n = len(t)
    k = min(n // 100 + 1, (n - 2) // 2)
    span = t[n - 1 - k] - t[k]
    if span <= 0:
        raise MarketDataError("bars_per_year: the timestamps span no time")
    return float((n - 1 - 2 * k) / (span / _YEAR.value))


def check_length(
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
