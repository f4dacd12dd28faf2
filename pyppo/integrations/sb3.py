"""pyppo's gradient guard inside Stable-Baselines3's PPO.

SB3's ``PPO.train()`` runs, for every minibatch::

    loss.backward()
    th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
    self.policy.optimizer.step()

One NaN gradient makes the clip's total norm NaN, and the clip then multiplies every gradient
by NaN: the next step writes NaN into every parameter. The guard therefore has to run between
``backward()`` and the clip, where no SB3 code can be called. :func:`guard_sb3_policy` puts it
there with gradient hooks on the policy's parameters
(:func:`pyppo.integrations.guard_after_backward`): at the end of every backward pass, after
the last ``.grad`` is written and before ``backward()`` returns to ``train()``, the fused
guard zeroes and counts the NaN/inf elements per group of parameters. SB3's clip then sees
finite gradients. No SB3 code is copied or patched::

    from pyppo.integrations.sb3 import GuardedPPO

    model = GuardedPPO("MlpPolicy", env, max_grad_norm=0.5)  # SB3 still clips
    model.learn(100_000)
    model.guard.cumulative_counts()  # {"mlp_extractor": 0, "action_net": 0, "value_net": 0}

or, on a PPO (or A2C) made elsewhere: ``guard = guard_sb3_policy(model)``.

This module imports ``stable_baselines3``; ``import pyppo`` does not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from stable_baselines3 import PPO
from torch import nn

from pyppo.guard import GradientGuard
from pyppo.integrations import guard_after_backward

__all__ = ["GuardedPPO", "guard_sb3_policy"]


def guard_sb3_policy(
    model_or_policy: Any,
    max_norm: float = math.inf,
    groups: Mapping[str, str] | None = None,
    policy: str = "zero",
) -> GradientGuard:
    """Install a :class:`pyppo.GradientGuard` that runs at the end of every backward pass
    through an SB3 policy, i.e. before SB3's ``clip_grad_norm_`` and optimizer step.

    :param model_or_policy: an SB3 algorithm (its ``.policy`` is guarded, e.g. a ``PPO``)
        or the policy module itself. When the algorithm later builds a new policy (``load``
        does), guard that one again (:class:`GuardedPPO` does it by itself).
    :param max_norm: the guard's clip; the default ``inf`` leaves the clipping to SB3's
        ``max_grad_norm``.
    :param groups: parameter-name prefixes to group names, as for :class:`GradientGuard`
        (e.g. ``{"features_extractor.aux_head.": "aux_head"}``); ``None`` groups by the
        policy's top-level children (``features_extractor``, ``mlp_extractor``,
        ``action_net``, ``value_net``; a bare ``log_std`` goes to ``"other"``).
    :param policy: ``"zero"`` or ``"skip"``, as for :class:`GradientGuard`.
    :return: the guard: read its counts with ``cumulative_counts()`` or ``log_events()``.
        The hooks stay for the policy's lifetime (use
        :func:`pyppo.integrations.guard_after_backward` directly for a removable handle).
    """
    module = getattr(model_or_policy, "policy", model_or_policy)
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"pyppo: expected an SB3 algorithm or policy module, got {type(model_or_policy)!r}"
        )
    guard = GradientGuard(module, max_norm=max_norm, policy=policy, groups=groups)
    guard_after_backward(guard, module)
    return guard


class GuardedPPO(PPO):
    """Stable-Baselines3's PPO with pyppo's gradient guard on its policy.

    Every policy that ``_setup_model`` builds (at construction and in ``load``) is guarded
    by :func:`guard_sb3_policy`, and after every ``train()`` the NaN/inf counts of that
    update are logged: ``train/nonfinite_grads/<group>`` in SB3's logger and pyppo's
    ``NaN/inf gradient detected in <group>`` warning (one host sync per update).

    :param args: positional arguments of ``stable_baselines3.PPO``.
    :param guard_max_norm: the guard's clip; ``inf`` (default) leaves clipping to SB3's
        ``max_grad_norm``.
    :param guard_groups: the guard's groups (see :func:`guard_sb3_policy`).
    :param guard_policy: ``"zero"`` or ``"skip"``, as for :class:`GradientGuard`.
    :param kwargs: keyword arguments of ``stable_baselines3.PPO``.
    """

    guard: GradientGuard

    def __init__(
        self,
        *args: Any,
        guard_max_norm: float = math.inf,
        guard_groups: Mapping[str, str] | None = None,
        guard_policy: str = "zero",
        **kwargs: Any,
    ) -> None:
        # Set before PPO.__init__, which calls _setup_model.
        self.guard_max_norm = guard_max_norm
        self.guard_groups = dict(guard_groups) if guard_groups is not None else None
        self.guard_policy = guard_policy
        super().__init__(*args, **kwargs)

    def _setup_model(self) -> None:
        """Build the model as PPO does, then guard the new policy."""
        super()._setup_model()
        self.guard = guard_sb3_policy(
            self.policy,
            max_norm=self.guard_max_norm,
            groups=self.guard_groups,
            policy=self.guard_policy,
        )

    def train(self) -> None:
        """One PPO update (SB3's ``train()``), then the update's NaN/inf counts logged."""
        super().train()
        counts = self.guard.log_events()
        for group in self.guard.groups:
            self.logger.record(f"train/nonfinite_grads/{group}", counts.get(group, 0))

    def _excluded_save_params(self) -> list[str]:
        """SB3's exclusions plus the guard (rebuilt by ``_setup_model`` on load)."""
        return [*super()._excluded_save_params(), "guard"]
