"""PortfolioEnv: N portfolios over a universe of symbols, stepped together as tensors.

Each step, every portfolio chooses per symbol a slot: short, flat or long (flat or long
with ``allow_short=False``), i.e. a weight in ``{-1/N, 0, +1/N}`` of its equity, the rest
in cash. Slots rather than free target weights: flipping one symbol's slot changes that
symbol's weight only, never re-sizes the others, and the action space stays one small
categorical per symbol. The money of a step is :func:`pyppo.portfolio.portfolio_step` (fees
and each symbol's spread on the weight changes, the fill timing, untradable bars,
delistings, the position limits): its net log return is the reward.

Steps are the universe's calendar bars (:class:`pyppo.Universe`). On a calendar bar
without a bar of its own (closed, a gap), before its first ``window`` bars, in its last
bars (no forward return left for the auxiliary targets), or outside its life, a symbol is
not tradable: its slot is held (and a delisting closes it), the model masks its action and
its prediction, and the observation says so.

An observation is ``(N * D + N,)``: for each symbol, the :class:`pyppo.TradingEnv`
observation of its latest own bar with its slot (-1, 0, +1) as the position, gathered at
step time from the symbols' compact features (:mod:`pyppo.features`), then the N tradable
flags. ``info["aux_targets"]`` is ``(num_envs, N * K)``: symbol-major, each symbol's
forward returns over its own next bars (0 where it is not tradable).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pyppo import ops
from pyppo.config import EnvConfig
from pyppo.data import MarketDataError, Universe
from pyppo.device import resolve_device
from pyppo.env import EpisodeEnv
from pyppo.execution import check_fill, cost_per_unit, gap_log_returns
from pyppo.features import FEATURE_CLIP, RETURN_LIMIT, ObsSpec, compute_features
from pyppo.portfolio import portfolio_step

try:  # gymnasium is optional
    from gymnasium import spaces

    _HAVE_GYMNASIUM = True
except ImportError:  # pragma: no cover
    _HAVE_GYMNASIUM = False

__all__ = ["PortfolioEnv"]


class _MultiDiscrete:
    """Stand-in for ``gymnasium.spaces.MultiDiscrete`` when gymnasium is not installed."""

    def __init__(self, n: int, symbols: int) -> None:
        self.n, self.shape, self.dtype = n, (symbols,), np.int64


class _Box:
    def __init__(self, shape: tuple[int, ...]) -> None:
        self.low, self.high, self.shape, self.dtype = -FEATURE_CLIP, FEATURE_CLIP, shape, np.float32


class PortfolioEnv(EpisodeEnv):
    """Vectorized portfolio environment over a :class:`~pyppo.Universe` (see the module).

    :param universe: the symbols.
    :param num_envs: portfolios stepped together.
    :param episode_length: steps per episode; episodes are then truncated and auto-reset.
    :param window: length of each symbol's normalized return window.
    :param fee: cost per unit of weight change.
    :param allow_short: short/flat/long slots, else flat/long.
    :param device: where every tensor lives.
    :param seed: seeds the episode starts.
    :param starts: ``"random"`` or ``"sequential"`` (episodes tile the calendar in order).
    :param spread: the bid-ask spread in basis points, one for all symbols or by symbol.
    :param fill: ``"close"`` or ``"next_open"`` (:mod:`pyppo.execution`).
    :param span: ``(lo, hi)`` calendar bars whose returns and labels episodes may use.
    :param max_weight: the per-symbol limit on ``|weight|``.
    :param max_gross: the limit on the sum of ``|weight|``.
    """

    def __init__(
        self,
        universe: Universe,
        num_envs: int = EnvConfig.num_envs,
        episode_length: int = EnvConfig.episode_length,
        window: int = EnvConfig.window,
        fee: float = EnvConfig.fee,
        allow_short: bool = EnvConfig.allow_short,
        device: str | torch.device = "cpu",
        seed: int = 0,
        *,
        starts: str = "random",
        spread: float | Mapping[str, float] = EnvConfig.spread,
        fill: str = EnvConfig.fill,
        span: tuple[int, int] | None = None,
        max_weight: float = 1.0,
        max_gross: float = 1.0,
    ) -> None:
        if not isinstance(universe, Universe):
            raise TypeError(
                "PortfolioEnv trades a Universe (load_universe, synthetic_market(symbols=))"
            )
        if num_envs < 1 or episode_length < 1 or window < 1:
            raise ValueError(
                f"num_envs={num_envs}, episode_length={episode_length}, window={window}: each "
                "must be at least 1"
            )
        if not (math.isfinite(fee) and fee >= 0):
            raise ValueError(f"fee={fee}: must be a finite number >= 0")
        if not (0 < max_weight and 0 < max_gross):
            raise ValueError(f"max_weight={max_weight}, max_gross={max_gross}: must be > 0")
        if starts not in ("random", "sequential"):
            raise ValueError(f"starts={starts!r}: use 'random' or 'sequential'")
        self.market = universe
        self.symbols = universe.symbols
        n = len(self.symbols)
        self.num_symbols = n
        self.num_envs = int(num_envs)
        self.members = 1
        self.envs_per_member = self.num_envs
        self.episode_length = int(episode_length)
        self.window = int(window)
        self.fee = float(fee)
        self.fill = check_fill(fill)
        self.allow_short = bool(allow_short)
        self.device = resolve_device(device)
        self.starts = starts
        self.max_weight, self.max_gross = float(max_weight), float(max_gross)
        spreads = spread if isinstance(spread, Mapping) else dict.fromkeys(self.symbols, spread)
        unknown = set(spreads) - set(self.symbols)
        if unknown:
            raise ValueError(f"spread: no symbol(s) {sorted(unknown)} in the universe")
        self.spread = {s: float(spreads.get(s, 0.0)) for s in self.symbols}
        self.spread_setting = spread  # as given: one for all, or by symbol
        self._cost = torch.tensor(
            [cost_per_unit(self.fee, self.spread[s]) for s in self.symbols], device=self.device
        )
        self.aux_horizon_bars: tuple[int, ...] = tuple(universe.horizons)
        self.aux_labels: tuple[str, ...] = tuple(universe.horizon_labels)
        longest = max(max(self.aux_horizon_bars, default=1), 1)

        calendar = len(universe)
        lo, hi = (0, calendar) if span is None else (int(span[0]), int(span[1]))
        if not 0 <= lo < hi <= calendar:
            raise ValueError(f"span=({lo}, {hi}): need 0 <= lo < hi <= {calendar} (the calendar)")
        self.span = (lo, hi)
        self.first_bar = max(self.window, lo)
        self._max_start = hi - self.episode_length - 1
        if self._max_start < self.first_bar:
            raise MarketDataError(
                f"calendar bars {lo}..{hi - 1} are too few for episode_length="
                f"{episode_length} and window={window}: use a shorter episode_length or more data"
            )
        self.bars_per_epoch = hi - 1 - self.first_bar
        self.steps_per_epoch = math.ceil(self.bars_per_epoch / self.num_envs)

        markets = [universe[s] for s in self.symbols]
        self.features = compute_features(markets, self.window, self.device)
        self.obs_spec: ObsSpec = self.features.spec
        self.feature_sanitize_counts = self.features.sanitized
        self._build_calendar_tables(markets, longest)

        n_actions = 3 if self.allow_short else 2
        self._slot_of_action = torch.tensor(
            [-1.0, 0.0, 1.0] if self.allow_short else [0.0, 1.0], device=self.device
        )
        size = n * self.obs_spec.size + n
        if _HAVE_GYMNASIUM:
            self.single_observation_space = spaces.Box(
                -FEATURE_CLIP, FEATURE_CLIP, (size,), np.float32
            )
            self.single_action_space = spaces.MultiDiscrete([n_actions] * n)
        else:  # pragma: no cover
            self.single_observation_space = _Box((size,))
            self.single_action_space = _MultiDiscrete(n_actions, n)
        self.return_counts = torch.zeros(2, dtype=torch.int64, device=self.device)
        self.aux_target_counts = torch.zeros(2, dtype=torch.int64, device=self.device)
        self._generator = torch.Generator(device=self.device)
        self._seed = int(seed)
        self._generator.manual_seed(self._seed)
        self._episodes_started = 0
        self._t = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        self._weights = torch.zeros(self.num_envs, n, device=self.device)
        self._episode_return = torch.zeros(self.num_envs, device=self.device)
        self._elapsed = 0
        self._needs_reset = True

    def _build_calendar_tables(self, markets: Sequence[Any], longest: int) -> None:
        """Per calendar bar and symbol: the symbol's latest own bar, whether it can trade,
        whether it is listed, and its returns over the calendar step (raw: sanitized per
        step)."""
        universe = self.market
        calendar, n = len(universe), len(markets)
        own = np.full((calendar, n), -1, dtype=np.int32)
        has = np.zeros((calendar, n), dtype=bool)
        returns = np.zeros((calendar, n), dtype=np.float32)
        gaps = np.zeros((calendar, n), dtype=np.float32)
        for i, (symbol, market) in enumerate(zip(self.symbols, markets, strict=True)):
            where = universe.bar_positions(symbol)
            has[where, i] = True
            own[:, i] = np.searchsorted(where, np.arange(calendar), side="right") - 1
            returns[where, i] = market.log_returns.numpy()
            if self.fill != "close":
                gaps[where, i] = gap_log_returns(market, self.fill).numpy()
            returns[where[0], i] = gaps[where[0], i] = 0.0  # nothing held before the listing
        lengths = np.array([len(m) for m in markets])
        listed = universe.listed()
        tradable = has & (own >= self.window) & (own + longest < lengths)
        put = lambda a: torch.from_numpy(np.ascontiguousarray(a)).to(self.device)  # noqa: E731
        self._own, self._has, self._listed, self._tradable = (
            put(own),
            put(has),
            put(listed),
            put(tradable),
        )
        self._returns, self._gaps = put(returns), put(gaps)
        self._offsets = self.features.offsets.to(self.device)
        aux = torch.cat(
            [
                torch.stack([m.forward_returns(h) for h in self.aux_horizon_bars], 1).float()
                for m in markets
            ]
        )
        self._aux_table = aux.to(self.device)
        self._symbol_ids = torch.arange(n, device=self.device)

    # -- gymnasium-style API ---------------------------------------------------------------

    def reset(
        self, *, seed: int | None = None, options: Any = None
    ) -> tuple[Tensor, dict[str, Any]]:
        """Start new episodes (flat portfolios); ``(obs, {"aux_targets": ...})``."""
        if seed is not None:
            self._seed = int(seed)
            self._generator.manual_seed(self._seed)
            self._episodes_started = 0
        self._start_episodes()
        self._needs_reset = False
        return self._observe(), {"aux_targets": self._aux_targets()}

    def step(self, actions: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
        """``actions``: ``(num_envs, N)`` slot indices. Returns ``(obs, reward, terminated,
        truncated, info)`` like :meth:`pyppo.TradingEnv.step`; ``info["weights"]`` holds the
        weights after the decisions."""
        if self._needs_reset:
            raise RuntimeError("PortfolioEnv.step() called before reset()")
        actions = torch.as_tensor(actions, device=self.device)
        if actions.shape != (self.num_envs, self.num_symbols):
            raise ValueError(
                f"actions must have shape ({self.num_envs}, {self.num_symbols}), got "
                f"{tuple(actions.shape)}"
            )
        target = self._slot_of_action.index_select(0, actions.reshape(-1).long())
        target = target.view_as(self._weights) / self.num_symbols
        t, t_next = self._t, self._t + 1
        can_fill = self._tradable.index_select(0, t)
        if self.fill != "close":
            can_fill = can_fill & self._has.index_select(0, t_next)
        money = portfolio_step(
            self._weights,
            target,
            self._returns.index_select(0, t_next),
            self._gaps.index_select(0, t_next),
            can_fill,
            self._listed.index_select(0, t_next),
            self._cost,
            max_weight=self.max_weight,
            max_gross=self.max_gross,
        )
        self.return_counts += money.sanitized
        self._weights = money.weights
        self._t = t_next
        return self._end_step(money.log_return, {"weights": money.weights})

    @property
    def bar_index(self) -> Tensor:
        """(num_envs,) the calendar bar of each portfolio's last observation."""
        return self._t

    @property
    def weights(self) -> Tensor:
        """(num_envs, N) the weights held."""
        return self._weights

    @property
    def cost_per_symbol(self) -> Tensor:
        """(N,) each symbol's cost per unit of weight change: the fee plus half its spread."""
        return self._cost

    def realized_returns(self, bars: Tensor) -> tuple[Tensor, Tensor]:
        """``(len(bars), N)`` twice: every symbol's log return over calendar bar ``bars[k]``
        (from the bar before) and the part of it before the fill (the gap to the open with
        next-open fills, else 0), sanitized as the rewards' are; 0 where it has no bar."""
        bars = bars.to(self.device)
        returns = self._returns.index_select(0, bars)
        gaps = self._gaps.index_select(0, bars)
        ops.sanitize_(returns, RETURN_LIMIT)
        ops.sanitize_(gaps, RETURN_LIMIT)
        return returns, gaps

    def tradable(self) -> Tensor:
        """(num_envs, N) bool: which symbols can trade on the current bar."""
        return self._tradable.index_select(0, self._t)

    def state_dict(self) -> dict[str, Any]:
        return {
            "generator": self._generator.get_state(),
            "seed": self._seed,
            "episodes_started": self._episodes_started,
            "t": self._t.clone(),
            "weights": self._weights.clone(),
            "episode_return": self._episode_return.clone(),
            "elapsed": self._elapsed,
            "needs_reset": self._needs_reset,
            "return_counts": self.return_counts.clone(),
            "aux_target_counts": self.aux_target_counts.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._generator.set_state(state["generator"].cpu())
        self._seed = state["seed"]
        self._episodes_started = state["episodes_started"]
        self._t = state["t"].to(self.device)
        self._weights = state["weights"].to(self.device)
        self._episode_return = state["episode_return"].to(self.device)
        self._elapsed = state["elapsed"]
        self._needs_reset = state["needs_reset"]
        self.return_counts.copy_(state["return_counts"])
        self.aux_target_counts.copy_(state["aux_target_counts"])

    # -- internals -------------------------------------------------------------------------

    def _start_episodes(self) -> None:
        if self.starts == "random":
            self._t = torch.randint(
                self.first_bar,
                self._max_start + 1,
                (self.num_envs,),
                generator=self._generator,
                device=self.device,
            )
        else:
            slots = math.ceil(self.bars_per_epoch / self.episode_length)
            k = (self._episodes_started + np.arange(self.num_envs)) % slots
            first = np.minimum(self.first_bar + k * self.episode_length, self._max_start)
            self._t = torch.as_tensor(first, dtype=torch.int64).to(self.device)
        self._episodes_started += self.num_envs
        self._weights = torch.zeros(self.num_envs, self.num_symbols, device=self.device)
        self._episode_return = torch.zeros(self.num_envs, device=self.device)
        self._elapsed = 0

    def _rows(self) -> Tensor:
        """(num_envs, N) each symbol's latest own bar as a stacked feature row."""
        own = self._own.index_select(0, self._t).long().clamp_(min=0)
        return own + self._offsets[:-1]

    def _observe(self) -> Tensor:
        rows = self._rows().reshape(-1)
        symbols = self._symbol_ids.repeat(self.num_envs)
        slots = (self._weights * self.num_symbols).round_().reshape(-1)
        per_symbol = self.features.observe(rows, slots, symbols)
        flags = self.tradable().to(per_symbol.dtype)
        return torch.cat([per_symbol.view(self.num_envs, -1), flags], dim=1)

    def _aux_targets(self) -> Tensor:
        aux = self._aux_table.index_select(0, self._rows().reshape(-1))
        self.aux_target_counts += ops.sanitize_(aux, RETURN_LIMIT)
        aux = aux.view(self.num_envs, self.num_symbols, -1) * self.tradable().unsqueeze(-1)
        return aux.reshape(self.num_envs, -1)

    def __repr__(self) -> str:
        return (
            f"PortfolioEnv(num_envs={self.num_envs}, symbols={self.num_symbols}, calendar="
            f"{len(self.market)}, episode_length={self.episode_length}, window={self.window})"
        )
