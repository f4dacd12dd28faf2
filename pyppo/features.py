"""Observation features for :class:`pyppo.TradingEnv`, computed once for the whole series.

The env's ``step()`` must be a handful of gathers, so everything that depends only on the
market (the normalized returns, indicators, calendar) is precomputed here, compactly: one
normalized return, nine indicators and a minute-of-week code per bar
(:class:`MarketFeatures`, 44 bytes a bar whatever the window). An observation is gathered
from them at step time: the window is a slice of the return column, the calendar columns
come from a fixed table, and the env writes the one per-agent column (the position held).
An observation therefore depends only on the bar and the position held: nothing about
episodes, so training, backtests and live inference see the same thing.

Every feature is causal (bar t uses bars <= t only: the features of a series cut after bar
t equal the first t + 1 bars' of the full series), scale-free (returns are divided by a
trailing volatility estimate, so the same agent works on a 0.1 %/bar and a 2 %/bar asset)
and clipped to ``[-FEATURE_CLIP, FEATURE_CLIP]``. Bad ticks never reach the observation:
the log returns are sanitized with the fused op (non-finite -> 0, clamped to ±1) before any
feature is built from them, and the counts are kept in :attr:`MarketFeatures.sanitized`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from pyppo import ops
from pyppo.data import MarketData

FEATURE_CLIP = 10.0
# Realized log returns and auxiliary targets are sanitized to this limit everywhere (the env,
# the features, backtests): NaN/inf -> 0, beyond ±1 (a move of +172 % / -63 %) clamped.
RETURN_LIMIT = 1.0
# Volatility floor: this fraction of the mean volatility so far, and at least _FLOOR_MIN.
_FLOOR_FRACTION = 1e-3
_FLOOR_MIN = 1e-11

INDICATOR_NAMES = (
    "vol_ratio",  # log(short-term vol / window vol): is volatility rising?
    "vol_level",  # log(window vol / slow vol): is this a volatile period?
    "mom_3",  # 3-bar return in units of its expected standard deviation
    "mom_12",
    "mom_window",
    "ma_ratio_10",  # log price above its 10-bar mean, in vol units
    "ma_ratio_window",
    "bar_range",  # log(high / low) in vol units (0 without high/low)
    "drawdown",  # distance below the window's high in vol units
)
TIME_NAMES = ("hour_sin", "hour_cos", "weekday_sin", "weekday_cos")
POSITION_NAMES = ("position",)


@dataclass(frozen=True)
class ObsSpec:
    """Layout of the flat observation vector (one row per env).

    ``obs[..., spec.window]`` is the normalized return window, oldest first (the model's
    price-window branch); ``obs[..., spec.features]`` is everything else (indicators, time,
    position: the feature branch). ``names[i]`` names column i.
    """

    window_len: int
    size: int
    window: slice
    indicators: slice
    time: slice
    position: slice
    names: tuple[str, ...]

    @property
    def features(self) -> slice:
        """All non-window columns: indicators, time-of-day/week and position features."""
        return slice(self.indicators.start, self.size)

    @property
    def position_col(self) -> int:
        """The column holding the agent's position (-1, 0, +1)."""
        return self.position.start

    @classmethod
    def for_window(cls, window: int) -> ObsSpec:
        """The layout for a return window of ``window`` bars.

        :param window: length of the normalized return window.
        """
        w, i, t, p = window, len(INDICATOR_NAMES), len(TIME_NAMES), len(POSITION_NAMES)
        names = tuple(f"ret_{k - w + 1}" for k in range(w)) + INDICATOR_NAMES + TIME_NAMES
        return cls(
            window_len=w,
            size=w + i + t + p,
            window=slice(0, w),
            indicators=slice(w, w + i),
            time=slice(w + i, w + i + t),
            position=slice(w + i + t, w + i + t + p),
            names=names + POSITION_NAMES,
        )


