"""A population of :class:`~pyppo.TradingActorCritic` models as one module: every parameter
stacked along a leading member dimension, every layer one batched matrix multiply.

Member ``k`` of ``PopulationActorCritic.from_members(models)`` is ``models[k]``: the same
parameter names (``trunk.price.0.weight``...), each ``[M, ...]`` instead of ``[...]``, so
:meth:`PopulationActorCritic.member_state_dict` is a plain model's state dict and a
population's checkpoint holds its members. The forward pass takes ``(M, B, obs)`` (member k's
batch in row k) and returns outputs ``(M, B, ...)``; member k's equal ``models[k](obs[k])``
up to the rounding of batched against plain matrix multiplies (tests hold them within
1e-5). A population trains with an ordinary ``.backward()``: each member's parameters only
see its own rows, so each gets its own gradient.

Why batched layers rather than ``torch.func.vmap`` over a stacked ``functional_call``: the
forward pass here is a dozen ``baddbmm`` calls written out once, the guarded clamp (a C++
autograd function) and the fused counts need no vmap rules, and the per-member output counts
come from two reductions per output (see docs/design.md, "Populations").
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import torch
from torch import Tensor, nn

from pyppo.guard import repair_outputs
from pyppo.model import ModelSpec, PatchConv1d, TradingActorCritic


def _linear(x: Tensor, layer: nn.Linear) -> Tensor:
    """A stacked ``nn.Linear`` (weight ``[M, out, in]``, bias ``[M, out]``) on ``[M, B, in]``."""
    return torch.baddbmm(layer.bias.unsqueeze(1), x, layer.weight.transpose(1, 2))


def _patch_conv(x: Tensor, conv: PatchConv1d) -> Tensor:
    """A stacked :class:`~pyppo.model.PatchConv1d` (weight ``[M, in * k, out]``) on
    ``[M, B, L, C]``."""
    members, batch, length, channels = x.shape
    patches = x.reshape(members, batch * (length // conv.kernel), conv.kernel * channels)
    out = torch.baddbmm(conv.bias.unsqueeze(1), patches, conv.weight)
    return out.view(members, batch, length // conv.kernel, -1)


class PopulationActorCritic(TradingActorCritic):
    """``members`` :class:`~pyppo.TradingActorCritic` models with stacked parameters.

    Build it with :meth:`from_members` (each member initialised as its own model, e.g. from
    its own seed). The constructor takes :class:`TradingActorCritic`'s arguments plus
    ``members`` and initialises every member with copies of one model.

    :param members: how many models.
    """

    def __init__(self, *args, members: int, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        if members < 1:
            raise ValueError(f"members={members}: a population has at least one member")
        self.members = int(members)
        for module in self.modules():
            for name, param in list(module.named_parameters(recurse=False)):
                stacked = param.detach().unsqueeze(0).repeat(members, *[1] * param.dim())
                setattr(module, name, nn.Parameter(stacked.contiguous()))
        self.register_buffer(
            "output_nonfinite",
            torch.zeros(members, len(self.output_names), dtype=torch.int64),
            persistent=False,
        )

    @classmethod
    def from_members(cls, models: Sequence[TradingActorCritic]) -> PopulationActorCritic:
        """The population whose member k is ``models[k]`` (their weights are copied)."""
        spec = models[0].describe()
        if any(m.describe() != spec for m in models):
            raise ValueError("every member must have the same shape (ModelSpec)")
        population = cls.from_spec(spec, members=len(models))
        states = [m.state_dict() for m in models]
        with torch.no_grad():
            for name, param in population.named_parameters():
                param.copy_(torch.stack([state[name] for state in states]))
        return population.to(next(models[0].parameters()).device)

    @classmethod
    def from_spec(cls, spec: ModelSpec, members: int | None = None) -> PopulationActorCritic:
        """An untrained population of ``members`` (default ``spec.members``) models."""
        single = TradingActorCritic.from_spec(spec)
        return cls(
            single.obs_spec,
            num_actions=spec.num_actions,
            hidden_dim=spec.hidden_dim,
            aux_limit=spec.aux_limit,
            aux_labels=spec.aux_labels,
            members=members or spec.members,
        )

    def describe(self) -> ModelSpec:
        return dataclasses.replace(super().describe(), members=self.members)

    def member_state_dict(self, member: int) -> dict[str, Tensor]:
        """Member ``member``'s weights as a :class:`~pyppo.TradingActorCritic` state dict."""
        return {name: value[member].clone() for name, value in self.state_dict().items()}

    def member(self, member: int) -> TradingActorCritic:
        """Member ``member`` as a plain model (a copy, in eval mode, on the same device)."""
        spec = super().describe()
        model = TradingActorCritic.from_spec(spec)
        model.load_state_dict(self.member_state_dict(member))
        return model.to(next(self.parameters()).device).eval()

    def position_free(self, obs: Tensor) -> Tensor:
        raise NotImplementedError(
            "a population's backtests run member by member: use population.member(k)"
        )

    def forward(self, obs: Tensor, position_free: Tensor | None = None) -> dict[str, Tensor]:
        """Outputs ``(M, B, ...)`` for observations ``(M, B, obs)``; member k reads row k."""
        if position_free is not None or obs.dim() != 3 or obs.shape[0] != self.members:
            raise ValueError(
                f"a population of {self.members} takes observations ({self.members}, batch, "
                f"features), got {tuple(obs.shape)}"
            )
        t = self.trunk
        window = obs[..., t.window]
        features = torch.cat([obs[..., t.features], window[..., -t.recent :]], dim=-1)
        features = torch.relu(_linear(features, t.feature_mlp[0]))
        if t.padded_len > t.window_len:  # on the oldest side, as the plain trunk
            window = nn.functional.pad(window, (t.padded_len - t.window_len, 0))
        price = torch.relu(_patch_conv(window.unsqueeze(-1), t.price[0]))
        price = torch.relu(_patch_conv(price, t.price[2]))
        price = torch.relu(_linear(price.flatten(2), t.price[5]))
        h = torch.tanh(_linear(torch.cat([price, features], dim=-1), t.shared[0]))
        h = torch.tanh(_linear(h, t.shared[2]))
        heads = [self.actor, self.critic, *(getattr(self, n) for n in self.heads.modules)]
        weight = torch.cat([head.weight for head in heads], dim=1)
        bias = torch.cat([head.bias for head in heads], dim=1)
        out = torch.baddbmm(bias.unsqueeze(1), h, weight.transpose(1, 2))
        logits, *scalars = out.split([self.num_actions, 1, *(1 for _ in self.heads)], dim=-1)
        raw = dict(zip(self.output_names, [logits, *(s.squeeze(-1) for s in scalars)], strict=True))
        # Counted per member (two reductions per output), then repaired in one pass each.
        self.output_nonfinite += torch.stack(
            [(~torch.isfinite(value)).flatten(1).sum(1) for value in raw.values()], dim=1
        )
        return repair_outputs(raw, self._output_limits)


class EnsembleActorCritic(nn.Module):
    """A population's members acting as one agent: at each bar the mean of their action
    probabilities (the greedy action is that mean's argmax), and the mean of their values and
    return predictions. What a trader would deploy of a population; it takes plain
    ``(B, obs)`` observations, like one :class:`~pyppo.TradingActorCritic`.

    :param population: the members.
    """

    def __init__(self, population: PopulationActorCritic) -> None:
        super().__init__()
        self.population = population
        self.output_names = population.output_names

    def forward(self, obs: Tensor) -> dict[str, Tensor]:
        members = self.population.members
        out = self.population(obs.unsqueeze(0).expand(members, *obs.shape))
        probs = torch.softmax(out["action_logits"], dim=-1).mean(0)
        mean = {name: value.mean(0) for name, value in out.items() if name != "action_logits"}
        return {"action_logits": probs.clamp_min(1e-30).log(), **mean}
