"""Walk-forward retraining: where each window trains, validates and is tested, and the
statistics over its windows and seeds.

Layout (bars are indices into one market; ``H = max(longest horizon, 1)``)::

    |-- training span -----------|-- validation tail --|emb|-- test window w --|-- w+1 ..
    start                        V                      T-e T                   T + size

- Test windows are contiguous and of equal size; together they are the last
  ``test_fraction`` of the decision bars. A decision at bar t earns bar t+1's return.
- Before test window w (starting at T) lies its span: from bar 0 (``expanding``) or from
  ``w * size`` (``sliding``, every span as long as the first) to ``T - embargo``. Its last
  ``validation_fraction`` is the validation tail, which picks each member's checkpoint.
- **Purge**: a training decision t needs ``t + H < V - embargo`` (no reward or auxiliary
  label reaches the validation tail or the embargo before it), a validation decision
  ``t + H < T - embargo`` (none reaches the test window). The env's ``span`` and the
  backtest's decision range enforce it.
- Features are computed once over the whole market (every feature is causal: a trailing
  statistic at bar t uses bars up to t), so no window restarts its trailing statistics or
  loses ``window`` bars.
- Positions carry across a boundary: window w+1's policy starts from the position window
  w's left (a change is paid at its first bar).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from pyppo import stats

SPANS = ("expanding", "sliding")


@dataclass(frozen=True)
class WalkForwardSettings:
    """How a walk-forward cuts its data.

    :param windows: consecutive test windows (W).
    :param span: ``"expanding"`` (train on everything before a window) or ``"sliding"``
        (a span as long as the first one, moving with the windows).
    :param test_fraction: the share of the decision bars the test windows cover together.
    :param validation_fraction: the share of each span that is its validation tail.
    :param embargo: bars left out after the training part and after the validation tail,
        on top of the purge.
    :param warm_start: start each window's training from the previous window's weights.
    """

    windows: int = 3
    span: str = "expanding"
    test_fraction: float = 0.5
    validation_fraction: float = 0.2
    embargo: int = 0
    warm_start: bool = False

    def __post_init__(self) -> None:
        if self.windows < 1:
            raise ValueError(f"windows={self.windows}: need at least 1 test window")
        if self.span not in SPANS:
            raise ValueError(f"span={self.span!r}: use one of {', '.join(SPANS)}")
        if not 0 < self.test_fraction < 1:
            raise ValueError(f"test_fraction={self.test_fraction}: must lie in (0, 1)")
        if not 0 < self.validation_fraction < 1:
            raise ValueError(f"validation_fraction={self.validation_fraction}: must lie in (0, 1)")
        if self.embargo < 0:
            raise ValueError(f"embargo={self.embargo}: must be >= 0 bars")

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


@dataclass(frozen=True)
class Window:
    """One walk-forward window: bar ranges, each half-open.

    ``train`` is the training span the env gets (its rewards and labels stay inside);
    ``validation`` and ``test`` are decision bars of backtests.
    """

    index: int
    train: tuple[int, int]
    validation: tuple[int, int]
    test: tuple[int, int]


def plan_windows(
    n_bars: int, obs_window: int, longest_horizon: int, settings: WalkForwardSettings
) -> list[Window]:
    """The windows of a walk-forward over ``n_bars`` bars (see the module's layout).

    :param n_bars: bars in the market.
    :param obs_window: the observation's return window (the first decision bar).
    :param longest_horizon: the longest auxiliary horizon in bars.
    :raises ValueError: when the bars are too few for the windows asked for.
    """
    h = max(longest_horizon, 1)
    end = n_bars - h  # one past the last decision bar
    decisions = end - obs_window
    size = int(decisions * settings.test_fraction) // settings.windows
    first_test = end - settings.windows * size
    e = settings.embargo
    # The smallest span worth training on: a validation tail and a training part of a few
    # bars each beyond the purge.
    if size < 2 or first_test - e - obs_window < 4 * (h + e) + 20:
        raise ValueError(
            f"{n_bars} bars are too few for {settings.windows} walk-forward windows with "
            f"window {obs_window}, longest horizon {h} bars and embargo {e}: use fewer "
            "windows or more bars"
        )
    windows = []
    for w in range(settings.windows):
        t = first_test + w * size
        start = 0 if settings.span == "expanding" else w * size
        span_end = t - e  # labels of the span stay before this
        length = span_end - max(start, obs_window)
        v = span_end - max(int(round(length * settings.validation_fraction)), h + 2)
        windows.append(
            Window(
                index=w,
                train=(start, v - e),
                validation=(v, span_end - h),
                test=(t, t + size),
            )
        )
    return windows


# -- statistics over windows and seeds ------------------------------------------------------


def beat_share(
    agent: np.ndarray, other: np.ndarray, reps: int = 2000, seed: int = 0
) -> tuple[float, tuple[float, float]]:
    """The share of (window, seed) runs in which the agent's Sharpe beats ``other``'s in the
    same window, with a 95 % bootstrap interval (seeds resampled within each window).

    :param agent: (W, S) the agent's Sharpe per window and seed (a flat policy as 0).
    :param other: (W,) the other policy's Sharpe per window.
    """
    wins = (np.asarray(agent) > np.asarray(other)[:, None]).astype(np.float64)
    return float(wins.mean()), stats.bootstrap_ci(wins, np.mean, reps=reps, seed=seed)
