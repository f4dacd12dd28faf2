"""PPOTrainer end to end: NaN protection under fault injection, checkpoints and resume,
foreign envs and models, and the CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from helpers import same_rows
from torch import nn

from pyppo import TradingEnv, reference, synthetic_market
from pyppo.checkpoint import CheckpointError
from pyppo.metrics import read_metrics
from pyppo.model import TradingActorCritic
from pyppo.training import NonFiniteParametersError, PPOTrainer


class RecordingEnv(TradingEnv):
    """Remembers every bar whose return was realized and whose aux targets were handed out,
    so that the expected sanitizer counts can be recomputed independently."""

    def reset(self, **kw):
        out = super().reset(**kw)
        self.aux_bars = [self.bar_index.clone()]
        self.return_bars = []
        return out

    def step(self, actions):
        self.return_bars.append(self.bar_index + 1)
        out = super().step(actions)
        self.aux_bars.append(self.bar_index.clone())
        return out


def small_trainer(market, run_dir=None, env_cls=TradingEnv, num_envs=8, seed=0, **kw):
    env = env_cls(market, num_envs=num_envs, episode_length=100, seed=seed)
    torch.manual_seed(seed)
    model = TradingActorCritic(env.obs_spec, hidden_dim=32)
    args = dict(
        num_steps=32,
        num_epochs=2,
        batch_size=64,
        seed=seed,
        run_dir=run_dir,
        progress=False,
        data_fingerprint=market.fingerprint(),
    )
    args.update(kw)
    return PPOTrainer(model, env, **args)


def all_finite(model: nn.Module) -> bool:
    return all(torch.isfinite(p).all() for p in model.parameters())


def test_bad_ticks_train_with_every_event_counted(tmp_path):
    market = synthetic_market(3000, seed=3, bad_ticks=0.01)
    trainer = small_trainer(market, tmp_path, env_cls=RecordingEnv)
    history = trainer.train(total_steps=8 * 32 * 6)
    assert len(history) == 6 and all_finite(trainer.model)

    env = trainer.env
    logr = market.log_returns.float()
    aux = torch.stack([market.forward_returns(1), market.forward_returns(24)], 1).float()
    want_returns = sum(reference.sanitize(logr[b])[1] for b in env.return_bars)
    want_aux = sum(reference.sanitize(aux[b])[1] for b in env.aux_bars)
    assert want_returns[0] > 0 and want_aux[0] > 0  # the run really met bad ticks

    rows = list(read_metrics(tmp_path / "metrics.csv"))
    total = lambda key: int(sum(r[key] for r in rows))  # noqa: E731
    assert [
        total("sanitized/env/returns/nonfinite"),
        total("sanitized/env/returns/clamped"),
    ] == want_returns.tolist()
    assert [
        total("sanitized/env/aux_targets/nonfinite"),
        total("sanitized/env/aux_targets/clamped"),
    ] == want_aux.tolist()
    # The env cleaned everything, so nothing bad reached the buffer, the model or the grads.
    for key in rows[0]:
        if key.startswith(("sanitized/buffer/", "nonfinite/")):
            assert total(key) == 0, key


def test_without_guards_the_same_run_fails_loudly(tmp_path):
    market = synthetic_market(3000, seed=3, bad_ticks=0.01)
    env = TradingEnv(market, num_envs=8, episode_length=100, sanitize=False)
    model = TradingActorCritic(env.obs_spec, hidden_dim=32)
    trainer = PPOTrainer(
        model,
        env,
        num_steps=32,
        num_epochs=2,
        batch_size=64,
        run_dir=tmp_path,
        progress=False,
        guards=False,
    )
    with pytest.raises(NonFiniteParametersError, match="parameters became NaN/inf"):
        trainer.train(total_steps=8 * 32 * 6)
    assert not (tmp_path / "checkpoint.pt").exists()  # nothing NaN was ever saved


def test_nan_planted_in_aux_1h_gradient_is_reported_under_aux_1h_only(tmp_path):
    market = synthetic_market(3000, seed=4)
    trainer = small_trainer(market, tmp_path)
    planted = []

    def plant(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad.view(-1)[::7] = float("nan")
        planted.append(grad.view(-1)[::7].numel())
        return grad

    trainer.model.aux_1h.weight.register_hook(plant)
    trainer.train(total_steps=8 * 32 * 3)
    assert all_finite(trainer.model)
    rows = list(read_metrics(tmp_path / "metrics.csv"))
    by_group = {g: int(sum(r[f"nonfinite/grad/{g}"] for r in rows)) for g in trainer.guard.groups}
    assert by_group["aux_1h"] == sum(planted) > 0
    assert all(v == 0 for g, v in by_group.items() if g != "aux_1h")
    assert set(trainer.guard.groups) == {"trunk", "actor", "critic", "aux_1h", "aux_24h"}


def test_nan_gradients_are_logged_with_the_seed_message(tmp_path, caplog):
    market = synthetic_market(3000, seed=4)
    trainer = small_trainer(market)
    trainer.model.aux_24h.weight.register_hook(lambda g: torch.full_like(g, float("inf")))
    with caplog.at_level("WARNING", logger="pyppo"):
        trainer.train(total_steps=8 * 32)
    assert "NaN/inf gradient detected in aux_24h" in caplog.text


@pytest.mark.slow
def test_resume_gives_identical_metrics(tmp_path):
    market = synthetic_market(3000, seed=5)
    straight = small_trainer(market, tmp_path / "a").train(total_steps=8 * 32 * 4)

    first = small_trainer(market, tmp_path / "b")
    first.train(total_steps=8 * 32 * 2)
    resumed = small_trainer(market, tmp_path / "b")
    resumed.load_checkpoint(tmp_path / "b" / "checkpoint.pt")
    history = resumed.train(total_steps=8 * 32 * 4)
    assert len(history) == len(straight) == 4
    same_rows(straight, history)


def test_nonfinite_parameters_stop_training_and_keep_the_last_good_checkpoint(tmp_path):
    market = synthetic_market(3000, seed=6)
    trainer = small_trainer(market, tmp_path, checkpoint_every=1)
    trainer.train(total_steps=8 * 32)
    saved = (tmp_path / "checkpoint.pt").read_bytes()
    with torch.no_grad():
        trainer.model.critic.weight[0, 0] = float("nan")  # as a broken optimizer would
    with pytest.raises(NonFiniteParametersError, match="checkpoint.pt holds the last good state"):
        trainer.train(total_steps=8 * 32 * 3)
    assert (tmp_path / "checkpoint.pt").read_bytes() == saved
    # Without a checkpoint the message says so, rather than promise one.
    fresh = small_trainer(market, tmp_path / "fresh", checkpoint_every=0)
    with torch.no_grad():
        fresh.model.critic.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteParametersError, match="no checkpoint was saved before it"):
        fresh.train(total_steps=8 * 32)


def test_corrupt_and_mismatched_checkpoints_give_clear_errors(tmp_path):
    market = synthetic_market(3000, seed=7)
    trainer = small_trainer(market, tmp_path)
    trainer.train(total_steps=8 * 32)
    path = tmp_path / "checkpoint.pt"

    other_data = small_trainer(synthetic_market(3000, seed=8))
    with pytest.raises(CheckpointError, match="different data"):
        other_data.load_checkpoint(path)
    other_settings = small_trainer(market, lr=1e-3)
    with pytest.raises(CheckpointError, match="other settings: lr"):
        other_settings.load_checkpoint(path)

    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        small_trainer(market).load_checkpoint(truncated)
    with pytest.raises(CheckpointError, match="does not exist"):
        small_trainer(market).load_checkpoint(tmp_path / "missing.pt")


class CoinFlipEnv:
    """A minimal gymnasium-style vector env (numpy in and out, SAME_STEP autoreset, no
    auxiliary targets): reward 1 for action 1, episodes of 5 steps."""

    def __init__(self, num_envs: int = 4) -> None:
        import gymnasium

        self.num_envs = num_envs
        self.single_observation_space = gymnasium.spaces.Box(-1, 1, (3,), np.float32)
        self.single_action_space = gymnasium.spaces.Discrete(2)
        self.t = np.zeros(num_envs, dtype=np.int64)

    def _obs(self):
        return np.stack([self.t / 5, np.ones(self.num_envs), np.zeros(self.num_envs)], 1).astype(
            np.float32
        )

    def reset(self, seed=None, options=None):
        self.t[:] = 0
        return self._obs(), {}

    def step(self, actions):
        reward = (np.asarray(actions) == 1).astype(np.float32)
        self.t += 1
        truncated = self.t >= 5
        info = {}
        if truncated.any():
            final = np.empty(self.num_envs, dtype=object)
            obs = self._obs()
            for i in range(self.num_envs):
                final[i] = obs[i] if truncated[i] else None
            info = {"final_obs": final, "_final_obs": truncated}
            self.t[truncated] = 0
        return self._obs(), reward, np.zeros(self.num_envs, bool), truncated, info


class SmallMLP(nn.Module):
    """Not a TradingActorCritic: any module returning a dict of logits and value trains."""

    def __init__(self, obs_dim: int, num_actions: int, hidden: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Linear(obs_dim, hidden), nn.Tanh())
        self.pi = nn.Linear(hidden, num_actions)
        self.v = nn.Linear(hidden, 1)

    def forward(self, obs):
        h = self.body(obs)
        return {"action_logits": self.pi(h), "value": self.v(h).squeeze(-1)}


@pytest.mark.slow
def test_any_gymnasium_vector_env_and_dict_model():
    pytest.importorskip("gymnasium")
    torch.manual_seed(0)
    trainer = PPOTrainer(
        SmallMLP(3, 2, hidden=16),
        CoinFlipEnv(),
        num_steps=20,
        num_epochs=4,
        batch_size=20,
        lr=3e-3,
        progress=False,
    )
    with pytest.warns(UserWarning, match="auxiliary losses are off"):
        history = trainer.train(total_steps=4 * 20 * 15)
    assert history[-1]["rollout/mean_step_reward"] > history[0]["rollout/mean_step_reward"]
    assert history[-1]["rollout/mean_step_reward"] > 0.8  # it learned to press 1
    with pytest.raises(ValueError, match="total_steps"):
        trainer.train(epochs=1)


@pytest.mark.slow
def test_gymnasium_sync_vector_env():
    gym = pytest.importorskip("gymnasium")
    env = gym.make_vec(
        "CartPole-v1",
        num_envs=4,
        vectorization_mode="sync",
        vector_kwargs={"autoreset_mode": gym.vector.AutoresetMode.SAME_STEP},
    )
    torch.manual_seed(0)
    model = SmallMLP(4, 2)  # CartPole: 4 observations, 2 actions
    trainer = PPOTrainer(model, env, num_steps=128, batch_size=128, lr=1e-3, progress=False)
    with pytest.warns(UserWarning, match="auxiliary losses are off"):
        history = trainer.train(total_steps=4 * 128 * 12)
    returns = [r["rollout/mean_episode_return"] for r in history]
    assert all(math.isfinite(r) for r in returns[1:])
    assert max(returns[-4:]) > returns[0]  # longer episodes than the untrained policy's


def test_rollout_runs_on_one_cpu_thread_and_restores_the_count():
    trainer = small_trainer(synthetic_market(800, seed=4))
    seen = []
    step = trainer.env.step

    def recording_step(actions):
        seen.append(torch.get_num_threads())
        return step(actions)

    trainer.env.step = recording_step
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        trainer.train(total_steps=8 * 32)
        assert set(seen) == {1}
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)


def test_skip_policy_masks_the_step_on_the_device(tmp_path):
    """With nan_policy="skip", a step with a non-finite gradient moves neither the weights
    nor Adam's moments, and is counted; the decision is never read on the host."""
    market = synthetic_market(3000, seed=4)
    trainer = small_trainer(market, tmp_path, nan_policy="skip")
    before = [p.detach().clone() for p in trainer.model.parameters()]
    hook = trainer.model.aux_1h.weight.register_hook(lambda g: torch.full_like(g, float("nan")))
    trainer.train(total_steps=8 * 32)
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True))
    assert all(len(s) == 0 or int(s["step"]) == 0 for s in trainer.optimizer.state.values())
    rows = list(read_metrics(tmp_path / "metrics.csv"))
    minibatches = 2 * (8 * 32 // 64)  # num_epochs x minibatches per epoch
    assert rows[-1]["guard/skipped_steps"] == minibatches
    hook.remove()
    trainer.train(total_steps=8 * 32 * 2)  # clean gradients: it trains again
    assert not all(
        torch.equal(a, b) for a, b in zip(before, trainer.model.parameters(), strict=True)
    )


def test_num_minibatches_cuts_the_rollout_instead_of_batch_size():
    market = synthetic_market(3000, seed=4)
    trainer = small_trainer(market, num_minibatches=8, batch_size=999)
    assert trainer.updater.batch_size == 8 * 32 // 8  # num_envs x num_steps / minibatches
    trainer.train(total_steps=8 * 32)
    assert trainer.guard.steps == 2 * 8  # num_epochs x num_minibatches
    with pytest.raises(ValueError, match="num_minibatches"):
        small_trainer(market, num_minibatches=8 * 32 + 1)


def test_the_progress_line_never_shows_nan():
    from pyppo.training.recorder import ProgressBar

    row = {"epoch": 1.0, "perf/steps_per_sec": 9_000.0, "rollout/mean_episode_return": math.nan}
    assert "nan" not in ProgressBar.describe([row]).replace("NaN events", "")
    row["rollout/mean_episode_return"] = 0.0125
    assert "return +0.013" in ProgressBar.describe([row])
    # A population's line: the members' mean return (those that have one).
    other = {**row, "rollout/mean_episode_return": 0.0375}
    assert "return +0.025" in ProgressBar.describe(
        [row, other, {**row, "rollout/mean_episode_return": math.nan}]
    )
