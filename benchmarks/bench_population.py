"""Training a population in one process against training its members one after another.

    python benchmarks/bench_population.py                         # K = 1, 2, 4, 8
    python benchmarks/bench_population.py --members 1 8 --busy    # with the other core busy
    python benchmarks/bench_population.py --device cuda --members 1 64 --num-envs 1024

Every point trains the default model (hidden_dim 128, every guard on) with the default
geometry (``--num-envs`` envs per member, default ``pyppo-train``'s; its rollout length, PPO
epochs and minibatch size per member) on the default market's training split: a single run
(``TradingActorCritic``, seed 0), and populations of K members (``PopulationActorCritic``,
seeds 0..K-1, one batched model). Throughput is env steps per second over all members, of
the median of ``--updates`` updates after one warm-up; "x K sequential" is that over the
single run's (K runs one after another take K times as long as one). The single run is timed
first and last and its median taken, so the machine's slow moments are shared.

Per point also: the ops one update dispatches and the host reads it makes
(:class:`pyppo.diagnostics.HostReads`), to see what grows with K (a GPU pays a launch per
op). ``--busy`` keeps the other core busy with a spinning process while timing (a shared
machine: small work split over two threads then waits for the busy one).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import (
    busy_neighbour,
    check_device,
    machine,
    print_machine,
    print_table,
    synchronize,
    write_json,
)

from pyppo import PPOTrainer, TradingActorCritic, synthetic_market
from pyppo.config import EnvConfig, PPOConfig
from pyppo.diagnostics import HostReads
from pyppo.env import TradingEnv
from pyppo.population import PopulationActorCritic

# pyppo-train's default geometry (rollout length, PPO epochs, minibatch size per member).
GEOMETRY = {name: getattr(PPOConfig(), name) for name in ("num_steps", "num_epochs", "batch_size")}


def trainer_for(members: int, num_envs: int, device: str) -> PPOTrainer:
    """A single run (``members == 0``) or a population of ``members``."""
    train, _ = synthetic_market(seed=0).split(0.7)
    seeds = list(range(max(members, 1)))
    env = TradingEnv(train, num_envs=num_envs, device=device, seed=seeds if members else seeds[0])

    def model(seed: int) -> TradingActorCritic:
        torch.manual_seed(seed)
        return TradingActorCritic(env.obs_spec, hidden_dim=128)

    if members == 0:
        return PPOTrainer(model(0), env, progress=False, **GEOMETRY)
    population = PopulationActorCritic.from_members([model(s) for s in seeds])
    spec = f"0-{members - 1}" if members > 1 else "1"
    return PPOTrainer(population, env, seeds=spec, progress=False, **GEOMETRY)


def one_more_update(trainer: PPOTrainer) -> None:
    """Train one update more (``total_steps`` counts each member's env steps)."""
    trainer.train(
        total_steps=(trainer.update + 1) * trainer.config.num_steps * trainer.envs_per_member
    )


def steps_per_second(trainer: PPOTrainer, updates: int, device: str) -> float:
    """Env steps per second over all members, median of ``updates`` after one warm-up."""
    one_more_update(trainer)
    seconds = []
    for _ in range(updates):
        synchronize(device)
        start = time.perf_counter()
        one_more_update(trainer)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return trainer.config.num_steps * trainer.num_envs / statistics.median(seconds)


def ops_and_reads(trainer: PPOTrainer) -> tuple[int, int]:
    """Ops dispatched and host reads (Python + dispatcher level) in one more update."""
    with HostReads() as reads:
        one_more_update(trainer)
    return reads.ops, reads.python + reads.dispatch


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--members", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument(
        "--num-envs", type=int, default=EnvConfig().num_envs, help="envs per member"
    )
    parser.add_argument("--updates", type=int, default=2, help="timed updates per point")
    parser.add_argument("--busy", action="store_true", help="keep the other core busy")
    parser.add_argument("--json")
    args = parser.parse_args()
    check_device(parser, args.device)
    info = machine(args.device)
    print_machine(info)
    print(
        f"geometry: {args.num_envs} envs per member x {GEOMETRY['num_steps']} steps, "
        f"{GEOMETRY['num_epochs']} epochs, minibatches of {GEOMETRY['batch_size']} per "
        f"member, hidden_dim 128; {args.updates} timed updates; busy neighbour: {args.busy}"
    )
    with busy_neighbour(args.busy):
        single = [
            steps_per_second(trainer_for(0, args.num_envs, args.device), args.updates, args.device)
        ]
        points = []
        for members in args.members:
            trainer = trainer_for(members, args.num_envs, args.device)
            rate = steps_per_second(trainer, args.updates, args.device)
            ops, reads = ops_and_reads(trainer)
            points.append({"members": members, "steps_per_s": rate, "ops": ops, "reads": reads})
            print(f"  K = {members:>3}: {rate:,.0f} env steps/s", flush=True)
        single.append(
            steps_per_second(trainer_for(0, args.num_envs, args.device), args.updates, args.device)
        )
    baseline = statistics.median(single)
    single_ops, single_reads = ops_and_reads(trainer_for(0, args.num_envs, args.device))
    print(
        f"\nsingle run: {baseline:,.0f} env steps/s "
        f"({single[0]:,.0f} first, {single[-1]:,.0f} last)"
    )
    print_table(
        "a population of K against K sequential single runs (env steps per second)",
        ["K", "population", "x K sequential", "ops/update", "host reads/update"],
        [["single run", baseline, 1.0, single_ops, single_reads]]
        + [
            [p["members"], p["steps_per_s"], p["steps_per_s"] / baseline, p["ops"], p["reads"]]
            for p in points
        ],
    )
    payload = {
        "benchmark": "population",
        "machine": info,
        "args": vars(args),
        "single_steps_per_s": single,
        "points": points,
    }
    write_json(args.json, payload)


if __name__ == "__main__":
    main()
