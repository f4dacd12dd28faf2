"""Observation features for :class:`pyppo.TradingEnv`, computed once for the whole series.

The env's ``step()`` must be a handful of gathers, so everything that depends only on the
market (the normalized return window, indicators, calendar features) is precomputed here
into one contiguous ``(T, D)`` float32 table; the env copies row ``t`` of it and writes the
one per-agent column (the position held) in place. An observation therefore depends only on
the bar and the position held: nothing about episodes, so training, backtests and live
inference see the same thing.

Every feature is causal (row t uses bars <= t only: the table of a series cut after bar t
equals the first t + 1 rows of the full table), scale-free (returns are divided by a
trailing volatility estimate, so the same agent works on a 0.1 %/bar and a 2 %/bar asset)
and clipped to ``[-FEATURE_CLIP, FEATURE_CLIP]``. Bad ticks never reach the observation:
the log returns are sanitized with the fused op (non-finite -> 0, clamped to ±1) before any
feature is built from them, and the counts are kept in :attr:`MarketFeatures.sanitized`.
"""

from __future__ import annotations

import math
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
    """The precomputed ``(T, spec.size)`` table (position column zero) and how many log
    returns had to be sanitized to build it (``[nonfinite, clamped]``)."""

    table: Tensor
    spec: ObsSpec
    sanitized: Tensor


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


def compute_features(market: MarketData, window: int, device: torch.device | str) -> MarketFeatures:
    """Build the observation table for every bar of ``market``.

    Rows t < window are incomplete and never observed. Row t depends on bars 0..t only.

    :param market: the bars.
    :param window: length of the normalized return window (:meth:`ObsSpec.for_window`).
    :param device: where the table is put.
    """
    spec = ObsSpec.for_window(window)
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

    # Built in float32: clipping commutes with rounding to float32, so this equals building
    # in float64 and converting at the end, with a quarter of the memory traffic.
    table = np.zeros((n, spec.size), dtype=np.float32)
    # Window block: row t holds r_norm[t-window+1 .. t], oldest first (zeros before bar 0).
    padded = np.concatenate([np.zeros(window - 1, dtype=np.float32), r_norm.astype(np.float32)])
    table[:, spec.window] = np.lib.stride_tricks.sliding_window_view(padded, window)

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
    for j, name in enumerate(INDICATOR_NAMES):
        table[:, spec.indicators.start + j] = ind[name]

    # Calendar: time of day and day of week as points on a circle (23:00 is next to 00:00).
    idx = frame.index
    hour = (idx.hour.to_numpy() + idx.minute.to_numpy() / 60.0) / 24.0
    day = (idx.day_of_week.to_numpy() + hour) / 7.0
    t0 = spec.time.start
    table[:, t0] = np.sin(2 * np.pi * hour)
    table[:, t0 + 1] = np.cos(2 * np.pi * hour)
    table[:, t0 + 2] = np.sin(2 * np.pi * day)
    table[:, t0 + 3] = np.cos(2 * np.pi * day)

    # The window block is already clipped and finite (finite returns over a positive
    # floor). The other inputs are finite by construction too; NaN -> 0 only guards
    # against a future edit.
    rest = table[:, spec.window.stop :]
    rest[np.isnan(rest)] = 0.0
    np.clip(rest, -FEATURE_CLIP, FEATURE_CLIP, out=rest)
    out = torch.from_numpy(table).to(device).contiguous()
    return MarketFeatures(table=out, spec=spec, sanitized=sanitized.to(device))
