"""TradingEnv: N trading episodes over one bar series, stepped together as tensors.

Timeline of one episode (``t`` is a bar index into the market, ``L = episode_length``)::

    reset:      observe bar t0                          (position 0)
    step k:     act on bar t = t0+k-1 -> position p      (target position, not a trade size)
                reward = p * logret[t+1] - cost * |p - previous p|   (close fills;
                         pyppo.execution: next-open fills, cost = fee + spread / 2)
                observe bar t+1; aux_targets = forward returns from bar t+1
    step L:     truncated; info["final_obs"] holds the observation of bar t0+L and the
                returned observation is the first one of the next episode (auto-reset)

All N episodes start together and have the same length, so they are truncated on the
same step; which step that is is known on the host, and ``step()`` never synchronizes
with the device. Nothing terminates early (``terminated`` is always False).

Bad ticks: the realized log return of each step goes through :func:`pyppo.ops.sanitize_`
(non-finite -> 0, clamped to ±1) *before* it is multiplied by the position, so a NaN bar
is a zero return (not NaN x 0 = NaN) and rewards stay within ±(1 + 2 fee). The auxiliary
targets are sanitized the same way. Both counts accumulate on the device in
:attr:`TradingEnv.return_counts` and :attr:`TradingEnv.aux_target_counts`
(``[nonfinite, clamped]``, one count per env-step and value). Observations are built from
sanitized returns (see :mod:`pyppo.features`). Nothing non-finite leaves the env.

An observation is gathered at step time from bar t's precomputed features
(:class:`pyppo.features.MarketFeatures`: a slice of the return column, the indicators, the
calendar) with the position held written into its position column: it depends only on the
bar and the position, never on where the episode started or how far it got, so a policy
sees the same thing in training, in a backtest (:mod:`pyppo.evaluation`) and live.

Pooled symbols: given a :class:`pyppo.Universe` instead of one market, each episode trades
one symbol on that symbol's own bars (a stock's closed hours are no steps), episode starts
drawn over every symbol's decision bars (each bar equally likely), so one agent learns from
all of them; the auxiliary targets are each symbol's own forward returns. The symbols'
per-bar tensors are stacked, symbol s's bar t at row ``offsets[s] + t``, so ``step()`` is
the same gathers whatever the number of symbols. With one symbol this is exactly the
single-market env.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pyppo import ops
from pyppo.config import EnvConfig
from pyppo.data import MarketData, MarketDataError, Universe
from pyppo.device import resolve_device
from pyppo.execution import check_fill, cost_per_unit, gap_log_returns, step_rewards
from pyppo.features import FEATURE_CLIP, RETURN_LIMIT, ObsSpec, compute_features

try:  # gymnasium is optional: the env follows its VectorEnv API either way.
    import gymnasium
    from gymnasium import spaces
    from gymnasium.vector import VectorEnv as _VectorEnvBase
    from gymnasium.vector.utils import batch_space

    _AUTORESET: Any = gymnasium.vector.AutoresetMode.SAME_STEP
except ImportError:  # pragma: no cover - exercised only without gymnasium
    gymnasium = None
    _VectorEnvBase = object
    _AUTORESET = "SameStep"

__all__ = ["EnvSpec", "EpisodeEnv", "TradingEnv", "ObsSpec"]


class _Discrete:
    """Stand-in for ``gymnasium.spaces.Discrete`` when gymnasium is not installed."""

    def __init__(self, n: int) -> None:
        self.n, self.shape, self.dtype = n, (), np.int64

    def __repr__(self) -> str:
        return f"Discrete({self.n})"


class _Box:
    """Stand-in for ``gymnasium.spaces.Box`` when gymnasium is not installed."""

    def __init__(self, low: float, high: float, shape: tuple[int, ...]) -> None:
        self.low, self.high, self.shape, self.dtype = low, high, shape, np.float32

    def __repr__(self) -> str:
        return f"Box({self.low}, {self.high}, {self.shape}, float32)"


@dataclass(frozen=True)
class EnvSpec:
    """What an agent needs to know of the env it was trained in, without the market: how to
    build its observations and act (:meth:`TradingEnv.describe`).

    :param window: the observation's return window.
    :param fee: cost per unit of position change.
    :param allow_short: short/flat/long actions, else flat/long.
    :param episode_length: steps per training episode.
    :param aux_labels: the auxiliary horizons' labels.
    :param aux_horizon_bars: the auxiliary horizons in bars.
    :param bar_interval_seconds: the bar interval the agent was trained on.
    :param observation_names: the observation's columns (:attr:`ObsSpec.names`).
    """

    window: int
    fee: float
    allow_short: bool
    episode_length: int
    aux_labels: tuple[str, ...]
    aux_horizon_bars: tuple[int, ...]
    bar_interval_seconds: float
    observation_names: tuple[str, ...]

    def __post_init__(self) -> None:
        expected = ObsSpec.for_window(self.window).names if self.window >= 1 else ()
        problems = [
            f"{name} {value!r}"
            for name, value, ok in (
                ("window", self.window, self.window >= 1),
                ("fee", self.fee, math.isfinite(self.fee) and self.fee >= 0),
                ("episode_length", self.episode_length, self.episode_length >= 1),
                (
                    "aux_horizon_bars",
                    list(self.aux_horizon_bars),
                    len(self.aux_horizon_bars) == len(self.aux_labels)
                    and all(h >= 1 for h in self.aux_horizon_bars),
                ),
                (
                    "bar_interval_seconds",
                    self.bar_interval_seconds,
                    math.isfinite(self.bar_interval_seconds) and self.bar_interval_seconds > 0,
                ),
                (
                    "observation_names",
                    f"{len(self.observation_names)} names",
                    self.observation_names == expected,
                ),
            )
            if not ok
        ]
        if problems:
            raise ValueError(f"implausible env description: {', '.join(problems)}")

    @property
    def observation_size(self) -> int:
        return len(self.observation_names)

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for checkpoints and ``agent.json``)."""
        values = dataclasses.asdict(self)
        return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> EnvSpec:
        """The inverse of :meth:`to_dict`. Raises ``ValueError`` naming a missing or
        ill-typed field."""
        try:
            return cls(
                window=int(values["window"]),
                fee=float(values["fee"]),
                allow_short=bool(values["allow_short"]),
                episode_length=int(values["episode_length"]),
                aux_labels=tuple(str(v) for v in values["aux_labels"]),
                aux_horizon_bars=tuple(int(v) for v in values["aux_horizon_bars"]),
                bar_interval_seconds=float(values["bar_interval_seconds"]),
                observation_names=tuple(str(v) for v in values["observation_names"]),
            )
        except KeyError as err:
            raise ValueError(f"the env description lacks {err.args[0]!r}") from None
        except (TypeError, ValueError) as err:
            raise ValueError(f"the env description is malformed: {err}") from None


