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

    python benchmarks/bench_env.py --universe               # many symbols, in a fresh process

measures a universe instead: ``--symbols`` (100) synthetic symbols of ``--bars`` (44,000)
hourly bars each (4.4 M bars), pooled. It reports the bytes per bar the pooled env holds
after stepping (``TradingEnv.bytes_per_bar``: what grows with the bars), the process's
resident memory after each stage and its peak, the pooled env's steps/s at ``--num-envs``,
the portfolio money function's (:func:`pyppo.portfolio.portfolio_step`) cost per decision
and the whole :class:`pyppo.PortfolioEnv` step's, for a batch of 256 portfolios over 10,
100 and 1,000 symbols: their growth with the symbols should be at most linear.
"""

from __future__ import annotations

import argparse
import resource
import time

import torch
from common import machine, median_seconds, print_machine, print_table, write_json

from pyppo import PortfolioEnv, TradingEnv, synthetic_market
from pyppo.portfolio import portfolio_step

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


def resident_mib() -> float:
    """The process's resident memory now, in MiB (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def peak_mib() -> float:
    """The process's peak resident memory so far, in MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


PORTFOLIOS = 256  # the batch of portfolio_step's timing


def time_portfolio_step(symbols: int, batch: int, args: argparse.Namespace) -> float:
    """Seconds per :func:`portfolio_step` call for ``batch`` portfolios over ``symbols``."""
    gen = torch.Generator(device=args.device).manual_seed(symbols)
    shape = (batch, symbols)
    targets = [
        torch.randint(-1, 2, shape, generator=gen, device=args.device).float() / symbols
        for _ in range(8)
    ]
    returns = torch.randn(shape, generator=gen, device=args.device) * 0.01
    gaps = torch.zeros(shape, device=args.device)
    can_fill = torch.ones(shape, dtype=torch.bool, device=args.device)
    calls = max(args.steps // 10, 1)

    def decide() -> None:
        weights = torch.zeros(shape, device=args.device)
        for i in range(calls):
            step = portfolio_step(weights, targets[i & 7], returns, gaps, can_fill, can_fill, 1e-4)
            weights = step.weights

    return median_seconds(decide, device=args.device, repeats=args.repeats, warmup=1) / calls


PORTFOLIO_BARS = 2_000  # bars a symbol of the PortfolioEnv timing


def time_portfolio_env(symbols: int, args: argparse.Namespace) -> list[float]:
    """``[symbols, us per step(), portfolio-steps/s, ns per symbol-portfolio]`` of a
    :class:`PortfolioEnv` of :data:`PORTFOLIOS` portfolios over ``symbols`` symbols."""
    universe = synthetic_market(PORTFOLIO_BARS, seed=1, symbols=symbols)
    env = PortfolioEnv(
        universe, num_envs=PORTFOLIOS, episode_length=500, window=args.window, device=args.device
    )
    env.reset(seed=0)
    gen = torch.Generator(device=args.device).manual_seed(0)
    shape = (PORTFOLIOS, symbols)
    pool = [torch.randint(0, 3, shape, generator=gen, device=args.device) for _ in range(8)]
    calls = max(args.steps // 20, 1)

    def run() -> None:
        for i in range(calls):
            env.step(pool[i & 7])

    per_call = median_seconds(run, device=args.device, repeats=args.repeats, warmup=1) / calls
    return [symbols, per_call * 1e6, PORTFOLIOS / per_call, per_call * 1e9 / (PORTFOLIOS * symbols)]


def bench_universe(args: argparse.Namespace) -> None:
    stages = [("start", resident_mib(), peak_mib(), 0.0)]
    clock = time.perf_counter()
    universe = synthetic_market(args.bars, seed=0, symbols=args.symbols)
    stages.append(
        ("synthetic universe built", resident_mib(), peak_mib(), time.perf_counter() - clock)
    )
    bars = sum(len(m) for m in universe.markets.values())
    num_envs = max(args.num_envs)
    clock = time.perf_counter()
    env = TradingEnv(universe, num_envs=num_envs, window=args.window, device=args.device, seed=0)
    stages.append(("pooled env built", resident_mib(), peak_mib(), time.perf_counter() - clock))
    env.reset(seed=0)
    gen = torch.Generator(device=args.device).manual_seed(0)
    pool = [torch.randint(0, 3, (num_envs,), generator=gen, device=args.device) for _ in range(64)]

    def run() -> None:
        for i in range(args.steps):
            env.step(pool[i & 63])

    seconds = median_seconds(run, device=args.device, repeats=args.repeats, warmup=1)
    stages.append(("after stepping", resident_mib(), peak_mib(), seconds))
    info = machine(args.device)
    print_machine(info)
    print_table(
        f"{args.symbols} symbols x {args.bars:,} bars = {bars:,} bars, window {args.window}: "
        f"the env holds {env.bytes_per_bar:.1f} bytes a bar ({env.memory()})",
        ["stage", "resident MiB", "peak MiB", "seconds"],
        [[name, rss, peak, sec] for name, rss, peak, sec in stages],
    )
    pooled = num_envs * args.steps / seconds
    print_table(
        f"pooled TradingEnv.step over {args.symbols} symbols ({args.device})",
        ["num_envs", "env-steps/s"],
        [[num_envs, pooled]],
    )
    rows = []
    for symbols in (10, 100, 1000):
        per_call = time_portfolio_step(symbols, PORTFOLIOS, args)
        rows.append([symbols, PORTFOLIOS, per_call * 1e6, per_call * 1e9 / (PORTFOLIOS * symbols)])
    print_table(
        f"portfolio_step ({args.device}): one decision for a batch of portfolios",
        ["symbols", "portfolios", "us/decision", "ns per symbol-portfolio"],
        rows,
    )
    env_rows = [time_portfolio_env(symbols, args) for symbols in (10, 100, 1000)]
    print_table(
        f"PortfolioEnv.step ({args.device}): {PORTFOLIOS} portfolios, {PORTFOLIO_BARS:,} bars a "
        "symbol, random slots",
        ["symbols", "us/step()", "portfolio-steps/s", "ns per symbol-portfolio"],
        env_rows,
    )
    write_json(
        args.json,
        {
            "benchmark": "env-universe",
            "portfolio_env": env_rows,
            "machine": info,
            "args": vars(args),
            "bytes_per_bar": env.bytes_per_bar,
            "memory": env.memory(),
            "stages": stages,
            "pooled_env_steps_per_s": pooled,
            "portfolio_step": rows,
        },
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--num-envs", type=int, nargs="+", default=[1, 64, 1024])
    parser.add_argument("--steps", type=int, default=2000, help="step() calls per timing")
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--window", type=int, default=60)
    parser.add_argument("--json", default=None, help="also write the results to this file")
    parser.add_argument("--universe", action="store_true", help="benchmark a universe instead")
    parser.add_argument("--symbols", type=int, default=100, help="symbols of --universe")
    parser.add_argument("--bars", type=int, default=44_000, help="bars per symbol of --universe")
    args = parser.parse_args()
    if args.universe:
        bench_universe(args)
        return

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
