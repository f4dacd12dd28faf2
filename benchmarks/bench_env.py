"""TradingEnv throughput: env-steps per second (num_envs x step() calls per second).

    python benchmarks/bench_env.py                          # CPU, num_envs 1, 64, 1024
    python benchmarks/bench_env.py --device cuda
    python benchmarks/bench_env.py --num-envs 64 1024 4096 --json bench-out/env.json

Each row times ``--steps`` calls of ``step()`` with pre-drawn random actions on the env's
device (drawing actions is the policy's cost, not the env's), over the default synthetic
market (20,000 hourly bars) with the default observation (window 60: 74 floats), fee and
aux horizons (1h, 24h), random episode starts and auto-reset (episode_length 720, so
resets are part of the timing). Reported: the median of ``--repeats`` timings.
Targets on the CPU: >= 1,000,000 env-steps/s at 1024 envs, >= 200,000 at 64.
"""

from __future__ import annotations

import argparse

import torch
from common import machine, median_seconds, print_machine, print_table, write_json

from pyppo import TradingEnv, synthetic_market

TARGETS = {64: 200_000, 1024: 1_000_000}  # CPU targets, env-steps per second


def bench(num_envs: int, args: argparse.Namespace, market) -> dict:
    env = TradingEnv(market, num_envs=num_envs, window=args.window, device=args.device, seed=0)
    env.reset(seed=0)
    gen = torch.Generator(device=args.device).manual_seed(0)
    pool = [torch.randint(0, 3, (num_envs,), generator=gen, device=args.device) for _ in range(64)]

    def run() -> None:
        for i in range(args.steps):
            env.step(pool[i & 63])

    seconds = median_seconds(run, device=args.device, repeats=args.repeats, warmup=1)
    per_second = num_envs * args.steps / seconds
    target = TARGETS.get(num_envs) if args.device == "cpu" else None
    return {
        "num_envs": num_envs,
        "steps": args.steps,
        "us_per_step_call": seconds / args.steps * 1e6,
        "env_steps_per_s": per_second,
        "target": target,
        "meets_target": None if target is None else per_second >= target,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 64, 1024])
    parser.add_argument("--steps", type=int, default=2000, help="step() calls per timing")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--window", type=int, default=60)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()

    market = synthetic_market()
    rows = [bench(n, args, market) for n in args.num_envs]
    info = machine(args.device)
    print_machine(info)
    print_table(
        f"TradingEnv.step ({args.device}, window {args.window}, {args.steps} steps x "
        f"median of {args.repeats})",
        ["num_envs", "us/step()", "env-steps/s", "target", "ok"],
        [
            [
                r["num_envs"],
                r["us_per_step_call"],
                r["env_steps_per_s"],
                "-" if r["target"] is None else f"{r['target']:,}",
                "-" if r["meets_target"] is None else ("yes" if r["meets_target"] else "NO"),
            ]
            for r in rows
        ],
    )
    write_json(args.json, {"benchmark": "env", "machine": info, "args": vars(args), "rows": rows})


if __name__ == "__main__":
    main()
