"""The embedded synthetic market: deterministic bars with a small, learnable planted edge.

What :func:`synthetic_market` builds (regimes, GARCH volatility, fat tails, intraday
pattern, planted momentum, optional bad ticks) is described there and in
:class:`SyntheticParams`.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pyppo.data.errors import MarketDataError
from pyppo.data.horizons import format_duration
from pyppo.data.market import MarketData
from pyppo.data.universe import Universe

__all__ = ["SyntheticParams", "synthetic_market"]


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
    # A universe (``symbols=``): the share of each symbol's shock variance that is a common
    # market shock (so symbols correlate about this much), and the spread of their
    # volatilities (each symbol's base_vol is scaled by exp(N(0, vol_spread))).
    market_share: float = 0.4
    vol_spread: float = 0.4


def synthetic_market(
    n_bars: int = 20_000,
    interval: str | pd.Timedelta = "1h",
    seed: int = 0,
    bad_ticks: float = 0.0,
    *,
    start: str = "2020-01-01",
    window: int = 60,
    horizons: Sequence[int | str | pd.Timedelta] = ("1h", "24h"),
    params: SyntheticParams | None = None,
    symbols: int | Sequence[str] | None = None,
) -> MarketData | Universe:
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

    ``window`` and ``horizons`` are kept on the market as in :func:`load_market_data`.

    ``symbols`` (a count, or the names) makes a :class:`~pyppo.data.universe.Universe` of
    that many symbols on one calendar instead: each has its own regimes, volatility level
    (``params.vol_spread``) and planted momentum, and shares a common market shock
    (``params.market_share`` of its shock variance), so the symbols correlate and each has
    an edge of its own. Symbol k's bars come from the seed ``(seed, k)``; a count names them
    ``S00``, ``S01``, ... ``bad_ticks`` then plants bad bars in every symbol.
    """
    p = params or SyntheticParams()
    step = pd.Timedelta(interval)
    if n_bars < 2:
        raise MarketDataError(f"synthetic_market: n_bars={n_bars} is too few")
    if not 0.0 <= bad_ticks < 0.3:
        raise MarketDataError(f"synthetic_market: bad_ticks={bad_ticks} must be a rate in [0, 0.3)")
    if symbols is not None:
        return _synthetic_universe(
            symbols, n_bars, step, seed, bad_ticks, start, window, horizons, p
        )
    rng = np.random.default_rng(seed)
    index = pd.date_range(start, periods=n_bars, freq=step, name="timestamp")
    frame = _bars(rng, index, p)

    planted = _plant_bad_ticks(rng, frame, bad_ticks)
    label = (
        f"synthetic(n_bars={n_bars}, interval={format_duration(step)}, seed={seed}, "
        f"bad_ticks={bad_ticks})"
    )
    return MarketData(
        frame,
        bar_interval=step,
        horizons=horizons,
        window=window,
        planted=planted,
        source=label,
    )


def _bars(
    rng: np.random.Generator,
    index: pd.DatetimeIndex,
    p: SyntheticParams,
    common: np.ndarray | None = None,
) -> pd.DataFrame:
    """One symbol's OHLCV bars on ``index``; ``common``: unit-variance market shocks that
    take ``p.market_share`` of the shock variance (a universe's symbols share them)."""
    n_bars = len(index)

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
    if common is not None:
        shocks = math.sqrt(p.market_share) * common + math.sqrt(1.0 - p.market_share) * shocks
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
    return pd.DataFrame(
        {"open": open_, "high": high, "low": low, "close": close, "volume": volume}, index=index
    )


def _synthetic_universe(
    symbols: int | Sequence[str],
    n_bars: int,
    step: pd.Timedelta,
    seed: int,
    bad_ticks: float,
    start: str,
    window: int,
    horizons: Sequence[int | str | pd.Timedelta],
    p: SyntheticParams,
) -> Universe:
    names = (
        [f"S{k:02d}" for k in range(symbols)]
        if isinstance(symbols, int)
        else [str(s) for s in symbols]
    )
    if not names or len(set(names)) < len(names):
        raise MarketDataError(
            f"synthetic_market: symbols={symbols!r}: give a count >= 1 or distinct names"
        )
    if not 0.0 <= p.market_share < 1.0:
        raise MarketDataError(f"synthetic_market: market_share={p.market_share} must be in [0, 1)")
    index = pd.date_range(start, periods=n_bars, freq=step, name="timestamp")
    common_rng = np.random.default_rng([seed, len(names), 0x5EED])
    common = common_rng.standard_t(p.t_dof, size=n_bars) * math.sqrt((p.t_dof - 2) / p.t_dof)
    markets = {}
    for k, name in enumerate(names):
        rng = np.random.default_rng([seed, k])
        own = dataclasses.replace(p, base_vol=p.base_vol * math.exp(rng.normal(0.0, p.vol_spread)))
        frame = _bars(rng, index, own, common)
        planted = _plant_bad_ticks(rng, frame, bad_ticks)
        markets[name] = MarketData(
            frame,
            bar_interval=step,
            horizons=horizons,
            window=window,
            planted=planted,
            source=f"{name} (synthetic seed={seed})",
        )
    label = (
        f"synthetic(symbols={len(names)}, n_bars={n_bars}, interval={format_duration(step)}, "
        f"seed={seed}, bad_ticks={bad_ticks})"
    )
    return Universe(markets, source=label)


def _plant_bad_ticks(
    rng: np.random.Generator, frame: pd.DataFrame, bad_ticks: float
) -> dict[str, np.ndarray]:
    """Plant ``round(bad_ticks * len(frame))`` bad bars in ``frame`` (in place); their
    positions by kind."""
    planted: dict[str, np.ndarray] = {}
    n_bars = len(frame)
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
    return planted
