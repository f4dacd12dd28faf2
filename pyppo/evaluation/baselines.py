"""Simple rules an agent must beat, run through the same backtest as the agent.

Each rule decides at bar t from bars up to t only (the agent's information), and its
position is held over bar t+1, with the same fill timing and costs as the agent:

- ``buy_and_hold``: long throughout;
- ``random``: uniform actions from a seeded generator;
- ``ma_cross_F_S``: long when the mean log price of the last F bars is above that of the last
  S bars, short when below (flat when equal; flat instead of short when long-only);
- ``momentum_K``: the sign of the last K bars' summed log return (flat at 0);
- ``reversion_K``: its mirror.

Log prices are cumulative sums of the sanitized log returns (so a zero price or a spike is
treated as the agent's observations treat it). The lengths are settings
(:class:`BaselineSettings`); a rule's name carries them.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class BaselineSettings:
    """The lengths of the fixed-parameter rules, in bars."""

    ma_fast: int = 10
    ma_slow: int = 30
    momentum_bars: int = 3

    def __post_init__(self) -> None:
        for name in ("ma_fast", "ma_slow", "momentum_bars"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}={getattr(self, name)}: need at least 1 bar")
        if self.ma_fast >= self.ma_slow:
            raise ValueError(
                f"ma_fast={self.ma_fast}, ma_slow={self.ma_slow}: the fast average must be "
                "shorter than the slow one"
            )

    @property
    def names(self) -> tuple[str, ...]:
        """Every baseline's name, in report order."""
        return ("buy_and_hold", "random", self.ma_cross, self.momentum, self.reversion)

    @property
    def ma_cross(self) -> str:
        return f"ma_cross_{self.ma_fast}_{self.ma_slow}"

    @property
    def momentum(self) -> str:
        return f"momentum_{self.momentum_bars}"

    @property
    def reversion(self) -> str:
        return f"reversion_{self.momentum_bars}"

    @property
    def history(self) -> int:
        """Bars of history a rule needs before its first decision."""
        return max(self.ma_slow, self.momentum_bars)


DEFAULT_BASELINES = BaselineSettings()


def baseline_positions(
    name: str,
    log_returns: np.ndarray,
    bars: np.ndarray,
    choices: np.ndarray,
    settings: BaselineSettings | None = None,
    seed: int = 0,
) -> np.ndarray:
    """The position rule ``name`` takes at each decision bar, float32.

    :param name: one of ``settings.names``.
    :param log_returns: (T,) sanitized log return of every bar of the market (0 at bar 0).
    :param bars: (B,) the decision bars (a rule is flat until it has the bars it needs).
    :param choices: the positions actions lead to (:func:`pyppo.inference.action_positions`).
    :param settings: the rules' lengths.
    :param seed: seeds the random rule.
    """
    settings = settings or DEFAULT_BASELINES
    short = np.float32(choices[0])  # -1, or 0 when long-only
    if name == "buy_and_hold":
        return np.full(len(bars), choices[-1], dtype=np.float32)
    if name == "random":
        gen = torch.Generator().manual_seed(seed)
        return choices[torch.randint(0, len(choices), (len(bars),), generator=gen).numpy()]
    log_price = np.cumsum(np.asarray(log_returns, dtype=np.float64))
    if name in (settings.momentum, settings.reversion):
        k = settings.momentum_bars
        past = np.maximum(bars - k, 0)
        signal = log_price[bars] - log_price[past]  # the sum of the last k returns
        if name == settings.reversion:
            signal = -signal
        ready = bars >= k
    elif name == settings.ma_cross:
        signal = _trailing_mean(log_price, bars, settings.ma_fast) - _trailing_mean(
            log_price, bars, settings.ma_slow
        )
        ready = bars + 1 >= settings.ma_slow
    else:
        raise ValueError(f"policy={name!r}: use a model or one of {', '.join(settings.names)}")
    # Flat until a rule has the history it needs.
    signal = np.where(ready, signal, 0.0)
    positions = np.where(signal > 0, np.float32(1.0), np.where(signal < 0, short, 0.0))
    return positions.astype(np.float32)


def _trailing_mean(values: np.ndarray, bars: np.ndarray, length: int) -> np.ndarray:
    """The mean of ``values[t - length + 1 .. t]`` at each of ``bars``."""
    total = np.concatenate([[0.0], np.cumsum(values)])
    return (total[bars + 1] - total[np.maximum(bars + 1 - length, 0)]) / length


# -- the reference: what is learnable, as an upper mark ---------------------------------------

REFERENCE = "reference (k and sign picked on these bars)"
REFERENCE_DECAY = 0.97
REFERENCE_LAGS = (1, 2, 3, 4)


def standardized_returns(log_returns: np.ndarray, decay: float = REFERENCE_DECAY) -> np.ndarray:
    """``z_t = r_t / sqrt(v_{t-1})``: each log return over the square root of an exponentially
    weighted mean (``decay``) of the *earlier* squared log returns (0 until one exists)."""
    r = np.asarray(log_returns, dtype=np.float64)
    z = np.zeros_like(r)
    variance = 0.0
    seen = False
    for t in range(len(r)):
        if seen and variance > 0:
            z[t] = r[t] / np.sqrt(variance)
        variance = r[t] ** 2 if not seen else decay * variance + (1 - decay) * r[t] ** 2
        seen = seen or r[t] != 0
    return z


def reference_positions(
    z: np.ndarray, bars: np.ndarray, lags: int, sign: int, choices: np.ndarray
) -> np.ndarray:
    """``sign * sign(mean(z[t - lags + 1 .. t]))`` at each decision bar t (flat at 0; flat
    instead of short when long-only), float32.

    :param z: :func:`standardized_returns` of every bar.
    """
    total = np.concatenate([[0.0], np.cumsum(z)])
    signal = sign * (total[bars + 1] - total[np.maximum(bars + 1 - lags, 0)])
    short = np.float32(choices[0])
    return np.where(signal > 0, np.float32(1.0), np.where(signal < 0, short, 0.0)).astype(
        np.float32
    )


@dataclass(frozen=True)
class ReferenceRule:
    """The reference rule with one choice of its lags and sign; :meth:`positions` is what
    :func:`pyppo.evaluation.backtest` walks (the report picks the best of
    ``REFERENCE_LAGS`` x (+1, -1) on the bars it scores)."""

    lags: int
    sign: int
    name: str = REFERENCE

    def positions(
        self, log_returns: np.ndarray, bars: np.ndarray, choices: np.ndarray
    ) -> np.ndarray:
        z = standardized_returns(log_returns)
        return reference_positions(z, bars, self.lags, self.sign, choices)

    @classmethod
    def every(cls) -> list[ReferenceRule]:
        """Every lag and sign the reference may pick."""
        return [cls(lags, sign) for lags in REFERENCE_LAGS for sign in (1, -1)]
