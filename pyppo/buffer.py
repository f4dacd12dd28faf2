"""RolloutBuffer: one PPO rollout in preallocated tensors on the training device.

A thin Python face over the C++ class ``pyppo._C.RolloutBuffer``: the C++ side checks and
writes each step, sanitizes rewards and auxiliary targets in the fused kernel, runs GAE into
its own storage and cuts minibatches with one ``index_select`` per field. This module adds
the Python-friendly constructor, the minibatch iterator and the docs.

Typical use, once per PPO update::

    buffer = pyppo.RolloutBuffer(num_steps=2048, num_envs=64, obs_shape=(64,), device="cuda")
    for _ in range(buffer.num_steps):
        ...
        buffer.add(obs, actions, logprobs, rewards, values, episode_starts, aux_targets)
    buffer.compute_returns_and_advantage(last_values, last_episode_starts, 0.99, 0.95)
    for epoch in range(epochs):
        for batch in buffer.minibatches(256, generator):
            ...
    counts = buffer.sanitize_counts  # device tensors; reading them is the only sync
    buffer.reset()
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import torch
from torch import Tensor

from pyppo._extension import _C


class RolloutBatch(NamedTuple):
    """One minibatch, every field contiguous with the batch as its first dimension."""

    obs: Tensor  # (B, *obs_shape)
    actions: Tensor  # (B, *action_shape)
    old_logprobs: Tensor  # (B,)
    advantages: Tensor  # (B,)
    returns: Tensor  # (B,)
    values: Tensor  # (B,)
    aux_targets: Tensor  # (B, num_aux)


class RolloutBuffer:
    """Stores ``num_steps`` x ``num_envs`` transitions of one rollout.

    Args:
        num_steps: steps per rollout (T).
        num_envs: parallel environments (N).
        obs_shape: shape of one observation, e.g. ``(64,)``.
        device: where every tensor of the buffer lives; inputs must already be there.
        num_aux: auxiliary regression targets per transition (pyppo: 1 h and 24 h returns).
        dtype: float32 or float64, for observations, log-probs, rewards, values, starts,
            auxiliary targets, advantages and returns.
        aux_limit: auxiliary targets are sanitized on insert: NaN/inf -> 0, values outside
            ``[-aux_limit, aux_limit]`` clamped (1.0 = +-100 %).
        reward_limit: the same for rewards; the default ``inf`` only zeroes NaN/inf.
        action_shape: shape of one action; ``()`` for a discrete action per env.
        action_dtype: dtype of actions (``torch.int64`` for discrete actions).
        sanitize: ``False`` stores rewards and auxiliary targets raw, NaN and all (only to
            demonstrate what the guards prevent).

    Every input to :meth:`add` is checked (shape, dtype, device) and a mismatch raises
    ``ValueError`` / ``TypeError`` / ``RuntimeError`` naming the field, the expected and
    the actual value; a rejected call writes nothing.
    """

    def __init__(
        self,
        num_steps: int,
        num_envs: int,
        obs_shape: Sequence[int] | int,
        device: torch.device | str = "cpu",
        num_aux: int = 2,
        dtype: torch.dtype = torch.float32,
        aux_limit: float = 1.0,
        reward_limit: float = math.inf,
        action_shape: Sequence[int] = (),
        action_dtype: torch.dtype = torch.int64,
        sanitize: bool = True,
    ) -> None:
        if isinstance(obs_shape, int):
            obs_shape = (obs_shape,)
        self._impl = _C.RolloutBuffer(
            int(num_steps),
            int(num_envs),
            [int(d) for d in obs_shape],
            torch.device(device),
            int(num_aux),
            dtype,
            float(aux_limit),
            float(reward_limit),
            [int(d) for d in action_shape],
            action_dtype,
            bool(sanitize),
        )

    # --- filling ------------------------------------------------------------------------

    def add(
        self,
        obs: Tensor,
        actions: Tensor,
        logprobs: Tensor,
        rewards: Tensor,
        values: Tensor,
        episode_starts: Tensor,
        aux_targets: Tensor | None = None,
    ) -> None:
        """Write one step for all envs at position :attr:`pos`, then advance it.

        Shapes (N = ``num_envs``): ``obs`` ``(N, *obs_shape)``; ``actions``
        ``(N, *action_shape)``; ``logprobs``, ``rewards``, ``values``, ``episode_starts``
        ``(N,)`` or ``(N, 1)``; ``aux_targets`` ``(N, num_aux)`` or ``None`` (stored as 0).
        ``episode_starts`` may be the buffer dtype or bool / uint8 (nonzero = the observation
        begins an episode). Rewards and auxiliary targets are sanitized on the way in; the
        counts accumulate in :attr:`sanitize_counts`. Raises ``RuntimeError`` when the buffer
        is already full.
        """
        self._impl.add(obs, actions, logprobs, rewards, values, episode_starts, aux_targets)

    def compute_returns_and_advantage(
        self,
        last_values: Tensor,
        last_episode_starts: Tensor,
        gamma: float | Sequence[float] = 0.99,
        gae_lambda: float | Sequence[float] = 0.95,
    ) -> None:
        """Run GAE (:func:`pyppo.ops.gae`) over the full buffer into :attr:`advantages` and
        :attr:`returns`.

        ``last_values`` ``(N,)`` or ``(N, 1)``: the critic's value of the observation after
        the last step; ``last_episode_starts``: whether that observation begins a new episode
        (then nothing is bootstrapped). Raises ``RuntimeError`` before the buffer is full.

        A population's buffer (envs member by member) may take one ``gamma`` and one
        ``gae_lambda`` per member (two sequences of M values): members whose settings differ
        then run one GAE call each on their block of envs; equal settings take one call.
        """
        gammas = _per_member(gamma)
        lambdas = _per_member(gae_lambda)
        if len(set(gammas)) == 1 and len(set(lambdas)) == 1:
            self._impl.compute_returns_and_advantage(
                last_values, last_episode_starts, gammas[0], lambdas[0]
            )
            return
        members = max(len(gammas), len(lambdas))
        if len(gammas) == 1:
            gammas *= members
        if len(lambdas) == 1:
            lambdas *= members
        self._impl.compute_returns_and_advantage_by_member(
            last_values, last_episode_starts, gammas, lambdas
        )

    def reset(self) -> None:
        """Start a new rollout: :attr:`pos` 0, not full, sanitize counts zeroed in place."""
        self._impl.reset()

    # --- reading ------------------------------------------------------------------------

    def minibatches(
        self,
        batch_size: int,
        generator: torch.Generator | Sequence[torch.Generator] | None = None,
    ) -> Iterator[RolloutBatch]:
        """Yield every transition exactly once, in a random order, as :class:`RolloutBatch`
        es of ``batch_size`` rows (the last one smaller when ``batch_size`` does not divide
        ``num_steps * num_envs``).

        The order comes from ``torch.randperm`` with ``generator`` (the default generator of
        the buffer's device when ``None``), so a seeded generator gives a reproducible order.
        A CPU generator with a CUDA buffer works too: the permutation is copied over once.

        A population's buffer (its envs member by member: member k's are the k-th block of
        ``num_envs // M``) takes one generator per member: each member's transitions are
        ordered by its own generator, exactly as a buffer of its envs alone would order
        them, and each batch holds ``batch_size`` rows of every member, member by member
        (``M * batch_size`` rows, member k's at ``[k * batch_size, (k + 1) * batch_size)``).
        Raises ``RuntimeError`` before :meth:`compute_returns_and_advantage`.
        """
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(
                f"pyppo.RolloutBuffer.minibatches: batch_size must be a positive "
                f"int, got {batch_size!r}"
            )
        if not self._impl.computed:
            # Same message as the C++ check, raised before the permutation is drawn.
            raise RuntimeError(
                "pyppo.RolloutBuffer.minibatches: call compute_returns_and_advantage() first "
                "(after the buffer is full)"
            )
        generators = list(generator) if isinstance(generator, Sequence) else [generator]
        members = len(generators)
        if self.num_envs % members:
            raise ValueError(
                f"pyppo.RolloutBuffer.minibatches: {self.num_envs} envs do not split into "
                f"{members} members"
            )
        per_member = self.num_envs // members
        rows = self.num_steps * per_member
        orders = []
        for k, gen in enumerate(generators):
            perm_device = gen.device if gen is not None else self.device
            local = torch.randperm(rows, generator=gen, device=perm_device).to(self.device)
            # Member-local row t * per_member + n is buffer row t * num_envs + k * per_member + n.
            if members > 1:
                local = local // per_member * self.num_envs + k * per_member + local % per_member
            orders.append(local)
        gather = self._impl.gather
        for start in range(0, rows, batch_size):
            if members == 1:
                yield RolloutBatch(*gather(orders[0][start : start + batch_size]))
            else:
                yield RolloutBatch(
                    *gather(torch.cat([o[start : start + batch_size] for o in orders]))
                )

    @property
    def sanitize_counts(self) -> dict[str, Tensor]:
        """Running ``[nonfinite, clamped]`` int64 counts on the buffer's device, for
        ``"rewards"`` and ``"aux_targets"``, since the last :meth:`reset`."""
        return {"rewards": self._impl.reward_counts, "aux_targets": self._impl.aux_counts}

    @property
    def pos(self) -> int:
        """Steps written since the last :meth:`reset` (the next :meth:`add` writes here)."""
        return self._impl.pos

    @property
    def full(self) -> bool:
        """True once all ``num_steps`` steps are written."""
        return self._impl.full

    @property
    def num_steps(self) -> int:
        return self._impl.num_steps

    @property
    def num_envs(self) -> int:
        return self._impl.num_envs

    @property
    def num_aux(self) -> int:
        return self._impl.num_aux

    @property
    def device(self) -> torch.device:
        return self._impl.device

    @property
    def dtype(self) -> torch.dtype:
        return self._impl.dtype

    @property
    def obs_shape(self) -> tuple[int, ...]:
        return tuple(self._impl.obs_shape)

    # The storage, (T, N, ...) tensors shared with the buffer (views, not copies).

    @property
    def obs(self) -> Tensor:
        return self._impl.obs

    @property
    def actions(self) -> Tensor:
        return self._impl.actions

    @property
    def logprobs(self) -> Tensor:
        return self._impl.logprobs

    @property
    def rewards(self) -> Tensor:
        """Sanitized rewards."""
        return self._impl.rewards

    @property
    def values(self) -> Tensor:
        return self._impl.values

    @property
    def episode_starts(self) -> Tensor:
        """Episode starts in the buffer dtype (bool / uint8 inputs stored as 0 / 1)."""
        return self._impl.episode_starts

    @property
    def aux_targets(self) -> Tensor:
        """Sanitized auxiliary targets, (T, N, num_aux)."""
        return self._impl.aux_targets

    @property
    def advantages(self) -> Tensor:
        return self._impl.advantages

    @property
    def returns(self) -> Tensor:
        return self._impl.returns

    def __repr__(self) -> str:
        return (
            f"RolloutBuffer(num_steps={self.num_steps}, num_envs={self.num_envs}, "
            f"obs_shape={self.obs_shape}, device={self.device}, dtype={self.dtype}, "
            f"pos={self.pos}, full={self.full})"
        )


def _per_member(value: float | Sequence[float]) -> list[float]:
    """A setting as a list of floats: one value, or one per member."""
    if isinstance(value, (int, float)):
        return [float(value)]
    return [float(v) for v in value]
