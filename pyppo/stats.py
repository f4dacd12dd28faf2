"""Backtest statistics over numpy arrays, named as backtesting.py names them where they overlap.

Every function here is pure and takes plain 1-D arrays, one value per bar:

- ``returns``: the strategy's per-bar **simple** net return, fees included, as a fraction:
  ``r[t] = equity[t + 1] / equity[t] - 1``. (From the log rewards of
  :class:`pyppo.TradingEnv`, ``returns = np.expm1(log_rewards)``.)
- ``positions``: the position held over each bar (-1 short, 0 flat, +1 long). The position
  before bar 0 is taken to be flat.
- ``fees`` (optional): the fee paid on each bar, as a fraction of the equity at the start of
  that bar, already included in ``returns``. (With the env's fee of ``fee`` per unit of
  position change charged on log rewards, ``fees = -np.expm1(-fee * |p[t] - p[t-1]|)``.)
- ``bars_per_year``: the data's own bars per year, gaps included, chosen by the caller.

Indices. The equity curve (:func:`equity`) has ``n + 1`` points for ``n`` bars: ``equity[0]``
is the starting 1.0 and ``equity[k]`` is the equity after bar ``k - 1``. Drawdown periods
(:func:`drawdowns`) index that curve; trades (:func:`trades`) index bars.

Drawdowns. ``drawdown[k] = 1 - equity[k] / max(equity[:k + 1])`` (a positive fraction). A
drawdown period runs from the peak it falls from (``start``) to the first point back at or
above that peak (``end``); its ``duration`` is ``end - start`` bars, as backtesting.py
counts it. A drawdown not recovered by the last bar ends at the last point, so its duration
runs to the end of the data. :func:`summary` reports drawdowns as **negative** percentages,
as backtesting.py does (``Max. Drawdown [%] = -23.4`` for a 23.4 % fall from the peak).

Trades. A trade is a maximal run of bars held in the same direction (sign of the position;
for -1/0/+1 positions, a maximal run of the same non-flat position). Going long to short is
two trades. A trade's return is its equity growth over its bars, compounded, including the
fees of entering and of leaving it. The fee of entering is charged on the trade's first bar,
so it is in the trade's own returns. The fee of leaving is charged on the bar after the run,
when the position changes; it is attributed to the trade it closes. On a bar where the
position goes from ``a`` to ``b``, the share ``|a| / (|a| + |b|)`` of the fee closes ``a``
and the rest opens ``b`` (all of it on a move to or from flat, half of it on a flip from +1
to -1), splitting the bar's fee factor as ``1 - fees[t] = (1 - fees[t]) ** share *
(1 - fees[t]) ** (1 - share)``: the closing part multiplies the closed trade's growth and is
taken out of the bar's return before that bar counts for the next trade. Without ``fees``
the fee of leaving cannot be told apart from the bar's other return and stays on that bar
(in the next trade's first bar on a flip, in flat time otherwise). A trade still open at
the last bar is marked to the last bar's close and included in the statistics, without a
fee of leaving (``Trades.is_open`` tells those apart).

Summary conventions (:data:`CONVENTIONS` says the same, for a report to print), with ``N``
bars per year and a risk-free rate of 0, as empyrical and quantstats compute them with
``annualization`` / ``periods`` = ``N``:

- volatility = ``std(r, ddof=1) * sqrt(N)``; Sharpe = ``mean(r) / std(r, ddof=1) * sqrt(N)``,
  NaN when every return is the same (no dispersion) or there are fewer than 2 bars;
- Sortino = ``mean(r) / sqrt(mean(min(r, 0) ** 2)) * sqrt(N)``: the downside deviation is
  taken over **all** bars, not only the losing ones; inf when no bar loses;
- CAGR = ``equity_end ** (N / n_bars) - 1``; Calmar = CAGR / max drawdown (NaN without one);
- trade statistics are NaN without trades; Profit Factor is inf without a losing trade.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

CONVENTIONS = """\
Returns: per-bar simple net returns r (fees included); risk-free rate 0; N = bars per year.
Equity: starts at 1.0, compounded: prod(1 + r). Return [%] = (equity_end - 1) * 100.
CAGR [%] = (equity_end ** (N / n_bars) - 1) * 100 (-100 when equity_end <= 0).
Volatility (Ann.) [%] = std(r, ddof=1) * sqrt(N) * 100.
Sharpe Ratio = mean(r) / std(r, ddof=1) * sqrt(N); NaN when all returns are equal or n < 2.
Sortino Ratio = mean(r) / sqrt(mean(min(r, 0)^2)) * sqrt(N), the downside deviation taken
  over all bars (empyrical's and quantstats' convention); inf when no bar loses and the mean
  is positive, NaN when n < 2 or every return is 0.
