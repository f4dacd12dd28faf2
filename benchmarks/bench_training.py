"""Training throughput: pyppo's PPOTrainer against Stable-Baselines3's PPO on the same market,
with the same PPO hyperparameters, and pyppo's own split of where the time goes.

    python benchmarks/bench_training.py [--device cpu|cuda] [--updates 6] [--json out.json]

Both train on the default synthetic market's training split for the same number of env
steps: num_envs x num_steps per update, num_epochs PPO epochs, minibatches of batch_size.
SB3 sees the market as one gymnasium env per episode stream in its DummyVecEnv (as SB3
users write it), and also through a VecEnv adapter over pyppo's vectorized TradingEnv (SB3
with pyppo's env speed). SB3 gets an MLP of the same width as pyppo's trunk (net_arch
[h, h] for both policy and value); pyppo is timed with its default TradingActorCritic and
with that same MLP (so that row compares the trainers alone). Needs `pip install
stable-baselines3` (skipped without it).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from common import Timed, machine, print_machine, print_table, synchronize, training_env, write_json
from torch import nn

from pyppo import TradingEnv, synthetic_market
from pyppo.model import TradingActorCritic
from pyppo.training import PPOTrainer


class SB3SizedMLP(nn.Module):
    """SB3's default MlpPolicy layout (separate [h, h] tanh nets for policy and value) as a
    pyppo model: the same network on both sides, so only the trainers differ."""

    def __init__(self, obs_dim: int, num_actions: int, hidden: int) -> None:
        super().__init__()

        def mlp() -> nn.Sequential:
            return nn.Sequential(
                nn.Linear(obs_dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden), nn.Tanh()
            )

        self.pi_body, self.vf_body = mlp(), mlp()
        self.actor = nn.Linear(hidden, num_actions)
        self.critic = nn.Linear(hidden, 1)

    def forward(self, obs: torch.Tensor) -> dict[str, torch.Tensor]:
        return {
            "action_logits": self.actor(self.pi_body(obs)),
            "value": self.critic(self.vf_body(obs)).squeeze(-1),
        }


@dataclass
class Runner:
    """One trainer ready to run one more PPO update (rollout + epochs) per call."""

    name: str
    params: int
    one_update: Callable[[], object]
    seconds: list[float] = field(default_factory=list)


def pyppo_runner(args: argparse.Namespace, model_kind: str, totals: dict[str, float]) -> Runner:
    env = training_env(args.device, args.num_envs)
    torch.manual_seed(0)
    if model_kind == "TradingActorCritic":
        model = TradingActorCritic(env.obs_spec, hidden_dim=args.hidden_dim)
        name = "pyppo, TradingActorCritic (conv + aux heads)"
    else:
        model = SB3SizedMLP(env.obs_spec.size, env.single_action_space.n, args.hidden_dim)
        name = "pyppo, SB3-sized MLP"
    trainer = PPOTrainer(
        model,
        env,
        num_steps=args.num_steps,
        num_epochs=args.num_epochs,
        batch_size=args.batch_size,
        device=args.device,
        progress=False,
        enable_auxiliary_losses=model_kind == "TradingActorCritic",
    )
    per_update = args.num_steps * args.num_envs
    trainer.train(total_steps=per_update)  # warm-up: allocations, first-call costs
    if model_kind == "TradingActorCritic":  # where the time goes, for the default model
        env.step = Timed(totals, "env step", env.step, args.device)
        buf = trainer.buffer
        buf.add = Timed(totals, "buffer add", buf.add, args.device)
        buf.compute_returns_and_advantage = Timed(
            totals, "GAE", buf.compute_returns_and_advantage, args.device
        )
        trainer.guard.step = Timed(totals, "gradient guard", trainer.guard.step, args.device)
        trainer.collect_rollout = Timed(
            totals, "rollout (all)", trainer.collect_rollout, args.device
        )
    return Runner(
        name,
        sum(p.numel() for p in model.parameters()),
        lambda: trainer.train(total_steps=(trainer.update + 1) * per_update),
    )


def sb3_env(kind: str, num_envs: int):
    """The market for SB3: ``"gymnasium"`` wraps it as one gymnasium.Env per episode stream
    in SB3's DummyVecEnv (what an SB3 user writes); ``"vecenv"`` hands SB3 pyppo's
    vectorized TradingEnv through a VecEnv adapter (SB3's best case: pyppo's env speed)."""
    import gymnasium
    from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

    if kind == "gymnasium":
        train, _ = synthetic_market(seed=0).split(0.7)

        class MarketEnv(gymnasium.Env):
            """One trading episode at a time over the market, numpy in and out."""

            def __init__(self, seed: int) -> None:
                self.env = TradingEnv(train, num_envs=1, seed=seed)
                self.observation_space = self.env.single_observation_space
                self.action_space = self.env.single_action_space

            def reset(self, *, seed=None, options=None):
                obs, _ = self.env.reset(seed=seed)
                return obs[0].numpy(), {}

            def step(self, action):
                obs, reward, terminated, truncated, info = self.env.step(
                    torch.tensor([int(action)])
                )
                if "final_obs" in info:  # the episode's last observation, not the next one's
                    obs = info["final_obs"]
                return (
                    obs[0].numpy(),
                    float(reward[0]),
                    bool(terminated[0]),
                    bool(truncated[0]),
                    {},
                )

        return DummyVecEnv([lambda i=i: MarketEnv(seed=i) for i in range(num_envs)])

    class TradingVecEnv(VecEnv):
        """SB3's VecEnv over pyppo's TradingEnv: numpy in and out, SB3's done conventions."""

        def __init__(self, env: TradingEnv) -> None:
            self.env = env
            super().__init__(env.num_envs, env.single_observation_space, env.single_action_space)

        def reset(self):
            obs, _ = self.env.reset(seed=0)
            return obs.cpu().numpy()

        def step_async(self, actions):
            self._actions = torch.as_tensor(actions, device=self.env.device).long()

        def step_wait(self):
            obs, reward, terminated, truncated, info = self.env.step(self._actions)
            dones = (terminated | truncated).cpu().numpy()
            infos = [{} for _ in range(self.num_envs)]
            if "final_obs" in info:
                final = info["final_obs"].cpu().numpy()
                for i in np.flatnonzero(dones):
                    infos[i] = {"terminal_observation": final[i], "TimeLimit.truncated": True}
            return obs.cpu().numpy(), reward.cpu().numpy(), dones, infos

        def close(self):
            pass

        def get_attr(self, name, indices=None):
            return [getattr(self.env, name)] * self.num_envs

        def set_attr(self, name, value, indices=None):
            setattr(self.env, name, value)

        def env_method(self, name, *args, indices=None, **kwargs):
            return [getattr(self.env, name)(*args, **kwargs)] * self.num_envs

        def env_is_wrapped(self, wrapper_class, indices=None):
            return [False] * self.num_envs

    return TradingVecEnv(training_env("cpu", num_envs))


