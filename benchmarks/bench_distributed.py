"""Training on 1 and 2 processes (torchrun; gloo on the CPU, NCCL on a GPU), same global batch.

    python benchmarks/bench_distributed.py [--device cpu|cuda] [--rounds 3] [--updates 4]

Each process runs torch on one thread. The runs alternate (round robin, so the machine's slow
and fast moments are shared) and the table gives env steps/s of the whole job (median update)
with the time split of the PPO update: the gradients' all-reduce, the gradient guard (its own
passes), and the rest. On a single GPU only one NCCL rank fits, so ``--device cuda`` measures
1 process (two NCCL ranks on one GPU are not supported).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

GEOMETRY = dict(num_envs=32, num_steps=256, num_epochs=4, batch_size=256, hidden_dim=128)


def geometry(args: argparse.Namespace) -> dict[str, int]:
    return {k: getattr(args, k) or v for k, v in GEOMETRY.items()}


def worker(args: argparse.Namespace) -> None:  # noqa: C901
    """One process of the job: time ``args.updates`` updates after one warm-up."""
    import torch

    import pyppo.guard
    from pyppo import PPOTrainer, TradingActorCritic, TradingEnv, synthetic_market
    from pyppo.distributed import init_from_environment, rank_and_world

    torch.set_num_threads(1)
    device = init_from_environment(args.device)
    rank, world = rank_and_world()
    geo = geometry(args)
    totals = {"all-reduce": 0.0, "guard": 0.0}

    def timed(name: str, fn):
        def call(*a, **kw):
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            out = fn(*a, **kw)
            if device.type == "cuda":
                torch.cuda.synchronize()
            totals[name] += time.perf_counter() - start
            return out

        return call

    pyppo.guard.averaged_gradients_ = timed("all-reduce", pyppo.guard.averaged_gradients_)
    train, _ = synthetic_market(seed=0).split(0.7)
    env = TradingEnv(train, num_envs=geo["num_envs"] // world, device=device, seed=1000 * rank)
    torch.manual_seed(0)
    model = TradingActorCritic(env.obs_spec, hidden_dim=geo["hidden_dim"])
    trainer = PPOTrainer(
        model,
        env,
        num_steps=geo["num_steps"],
        num_epochs=geo["num_epochs"],
        batch_size=geo["batch_size"],
        device=device,
        progress=False,
    )
    trainer.guard.step = timed("guard", trainer.guard.step)
    per_update = geo["num_steps"] * geo["num_envs"]
    trainer.train(total_steps=per_update)  # warm-up
    for key in totals:
        totals[key] = 0.0
    seconds, update_seconds = [], 0.0
    for _ in range(args.updates):
        start = time.perf_counter()
        trainer.train(total_steps=(trainer.update + 1) * per_update)
        seconds.append(time.perf_counter() - start)
        update_seconds += trainer.history[-1]["perf/update_seconds"]
    if rank == 0:
        guard_own = totals["guard"] - totals["all-reduce"]
        rollout = sum(r["perf/rollout_seconds"] for r in trainer.history[-args.updates :])
        print(
            "RESULT "
            + json.dumps(
                {
                    "seconds": seconds,
                    "rollout_seconds": rollout,
                    "update_seconds": update_seconds,
                    "allreduce": totals["all-reduce"],
                    "guard": guard_own,
                }
            )
        )


def run(ranks: int, args: argparse.Namespace) -> dict:
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={ranks}",
        str(Path(__file__).resolve()),
        "--worker",
        "--updates",
        str(args.updates),
        "--device",
        args.device,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    return json.loads(next(line for line in out.splitlines() if line.startswith("RESULT "))[7:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--updates", type=int, default=4, help="timed updates per run")
    for key, default in GEOMETRY.items():
        parser.add_argument(
            f"--{key.replace('_', '-')}",
            type=int,
            default=None,
            help=f"global {key} (default {default})",
        )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import machine, print_machine, print_table

    print_machine(machine(args.device))
    print(
        f"geometry (global): {GEOMETRY}; one torch thread per process; {args.rounds} rounds "
        f"x {args.updates} updates"
    )
    counts = [1] if args.device == "cuda" else [1, 2]
    results: dict[int, list[dict]] = {n: [] for n in counts}
    for _ in range(args.rounds):
        for n in counts:
            results[n].append(run(n, args))
    per_update = geometry(args)["num_steps"] * geometry(args)["num_envs"]
    rows = []
    base = None
    for n, runs in results.items():
        speed = per_update / statistics.median(s for r in runs for s in r["seconds"])
        base = base or speed
        update = sum(r["update_seconds"] for r in runs)
        allreduce = sum(r["allreduce"] for r in runs) / update
        guard = sum(r["guard"] for r in runs) / update
        print(
            f"{n} process(es): rollout {sum(r['rollout_seconds'] for r in runs):.2f} s, "
            f"update {update:.2f} s, all-reduce {sum(r['allreduce'] for r in runs):.2f} s"
        )
        rows.append(
            [n, speed, speed / base, 100 * allreduce, 100 * guard, 100 * (allreduce + guard)]
        )
    print_table(
        "training throughput by number of processes (env steps/s of the whole job)",
        [
            "processes",
            "env steps/s",
            "vs 1",
            "all-reduce % of update",
            "guard % of update",
            "comm + guard %",
        ],
        rows,
    )


if __name__ == "__main__":
    main()
