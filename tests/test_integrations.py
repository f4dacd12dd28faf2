"""Tests of pyppo's gradient guard inside other training loops: GradientGuard.attach, the
backward hooks of pyppo.integrations, a CleanRL-style loop and Stable-Baselines3's PPO.
Each planted NaN/inf gradient run stays finite where an unguarded control of the same
trainer ends with non-finite parameters."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from helpers import DEVICES
from torch import nn

from pyppo.guard import GradientGuard
from pyppo.integrations import guard_after_backward

NAN, INF = float("nan"), float("inf")


def plant_nonfinite(grad: torch.Tensor) -> torch.Tensor:
    """A gradient hook: NaN in row 0, +inf at [1, 0] (``grad.shape[1] + 1`` elements)."""
    grad = grad.clone()
    grad[0] = NAN
    grad[1, 0] = INF
    return grad


def planted_per_backward(weight: torch.Tensor) -> int:
    return weight.shape[1] + 1


def all_finite(module: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in module.parameters())


class TinyActorCritic(nn.Module):
    """A trunk, policy and value heads, and an auxiliary head in the graph with weight 0."""

    def __init__(self, obs_dim: int = 4, hidden: int = 16, actions: int = 2) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh())
        self.pi = nn.Linear(hidden, actions)
        self.v = nn.Linear(hidden, 1)
        self.aux_head = nn.Linear(hidden, 3)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.trunk(obs)
        value = self.v(h).squeeze(-1) + 0.0 * self.aux_head(h).sum(-1)
        return self.pi(h), value


def make_model(device: str, seed: int = 0) -> TinyActorCritic:
    torch.manual_seed(seed)
    model = TinyActorCritic().to(device)
    model.aux_head.weight.register_hook(plant_nonfinite)
    return model


def ppo_like_loss(model: TinyActorCritic, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """A clipped-surrogate policy loss plus a value loss."""
    logits, value = model(batch["obs"])
    logp = logits.log_softmax(-1).gather(-1, batch["actions"][:, None]).squeeze(-1)
    ratio = torch.exp(logp - batch["logp_old"])
    adv = batch["advantages"]
    pg = -torch.min(ratio * adv, ratio.clamp(0.8, 1.2) * adv).mean()
    return pg + 0.5 * (value - batch["returns"]).pow(2).mean()


def random_batch(device: str, n: int = 32, seed: int = 0) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    batch = {
        "obs": torch.randn(n, 4, generator=gen),
        "actions": torch.randint(0, 2, (n,), generator=gen),
        "logp_old": torch.full((n,), math.log(0.5)),
        "advantages": torch.randn(n, generator=gen),
        "returns": torch.randn(n, generator=gen),
    }
    return {k: v.to(device) for k, v in batch.items()}


# ---- CleanRL-style hand-written loop ---------------------------------------------------


def cleanrl_style_loop(device: str, guarded: bool, updates: int = 3, epochs: int = 2):
    """The loop of docs/integrations.md: ``guard.step()`` in place of ``clip_grad_norm_``."""
    model = make_model(device)
    guard = GradientGuard(model, max_norm=0.5)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    for update in range(updates):
        batch = random_batch(device, n=64, seed=update)
        for _epoch in range(epochs):
            for mb in torch.arange(64, device=device).split(32):
                loss = ppo_like_loss(model, {k: v[mb] for k, v in batch.items()})
                optimizer.zero_grad()
                loss.backward()
                if guarded:
                    guard.step()
                else:
                    nn.utils.clip_grad_norm_(model.parameters(), 0.5)
                optimizer.step()
        guard.log_events()
    return model, guard


@pytest.mark.parametrize("device", DEVICES)
def test_cleanrl_style_loop_guarded_stays_finite(device):
    model, guard = cleanrl_style_loop(device, guarded=True)
    assert all_finite(model)
    steps = 3 * 2 * 2
    assert guard.steps == steps
    per_step = planted_per_backward(model.aux_head.weight)
    assert guard.cumulative_counts() == {"trunk": 0, "pi": 0, "v": 0, "aux_head": steps * per_step}


@pytest.mark.parametrize("device", DEVICES)
def test_cleanrl_style_loop_unguarded_goes_nonfinite(device):
    model, _ = cleanrl_style_loop(device, guarded=False)
    # clip_grad_norm_'s total norm is NaN: every gradient, then every parameter, is NaN.
    assert not any(bool(torch.isfinite(p).any()) for p in model.parameters())


# ---- GradientGuard.attach ---------------------------------------------------------------


def optimizer_only_steps(model: nn.Module, optimizer: torch.optim.Optimizer, n: int, device: str):
    for i in range(n):
        optimizer.zero_grad()
        ppo_like_loss(model, random_batch(device, seed=i)).backward()
        optimizer.step()


@pytest.mark.parametrize("device", DEVICES)
def test_attach_runs_guard_before_every_optimizer_step(device):
    model = make_model(device)
    guard = GradientGuard(model, max_norm=0.5)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    handle = guard.attach(optimizer)
    optimizer_only_steps(model, optimizer, 5, device)
    assert all_finite(model)
    assert guard.steps == 5
    assert guard.cumulative_counts()["aux_head"] == 5 * planted_per_backward(model.aux_head.weight)

    handle.remove()
    optimizer_only_steps(model, optimizer, 1, device)
    assert guard.steps == 5  # detached: the NaN reaches the parameters
    assert not all_finite(model)


def test_attach_clips_like_clip_grad_norm():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    reference = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 2))
    reference.load_state_dict(model.state_dict())
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    ref_optimizer = torch.optim.SGD(reference.parameters(), lr=0.1)
    GradientGuard(model, max_norm=0.05).attach(optimizer)
    x = torch.randn(16, 4)
    for net, opt in ((model, optimizer), (reference, ref_optimizer)):
        opt.zero_grad()
        net(x).pow(2).sum().backward()
        if net is reference:
            nn.utils.clip_grad_norm_(net.parameters(), 0.05)
        opt.step()
    for p, q in zip(model.parameters(), reference.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


# ---- guard_after_backward ----------------------------------------------------------------


@pytest.mark.parametrize("device", DEVICES)
def test_guard_after_backward_runs_before_a_trainers_clip(device):
    """A trainer that clips by itself: the guard runs once per backward, before the clip."""
    model = make_model(device)
    model.unused = nn.Linear(2, 2).to(device)  # never in the graph: no gradient, no hook call
    guard = GradientGuard(model, max_norm=INF)
    handle = guard_after_backward(guard, model)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    seen_by_clip = []
    for i in range(4):
        optimizer.zero_grad()
        ppo_like_loss(model, random_batch(device, seed=i)).backward()
        seen_by_clip.append(guard.steps)
        nn.utils.clip_grad_norm_(model.parameters(), 0.5)
        optimizer.step()
    assert seen_by_clip == [1, 2, 3, 4]
    assert all_finite(model)
    counts = guard.cumulative_counts()
    assert counts["aux_head"] == 4 * planted_per_backward(model.aux_head.weight)
    assert sum(counts.values()) == counts["aux_head"]

    # torch.autograd.grad accumulates no .grad: the guard does not run.
    torch.autograd.grad(ppo_like_loss(model, random_batch(device)), list(model.pi.parameters()))
    assert guard.steps == 4

    handle.remove()
    optimizer.zero_grad()
    ppo_like_loss(model, random_batch(device)).backward()
    assert guard.steps == 4
    nn.utils.clip_grad_norm_(model.parameters(), 0.5)
    optimizer.step()
    assert not all_finite(model)


def test_guard_after_backward_recovers_from_a_failed_backward():
    model = make_model("cpu")
    guard = GradientGuard(model, max_norm=INF)
    guard_after_backward(guard, model)

    def fail(grad: torch.Tensor) -> torch.Tensor:
        raise RuntimeError("planted failure")

    hook = model.trunk[0].weight.register_hook(fail)
    with pytest.raises(RuntimeError, match="planted failure"):
        ppo_like_loss(model, random_batch("cpu")).backward()
    hook.remove()
    model.zero_grad()
    ppo_like_loss(model, random_batch("cpu")).backward()
    assert guard.steps == 1
    assert all(bool(torch.isfinite(p.grad).all()) for p in model.parameters())


def test_import_pyppo_does_not_import_stable_baselines3():
    code = (
        "import sys, pyppo, pyppo.integrations; "
        "assert 'stable_baselines3' not in sys.modules, 'imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---- Stable-Baselines3 -------------------------------------------------------------------

AUX_GROUPS = {
    "features_extractor.aux_head.": "aux_head",
    "features_extractor.": "features_extractor",
    "mlp_extractor.": "mlp_extractor",
    "action_net.": "action_net",
    "value_net.": "value_net",
}
N_STEPS, BATCH_SIZE, N_EPOCHS, TOTAL_TIMESTEPS = 64, 32, 2, 512
BACKWARDS = TOTAL_TIMESTEPS // N_STEPS * N_EPOCHS * (N_STEPS // BATCH_SIZE)


def sb3_ppo(ppo_class: type, **kwargs):
    """A tiny SB3 PPO on CartPole whose features extractor has an auxiliary head (output
    times 0, so in the graph) with NaN/inf planted in its weight's gradient every backward."""
    pytest.importorskip("stable_baselines3")
    gym = pytest.importorskip("gymnasium")
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
    from stable_baselines3.common.vec_env import DummyVecEnv

    class AuxExtractor(BaseFeaturesExtractor):
        def __init__(self, observation_space, features_dim: int = 8) -> None:
            super().__init__(observation_space, features_dim)
            n = observation_space.shape[0]
            self.body = nn.Linear(n, features_dim)
            self.aux_head = nn.Linear(n, features_dim)

        def forward(self, obs: torch.Tensor) -> torch.Tensor:
            return torch.tanh(self.body(obs)) + 0.0 * self.aux_head(obs)

    model = ppo_class(
        "MlpPolicy",
        DummyVecEnv([lambda: gym.make("CartPole-v1")]),
        n_steps=N_STEPS,
        batch_size=BATCH_SIZE,
        n_epochs=N_EPOCHS,
        policy_kwargs=dict(net_arch=[8], features_extractor_class=AuxExtractor),
        device="cpu",
        seed=0,
        **kwargs,
    )
    model.policy.features_extractor.aux_head.weight.register_hook(plant_nonfinite)
    return model