@dataclass
class MarketFeatures:
    """Per-bar features of one or more symbols, kept compact; observations are gathered
    from them at step time (:meth:`observe`), never stored as a row per bar.

    Per bar this holds one normalized return (float32), the indicators (float32 each) and a
    minute-of-week code (int32): 44 bytes whatever the window, where a materialized
    observation row would take ``4 * spec.size`` bytes (296 with a window of 60). The window
    block of an observation is a slice of the return column: symbol ``s``'s returns are
    stored after ``window - 1`` zeros, so the window of its bar ``t`` is one row of the
    column's sliding view, and rows before bar ``window`` see zeros where no bar was, as
    they always did. Calendar columns come from a fixed table indexed by the code.

    Symbols are stacked: symbol ``s``'s bar ``t`` is row ``offsets[s] + t`` of
    :attr:`indicators` and :attr:`calendar`. One market is one symbol.

    :param returns: the padded normalized return column, ``(rows + symbols * (window - 1),)``.
    :param indicators: ``(rows, len(INDICATOR_NAMES))``.
    :param calendar: ``(rows,)`` minute of the week (Monday 00:00 is 0).
    :param offsets: ``(symbols + 1,)`` first row of each symbol, then the total.
    :param spec: the observation layout.
    :param sanitized: how many log returns had to be sanitized (``[nonfinite, clamped]``).
    """

    returns: Tensor
    indicators: Tensor
    calendar: Tensor
    offsets: Tensor
    spec: ObsSpec
    sanitized: Tensor

    def __post_init__(self) -> None:
        # Views and lookups observe() uses at every step, made once.
        self._windows = self.returns.unfold(0, self.spec.window_len, 1)
        self._calendar_table = calendar_table(self.calendar.device)

    @property
    def rows(self) -> int:
        """Bars over all symbols."""
        return self.calendar.shape[0]

    @property
    def nbytes(self) -> int:
        """Bytes held (what grows with the bars; the calendar table is fixed-size)."""
        return sum(
            t.numel() * t.element_size() for t in (self.returns, self.indicators, self.calendar)
        )

    def observe(
        self, rows: Tensor, position: Tensor | float = 0.0, symbols: Tensor | None = None
    ) -> Tensor:
        """The observations of ``rows`` (a (N,) int64 tensor on the features' device), each
        with its position written in.

        :param rows: stacked rows (``offsets[s] + t``).
        :param position: (N,) positions, or one for all.
        :param symbols: (N,) symbol of each row; ``None`` for one symbol.
        """
        w = self.spec.window_len
        window_rows = rows if symbols is None else rows + symbols * (w - 1)
        if not isinstance(position, Tensor):
            position = torch.full(rows.shape, float(position), device=rows.device)
        elif position.dtype != torch.float32:  # cat would promote the whole observation
            position = position.float()
        # One gather per block, in the layout's order (window, indicators, time, position):
        # a concatenation of whole blocks costs less than writing slices of one tensor.
        return torch.cat(
            [
                self._windows.index_select(0, window_rows),
                self.indicators.index_select(0, rows),
                self._calendar_table.index_select(0, self.calendar.index_select(0, rows)),
                position.unsqueeze(1),
            ],
            dim=1,
        )

    def materialize(self, symbol: int = 0) -> Tensor:
        """Every bar's observation of one symbol, position flat: ``(bars, spec.size)``. For
        tests and small analyses; the env never builds this."""
        lo, hi = self.offsets[symbol].item(), self.offsets[symbol + 1].item()
        rows = torch.arange(lo, hi, device=self.calendar.device)
        symbols = torch.full_like(rows, symbol)
        return self.observe(rows, 0.0, symbols)

    def to(self, device: torch.device | str) -> MarketFeatures:
        """The same features on ``device``."""
        return MarketFeatures(
            returns=self.returns.to(device),
            indicators=self.indicators.to(device),
            calendar=self.calendar.to(device),
            offsets=self.offsets,
            spec=self.spec,
            sanitized=self.sanitized.to(device),
        )


MINUTES_PER_WEEK = 7 * 24 * 60


