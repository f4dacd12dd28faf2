"""Training throughput as the number of envs grows: the sweep for GPU-resident training.

    python benchmarks/bench_scale.py                              # CPU: 32, 256, 1,024 envs
    python benchmarks/bench_scale.py --device cuda                # 32, 1,024, 4,096, 16,384
    python benchmarks/bench_scale.py --device cuda --compile --num-envs 4096 16384

Each point trains the default model (``TradingActorCritic``, hidden_dim 128, every guard on)
on the default synthetic market's training split with ``--num-envs`` envs, rollouts of
``--num-steps`` steps cut into ``--num-minibatches`` minibatches, ``--num-epochs`` epochs
(the geometry of ``configs/gpu.toml``). Per point:

- the first update alone (allocations, and with ``--compile`` the compilation and CUDA-graph
  capture), then ``--updates`` timed updates: env steps/s of the median update, and of the
  wall time of all of them with the first included;
- where the time goes, from one more update with every part synchronized and timed: env
  steps, the rollout's forward passes, buffer writes, GAE, the gradient guard, the rest of
  the PPO update (forward, backward, Adam);
- host reads in one more update (:class:`pyppo.diagnostics.HostReads`: Python-level reads
  and dispatcher-level scalar reads / nonzero);
- on CUDA, whether one update's epochs run under ``torch.cuda.set_sync_debug_mode("error")``
  without a synchronizing call.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections import defaultdict

import torch
from common import (
    Timed,
    check_device,
    machine,
    print_machine,
    print_table,
    synchronize,
    training_env,
    write_json,
)

from pyppo import PPOTrainer, TradingActorCritic
from pyppo.diagnostics import HostReads

PARTS = ("env step", "rollout forward", "buffer add", "GAE", "gradient guard", "PPO update")
OVERHEAD = ("env step", "buffer add", "GAE", "gradient guard")


def make_trainer(args: argparse.Namespace, num_envs: int) -> PPOTrainer:
    env = training_env(args.device, num_envs)
    torch.manual_seed(0)
    model = TradingActorCritic(env.obs_spec, hidden_dim=args.hidden_dim)
    return PPOTrainer(
        model,
        env,
        num_steps=args.num_steps,
        num_epochs=args.num_epochs,
        num_minibatches=args.num_minibatches,
        device=args.device,
        compile=args.compile,
        progress=False,
    )


def one_more_update(trainer: PPOTrainer, device: str) -> float:
    """Seconds of one more update (rollout and epochs)."""
    per_update = trainer.num_envs * trainer.config.num_steps
    synchronize(device)
    start = time.perf_counter()
    trainer.train(total_steps=trainer.env_steps + per_update)
    synchronize(device)
    return time.perf_counter() - start


def time_split(trainer: PPOTrainer, device: str) -> dict[str, float]:
    """Seconds per part of one update, every part synchronized (slower than unsplit)."""
    totals: dict[str, float] = defaultdict(float)
    wrapped = [
        (trainer.env, "step", "env step"),
        (trainer.buffer, "add", "buffer add"),
        (trainer.buffer, "compute_returns_and_advantage", "GAE"),
        (trainer.guard, "step", "gradient guard"),
        (trainer, "collect_rollout", "rollout"),
    ]
    for owner, method, name in wrapped:
        setattr(owner, method, Timed(totals, name, getattr(owner, method), device))
    try:
        total = one_more_update(trainer, device)
    finally:
        for owner, method, _ in wrapped:
            delattr(owner, method)  # the class's method again
    parts = {name: totals[name] for name in OVERHEAD}
    parts["rollout forward"] = totals["rollout"] - sum(
        totals[n] for n in ("env step", "buffer add", "GAE")
    )
    parts["PPO update"] = total - totals["rollout"] - totals["gradient guard"]
    parts["total"] = total
    return parts


def sync_free_update(trainer: PPOTrainer) -> str:
    """'yes' when one update's epochs ran under set_sync_debug_mode("error"), else the error."""
    ppo_update = trainer.ppo_update

    def checked(counters):  # noqa: ANN001, ANN202
        torch.cuda.set_sync_debug_mode("error")
        try:
            return ppo_update(counters)
        finally:
            torch.cuda.set_sync_debug_mode("default")

    trainer.ppo_update = checked
    try:
        one_more_update(trainer, "cuda")
    except RuntimeError as err:
        return str(err).splitlines()[0][:80]
    finally:
        del trainer.ppo_update
    return "yes"