def test_sb3_guarded_ppo_stays_finite():
    from pyppo.integrations.sb3 import GuardedPPO

    model = sb3_ppo(GuardedPPO, guard_groups=AUX_GROUPS)
    model.learn(total_timesteps=TOTAL_TIMESTEPS)
    assert all_finite(model.policy)
    per_backward = planted_per_backward(model.policy.features_extractor.aux_head.weight)
    assert model.guard.steps == BACKWARDS
    assert model.guard.cumulative_counts() == {
        "aux_head": BACKWARDS * per_backward,
        "features_extractor": 0,
        "mlp_extractor": 0,
        "action_net": 0,
        "value_net": 0,
    }
    # The last update's counts, recorded in SB3's logger (not dumped yet).
    logged = model.logger.name_to_value
    assert (
        logged["train/nonfinite_grads/aux_head"] == N_EPOCHS * N_STEPS // BATCH_SIZE * per_backward
    )
    assert logged["train/nonfinite_grads/value_net"] == 0


def test_sb3_guard_on_existing_ppo_stays_finite():
    from stable_baselines3 import PPO

    from pyppo.integrations.sb3 import guard_sb3_policy

    model = sb3_ppo(PPO)
    guard = guard_sb3_policy(model)
    assert guard.groups == ("features_extractor", "mlp_extractor", "action_net", "value_net")
    assert guard.max_norm == INF  # SB3 clips
    model.learn(total_timesteps=TOTAL_TIMESTEPS)
    assert all_finite(model.policy)
    per_backward = planted_per_backward(model.policy.features_extractor.aux_head.weight)
    assert guard.cumulative_counts()["features_extractor"] == BACKWARDS * per_backward


