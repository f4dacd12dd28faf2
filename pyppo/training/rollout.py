"""The rollout: the policy steps the environment and the transitions fill the buffer.

:class:`Rollout` owns what lives between two rollouts (the current observations, auxiliary
targets and episode starts, the running episode returns) so that a resumed run continues
them exactly (:meth:`Rollout.state_dict`). It speaks both env dialects: pyppo's
:class:`~pyppo.TradingEnv` (tensors on the device in and out) and gymnasium vector envs (numpy
in and out, ``final_obs`` as an object array).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from pyppo.buffer import RolloutBuffer
from pyppo.loss import log_prob

# policy(obs) -> (outputs with "action_logits" and "value", non-finite output counts or None)
Policy = Callable[[Tensor], tuple[dict[str, Tensor], Tensor | None]]


@contextlib.contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """Run torch's CPU ops on one thread inside the block (restored after). The rollout's ops
    see one row per env (32 x 74 by default): too little to split across threads, whose
    fork and join cost more than they save (benchmarks/RESULTS.md, "Training")."""
    threads = torch.get_num_threads()
    if device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def sample_actions(logits: Tensor, generators: Sequence[torch.Generator]) -> Tensor:
    """Gumbel-max sampling from a categorical: no host sync, reproducible per generator.
    With several generators (a population's members), the rows of ``logits`` are split into
    that many equal blocks, block k drawn from generator k (what a run of member k alone
    would draw)."""
    shape, options = logits.shape, dict(device=logits.device, dtype=logits.dtype)
    if len(generators) == 1:
        u = torch.rand(shape, generator=generators[0], **options)
    else:
        block = (shape[0] // len(generators), *shape[1:])
        u = torch.cat([torch.rand(block, generator=g, **options) for g in generators])
    # logits + Gumbel noise, -log(-log(u)), in place: this runs at every rollout step.
    return logits.sub(u.clamp_(1e-20, 1.0).log_().neg_().log_()).argmax(-1)


class Rollout:
    """Collects rollouts of ``env`` into ``buffer``.

    :param env: the vector env (``num_envs`` envs; a population's env has its members' envs
        one block after the other).
    :param buffer: the :class:`~pyppo.RolloutBuffer` to fill.
    :param seeds: the env's ``reset`` seed and the action sampler's seed: one for a plain
        run, one per member for a population.
    :param want_aux: warn once if the env gives no ``info["aux_targets"]``.
    """

    def __init__(
        self, env: Any, buffer: RolloutBuffer, *, seeds: Sequence[int], want_aux: bool
    ) -> None:
        self.env = env
        self.buffer = buffer
        self.device = buffer.device
        self.num_envs = buffer.num_envs
        self.seeds = list(seeds)
        self.members = len(self.seeds)
        self.want_aux = want_aux
        # A portfolio env: one action per symbol, a joint log-probability per env.
        self.joint_actions = buffer.actions.dim() > 2
        self.action_generators = [
            torch.Generator(device=self.device).manual_seed(seed) for seed in self.seeds
        ]
        self.obs: Tensor | None = None
        self.aux: Tensor | None = None
        self.starts: Tensor | None = None
        self.aux_available: bool | None = None  # known after the first reset
        self.env_takes_tensors = True
        self.episode_return = torch.zeros(self.num_envs, device=self.device)
        # Per member, the mean return of its latest finished episodes (no sync per step).
        self.last_episode_return = torch.full((self.members,), float("nan"), device=self.device)

    @torch.inference_mode()
    def collect(
        self,
        policy: Policy,
        gamma: Sequence[float],
        gae_lambda: Sequence[float],
        output_counts: Tensor,
    ) -> None:
        """Fill the buffer with ``buffer.num_steps`` steps of every env, then run GAE with
        each member's ``gamma`` and ``gae_lambda`` (one value per member); add the policy's
        non-finite output counts to ``output_counts``."""
        with one_cpu_thread(self.device):
            self._collect(policy, gamma, gae_lambda, output_counts)

    def _env_gamma(self, gamma: Sequence[float]) -> float | Tensor:
        """The discount of each env's next step: one number, or ``(N,)`` when members differ."""
        if len(set(gamma)) == 1:
            return gamma[0]
        per_member = torch.tensor(gamma, dtype=torch.float32, device=self.device)
        return per_member.repeat_interleave(self.num_envs // self.members)

    def _collect(
        self,
        policy: Policy,
        gamma: Sequence[float],
        gae_lambda: Sequence[float],
        output_counts: Tensor,
    ) -> None:
        env_gamma = self._env_gamma(gamma)
        self.buffer.reset()
        if self.obs is None:
            self._reset_env()
        for _ in range(self.buffer.num_steps):
            out, bad = policy(self.obs)
            if bad is not None:
                output_counts += bad
            actions = sample_actions(out["action_logits"], self.action_generators)
            logprobs = log_prob(out["action_logits"], actions, self.joint_actions)
            env_actions = actions if self.env_takes_tensors else actions.cpu().numpy()
            obs, reward, terminated, truncated, info = self.env.step(env_actions)
            reward = self._to_tensor(reward)
            terminated = self._to_tensor(terminated, torch.bool)
            truncated = self._to_tensor(truncated, torch.bool)
            done = terminated | truncated
            self._track_episodes(reward, done, info)
            if "final_obs" in info:  # bootstrap truncated episodes (docs/design.md, gae)
                final_value = policy(self._final_obs(info))[0]["value"].reshape(-1)
                bootstrap = truncated & ~terminated
                reward = reward + env_gamma * torch.where(bootstrap, final_value, 0.0)
            self.buffer.add(
                self.obs, actions, logprobs, reward, out["value"].reshape(-1), self.starts, self.aux
            )
            self.obs = self._to_tensor(obs)
            self.aux = self._aux_from(info)
            self.starts = done.to(torch.float32)
        last_values = policy(self.obs)[0]["value"].reshape(-1)
        self.buffer.compute_returns_and_advantage(last_values, self.starts, gamma, gae_lambda)

    def _to_tensor(self, x: Any, dtype: torch.dtype = torch.float32) -> Tensor:
        return torch.as_tensor(
            np.asarray(x) if not isinstance(x, Tensor) else x, dtype=dtype, device=self.device
        )

    def _aux_from(self, info: dict) -> Tensor:
        if "aux_targets" in info:
            return self._to_tensor(info["aux_targets"])
        return torch.zeros(self.num_envs, self.buffer.num_aux, device=self.device)

    def _reset_env(self) -> None:
        obs, info = self.env.reset(seed=self.seeds[0] if self.members == 1 else self.seeds)
        if self.aux_available is None:
            self.aux_available = "aux_targets" in info
            if self.want_aux and not self.aux_available:
                warnings.warn(
                    "the environment gives no info['aux_targets']: auxiliary losses are off",
                    stacklevel=7,  # the caller of train()
                )
        self.env_takes_tensors = isinstance(obs, Tensor)
        self.obs = self._to_tensor(obs)
        self.aux = self._aux_from(info)
        self.starts = torch.ones(self.num_envs, device=self.device)

    def _final_obs(self, info: dict) -> Tensor:
        final = info["final_obs"]
        if isinstance(final, Tensor):
            return final.to(self.device, torch.float32)
        # gymnasium: an object array with None where the env did not finish.
        rows = [
            np.zeros_like(np.asarray(self.obs[0].cpu())) if o is None else np.asarray(o)
            for o in final
        ]
        return self._to_tensor(np.stack(rows))

    def _track_episodes(self, reward: Tensor, done: Tensor, info: dict) -> None:
        if "episode_return" in info:  # TradingEnv adds up its episodes itself
            self.last_episode_return = info["episode_return"].float().view(self.members, -1).mean(1)
            return
        self.episode_return += reward
        finished = done.float()
        count = finished.view(self.members, -1).sum(1)
        total = (self.episode_return * finished).view(self.members, -1).sum(1)
        mean = total / count.clamp_min(1)
        # where, not an if on count: no host sync per step.
        self.last_episode_return = torch.where(count > 0, mean, self.last_episode_return)
        self.episode_return *= 1 - finished

    def state_dict(self) -> dict[str, Any]:
        return {
            "obs": self.obs,
            "aux": self.aux,
            "starts": self.starts,
            "aux_available": self.aux_available,
            "env_takes_tensors": self.env_takes_tensors,
            "episode_return": self.episode_return,
            "last_episode_return": self.last_episode_return,
            "action_generators": [g.get_state() for g in self.action_generators],
        }

    def load_state_dict(self, state: dict[str, Any], *, env_restored: bool) -> None:
        """Restore :meth:`state_dict`. Without ``env_restored`` (an env that cannot save its
        state) the next rollout starts fresh episodes."""
        to_device = lambda t: None if t is None else t.to(self.device)  # noqa: E731
        self.obs = to_device(state["obs"]) if env_restored else None
        self.aux, self.starts = to_device(state["aux"]), to_device(state["starts"])
        self.aux_available = state["aux_available"]
        self.env_takes_tensors = state["env_takes_tensors"]
        self.episode_return = to_device(state["episode_return"])
        self.last_episode_return = to_device(state["last_episode_return"]).reshape(self.members)
        # (a plain run's state from before populations had one "action_generator")
        saved = state.get("action_generators") or [state["action_generator"]]
        for generator, saved_state in zip(self.action_generators, saved, strict=True):
            generator.set_state(saved_state.cpu())