class EpisodeEnv:
    """What :class:`TradingEnv` and :class:`pyppo.PortfolioEnv` share: same-length episodes
    that end together (truncated, auto-reset on the same step), the sanitizer's counters and
    the description an agent keeps.

    A subclass sets ``num_envs``, ``device``, ``episode_length``, ``window``, ``fee``,
    ``allow_short``, ``aux_labels``, ``aux_horizon_bars``, ``market``, ``obs_spec``,
    ``return_counts``, ``aux_target_counts``, ``feature_sanitize_counts``, ``_elapsed`` and
    ``_episode_return``, and implements ``_observe``, ``_start_episodes`` and
    ``_aux_targets``.
    """

    def _end_step(
        self, reward: Tensor, info: dict[str, Any]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
        """Count the step; on the episodes' last step put the final observation and the
        episode returns into ``info`` and start new episodes. Returns what ``step()`` does."""
        self._episode_return += reward
        self._elapsed += 1
        truncated_now = self._elapsed >= self.episode_length
        obs = self._observe()
        if truncated_now:
            info["final_obs"] = obs
            info["_final_obs"] = torch.ones(self.num_envs, dtype=torch.bool, device=self.device)
            info["episode_return"] = self._episode_return.clone()
            self._start_episodes()
            obs = self._observe()
        info["aux_targets"] = self._aux_targets()
        terminated = torch.zeros(self.num_envs, dtype=torch.bool, device=self.device)
        truncated = torch.full(
            (self.num_envs,), truncated_now, dtype=torch.bool, device=self.device
        )
        return obs, reward, terminated, truncated, info

    def close(self, **kwargs: Any) -> None:
        """Nothing to release (no processes, no files); kept for the gymnasium API."""
        self.closed = True

    # -- counters -------------------------------------------------------------------------

    def sanitize_counts(self) -> dict[str, Tensor]:
        """Running ``[nonfinite, clamped]`` int64 counts on the env's device of the realized
        returns and the auxiliary targets it sanitized (see :mod:`pyppo.protocols`)."""
        return {"returns": self.return_counts, "aux_targets": self.aux_target_counts}

    def describe(self) -> EnvSpec:
        """What it takes to rebuild this env's observations without its market (stored in
        checkpoints and exports)."""
        return EnvSpec(
            window=self.window,
            fee=self.fee,
            allow_short=self.allow_short,
            episode_length=self.episode_length,
            aux_labels=self.aux_labels,
            aux_horizon_bars=self.aux_horizon_bars,
            bar_interval_seconds=self.market.bar_interval.total_seconds(),
            observation_names=self.obs_spec.names,
        )

    def counters(self) -> dict[str, int]:
        """Host copies of the sanitizer counts, over all members (reading them synchronizes
        once)."""
        r = self.return_counts.reshape(-1, 2).sum(0).tolist()
        a = self.aux_target_counts.reshape(-1, 2).sum(0).tolist()
        f = self.feature_sanitize_counts.tolist()
        return {
            "return_nonfinite": r[0],
            "return_clamped": r[1],
            "aux_nonfinite": a[0],
            "aux_clamped": a[1],
            "feature_return_nonfinite": f[0],
            "feature_return_clamped": f[1],
        }

    def reset_counters(self) -> None:
        self.return_counts.zero_()
        self.aux_target_counts.zero_()


class TradingEnv(EpisodeEnv, _VectorEnvBase):  # type: ignore[misc, valid-type]
    """Vectorized trading environment over a :class:`MarketData` series or, pooled, over the
    symbols of a :class:`~pyppo.Universe`.

    Args:
        market: the bars (e.g. ``synthetic_market()`` or ``load_market_data(path)``), or a
            universe (``load_universe(folder)``, ``synthetic_market(symbols=20)``): each
            episode then trades one symbol (:attr:`symbol_index`), and ``span`` is in
            calendar bars.
        num_envs: number of episodes stepped together.
        episode_length: steps per episode; episodes are then truncated and auto-reset.
        window: length of the normalized return window in the observation.
        fee: cost per unit of position change (1e-4 = 1 basis point), charged on the step.
        allow_short: Discrete(3) actions short/flat/long (-1, 0, +1) if True, else
            Discrete(2) flat/long (0, +1).
        device: where every tensor lives; ``step()`` takes and returns tensors there.
        seed: seeds the episode starts (``reset(seed=...)`` reseeds). A sequence of seeds
            makes a population's env: one member per seed, each with its own ``num_envs``
            episodes whose starts come from its own seed (member k's episodes are those of
            an env with ``seed=seeds[k]``), stepped together: ``num_envs * len(seeds)`` envs,
            member k's at ``[k * num_envs, (k + 1) * num_envs)``.
        starts: ``"random"`` (episodes start at uniformly random bars) or ``"sequential"``
            (episodes tile the series in order, so ``steps_per_epoch`` steps visit every
            decision bar at least once: for evaluation and exact accounting).
        check_actions: validate action values (default: on CPU only, since on CUDA it would
            synchronize; an out-of-range action on CUDA then fails with a device assert).
        sanitize: ``False`` passes realized returns and auxiliary targets through raw, NaN
            and all (only to demonstrate what the guards prevent; observations stay clean).
        fill: ``"close"`` (a decision fills at its bar's close) or ``"next_open"`` (at the
            next bar's open; the market needs an open column): see :mod:`pyppo.execution`.
        spread: the bid-ask spread in basis points, half of it paid per unit of position
            change on top of ``fee``.
        span: ``(lo, hi)``: the bars whose returns and labels the episodes may use (default:
            all). Episodes act on bars ``t >= max(lo, window)`` with ``t + max(longest
            horizon, 1) < hi``, so no reward or auxiliary target reaches outside the span,
            while observations are built from every earlier bar (walk-forward training).

    Auxiliary horizons are the market's (``synthetic_market(horizons=...)``,
    ``load_market_data(horizons=...)``): :attr:`aux_horizon_bars` is ``market.horizons`` (in
    bars) and :attr:`aux_labels` is ``market.horizon_labels`` (``("1h", "24h")`` by default);
    column j of ``info["aux_targets"]`` is the forward return over ``aux_horizon_bars[j]``.

    Epochs: ``bars_per_epoch`` is the number of bars an agent can act on
    (``market.decision_bars(window)``: ``len(market) - window - longest horizon``); one epoch
    covers the series once, i.e. ``steps_per_epoch = ceil(bars_per_epoch / num_envs)`` calls
    to ``step()`` (per member: each member's envs cover the series once).

    Gymnasium: the vector-env API with ``metadata["autoreset_mode"] = SAME_STEP``; rewards,
    terminated and truncated are (N,) tensors on ``device`` instead of numpy arrays;
    ``info["final_obs"]`` is an (N, D) tensor valid where ``info["_final_obs"]`` is True.
    """

    metadata = {"autoreset_mode": _AUTORESET}

    def __init__(
        self,
        market: MarketData,
        num_envs: int = EnvConfig.num_envs,
        episode_length: int = EnvConfig.episode_length,
        window: int = EnvConfig.window,
        fee: float = EnvConfig.fee,
        allow_short: bool = EnvConfig.allow_short,
        device: str | torch.device = "cpu",
        seed: int | Sequence[int] = 0,
        *,
        starts: str = "random",
        check_actions: bool | None = None,
        sanitize: bool = True,
        fill: str = EnvConfig.fill,
        spread: float = EnvConfig.spread,
        span: tuple[int, int] | None = None,
    ) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs={num_envs}: need at least 1 env")
        if episode_length < 1:
            raise ValueError(f"episode_length={episode_length}: need at least 1 step")
        if window < 1:
            raise ValueError(f"window={window}: need at least 1 bar")
        if not (math.isfinite(fee) and fee >= 0):
            raise ValueError(f"fee={fee}: must be a finite number >= 0")
        if not (math.isfinite(spread) and spread >= 0):
            raise ValueError(f"spread={spread}: must be a finite number of basis points >= 0")
        if starts not in ("random", "sequential"):
            raise ValueError(f"starts={starts!r}: use 'random' or 'sequential'")
        self.market = market
        seeds = [int(s) for s in seed] if isinstance(seed, Sequence) else [int(seed)]
        if not seeds:
            raise ValueError("seed: give one seed, or one per member")
        self.members = len(seeds)
        self.envs_per_member = int(num_envs)
        self.num_envs = self.envs_per_member * self.members
        self.episode_length = int(episode_length)
        self.window = int(window)
        self.fee = float(fee)
        self.fill = check_fill(fill)
        self.spread = float(spread)
        self.cost = cost_per_unit(self.fee, self.spread)
        self.allow_short = bool(allow_short)
        self.device = resolve_device(device)
        self.starts = starts
        self.sanitize = bool(sanitize)
        self.check_actions = self.device.type == "cpu" if check_actions is None else check_actions
        self.aux_horizon_bars: tuple[int, ...] = tuple(market.horizons)
        self.aux_labels: tuple[str, ...] = tuple(market.horizon_labels)

        self.markets: list[MarketData] = (
            list(market.markets.values()) if isinstance(market, Universe) else [market]
        )
        self.symbols: tuple[str, ...] = (
            market.symbols if isinstance(market, Universe) else (market.source,)
        )
        self._set_decision_bars(span)

        # Everything step() reads is precomputed once, on the device, one symbol after
        # another: symbol s's bar t is row offsets[s] + t of every per-bar tensor.
        self.features = compute_features(self.markets, self.window, self.device)
        self.obs_spec: ObsSpec = self.features.spec
        self.feature_sanitize_counts = self.features.sanitized
        self._offsets = self.features.offsets.to(self.device)
        # Raw (unsanitized) values: they are sanitized per step so that the counts say how
        # often bad values actually reached the agent.
        self._log_returns = self._stacked(lambda m: m.log_returns)
        # Next-open fills: the part of each bar's return the previous position earns.
        self._gaps = None
        if self.fill != "close":
            self._gaps = self._stacked(lambda m: gap_log_returns(m, self.fill))
        if self.aux_horizon_bars:
            self._aux_table = self._stacked(
                lambda m: torch.stack([m.forward_returns(h) for h in self.aux_horizon_bars], 1)
            )
        else:
            self._aux_table = torch.zeros(self.features.rows, 0, device=self.device)
        positions = [-1.0, 0.0, 1.0] if self.allow_short else [0.0, 1.0]
        self._action_to_position = torch.tensor(positions, device=self.device)
        # [nonfinite, clamped]; a population counts per member: [M, 2].
        counts_shape = (2,) if self.members == 1 else (self.members, 2)
        self.return_counts = torch.zeros(counts_shape, dtype=torch.int64, device=self.device)
        self.aux_target_counts = torch.zeros(counts_shape, dtype=torch.int64, device=self.device)

        self._init_spaces(len(positions))
        # Each member's episode starts come from its own generator (one for a plain env).
        self._generators = [torch.Generator(device=self.device) for _ in seeds]
        self._seed_generators(seeds)
        self._episodes_started = 0  # for starts="sequential"
        self._t = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        self._symbol = torch.zeros(self.num_envs, dtype=torch.int64, device=self.device)
        self._pos = torch.zeros(self.num_envs, device=self.device)
        self._episode_return = torch.zeros(self.num_envs, device=self.device)
        self._elapsed = 0
        self._needs_reset = True

    def _set_decision_bars(self, span: tuple[int, int] | None) -> None:
        """Each symbol's decision bars and episode starts within ``span``."""
        n_bars = len(self.market)
        longest = max(self.aux_horizon_bars, default=0)
        lo, hi = (0, n_bars) if span is None else (int(span[0]), int(span[1]))
        if not 0 <= lo < hi <= n_bars:
            raise ValueError(f"span=({lo}, {hi}): need 0 <= lo < hi <= {n_bars} (the bars)")
        self.span = (lo, hi)
        if isinstance(self.market, Universe):
            spans = [self.market.symbol_span(s, lo, hi) for s in self.market.symbols]
        else:
            spans = [(lo, hi)]
        # Decision bars: a window behind each, the next bar and every horizon inside the
        # span. An episode from t0 acts on t0 .. t0+L-1, all of which must be decision bars.
        first = [max(self.window, a) for a, _ in spans]
        last_start = [b - self.episode_length - max(longest, 1) for _, b in spans]
        starts = [max(z - f + 1, 0) for f, z in zip(first, last_start, strict=True)]
        bars = [
            max(b - max(longest, 1) - f, 0) if n else 0
            for f, (_, b), n in zip(first, spans, starts, strict=True)
        ]
        if not any(starts):
            what = f"{n_bars} bars are" if span is None else f"bars {lo}..{hi - 1} are"
            if isinstance(self.market, Universe):
                what = "every symbol's bars are" if span is None else f"every symbol's {what}"
            raise MarketDataError(
                f"{what} too few for episode_length={self.episode_length}, "
                f"window={self.window} and longest aux horizon {longest} bars: need at least "
                f"{first[0] - spans[0][0] + self.episode_length + max(longest, 1)}. Use a "
                "shorter episode_length or more data"
            )
        self.first_bar, self._max_start = first[0], last_start[0]
        self.bars_per_epoch = sum(bars)
        self.steps_per_epoch = math.ceil(self.bars_per_epoch / self.envs_per_member)
        # Episode starts over all symbols: start k (0 <= k < total) is symbol s's
        # first[s] + k - begin[s], where begin[s] <= k < begin[s] + starts[s].
        slots = [math.ceil(b / self.episode_length) for b in bars]
        self._first = torch.tensor(first, device=self.device)
        self._last_start = torch.tensor(last_start, device=self.device)
        self._start_ends = torch.tensor(np.cumsum(starts), device=self.device)
        self._slot_ends = torch.tensor(np.cumsum(slots), device=self.device)
        self._total_starts, self._total_slots = int(sum(starts)), int(sum(slots))

    def _stacked(self, per_market: Any) -> Tensor:
        """One float32 tensor on the device of ``per_market(m)`` for every symbol, stacked."""
        parts = [per_market(m).to(torch.float32) for m in self.markets]
        return torch.cat(parts).to(self.device).contiguous()

    def _init_spaces(self, n_actions: int) -> None:
        shape = (self.obs_spec.size,)
        if gymnasium is not None:
            self.single_observation_space = spaces.Box(
                -FEATURE_CLIP, FEATURE_CLIP, shape=shape, dtype=np.float32
            )
            self.single_action_space = spaces.Discrete(n_actions)
            self.observation_space = batch_space(self.single_observation_space, self.num_envs)
            self.action_space = batch_space(self.single_action_space, self.num_envs)
        else:
            self.single_observation_space = _Box(-FEATURE_CLIP, FEATURE_CLIP, shape)
            self.single_action_space = _Discrete(n_actions)
            self.observation_space = _Box(-FEATURE_CLIP, FEATURE_CLIP, (self.num_envs, *shape))
            self.action_space = _Discrete(n_actions)

    # -- gymnasium API ---------------------------------------------------------------------

    def reset(
        self, *, seed: int | Sequence[int] | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Tensor, dict[str, Any]]:
        """Start N new episodes; returns ``(obs, info)`` with ``info["aux_targets"]``.
        ``seed``: reseed (one seed, or one per member for a population's env)."""
        if seed is not None:
            seeds = [int(s) for s in seed] if isinstance(seed, Sequence) else [int(seed)]
            if len(seeds) != self.members:
                raise ValueError(f"reset: {len(seeds)} seeds for {self.members} members")
            self._seed_generators(seeds)
            self._episodes_started = 0
        self._start_episodes()
        self._needs_reset = False
        obs = self._observe()
        return obs, {"aux_targets": self._aux_targets()}

    def step(
        self, actions: Tensor | np.ndarray | Sequence[int]
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, dict[str, Any]]:
        """Apply one action per env; returns ``(obs, reward, terminated, truncated, info)``.

        ``actions``: (N,) integers (0 = short, 1 = flat, 2 = long; or 0 = flat, 1 = long).
        ``info["aux_targets"]``: (N, len(aux_labels)) sanitized forward returns from the
        bar of the returned ``obs``, one column per auxiliary horizon. On the truncating step
        ``info["final_obs"]``, ``info["_final_obs"]`` and ``info["episode_return"]`` are added.
        """
        if self._needs_reset:
            raise RuntimeError("TradingEnv.step() called before reset()")
        actions = self._as_actions(actions)
        position = self._action_to_position.index_select(0, actions)
        t_next = self._t + 1
        ret = self._log_returns.index_select(0, t_next)
        if self.sanitize:
            self.return_counts += self._sanitize(ret)
        if self._gaps is None:
            cost = (position - self._pos).abs_().mul_(self.cost)
            reward = position.mul(ret).sub_(cost)
        else:
            gap = self._gaps.index_select(0, t_next)
            if self.sanitize:
                self.return_counts += self._sanitize(gap)
            reward = step_rewards(self._pos, position, ret, gap, self.cost)
        self._t, self._pos = t_next, position
        return self._end_step(reward, {})

    # -- memory ----------------------------------------------------------------------------

    def memory(self) -> dict[str, int]:
        """Bytes of each per-bar tensor the env holds (what grows with the bars: the
        features, the returns, the auxiliary targets, the gaps of next-open fills). The
        market itself is the caller's and not counted."""
        tensors = {
            "features": self.features.nbytes,
            "log_returns": self._log_returns,
            "aux_targets": self._aux_table,
            "gaps": self._gaps,
        }
        return {
            name: t if isinstance(t, int) else (0 if t is None else t.numel() * t.element_size())
            for name, t in tensors.items()
        }

    @property
    def bytes_per_bar(self) -> float:
        """:meth:`memory` in total over the bars held (every symbol's): about 56 bytes with
        the default two auxiliary horizons, whatever the window."""
        return sum(self.memory().values()) / self.features.rows

    @property
    def bar_index(self) -> Tensor:
        """(N,) current bar of each env (the bar of the last returned observation), in its
        symbol's bars."""
        return self._t - self._offsets.index_select(0, self._symbol)

    @property
    def symbol_index(self) -> Tensor:
        """(N,) the symbol each env trades (an index into :attr:`symbols`)."""
        return self._symbol

    @property
    def position(self) -> Tensor:
        """(N,) current position of each env (-1, 0, +1)."""
        return self._pos

    # -- checkpointing -----------------------------------------------------------------------

    def state_dict(self) -> dict[str, Any]:
        """Everything that decides the env's future: RNG, bars, positions, counters."""
        return {
            "generators": [g.get_state() for g in self._generators],
            "seed": self._seeds,
            "episodes_started": self._episodes_started,
            "t": self._t.clone(),
            "symbol": self._symbol.clone(),
            "pos": self._pos.clone(),
            "episode_return": self._episode_return.clone(),
            "elapsed": self._elapsed,
            "needs_reset": self._needs_reset,
            "return_counts": self.return_counts.clone(),
            "aux_target_counts": self.aux_target_counts.clone(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (of an env over the same market and settings)."""
        if state["t"].shape != self._t.shape:
            raise ValueError(
                f"env state is for {state['t'].shape[0]} envs, this env has {self.num_envs}"
            )
        # (a plain env's state from before populations had one "generator")
        saved = state["generators"] if "generators" in state else [state["generator"]]
        for generator, saved_state in zip(self._generators, saved, strict=True):
            generator.set_state(saved_state.cpu())
        self._seeds = list(state["seed"]) if isinstance(state["seed"], list) else [state["seed"]]
        self._episodes_started = state["episodes_started"]
        self._t = state["t"].to(self.device)
        if "symbol" in state:
            self._symbol = state["symbol"].to(self.device)
        self._pos = state["pos"].to(self.device)
        self._episode_return = state["episode_return"].to(self.device)
        self._elapsed = state["elapsed"]
        self._needs_reset = state["needs_reset"]
        self.return_counts.copy_(state["return_counts"])
        self.aux_target_counts.copy_(state["aux_target_counts"])

    # -- internals -------------------------------------------------------------------------

    def _as_actions(self, actions: Tensor | np.ndarray | Sequence[int]) -> Tensor:
        if not isinstance(actions, Tensor):
            actions = torch.as_tensor(np.asarray(actions), device=self.device)
        if actions.shape != (self.num_envs,):
            raise ValueError(
                f"actions must have shape ({self.num_envs},), got {tuple(actions.shape)}"
            )
        if actions.device != self.device:
            raise ValueError(f"actions are on {actions.device}, the env is on {self.device}")
        if actions.dtype != torch.int64:
            if actions.dtype.is_floating_point or actions.dtype == torch.bool:
                raise TypeError(f"actions must be integers, got {actions.dtype}")
            actions = actions.long()
        if self.check_actions:
            n = self._action_to_position.numel()
            lo, hi = torch.aminmax(actions)
            if lo < 0 or hi >= n:
                raise ValueError(f"actions must be in [0, {n - 1}], got values in [{lo}, {hi}]")
        return actions

    def _sanitize(self, x: Tensor) -> Tensor:
        """Sanitize ``x`` (one row per env) in place; its ``[nonfinite, clamped]`` counts, per
        member for a population (two reductions more, whatever the number of members)."""
        if self.members == 1:
            return ops.sanitize_(x, RETURN_LIMIT)
        rows = x.view(self.members, -1)
        finite = torch.isfinite(rows)
        counts = torch.stack(
            [(~finite).sum(1), (finite & (rows.abs() > RETURN_LIMIT)).sum(1)], dim=1
        )
        ops.sanitize_(x, RETURN_LIMIT)
        return counts

    def _seed_generators(self, seeds: Sequence[int]) -> None:
        self._seeds = list(seeds)
        for generator, seed in zip(self._generators, seeds, strict=True):
            generator.manual_seed(seed)

    def _start_episodes(self) -> None:
        n, per_member = self.num_envs, self.envs_per_member
        if self.starts == "random":
            draws = [
                torch.randint(
                    0, self._total_starts, (per_member,), generator=generator, device=self.device
                )
                for generator in self._generators
            ]
            k = draws[0] if self.members == 1 else torch.cat(draws)
            symbol = torch.searchsorted(self._start_ends, k, right=True)
            begin = torch.where(
                symbol > 0, self._start_ends.index_select(0, (symbol - 1).clamp_(min=0)), 0
            )
            first = self._first.index_select(0, symbol) + k - begin
        else:
            # Tile each symbol's decision bars with back-to-back episodes, in order; the last
            # tile of a symbol is moved back so that it still fits (it overlaps its
            # neighbour). Every member tiles the same way.
            k = (self._episodes_started + np.arange(per_member)) % self._total_slots
            k = torch.as_tensor(np.tile(k, self.members), dtype=torch.int64).to(self.device)
            symbol = torch.searchsorted(self._slot_ends, k, right=True)
            begin = torch.where(
                symbol > 0, self._slot_ends.index_select(0, (symbol - 1).clamp_(min=0)), 0
            )
            first = self._first.index_select(0, symbol) + (k - begin) * self.episode_length
            first = torch.minimum(first, self._last_start.index_select(0, symbol))
        self._symbol = symbol
        self._t = self._offsets.index_select(0, symbol) + first
        self._episodes_started += per_member
        self._pos = torch.zeros(n, device=self.device)
        self._episode_return = torch.zeros(n, device=self.device)
        self._elapsed = 0

    def _observe(self) -> Tensor:
        symbols = self._symbol if len(self.markets) > 1 else None
        return self.features.observe(self._t, self._pos, symbols)

    def _aux_targets(self) -> Tensor:
        aux = self._aux_table.index_select(0, self._t)
        if self.sanitize:
            self.aux_target_counts += self._sanitize(aux)
        return aux

    def __repr__(self) -> str:
        return (
            f"TradingEnv(num_envs={self.num_envs}, bars={len(self.market)}, "
            f"episode_length={self.episode_length}, window={self.window}, "
            f"obs={self.obs_spec.size}, actions={self.single_action_space}, device={self.device})"
        )