Drawdown = 1 - equity / running peak, reported as a negative percentage. Max. Drawdown [%]
  is 0 without drawdowns. Calmar Ratio = CAGR / |Max. Drawdown| (NaN without drawdown).
Drawdown durations in bars, peak to recovery; an unrecovered one runs to the last bar.
  Avg. Drawdown [%] and Avg. Drawdown Duration average over drawdown periods (NaN if none).
Exposure Time [%] = share of bars with a non-flat position.
Trades: maximal runs of one direction; a trade's return compounds its bars, with the fee of
  entering (charged on its first bar) and of leaving (charged on the next bar) included; an
  open last trade is marked to the end. Win Rate = share of trades with return > 0.
  Avg. Trade [%] = geometric mean of trade returns (-100 if one lost everything);
  Expectancy [%] = arithmetic mean. Profit Factor = sum of winning trade returns / |sum of
  losing ones|: inf with no losing trade, NaN when no trade wins or loses.
  Trade statistics are NaN without trades.
Buy & Hold Return [%] = compounded benchmark returns (NaN when none are given)."""

SUMMARY_KEYS: tuple[str, ...] = (
    "Return [%]",
    "Buy & Hold Return [%]",
    "CAGR [%]",
    "Volatility (Ann.) [%]",
    "Sharpe Ratio",
    "Sortino Ratio",
    "Calmar Ratio",
    "Max. Drawdown [%]",
    "Avg. Drawdown [%]",
    "Max. Drawdown Duration",
    "Avg. Drawdown Duration",
    "Exposure Time [%]",
    "# Trades",
    "Win Rate [%]",
    "Best Trade [%]",
    "Worst Trade [%]",
    "Avg. Trade [%]",
    "Profit Factor",
    "Expectancy [%]",
)


@dataclass(frozen=True)
class DrawdownPeriod:
    """One drawdown, in indices of the equity curve (``equity[k]`` = equity after ``k`` bars).

    :param start: index of the peak the drawdown falls from.
    :param trough: index of the lowest point (the first one, on ties).
    :param end: index of the first point back at or above the peak, or the last index when
        the drawdown is not recovered.
    :param depth: ``1 - equity[trough] / equity[start]``, a positive fraction.
    :param duration: ``end - start``, in bars.
    :param recovered: whether the equity got back to the peak.
    """

    start: int
    trough: int
    end: int
    depth: float
    duration: int
    recovered: bool


@dataclass(frozen=True)
class Trades:
    """The trades of a backtest, one entry per trade in each array, in order.

    :param entry: (T,) int64, first bar held.
    :param exit: (T,) int64, last bar held (the position changes on the bar after it).
    :param direction: (T,) int64, +1 long, -1 short.
    :param returns: (T,) float64, the trade's compounded return as a fraction, fees of
        entering and leaving included (see the module docstring).
    :param is_open: (T,) bool, whether the position is still held on the last bar.
    """

    entry: np.ndarray
    exit: np.ndarray
    direction: np.ndarray
    returns: np.ndarray
    is_open: np.ndarray

    @property
    def bars(self) -> np.ndarray:
        """(T,) int64, the number of bars each trade is held."""
        return self.exit - self.entry + 1

    def __len__(self) -> int:
        return len(self.entry)


def _vector(name: str, values: np.ndarray, length: int | None = None) -> np.ndarray:
    """``values`` as a 1-D float64 array of finite numbers, else ValueError.

    :param name: the argument's name, for the error message.
    :param values: array-like of numbers.
    :param length: the length it must have, or None for any.
    """
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array, got shape {array.shape}")
    if length is not None and len(array) != length:
        raise ValueError(f"{name}: expected {length} values (one per bar), got {len(array)}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name}: has NaN or inf at {np.flatnonzero(~np.isfinite(array))[:5]}")
    return array


def _check_bars_per_year(bars_per_year: float) -> float:
    if not (math.isfinite(bars_per_year) and bars_per_year > 0):
        raise ValueError(f"bars_per_year={bars_per_year}: must be a finite number > 0")
    return float(bars_per_year)


def equity(returns: np.ndarray) -> np.ndarray:
    """The equity curve of per-bar simple returns: ``n + 1`` points, starting at 1.0,
    then ``prod(1 + returns[:k])`` after ``k`` bars.

    :param returns: (n,) per-bar simple returns, as fractions.
    """
    r = _vector("returns", returns)
    return np.concatenate(([1.0], np.cumprod(1.0 + r)))


def drawdowns(equity_curve: np.ndarray) -> tuple[np.ndarray, list[DrawdownPeriod]]:
    """The drawdown series ``1 - equity / running peak`` (positive fractions, one per point
    of ``equity_curve``) and the drawdown periods, in order.

    A period starts at the peak it falls from and ends at the first point back at or above
    that peak, or at the last point if it never gets back there.

    :param equity_curve: (m,) equity values with a positive first value, e.g. from
        :func:`equity`.
    """
    eq = _vector("equity_curve", equity_curve)
    if len(eq) == 0:
        return eq.copy(), []
    if eq[0] <= 0:
        raise ValueError(f"equity_curve: the first value must be > 0, got {eq[0]}")
    dd = 1.0 - eq / np.maximum.accumulate(eq)
    under = dd > 0.0
    edges = np.diff(under.astype(np.int8), prepend=np.int8(0), append=np.int8(0))
    first = np.flatnonzero(edges == 1)  # first point under water of each period
    if len(first) == 0:
        return dd, []
    last = np.flatnonzero(edges == -1) - 1  # last point under water
    start = first - 1  # dd[0] == 0, so every period starts after a point at its peak
    recovered = last + 1 < len(eq)
    end = np.where(recovered, last + 1, len(eq) - 1)
    # Points between a period's last and the next one's first are at 0, below any depth.
    depth = np.maximum.reduceat(dd, first)
    wet = np.flatnonzero(under)
    period_of = np.searchsorted(first, wet, side="right") - 1
    at_depth = dd[wet] == depth[period_of]
    _, first_hit = np.unique(period_of[at_depth], return_index=True)
    trough = wet[at_depth][first_hit]
    return dd, [
        DrawdownPeriod(int(s), int(t), int(e), float(d), int(e - s), bool(ok))
        for s, t, e, d, ok in zip(start, trough, end, depth, recovered, strict=True)
    ]


def trades(positions: np.ndarray, returns: np.ndarray, fees: np.ndarray | None = None) -> Trades:
    """The trades of a backtest: maximal runs of bars held in one direction.

    A trade's return is ``prod(1 + returns[entry:exit + 1]) * (1 - closing fee) - 1``, where
    the fee of entering is already in ``returns[entry]`` and the closing fee is the share
    ``|p[exit]| / (|p[exit]| + |p[exit + 1]|)`` of ``fees[exit + 1]``, taken as
    ``1 - (1 - fees[exit + 1]) ** share`` (see the module docstring). On a flip, that
    closing part is divided out of the next trade's first bar, so the product of all trade
    growths and of flat bars' growths still equals the equity's. Without ``fees`` no
    closing fee is attributed. A trade held on the last bar is open: it has no closing fee.

    :param positions: (n,) position held over each bar (its sign gives the direction); the
        position before bar 0 is flat.
    :param returns: (n,) per-bar simple net returns, fees included.
    :param fees: (n,) fee paid on each bar as a fraction of the equity at its start, in
        [0, 1); or None when unknown.
    """
    r = _vector("returns", returns)
    pos = _vector("positions", positions, len(r))
    n = len(r)
    side = np.sign(pos)
    before = np.concatenate(([0.0], side[:-1]))
    after = np.concatenate((side[1:], [0.0]))
    held = side != 0
    entry = np.flatnonzero(held & (side != before))
    exit_ = np.flatnonzero(held & (side != after))
    # closing[t]: the factor of bar t's fee that closes the trade held on bar t - 1.
    closing = np.ones(n)
    if fees is not None:
        f = _vector("fees", fees, n)
        if np.any((f < 0) | (f >= 1)):
            raise ValueError("fees: must be fractions of equity in [0, 1)")
        size_before = np.abs(np.concatenate(([0.0], pos[:-1])))
        closes = (before != 0) & (side != before)
        share = np.divide(size_before, size_before + np.abs(pos), out=np.zeros(n), where=closes)
        closing = (1.0 - f) ** share
    growth = np.where(held, (1.0 + r) / closing, 1.0)
    # Each reduceat segment runs from one entry to the next: the flat bars in between count 1.
    total = np.multiply.reduceat(growth, entry) if len(entry) else np.zeros(0)
    is_open = exit_ == n - 1
    closing_fee = np.where(is_open, 1.0, closing[np.minimum(exit_ + 1, n - 1)])
    return Trades(
        entry=entry.astype(np.int64),
        exit=exit_.astype(np.int64),
        direction=side[entry].astype(np.int64),
        returns=total * closing_fee - 1.0,
        is_open=is_open,
    )


def annual_volatility(returns: np.ndarray, bars_per_year: float) -> float:
    """``std(returns, ddof=1) * sqrt(bars_per_year)``; NaN for fewer than 2 bars.

    :param returns: (n,) per-bar simple returns.
    :param bars_per_year: bars in a year, to annualize with.
    """
    r = _vector("returns", returns)
    bpy = _check_bars_per_year(bars_per_year)
    if len(r) < 2:
        return math.nan
    if np.ptp(r) == 0:  # identical values: exactly 0, not a rounding residue of the mean
        return 0.0
    return float(np.std(r, ddof=1) * math.sqrt(bpy))


def sharpe_ratio(returns: np.ndarray, bars_per_year: float) -> float:
    """``mean(returns) / std(returns, ddof=1) * sqrt(bars_per_year)`` (risk-free rate 0);
    NaN for fewer than 2 bars or when every return is the same.

    :param returns: (n,) per-bar simple returns.
    :param bars_per_year: bars in a year, to annualize with.
    """
    r = _vector("returns", returns)
    bpy = _check_bars_per_year(bars_per_year)
    if len(r) < 2 or np.ptp(r) == 0:
        return math.nan
    return float(np.mean(r) / np.std(r, ddof=1) * math.sqrt(bpy))


def sharpe_for_ranking(sharpe: float) -> float:
    """A Sharpe ratio as it counts wherever Sharpes are ranked or aggregated (the best
    checkpoint, means over seeds): a policy that never trades has no Sharpe (NaN, shown as
    "no trades" in reports) and counts as 0 here.

    :param sharpe: a value of :func:`sharpe_ratio`.
    """
    return 0.0 if math.isnan(sharpe) else float(sharpe)


def sortino_ratio(returns: np.ndarray, bars_per_year: float) -> float:
    """``mean(r) / sqrt(mean(min(r, 0) ** 2)) * sqrt(bars_per_year)``, the downside
    deviation taken over all bars (target 0). NaN for fewer than 2 bars or when every return
    is 0; inf when no bar loses and the mean is positive.

    :param returns: (n,) per-bar simple returns.
    :param bars_per_year: bars in a year, to annualize with.
    """
    r = _vector("returns", returns)
    bpy = _check_bars_per_year(bars_per_year)
    if len(r) < 2:
        return math.nan
    mean = float(np.mean(r))
    downside = math.sqrt(float(np.mean(np.minimum(r, 0.0) ** 2)))
    if downside == 0:
        return math.inf if mean > 0 else math.nan
    return mean / downside * math.sqrt(bpy)


def cagr(returns: np.ndarray, bars_per_year: float) -> float:
    """Compound annual growth rate ``equity_end ** (bars_per_year / n) - 1`` as a fraction;
    NaN without bars, -1 when the equity ends at or below 0, inf when it overflows.

    :param returns: (n,) per-bar simple returns.
    :param bars_per_year: bars in a year, to annualize with.
    """
    r = _vector("returns", returns)
    bpy = _check_bars_per_year(bars_per_year)
    if len(r) == 0:
        return math.nan
    end = float(np.prod(1.0 + r))
    if end <= 0:
        return -1.0
    with np.errstate(over="ignore"):
        return float(np.expm1(np.log(end) * (bpy / len(r))))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    """Pearson correlation of ``a`` and ``b``; 0 when either is constant or has fewer than 2
    values (a prediction that never varies carries no information).

    :param a: (n,) one series.
    :param b: (n,) the other.
    """
    x, y = _vector("a", a), _vector("b", b, len(_vector("a", a)))
    if len(x) < 2 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return 0.0
    return float(np.corrcoef(x, y)[0, 1])


def direction_accuracy(predictions: np.ndarray, realized: np.ndarray) -> float:
    """Share of the bars with a non-zero realized value whose prediction has its sign; NaN
    when every realized value is 0.

    :param predictions: (n,) predicted returns.
    :param realized: (n,) realized returns.
    """
    pred = _vector("predictions", predictions)
    real = _vector("realized", realized, len(pred))
    moved = real != 0
    if not moved.any():
        return math.nan
    return float(np.mean(np.sign(pred[moved]) == np.sign(real[moved])))


def _trade_stats(returns: np.ndarray) -> dict[str, float]:
    """The trade statistics of :func:`summary` from the trades' returns (fractions)."""
    keys = (
        "Win Rate [%]",
        "Best Trade [%]",
        "Worst Trade [%]",
        "Avg. Trade [%]",
        "Profit Factor",
        "Expectancy [%]",
    )
    out = {"# Trades": float(len(returns))} | dict.fromkeys(keys, math.nan)
    if len(returns) == 0:
        return out
    growth = 1.0 + returns
    geometric = -1.0 if np.any(growth <= 0) else float(np.expm1(np.mean(np.log(growth))))
    gains = float(np.sum(returns[returns > 0]))
    losses = -float(np.sum(returns[returns < 0]))
    if losses > 0:
        profit_factor = gains / losses
    else:
        profit_factor = math.inf if gains > 0 else math.nan
    out.update(
        {
            "Win Rate [%]": float(np.mean(returns > 0)) * 100,
            "Best Trade [%]": float(np.max(returns)) * 100,
            "Worst Trade [%]": float(np.min(returns)) * 100,
            "Avg. Trade [%]": geometric * 100,
            "Profit Factor": profit_factor,
            "Expectancy [%]": float(np.mean(returns)) * 100,
        }
    )
    return out


