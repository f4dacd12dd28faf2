"""Run by tests/test_distributed.py under torchrun (gloo, CPU): for each scenario, trains a
small PPOTrainer on every rank and leaves what each rank saw in OUT/<scenario> for the tests
to compare (one launch for all scenarios: starting two processes costs more than training).

    torchrun --standalone --nproc_per_node=2 tests/distributed_worker.py OUT SCENARIO...

A scenario is a "+"-joined set of flags ("plain" for none):
``nan``: rank 1 plants NaN into its aux_1h weight gradient at its first two minibatch steps.
``skip``: the trainer runs with nan_policy="skip".
``kl``: the trainer runs with a target_kl that stops some updates after their first epoch.
``population``: a population of two members (seeds 0 and 1), each rank a slice of each
member's envs.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import torch
import torch.distributed as dist

from pyppo import PPOTrainer, TradingActorCritic, TradingEnv, synthetic_market
from pyppo.population import PopulationActorCritic

# In the first update, the first epoch's mean approximate KL is 1.064e-7 over both ranks'
# minibatches, but 1.043e-7 over rank 0's own and 1.085e-7 over rank 1's: a rank deciding
# alone would stop or go on without the other (and leave it waiting in an all-reduce).
KL_TARGET = 1.055e-7


def run_scenario(out: Path, flags: set[str], rank: int) -> None:
    out.mkdir(exist_ok=True)
    log = logging.FileHandler(out / f"log{rank}.txt")
    logging.getLogger("pyppo").addHandler(log)
    market = synthetic_market(3000, seed=4)
    seeds = [0, 1] if "population" in flags else [0]
    env_seeds = [seed + rank for seed in seeds]
    env = TradingEnv(
        market, num_envs=4, episode_length=100, seed=env_seeds if len(seeds) > 1 else rank
    )
    torch.manual_seed(100 + rank)  # different initial weights: the trainer must unify them
    model = TradingActorCritic(env.obs_spec, hidden_dim=32)
    if len(seeds) > 1:
        model = PopulationActorCritic.from_members(
            [model, TradingActorCritic(env.obs_spec, hidden_dim=32)]
        )
    trainer = PPOTrainer(
        model,
        env,
        num_steps=32,
        num_epochs=2,
        batch_size=64,
        run_dir=out,
        progress=False,
        nan_policy="skip" if "skip" in flags else "zero",
        target_kl=KL_TARGET if "kl" in flags else None,
        seeds="0-1" if len(seeds) > 1 else None,
    )
    initial = [p.detach().clone() for p in model.parameters()]
    planted = []
    if "nan" in flags and rank == 1:

        def plant(grad: torch.Tensor) -> torch.Tensor:
            if len(planted) >= 2:
                return grad
            grad = grad.clone()
            grad.view(-1)[::5] = float("nan")
            planted.append(grad.view(-1)[::5].numel())
            return grad

        model.aux_1h.weight.register_hook(plant)
    trainer.train(total_steps=4 * 32 * 2 * 3)
    torch.save(
        {
            "initial": initial,
            "final": [p.detach() for p in model.parameters()],
            "adam_steps": (
                trainer.optimizer.step_count.tolist()
                if len(seeds) > 1
                else [float(s["step"]) for s in trainer.optimizer.state.values()]
            ),
        },
        out / f"rank{rank}.pt",
    )
    (out / f"planted{rank}.json").write_text(json.dumps(planted))
    logging.getLogger("pyppo").removeHandler(log)
    log.close()


def main(out: Path, scenarios: list[str]) -> None:
    dist.init_process_group("gloo")
    logging.getLogger("pyppo").setLevel(logging.WARNING)
    for scenario in scenarios:
        run_scenario(out / scenario, set(scenario.split("+")) - {"plain"}, dist.get_rank())
    dist.destroy_process_group()


if __name__ == "__main__":
    main(Path(sys.argv[1]), sys.argv[2:])