def sb3_runner(args: argparse.Namespace, env_kind: str) -> Runner:
    from stable_baselines3 import PPO

    env = sb3_env(env_kind, args.num_envs)
    h = args.hidden_dim
    model = PPO(
        "MlpPolicy",
        env,
        n_steps=args.num_steps,
        batch_size=args.batch_size,
        n_epochs=args.num_epochs,
        learning_rate=3e-4,
        gamma=0.99,
        gae_lambda=0.95,
        clip_range=0.2,
        ent_coef=0.01,
        vf_coef=0.5,
        max_grad_norm=0.5,
        policy_kwargs=dict(net_arch=dict(pi=[h, h], vf=[h, h])),
        device=args.device,
        seed=0,
        verbose=0,
    )
    per_update = args.num_steps * args.num_envs
    model.learn(per_update)  # warm-up
    name = {
        "gymnasium": "SB3 MlpPolicy, market as gymnasium envs",
        "vecenv": "SB3 MlpPolicy, pyppo's TradingEnv as VecEnv",
    }[env_kind]
    return Runner(
        name,
        sum(p.numel() for p in model.policy.parameters()),
        lambda: model.learn(per_update, reset_num_timesteps=False),
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--updates", type=int, default=8, help="timed updates per trainer")
    parser.add_argument("--num-envs", type=int, default=32)
    parser.add_argument("--num-steps", type=int, default=256)
    parser.add_argument("--num-epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--hidden-dim", type=int, default=128)
    parser.add_argument("--json")
    args = parser.parse_args()
    info = machine(args.device)
    print_machine(info)
    print(
        f"config: {args.num_envs} envs x {args.num_steps} steps per update, "
        f"{args.num_epochs} epochs, batch {args.batch_size}, {args.updates} timed updates"
    )

    totals: dict[str, float] = defaultdict(float)
    runners = [pyppo_runner(args, "TradingActorCritic", totals), pyppo_runner(args, "mlp", totals)]
    try:
        import stable_baselines3  # noqa: F401
    except ImportError:
        print("stable-baselines3 is not installed (pip install stable-baselines3): no comparison")
    else:
        runners += [sb3_runner(args, "gymnasium"), sb3_runner(args, "vecenv")]
    # Round robin, one update each, so that the machine's slow and fast moments are shared
    # by every trainer; each trainer's median update time is what counts.
    for _ in range(args.updates):
        for runner in runners:
            synchronize(args.device)
            start = time.perf_counter()
            runner.one_update()
            synchronize(args.device)
            runner.seconds.append(time.perf_counter() - start)
    per_update = args.num_steps * args.num_envs
    speed = {r.name: per_update / statistics.median(r.seconds) for r in runners}
    baseline = speed.get("SB3 MlpPolicy, market as gymnasium envs")
    rows = [
        [r.name, r.params, speed[r.name]] + ([speed[r.name] / baseline] if baseline else [])
        for r in runners
    ]
    print_table(
        "training throughput (env steps per second, median update, same PPO hyperparameters)",
        ["trainer and model", "params", "env steps/s", "vs SB3 (gymnasium envs)"][: len(rows[0])],
        rows,
    )

    if baseline:
        # Each round's updates ran back to back, so a round's ratio is barely touched by the
        # machine's slow and fast phases (which do move the medians above).
        sb3 = next(r for r in runners if r.name == "SB3 MlpPolicy, market as gymnasium envs")
        rounds = sorted(b / a for a, b in zip(runners[0].seconds, sb3.seconds, strict=True))
        print(
            f"{runners[0].name} / SB3 (gymnasium envs), per round: min {rounds[0]:.2f}, "
            f"median {statistics.median(rounds):.2f}, max {rounds[-1]:.2f}"
        )

    split = dict(totals)
    split["total"] = sum(runners[0].seconds)
    total = split["total"]
    overhead = ("env step", "buffer add", "GAE", "gradient guard")
    parts = [[name, split.get(name, 0.0), 100 * split.get(name, 0.0) / total] for name in overhead]
    model_rollout = split["rollout (all)"] - sum(
        split[n] for n in ("env step", "buffer add", "GAE")
    )
    parts.append(["policy forward in rollout", model_rollout, 100 * model_rollout / total])
    learn = total - split["rollout (all)"] - split["gradient guard"]
    parts.append(["PPO update (fwd/bwd/Adam)", learn, 100 * learn / total])
    print_table("where pyppo's training time goes", ["part", "seconds", "% of total"], parts)
    share = sum(split.get(n, 0.0) for n in overhead) / total
    print(f"env + buffer + GAE + guard: {100 * share:.1f} % of training time")
    write_json(
        args.json,
        {
            "machine": info,
            "config": vars(args),
            "steps_per_sec": speed,
            "update_seconds": {r.name: r.seconds for r in runners},
            "split_seconds": split,
            "overhead_share": share,
        },
    )


if __name__ == "__main__":
    main()