def summary(
    returns: np.ndarray,
    positions: np.ndarray,
    bars_per_year: float,
    *,
    fees: np.ndarray | None = None,
    benchmark_returns: np.ndarray | None = None,
) -> dict[str, float]:
    """The statistics of a backtest report, keyed as :data:`SUMMARY_KEYS` (backtesting.py's
    names), computed as :data:`CONVENTIONS` states. Percentages are in percent, durations
    in bars, drawdowns negative.

    :param returns: (n,) per-bar simple net returns of the strategy, fees included.
    :param positions: (n,) position held over each bar (-1, 0, +1).
    :param bars_per_year: the data's bars per year, to annualize with.
    :param fees: (n,) fee paid on each bar as a fraction of equity, to attribute the fee of
        leaving a trade to it (see :func:`trades`); None when unknown.
    :param benchmark_returns: (n,) per-bar simple returns of buy and hold over the same
        bars, for ``Buy & Hold Return [%]``; NaN there when None.
    """
    r = _vector("returns", returns)
    pos = _vector("positions", positions, len(r))
    bpy = _check_bars_per_year(bars_per_year)
    n = len(r)
    curve = equity(r)
    dd, periods = drawdowns(curve)
    depths = np.array([p.depth for p in periods])
    durations = np.array([p.duration for p in periods], dtype=np.float64)
    max_dd = float(np.max(dd))
    growth = cagr(r, bpy)
    buy_hold = math.nan
    if benchmark_returns is not None:
        buy_hold = float(np.prod(1.0 + _vector("benchmark_returns", benchmark_returns, n)) - 1)
    out = {
        "Return [%]": (float(curve[-1]) - 1.0) * 100,
        "Buy & Hold Return [%]": buy_hold * 100,
        "CAGR [%]": growth * 100,
        "Volatility (Ann.) [%]": annual_volatility(r, bpy) * 100,
        "Sharpe Ratio": sharpe_ratio(r, bpy),
        "Sortino Ratio": sortino_ratio(r, bpy),
        "Calmar Ratio": growth / max_dd if max_dd > 0 else math.nan,
        "Max. Drawdown [%]": -max_dd * 100 if max_dd > 0 else 0.0,
        "Avg. Drawdown [%]": -float(np.mean(depths)) * 100 if len(periods) else math.nan,
        "Max. Drawdown Duration": float(np.max(durations)) if len(periods) else 0.0,
        "Avg. Drawdown Duration": float(np.mean(durations)) if len(periods) else math.nan,
        "Exposure Time [%]": float(np.mean(pos != 0)) * 100 if n else math.nan,
    }
    out |= _trade_stats(trades(pos, r, fees).returns)
    return {key: out[key] for key in SUMMARY_KEYS}


