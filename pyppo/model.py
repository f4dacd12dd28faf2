"""TradingActorCritic: the PPO actor-critic with two auxiliary return heads.

    obs ──► trunk ─┬─► actor    ──► action_logits (B, num_actions)
                   ├─► critic   ──► value         (B,)
                   ├─► aux_1h   ──► pred_1h       (B,)  clamped to ±aux_limit (±100 %)
                   └─► aux_24h  ──► pred_24h      (B,)

The trunk holds both input branches (1-D convolutions over the normalized return window,
an MLP over the indicator/time/position features) and the shared layers, so the model's
top-level children are exactly the guard groups: trunk, actor, critic, aux_1h, aux_24h.

Every output passes :func:`guard_outputs`: one fused count of non-finite elements over all
outputs, then the guarded clamp (NaN/inf -> 0 with a zero gradient there; the auxiliary
predictions are also clamped to ±aux_limit). The counts add up on the device in
``output_nonfinite`` until the trainer reads them, once per update.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from pyppo import ops
from pyppo.features import ObsSpec

OUTPUT_NAMES = ("action_logits", "value", "pred_1h", "pred_24h")


def guard_outputs(
    raw: dict[str, Tensor], aux_limit: float = 1.0
) -> tuple[dict[str, Tensor], Tensor]:
    """Count non-finite elements of each output in one fused call, then repair them.

    Returns ``(outputs, counts)``: the outputs through :func:`pyppo.ops.guarded_clamp`
    (``pred_*`` clamped to ``±aux_limit``, the others only NaN/inf -> 0) and the int64
    counts in the order of ``raw``'s keys. No host synchronisation. Outputs that share a
    limit are guarded in one call (all outputs share the batch dimension).
    """
    names = list(raw)
    counts = ops.count_nonfinite([raw[name] for name in names])
    guarded: dict[str, Tensor] = {}
    for limit in (math.inf, aux_limit):
        group = [n for n in names if (limit == aux_limit) == n.startswith("pred_")]
        if not group:
            continue
        flat = [raw[n].reshape(raw[n].shape[0], -1) for n in group]
        clean = ops.guarded_clamp(torch.cat(flat, dim=1), limit)[0]
        for n, part in zip(group, clean.split([f.shape[1] for f in flat], dim=1), strict=True):
            guarded[n] = part.reshape(raw[n].shape)
    return {n: guarded[n] for n in names}, counts


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
        # forms the weight gradient as x^T @ grad, which MKL computes ~6x faster than
        # grad^T @ x when a patch has only a few inputs (2 in the first layer).
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
            _layer(nn.Linear(hidden_dim, hidden_dim)), nn.Tanh(),
            _layer(nn.Linear(hidden_dim, hidden_dim)), nn.Tanh(),
        )

    def forward(self, obs: Tensor) -> Tensor:
        window = obs[:, self.window]
        padded = window
        if self.padded_len > self.window_len:  # on the oldest side
            padded = nn.functional.pad(window, (self.padded_len - self.window_len, 0))
        price = self.price(padded.unsqueeze(-1))
        features = torch.cat([obs[:, self.features], window[:, -self.recent :]], dim=1)
        return self.shared(torch.cat([price, self.feature_mlp(features)], dim=1))


class TradingActorCritic(nn.Module):
    """Actor-critic for :class:`pyppo.TradingEnv` observations.

    Args:
        obs_spec: the env's :class:`pyppo.ObsSpec` (``env.obs_spec``).
        num_actions: 3 (short, flat, long) or 2 (flat, long).
        hidden_dim: width of the trunk.
        aux_limit: the auxiliary predictions are clamped to ``±aux_limit`` (1.0 = ±100 %).

    ``forward(obs)`` returns ``{"action_logits", "value", "pred_1h", "pred_24h"}``; the
    predictions are produced whether or not the trainer uses auxiliary losses.
    """

    def __init__(
        self,
        obs_spec: ObsSpec,
        num_actions: int = 3,
        hidden_dim: int = 256,
        aux_limit: float = 1.0,
    ) -> None:
        super().__init__()
        self.obs_spec = obs_spec
        self.num_actions = num_actions
        self.hidden_dim = hidden_dim
        self.aux_limit = aux_limit
        self.trunk = TradingTrunk(obs_spec, hidden_dim)
        self.actor = _layer(nn.Linear(hidden_dim, num_actions), std=0.01)
        self.critic = _layer(nn.Linear(hidden_dim, 1), std=1.0)
        self.aux_1h = _layer(nn.Linear(hidden_dim, 1), std=0.01)
        self.aux_24h = _layer(nn.Linear(hidden_dim, 1), std=0.01)
        # Non-finite elements seen per output since the last reset (device tensor).
        self.register_buffer(
            "output_nonfinite", torch.zeros(len(OUTPUT_NAMES), dtype=torch.int64), persistent=False
        )

    def forward(self, obs: Tensor) -> dict[str, Tensor]:
        h = self.trunk(obs)
        # The four heads read the same h: one matrix multiply over their stacked weights
        # costs less than four thin ones, and each head keeps its own parameters (and so
        # its own gradient-guard group).
        heads = (self.actor, self.critic, self.aux_1h, self.aux_24h)
        weight = torch.cat([head.weight for head in heads])
        bias = torch.cat([head.bias for head in heads])
        logits, value, pred_1h, pred_24h = nn.functional.linear(h, weight, bias).split(
            [self.num_actions, 1, 1, 1], dim=1
        )
        raw = {
            "action_logits": logits,
            "value": value.squeeze(-1),
            "pred_1h": pred_1h.squeeze(-1),
            "pred_24h": pred_24h.squeeze(-1),
        }
        outputs, counts = guard_outputs(raw, self.aux_limit)
        self.output_nonfinite += counts
        return outputs
