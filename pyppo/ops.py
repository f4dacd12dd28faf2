"""Typed Python entry points to pyppo's kernels (``torch.ops.pyppo.*``).

Each op dispatches on the device of its inputs to the CPU or CUDA kernel, has a fake
(meta) implementation so that it traces under ``torch.compile``, and has a pure-torch
twin in :mod:`pyppo.reference` that states exactly what it computes.
"""

from __future__ import annotations

import torch
from torch import Tensor

import pyppo._extension  # noqa: F401  (loads the kernels and registers the op schemas)

_FLOAT_DTYPES = (torch.float32, torch.float64, torch.float16, torch.bfloat16)


def sanitize_(x: Tensor, limit: float = 1.0) -> Tensor:
    """Sanitize ``x`` in place: NaN/+inf/-inf become 0, finite values are clamped to
    ``[-limit, limit]`` (``limit`` rounded to ``x``'s dtype).

    Returns an int64 tensor ``[nonfinite, clamped]`` on ``x``'s device; reading it is the
    only host synchronisation. ``limit=float("inf")`` only zeroes non-finite values.
    Works for float32/64, float16 and bfloat16 of any shape, contiguous or not.
    """
    return torch.ops.pyppo.sanitize_.default(x, float(limit))


def sanitize(x: Tensor, limit: float = 1.0) -> tuple[Tensor, Tensor]:
    """Out-of-place :func:`sanitize_`: returns ``(y, counts)`` and leaves ``x`` untouched.
    ``y`` is contiguous."""
    return torch.ops.pyppo.sanitize.default(x, float(limit))


def _check_float(x: Tensor, name: str) -> None:
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(
            f"pyppo: {name} must be a float32, float64, float16 or bfloat16 tensor, got {x.dtype}"
        )


@torch.library.register_fake("pyppo::sanitize_")
def _sanitize_inplace_fake(x: Tensor, limit: float) -> Tensor:
    _check_float(x, "x")
    return x.new_empty(2, dtype=torch.int64)


@torch.library.register_fake("pyppo::sanitize")
def _sanitize_fake(x: Tensor, limit: float) -> tuple[Tensor, Tensor]:
    _check_float(x, "x")
    return x.new_empty(x.shape), x.new_empty(2, dtype=torch.int64)


def gae(
    rewards: Tensor,
    values: Tensor,
    episode_starts: Tensor,
    last_values: Tensor,
    last_episode_starts: Tensor,
    gamma: float = 0.99,
    gae_lambda: float = 0.95,
) -> tuple[Tensor, Tensor]:
    """Generalized advantage estimation over a ``(T, N)`` rollout; returns
    ``(advantages, returns)``, both ``(T, N)`` and contiguous.

    The Stable-Baselines3 / CleanRL convention (see :func:`pyppo.reference.gae`):
    ``episode_starts[t, n]`` marks that observation ``t`` of env ``n`` begins an episode;
    ``last_values`` and ``last_episode_starts`` (shape ``(N,)``) bootstrap the step after
    ``T - 1``. ``rewards``, ``values`` and ``last_values`` are all float32 or all float64
    (the math runs in that dtype); the two start tensors may be that dtype (used as numbers,
    ``next_nonterminal = 1 - start``) or bool / uint8 (nonzero = a start). ``gamma`` and
    ``gae_lambda`` must lie in ``[0, 1]``. All tensors on one device.
    """
    return torch.ops.pyppo.gae.default(
        rewards,
        values,
        episode_starts,
        last_values,
        last_episode_starts,
        float(gamma),
        float(gae_lambda),
    )


@torch.library.register_fake("pyppo::gae")
def _gae_fake(
    rewards: Tensor,
    values: Tensor,
    episode_starts: Tensor,
    last_values: Tensor,
    last_episode_starts: Tensor,
    gamma: float,
    gae_lambda: float,
) -> tuple[Tensor, Tensor]:
    if rewards.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"pyppo.gae: rewards must be float32 or float64, got {rewards.dtype}")
    if rewards.dim() != 2:
        raise ValueError(f"pyppo.gae: rewards must be a (T, N) tensor, got shape {rewards.shape}")
    return rewards.new_empty(rewards.shape), rewards.new_empty(rewards.shape)