# -- statistics over runs (seeds, windows) ---------------------------------------------------


def iqm(values: np.ndarray) -> float:
    """The interquartile mean: the mean of the middle half of ``values`` (the lowest and the
    highest quarter trimmed), as rliable and ``scipy.stats.trim_mean(values, 0.25)`` compute
    it; robust to one lucky or unlucky seed, less noisy than the median.

    :param values: scores (e.g. one Sharpe ratio per seed); NaN is not allowed.
    """
    x = np.sort(_vector("values", values))
    if len(x) == 0:
        return math.nan
    cut = int(0.25 * len(x))
    return float(np.mean(x[cut : len(x) - cut]))


def bootstrap_ci(
    values: np.ndarray,
    statistic=iqm,
    *,
    reps: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """A percentile bootstrap confidence interval of ``statistic(values)``, stratified: for
    ``values`` of shape ``(strata, n)`` (e.g. windows x seeds) every replicate resamples each
    stratum's runs with replacement within it (rliable's stratified bootstrap); a 1-D
    ``values`` is one stratum.

    :param values: the runs' scores.
    :param statistic: maps the pooled replicate (1-D) to a number (default :func:`iqm`).
    :param reps: bootstrap replicates.
    :param confidence: the interval's coverage.
    :param seed: seeds the resampling (the interval is reproducible).
    """
    x = np.asarray(values, dtype=np.float64)
    x = x.reshape(1, -1) if x.ndim == 1 else x
    if x.size == 0 or not np.all(np.isfinite(x)):
        raise ValueError("bootstrap_ci: needs finite values")
    rng = np.random.default_rng(seed)
    strata, n = x.shape
    picks = rng.integers(0, n, size=(reps, strata, n))
    replicates = np.take_along_axis(x[None].repeat(reps, 0), picks, axis=2).reshape(reps, -1)
    estimates = np.array([statistic(r) for r in replicates])
    tail = (1 - confidence) / 2 * 100
    lo, hi = np.percentile(estimates, [tail, 100 - tail])
    return float(lo), float(hi)


# -- significance: is a Sharpe ratio more than luck? ----------------------------------------

SIGNIFICANCE_CONVENTIONS = """\
Significance (Bailey and Lopez de Prado): SR is the per-bar Sharpe ratio mean(r) / std(r,
ddof=1) (not annualized), skew the sample skewness m3 / m2^1.5 and kurtosis the raw sample
kurtosis m4 / m2^2 (3 for a normal), with T bars. PSR(SR*) = Phi((SR - SR*) * sqrt(T - 1) /
sqrt(1 - skew * SR + (kurtosis - 1) / 4 * SR^2)): the probability that the true Sharpe exceeds
SR* (0 by default). DSR = PSR(SR0), SR0 = sqrt(V) * ((1 - g) * Phi^-1(1 - 1/N) + g *
Phi^-1(1 - 1/(N e))), g = 0.5772 (Euler-Mascheroni): the expected maximum of N Sharpe
ratios with variance V when there is no edge; N = configurations tried whose results were
looked at; V = the variance of their Sharpes when known, else the variance of the Sharpe
estimate itself, (1 - skew * SR + (kurtosis - 1) / 4 * SR^2) / (T - 1). With N = 1 the DSR
is the PSR against 0. Minimum track record length = 1 + (1 - skew * SR + (kurtosis - 1) / 4
* SR^2) * (Phi^-1(0.95) / (SR - SR*))^2 bars (inf when SR <= SR*)."""

EULER_GAMMA = 0.5772156649015329
_NORMAL = NormalDist()


@dataclass(frozen=True)
class SharpeMoments:
    """What the significance of a Sharpe ratio depends on (per bar, not annualized)."""

    sharpe: float  # mean / std (ddof=1)
    skew: float  # m3 / m2^1.5
    kurtosis: float  # m4 / m2^2, raw (3 for a normal)
    bars: int

    @property
    def estimate_variance(self) -> float:
        """The variance of the Sharpe estimate: (1 - skew SR + (kurt - 1)/4 SR^2) / (T - 1)."""
        sr = self.sharpe
        return (1 - self.skew * sr + (self.kurtosis - 1) / 4 * sr**2) / (self.bars - 1)


def sharpe_moments(returns: np.ndarray) -> SharpeMoments:
    """The per-bar Sharpe ratio of ``returns`` with their skewness and raw kurtosis; NaN
    moments for fewer than 2 bars or no dispersion."""
    r = _vector("returns", returns)
    if len(r) < 2 or np.ptp(r) == 0:
        return SharpeMoments(math.nan, math.nan, math.nan, len(r))
    centered = r - r.mean()
    m2 = float(np.mean(centered**2))
    return SharpeMoments(
        sharpe=float(r.mean() / r.std(ddof=1)),
        skew=float(np.mean(centered**3) / m2**1.5),
        kurtosis=float(np.mean(centered**4) / m2**2),
        bars=len(r),
    )


def probabilistic_sharpe_ratio(moments: SharpeMoments, benchmark: float = 0.0) -> float:
    """The probability that the true per-bar Sharpe ratio exceeds ``benchmark`` (PSR; see
    :data:`SIGNIFICANCE_CONVENTIONS`); NaN when the moments are.

    :param moments: :func:`sharpe_moments` of the returns.
    :param benchmark: the per-bar Sharpe ratio to beat (SR*).
    """
    sr = moments.sharpe
    if not math.isfinite(sr) or moments.bars < 2:
        return math.nan
    spread = 1 - moments.skew * sr + (moments.kurtosis - 1) / 4 * sr**2
    if spread <= 0:  # moments no return series can have; stay conservative
        return math.nan
    return _NORMAL.cdf((sr - benchmark) * math.sqrt(moments.bars - 1) / math.sqrt(spread))


def expected_max_sharpe(trials: int, variance: float) -> float:
    """The expected maximum of ``trials`` per-bar Sharpe ratios of variance ``variance`` when
    the true Sharpe of each is 0 (the deflated Sharpe ratio's SR0); 0 for one trial."""
    if trials < 1:
        raise ValueError(f"trials={trials}: need at least 1")
    if trials == 1:
        return 0.0
    z = (1 - EULER_GAMMA) * _NORMAL.inv_cdf(1 - 1 / trials) + EULER_GAMMA * _NORMAL.inv_cdf(
        1 - 1 / (trials * math.e)
    )
    return math.sqrt(variance) * z


def deflated_sharpe_ratio(
    moments: SharpeMoments, trials: int, trial_sharpes: np.ndarray | None = None
) -> float:
    """The probability that the true Sharpe ratio is positive once the selection among
    ``trials`` configurations is accounted for (DSR; see :data:`SIGNIFICANCE_CONVENTIONS`).

    :param moments: :func:`sharpe_moments` of the selected strategy's returns.
    :param trials: configurations tried whose results were looked at (N).
    :param trial_sharpes: their per-bar Sharpe ratios, for their variance; when None (or
        fewer than 2) the variance of the Sharpe estimate is used.
    """
    if trial_sharpes is not None and len(trial_sharpes) >= 2:
        variance = float(np.var(np.asarray(trial_sharpes, dtype=np.float64), ddof=1))
    else:
        variance = moments.estimate_variance
    if not math.isfinite(variance):
        return math.nan
    return probabilistic_sharpe_ratio(moments, expected_max_sharpe(trials, variance))


def min_track_record_length(
    moments: SharpeMoments, benchmark: float = 0.0, confidence: float = 0.95
) -> float:
    """Bars of track record needed for the Sharpe ratio to exceed ``benchmark`` with
    ``confidence`` (inf when it does not exceed it at all; NaN when undefined)."""
    sr = moments.sharpe
    if not math.isfinite(sr):
        return math.nan
    if sr <= benchmark:
        return math.inf
    spread = 1 - moments.skew * sr + (moments.kurtosis - 1) / 4 * sr**2
    return 1 + spread * (_NORMAL.inv_cdf(confidence) / (sr - benchmark)) ** 2
