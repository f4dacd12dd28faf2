"""TradingActorCritic: the PPO actor-critic with two auxiliary return heads.

    obs ──► trunk ─┬─► actor    ──► action_logits (B, num_actions)
                   ├─► critic   ──► value         (B,)
                   ├─► aux_1h   ──► pred_1h       (B,)  clamped to ±aux_limit (±100 %)
                   └─► aux_24h  ──► pred_24h      (B,)  (names follow the horizon labels)

The trunk holds both input branches (1-D convolutions over the normalized return window,
an MLP over the indicator/time/position features) and the shared layers, so the model's
top-level children are exactly the guard groups: trunk, actor, critic, aux_1h, aux_24h.

The two auxiliary heads are named after their horizons' labels (``aux_1h`` and ``aux_24h``
for the default horizons), and so are their outputs (``pred_1h``, ``pred_24h``) and guard
groups. Every output passes :func:`pyppo.guard.guard_outputs`: one fused count of non-finite
elements over all outputs, then the differentiable sanitize (NaN/inf -> 0 with a zero
gradient there; the auxiliary predictions are also clamped to ±aux_limit). The counts add up
on the device until the trainer takes them, once per update (:meth:`take_output_counts`).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from pyppo.config import ModelConfig
from pyppo.features import ObsSpec
from pyppo.guard import guard_outputs
from pyppo.heads import DEFAULT_AUX_LABELS, AuxHeads


def _layer(layer: nn.Module, std: float = math.sqrt(2)) -> nn.Module:
    # Orthogonal weights and zero biases: the PPO initialisation CleanRL and SB3 use.
    nn.init.orthogonal_(layer.weight, std)
    nn.init.zeros_(layer.bias)
    return layer


class PatchConv1d(nn.Module):
    """1-D convolution whose stride equals its kernel, on channels-last ``(B, L, C)`` input
    (``L`` a multiple of ``kernel``): each output position sees ``kernel`` consecutive
    positions, so the convolution is a reshape and one matrix multiply."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int) -> None:
        super().__init__()
        self.kernel = kernel
        weight = torch.empty(out_channels, in_channels * kernel)
        nn.init.orthogonal_(weight, math.sqrt(2))
        # Stored as (inputs, outputs), the transpose of nn.Linear's layout: autograd then
        # forms the weight gradient as x^T @ grad, which MKL computes several times faster
        # than grad^T @ x when a patch has only a few inputs (2 in the first layer; the
        # timings are in benchmarks/RESULTS.md, "Training").
        self.weight = nn.Parameter(weight.t().contiguous())
        self.bias = nn.Parameter(torch.zeros(out_channels))

    def forward(self, x: Tensor) -> Tensor:
        batch, length, channels = x.shape
        patches = x.reshape(batch * (length // self.kernel), self.kernel * channels)
        return torch.addmm(self.bias, patches, self.weight).view(batch, length // self.kernel, -1)


class TradingTrunk(nn.Module):
    """Price-window branch + feature branch -> shared layers -> (B, hidden_dim)."""

    def __init__(self, obs_spec: ObsSpec, hidden_dim: int = 256, channels: int = 16) -> None:
        super().__init__()
        self.window = obs_spec.window
        self.features = obs_spec.features
        window_len = obs_spec.window.stop - obs_spec.window.start
        n_features = obs_spec.size - obs_spec.features.start
        half = hidden_dim // 2
        # Two patch convolutions read the window at 2- and 4-bar scales; a patch convolution
        # (stride = kernel) is a reshape plus one matrix multiply, far cheaper on CPUs than
        # dense convolutions, which dominated training time.
        self.window_len = window_len
        self.padded_len = -(-window_len // 4) * 4  # both convolutions halve the length
        self.price = nn.Sequential(
            PatchConv1d(1, channels // 2, kernel=2),
            nn.ReLU(),
            PatchConv1d(channels // 2, channels, kernel=2),
            nn.ReLU(),
            nn.Flatten(),
            _layer(nn.Linear(self.padded_len // 4 * channels, half)),
            nn.ReLU(),
        )
        # The most recent returns also go straight to the shared layers: short-horizon
        # structure should not have to survive the pooling.
        self.recent = min(8, window_len)
        self.feature_mlp = nn.Sequential(
            _layer(nn.Linear(n_features + self.recent, hidden_dim - half)), nn.ReLU()
        )
        self.shared = nn.Sequential(
            _layer(nn.Linear(hidden_dim, hidden_dim)),
            nn.Tanh(),
            _layer(nn.Linear(hidden_dim, hidden_dim)),
            nn.Tanh(),
        )

    def _price(self, window: Tensor) -> Tensor:
        if self.padded_len > self.window_len:  # on the oldest side
            window = nn.functional.pad(window, (self.padded_len - self.window_len, 0))
        return self.price(window.unsqueeze(-1))

    def position_free(self, obs: Tensor) -> Tensor:
        """The part of the first shared layer's pre-activation that does not depend on the
        position in ``obs``: the price branch times its half of that layer's weight, plus
        the bias. ``(B, hidden_dim)``; see Note [Inference with the position-free part]."""
        first = self.shared[0]
        half = first.in_features // 2
        price = self._price(obs[:, self.window])
        return nn.functional.linear(price, first.weight[:, :half], first.bias)

    def forward(self, obs: Tensor, position_free: Tensor | None = None) -> Tensor:
        """``(B, hidden_dim)`` features of ``obs``, from :meth:`position_free` of these
        rows when it is given (see Note [Inference with the position-free part])."""
        window = obs[:, self.window]
        features = torch.cat([obs[:, self.features], window[:, -self.recent :]], dim=1)
        features = self.feature_mlp(features)
        if position_free is None:
            return self.shared(torch.cat([self._price(window), features], dim=1))
        first, tanh, second, _ = self.shared
        half = first.in_features // 2
        h = torch.addmm(position_free, features, first.weight[:, half:].t())
        if h.requires_grad:  # training through this path: the plain activations
            return tanh(second(tanh(h)))
        return fast_tanh_(second(fast_tanh_(h)))


# Note [Inference with the position-free part]
# The first shared layer reads cat([price branch, feature branch]), and only the feature
# branch sees the agent's position. A backtest needs every bar's outputs for each of the
# three positions, so it computes the layer as two matrix multiplies, one per half of its
# weight: W[:, :half] @ price + b once per bar (position_free), then + W[:, half:] @ features
# per position; and it takes tanh as 2 sigmoid(2x) - 1, in place (fast_tanh_). That makes a
# long backtest's forward passes much cheaper (benchmarks/bench_backtest.py, "Backtests" in
# RESULTS.md). Training keeps the plain path: at its small batches the extra matrix multiply
# and the composite tanh cost more than they save (measured with bench_training.py; RESULTS.md).
# The two paths are the same function and differ by float rounding only (tests hold them
# within 1e-5).


def fast_tanh_(x: Tensor) -> Tensor:
    """tanh in place, as ``2 * sigmoid(2x) - 1`` on CPUs: the same function (absolute error
    at most 2e-7), but torch's CPU ``tanh`` kernel is several times slower than its
    ``sigmoid`` on large tensors (benchmarks/RESULTS.md, "Backtests"). GPUs, whose ``tanh``
    is fast, use ``tanh_``. Returns ``x``.

    :param x: a float tensor that autograd does not track (inference only).
    """
    if x.requires_grad and torch.is_grad_enabled():
        raise RuntimeError("fast_tanh_ is for inference: x requires grad")
    if x.device.type != "cpu":
        return x.tanh_()
    return x.mul_(2.0).sigmoid_().mul_(2.0).sub_(1.0)


@dataclass(frozen=True)
class ModelSpec:
    """What it takes to rebuild a :class:`TradingActorCritic` without its training data, as
    checkpoints and exports store it (:meth:`to_dict`).

    :param window: the observation's return window (:meth:`pyppo.ObsSpec.for_window`).
    :param num_actions: 3 (short, flat, long) or 2 (flat, long).
    :param hidden_dim: width of the trunk.
    :param aux_limit: the clamp of the auxiliary predictions.
    :param aux_labels: the horizon labels of the auxiliary heads.
    :param members: models in the checkpoint's weights (a leading member dimension when > 1).
    :param symbols: 0 for a single-asset model; else the symbols of a
        :class:`PortfolioActorCritic`'s portfolio.
    """

    window: int
    num_actions: int = 3
    hidden_dim: int = ModelConfig.hidden_dim
    aux_limit: float = ModelConfig.aux_limit
    aux_labels: tuple[str, ...] = DEFAULT_AUX_LABELS
    members: int = 1
    symbols: int = 0

    def __post_init__(self) -> None:
        problems = [
            f"{name} {value!r}"
            for name, value, ok in (
                ("window", self.window, self.window >= 1),
                ("num_actions", self.num_actions, self.num_actions in (2, 3)),
                ("hidden_dim", self.hidden_dim, self.hidden_dim >= 2),
                ("aux_limit", self.aux_limit, self.aux_limit > 0),
                ("members", self.members, self.members >= 1),
                ("symbols", self.symbols, self.symbols >= 0),
                (
                    "aux_labels",
                    list(self.aux_labels),
                    len(self.aux_labels) == 2 and len(set(self.aux_labels)) == 2,
                ),
            )
            if not ok
        ]
        if problems:
            raise ValueError(f"implausible model description: {', '.join(problems)}")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (for checkpoints and ``agent.json``)."""
        return {**dataclasses.asdict(self), "aux_labels": list(self.aux_labels)}

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelSpec:
        """The inverse of :meth:`to_dict`; ``members`` defaults to 1 (older checkpoints).
        Raises ``ValueError`` naming a missing or ill-typed field."""
        try:
            return cls(
                window=int(values["window"]),
                num_actions=int(values["num_actions"]),
                hidden_dim=int(values["hidden_dim"]),
                aux_limit=float(values["aux_limit"]),
                aux_labels=tuple(str(label) for label in values["aux_labels"]),
                members=int(values.get("members", 1)),
                symbols=int(values.get("symbols", 0)),
            )
        except KeyError as err:
            raise ValueError(f"the model description lacks {err.args[0]!r}") from None
        except (TypeError, ValueError) as err:
            raise ValueError(f"the model description is malformed: {err}") from None


class TradingActorCritic(nn.Module):
    """Actor-critic for :class:`pyppo.TradingEnv` observations.

    :param obs_spec: the env's :class:`pyppo.ObsSpec` (``env.obs_spec``).
    :param num_actions: 3 (short, flat, long) or 2 (flat, long).
    :param hidden_dim: width of the trunk.
    :param aux_limit: the auxiliary predictions are clamped to ``±aux_limit`` (1.0 = ±100 %;
        ``inf`` only repairs NaN/inf).
    :param aux_labels: the labels of the short and long horizon (``env.aux_labels``); the
        heads' names follow them (:class:`pyppo.heads.AuxHeads`: module ``aux_<label>``,
        output ``pred_<label>``).

    ``forward(obs)`` returns ``{"action_logits", "value", "pred_<short>", "pred_<long>"}``;
    the predictions are produced whether or not the trainer uses auxiliary losses.
    ``forward(obs, model.position_free(obs))`` returns the same up to float rounding; the
    backtest uses it to compute the position-free part once for every position the agent
    could hold.
    """

    def __init__(
        self,
        obs_spec: ObsSpec,
        num_actions: int = 3,
        hidden_dim: int = ModelConfig.hidden_dim,
        aux_limit: float = ModelConfig.aux_limit,
        aux_labels: tuple[str, str] = DEFAULT_AUX_LABELS,
    ) -> None:
        super().__init__()
        if len(aux_labels) != 2:
            raise ValueError(f"the model has two auxiliary heads, got labels {aux_labels}")
        self.obs_spec = obs_spec
        self.num_actions = int(num_actions)
        self.hidden_dim = int(hidden_dim)
        self.aux_limit = float(aux_limit)
        self.heads = AuxHeads.from_labels(aux_labels)
        self.output_names = self.heads.output_names()
        self._output_limits = self.heads.output_limits(self.aux_limit)
        self.trunk = TradingTrunk(obs_spec, hidden_dim)
        self.actor = _layer(nn.Linear(hidden_dim, num_actions), std=0.01)
        self.critic = _layer(nn.Linear(hidden_dim, 1), std=1.0)
        for name in self.heads.modules:
            self.add_module(name, _layer(nn.Linear(hidden_dim, 1), std=0.01))
        # Non-finite elements seen per output since they were last taken (device tensor).
        self.register_buffer(
            "output_nonfinite",
            torch.zeros(len(self.output_names), dtype=torch.int64),
            persistent=False,
        )

    def describe(self) -> ModelSpec:
        """What it takes to rebuild this model (:meth:`from_spec`), without its weights."""
        return ModelSpec(
            window=self.obs_spec.window_len,
            num_actions=self.num_actions,
            hidden_dim=self.hidden_dim,
            aux_limit=self.aux_limit,
            aux_labels=self.heads.labels,
        )

    @classmethod
    def from_spec(cls, spec: ModelSpec) -> TradingActorCritic:
        """The model ``spec`` describes (untrained weights: load a state dict)."""
        if spec.symbols:
            return PortfolioActorCritic(
                ObsSpec.for_window(spec.window),
                spec.symbols,
                num_actions=spec.num_actions,
                hidden_dim=spec.hidden_dim,
                aux_limit=spec.aux_limit,
                aux_labels=spec.aux_labels,
            )
        return cls(
            ObsSpec.for_window(spec.window),
            num_actions=spec.num_actions,
            hidden_dim=spec.hidden_dim,
            aux_limit=spec.aux_limit,
            aux_labels=spec.aux_labels,
        )

    def take_output_counts(self) -> Tensor:
        """Non-finite elements per output (``output_names``) since the previous call."""
        counts = self.output_nonfinite.clone()
        self.output_nonfinite.zero_()
        return counts

    def position_free(self, obs: Tensor) -> Tensor:
        """The part of the forward pass that does not depend on the position column of
        ``obs`` (:meth:`TradingTrunk.position_free`), to pass to :meth:`forward` for the same
        rows with any position written in."""
        return self.trunk.position_free(obs)

    def forward(self, obs: Tensor, position_free: Tensor | None = None) -> dict[str, Tensor]:
        h = self.trunk(obs, position_free)
        # The four heads read the same h: one matrix multiply over their stacked weights
        # costs less than four thin ones, and each head keeps its own parameters (and so
        # its own gradient-guard group).
        heads = [self.actor, self.critic, *(getattr(self, n) for n in self.heads.modules)]
        weight = torch.cat([head.weight for head in heads])
        bias = torch.cat([head.bias for head in heads])
        logits, *scalars = nn.functional.linear(h, weight, bias).split(
            [self.num_actions, 1, *(1 for _ in self.heads)], dim=1
        )
        raw = dict(zip(self.output_names, [logits, *(s.squeeze(-1) for s in scalars)], strict=True))
        outputs, counts = guard_outputs(raw, self._output_limits)
        self.output_nonfinite += counts
        return outputs


class PortfolioActorCritic(TradingActorCritic):
    """Actor-critic for :class:`pyppo.PortfolioEnv`: one per-symbol network shared by every
    symbol, so the parameter count does not depend on the number of symbols.

    An observation is ``N`` per-symbol observations (each a :class:`TradingEnv`
    observation, its position the symbol's slot) followed by ``N`` tradable flags. The
    trunk, the actor and the auxiliary heads run on every symbol's row: ``action_logits``
    ``(B, N, A)``, one categorical per symbol, and ``pred_<label>`` ``(B, N)``. The critic
    reads the mean of the trunk's outputs over the tradable symbols (a pooled symbol
    embedding): ``value`` ``(B,)``. A symbol that is not tradable has a fixed one-hot
    distribution on "flat" (it adds nothing to the joint log-probability or entropy and
    gets no gradient) and a prediction of 0.

    :param obs_spec: the per-symbol observation layout.
    :param symbols: the portfolio's symbols ``N``.
    """

    def __init__(
        self,
        obs_spec: ObsSpec,
        symbols: int,
        num_actions: int = 3,
        hidden_dim: int = ModelConfig.hidden_dim,
        aux_limit: float = ModelConfig.aux_limit,
        aux_labels: tuple[str, str] = DEFAULT_AUX_LABELS,
    ) -> None:
        super().__init__(obs_spec, num_actions, hidden_dim, aux_limit, aux_labels)
        self.symbols = int(symbols)
        masked = torch.full((num_actions,), -1e4)
        masked[num_actions // 2] = 0.0  # "flat": index 1 of short/flat/long, 0 of flat/long
        self.register_buffer("masked_logits", masked, persistent=False)

    def describe(self) -> ModelSpec:
        return dataclasses.replace(super().describe(), symbols=self.symbols)

    def split(self, obs: Tensor) -> tuple[Tensor, Tensor]:
        """``(B, N * D + N)`` -> per-symbol rows ``(B * N, D)`` and tradable flags ``(B, N)``.
        ``N`` is read from the width: the shared network takes any number of symbols (the
        one it was trained on is :attr:`symbols`)."""
        d = self.obs_spec.size
        n = obs.shape[-1] // (d + 1)
        return obs[:, : n * d].reshape(-1, d), obs[:, n * d :] > 0.5

    def forward(self, obs: Tensor, position_free: Tensor | None = None) -> dict[str, Tensor]:
        rows, tradable = self.split(obs)
        batch, n = tradable.shape
        h = self.trunk(rows)
        heads = [self.actor, *(getattr(self, name) for name in self.heads.modules)]
        weight = torch.cat([head.weight for head in heads])
        bias = torch.cat([head.bias for head in heads])
        logits, *preds = nn.functional.linear(h, weight, bias).split(
            [self.num_actions, *(1 for _ in self.heads)], dim=1
        )
        mask = tradable.unsqueeze(-1)
        logits = torch.where(mask, logits.view(batch, n, -1), self.masked_logits)
        flags = tradable.to(h.dtype)
        pooled = (h.view(batch, n, -1) * flags.unsqueeze(-1)).sum(1)
        pooled = pooled / flags.sum(1, keepdim=True).clamp_min(1.0)
        value = self.critic(pooled).squeeze(-1)
        preds = [torch.where(tradable, p.view(batch, n), 0.0) for p in preds]
        raw = dict(zip(self.output_names, [logits, value, *preds], strict=True))
        outputs, counts = guard_outputs(raw, self._output_limits)
        self.output_nonfinite += counts
        return outputs