def sweep_point(args: argparse.Namespace, num_envs: int) -> dict:
    trainer = make_trainer(args, num_envs)
    per_update = num_envs * args.num_steps
    first = one_more_update(trainer, args.device)
    seconds = [one_more_update(trainer, args.device) for _ in range(args.updates)]
    split = time_split(trainer, args.device)
    with HostReads() as reads:
        one_more_update(trainer, args.device)
    point = {
        "num_envs": num_envs,
        "steps_per_update": per_update,
        "first_update_s": first,
        "update_seconds": seconds,
        "steps_per_s": per_update / statistics.median(seconds),
        "wall_steps_per_s": per_update * (len(seconds) + 1) / (first + sum(seconds)),
        "split_seconds": split,
        "overhead_share": sum(split[n] for n in OVERHEAD) / split["total"],
        "host_reads": {"python": reads.python, "dispatch": reads.dispatch},
    }
    if args.device == "cuda":
        point["sync_free_update"] = sync_free_update(trainer)
    return point


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument("--num-envs", type=int, nargs="+", default=None)
    parser.add_argument("--num-steps", type=int, default=32)
    parser.add_argument("--num-minibatches", type=int, default=4)
    parser.add_argument("--num-epochs", type=int, default=4)
    parser.add_argument("--hidden-dim", type=int, default=128)
    parser.add_argument("--updates", type=int, default=3, help="timed updates per point")
    parser.add_argument("--compile", action="store_true", help="train with compile=True")
    parser.add_argument("--json")
    args = parser.parse_args()
    check_device(parser, args.device)
    if args.num_envs is None:
        args.num_envs = [32, 1024, 4096, 16384] if args.device == "cuda" else [32, 256, 1024]

    info = machine(args.device)
    print_machine(info)
    print(
        f"geometry: {args.num_steps} steps x num_envs per update, {args.num_minibatches} "
        f"minibatches, {args.num_epochs} epochs, hidden_dim {args.hidden_dim}, "
        f"compile={args.compile}, {args.updates} timed updates per point"
    )
    points = []
    for num_envs in args.num_envs:
        points.append(sweep_point(args, num_envs))
        p = points[-1]
        print(f"  {num_envs:>6} envs: {p['steps_per_s']:,.0f} env steps/s", flush=True)

    print_table(
        "throughput by number of envs (env steps per second)",
        ["envs", "median update", "wall, first incl.", "first update s", "host reads/update"],
        [
            [
                p["num_envs"],
                p["steps_per_s"],
                p["wall_steps_per_s"],
                p["first_update_s"],
                f"{p['host_reads']['python']} + {p['host_reads']['dispatch']}",
            ]
            for p in points
        ],
    )
    print_table(
        "where the time goes (% of one synchronized update)",
        ["envs", *PARTS, "env+buffer+GAE+guard"],
        [
            [
                p["num_envs"],
                *(100 * p["split_seconds"][n] / p["split_seconds"]["total"] for n in PARTS),
                100 * p["overhead_share"],
            ]
            for p in points
        ],
    )
    if args.device == "cuda":
        for p in points:
            print(f"{p['num_envs']} envs: update free of syncs: {p['sync_free_update']}")
    payload = {"benchmark": "scale", "machine": info, "args": vars(args), "points": points}
    write_json(args.json, payload)


if __name__ == "__main__":
    main()