def test_sb3_unguarded_ppo_goes_nonfinite():
    from stable_baselines3 import PPO

    model = sb3_ppo(PPO)
    # SB3's clip turns the NaN into NaN everywhere; the next minibatch's logits are NaN and
    # torch's Categorical refuses them (ValueError when distributions validate their
    # arguments, RuntimeError from sampling when an earlier import turned validation off).
    with pytest.raises((ValueError, RuntimeError), match="invalid values|inf|nan"):
        model.learn(total_timesteps=TOTAL_TIMESTEPS)
    assert not all_finite(model.policy)


def test_sb3_guarded_ppo_save_load_guards_the_new_policy(tmp_path):
    from pyppo.integrations.sb3 import GuardedPPO

    model = sb3_ppo(GuardedPPO, guard_groups=AUX_GROUPS, guard_policy="skip")
    model.save(tmp_path / "model.zip")
    loaded = GuardedPPO.load(tmp_path / "model.zip", device="cpu")
    assert loaded.guard is not model.guard
    assert loaded.guard.groups == model.guard.groups
    assert loaded.guard.policy == "skip" and loaded.guard.max_norm == INF

    obs = torch.randn(8, 4)
    _, log_prob, _ = loaded.policy.evaluate_actions(obs, torch.zeros(8, dtype=torch.long))
    log_prob.sum().backward()
    assert loaded.guard.steps == 1
