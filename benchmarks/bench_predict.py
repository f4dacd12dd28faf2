"""Predictions of a trained agent: ``Agent.predict(bars, all_bars=True)`` on 1,000 bars, and
the last bar only, with the default model (TradingActorCritic, hidden 128).

    python benchmarks/bench_predict.py [--bars 1000] [--repeats 15]

Times everything a caller pays: validating the bars, the features, the batched forward
passes (one per position) and the walk. Target: at most 200 ms for 1,000 bars on a CPU.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from common import machine, print_machine, print_table

from pyppo import Agent, TradingActorCritic, TradingEnv, synthetic_market


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bars", type=int, default=1000, help="bars to predict")
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    print_machine(machine("cpu"))
    market = synthetic_market(n_bars=3000, seed=0)
    env = TradingEnv(market, num_envs=1)
    torch.manual_seed(0)
    agent = Agent(
        TradingActorCritic(env.obs_spec, hidden_dim=128).eval(), env.describe(), torch.device("cpu")
    )
    frame = market.frame.iloc[-(args.bars + agent.window) :]  # the window, then the bars
    rows = []
    for name, kwargs in (("all bars", {"all_bars": True}), ("last bar", {})):
        agent.predict(frame, **kwargs)  # warm-up
        seconds = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            agent.predict(frame, **kwargs)
            seconds.append(time.perf_counter() - start)
        rows.append([name, len(frame), 1000 * statistics.median(seconds), 1000 * min(seconds)])
    print_table(
        f"Agent.predict, {args.bars:,} bars after the window (median of {args.repeats})",
        ["what", "bars given", "median ms", "min ms"],
        rows,
    )


if __name__ == "__main__":
    main()