@functools.cache
def _calendar_table_cpu() -> Tensor:
    code = np.arange(MINUTES_PER_WEEK)
    minute_of_day = code % (24 * 60)
    hour = (minute_of_day // 60 + (minute_of_day % 60) / 60.0) / 24.0
    day = (code // (24 * 60) + hour) / 7.0
    table = np.stack(
        [
            np.sin(2 * np.pi * hour),
            np.cos(2 * np.pi * hour),
            np.sin(2 * np.pi * day),
            np.cos(2 * np.pi * day),
        ],
        axis=1,
    )
    return torch.from_numpy(table.astype(np.float32))


_CALENDAR_TABLES: dict[torch.device, Tensor] = {}


def calendar_table(device: torch.device) -> Tensor:
    """``(MINUTES_PER_WEEK, len(TIME_NAMES))``: the calendar columns of each minute of the
    week, time of day and day of week as points on a circle (23:00 is next to 00:00)."""
    if device not in _CALENDAR_TABLES:
        _CALENDAR_TABLES[device] = _calendar_table_cpu().to(device)
    return _CALENDAR_TABLES[device]


def minute_of_week(index: pd.DatetimeIndex) -> np.ndarray:
    """Each timestamp's minute of the week (Monday 00:00 is 0) as int32 (an index that
    ``index_select`` takes as it is)."""
    code = (
        index.day_of_week.to_numpy() * (24 * 60)
        + index.hour.to_numpy() * 60
        + index.minute.to_numpy()
    )
    return code.astype(np.int32)


def _ewm_vol(x: pd.Series, span: int) -> np.ndarray:
    """Exponentially weighted RMS of x (returns have ~zero mean at bar scale); causal:
    ``adjust=True`` weights bars 0..t only."""
    return np.sqrt(x.pow(2).ewm(span=span, adjust=True).mean().to_numpy())


def _causal_floor(vol: np.ndarray) -> np.ndarray:
    """Per-bar volatility floor from bars 0..t only: ``_FLOOR_FRACTION`` of the mean of
    ``vol`` over those bars, and never below ``_FLOOR_MIN`` (so a flat price series, whose
    volatility is 0, divides by the floor instead of by zero)."""
    mean = np.cumsum(vol) / np.arange(1, len(vol) + 1)
    return np.maximum(mean * _FLOOR_FRACTION, _FLOOR_MIN)


def _rolling_sum(x: np.ndarray, k: int) -> np.ndarray:
    """Sum of x over the last k bars up to and including each bar (fewer at the start)."""
    c = np.concatenate([[0.0], np.cumsum(x)])
    lo = np.maximum(np.arange(1, len(x) + 1) - k, 0)
    return c[1:] - c[lo]


def compute_features(
    market: MarketData | Sequence[MarketData], window: int, device: torch.device | str
) -> MarketFeatures:
    """Build the per-bar features of ``market`` (or of several symbols' markets, stacked in
    the order given).

    Observations of bars t < window are incomplete and never used. Bar t's features depend
    on bars 0..t of its own symbol only.

    :param market: the bars, or one market per symbol.
    :param window: length of the normalized return window (:meth:`ObsSpec.for_window`).
    :param device: where the features are put.
    """
    markets = [market] if isinstance(market, MarketData) else list(market)
    if not markets:
        raise ValueError("compute_features: no market given")
    spec = ObsSpec.for_window(window)
    pad = np.zeros(window - 1, dtype=np.float32)
    returns, indicators, calendar, sanitized = [], [], [], []
    for one in markets:
        r_norm, ind, counts = _symbol_features(one, window)
        returns += [pad, r_norm]
        indicators.append(ind)
        calendar.append(minute_of_week(one.frame.index))
        sanitized.append(counts)
    lengths = [0] + [len(one) for one in markets]
    return MarketFeatures(
        returns=torch.from_numpy(np.concatenate(returns)).to(device),
        indicators=torch.from_numpy(np.concatenate(indicators)).to(device),
        calendar=torch.from_numpy(np.concatenate(calendar)).to(device),
        offsets=torch.tensor(np.cumsum(lengths), dtype=torch.int64),
        spec=spec,
        sanitized=torch.stack(sanitized).sum(0).to(device),
    )


def _symbol_features(market: MarketData, window: int) -> tuple[np.ndarray, np.ndarray, Tensor]:
    """One symbol's normalized returns ``(T,)`` and indicators ``(T, 9)`` (float32), and its
    sanitized-return counts."""
    n = len(market)
    # Sanitize the returns the features see, with the same fused op and limit as rewards.
    logr = market.log_returns.clone()
    sanitized = ops.sanitize_(logr, RETURN_LIMIT)
    r = logr.numpy()
    rs = pd.Series(r)

    # Trailing volatility known before bar t (excludes r[t]) normalizes r[t]; the causal
    # floor keeps a flat price series (vol 0) from dividing by zero.
    vol_w = _ewm_vol(rs, window)
    floor = _causal_floor(vol_w)
    vol_w = np.maximum(vol_w, floor)
    vol_prev = np.concatenate([vol_w[:1], vol_w[:-1]])
    r_norm = np.clip(r / vol_prev, -FEATURE_CLIP, FEATURE_CLIP)
    r_norm[:1] = 0.0

    vol_short = np.maximum(_ewm_vol(rs, 12), floor)
    vol_slow = np.maximum(_ewm_vol(rs, 10 * window), floor)
    logp = np.cumsum(r)  # log price rebuilt from sanitized returns: finite by construction
    ind = {
        "vol_ratio": np.log(vol_short / vol_w),
        "vol_level": np.log(vol_w / vol_slow),
    }
    for name, k in (("mom_3", 3), ("mom_12", 12), ("mom_window", window)):
        k = min(k, window)
        ind[name] = _rolling_sum(r, k) / (vol_w * math.sqrt(k))
    for name, k in (("ma_ratio_10", 10), ("ma_ratio_window", window)):
        k = min(k, window)
        mean = _rolling_sum(logp, k) / np.minimum(np.arange(1, n + 1), k)
        ind[name] = (logp - mean) / (vol_w * math.sqrt(k))
    frame = market.frame
    if "high" in frame.columns and "low" in frame.columns:
        with np.errstate(divide="ignore", invalid="ignore"):
            rng = np.log(frame["high"].to_numpy() / frame["low"].to_numpy())
        ind["bar_range"] = np.where(np.isfinite(rng), rng, 0.0) / vol_w
    else:
        ind["bar_range"] = np.zeros(n)
    high = pd.Series(logp).rolling(window, min_periods=1).max().to_numpy()
    ind["drawdown"] = (logp - high) / (vol_w * math.sqrt(window))
    # Built in float32: clipping commutes with rounding to float32, so this equals building
    # in float64 and converting at the end.
    indicators = np.empty((n, len(INDICATOR_NAMES)), dtype=np.float32)
    for j, name in enumerate(INDICATOR_NAMES):
        indicators[:, j] = ind[name]
    # The returns are clipped and finite (finite returns over a positive floor). The
    # indicators are finite by construction too; NaN -> 0 only guards against a future edit.
    indicators[np.isnan(indicators)] = 0.0
    np.clip(indicators, -FEATURE_CLIP, FEATURE_CLIP, out=indicators)
    return r_norm.astype(np.float32), indicators, sanitized
