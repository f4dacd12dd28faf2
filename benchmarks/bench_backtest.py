"""Backtest speed: a greedy agent over a long synthetic market, split by stage.

    python benchmarks/bench_backtest.py                      # 2,000,000 bars on the CPU
    python benchmarks/bench_backtest.py --bars 400000 --batch-size 2048 4096 8192 16384 --plain
    python benchmarks/bench_backtest.py --json bench-out/backtest.json

The agent is the default model, ``TradingActorCritic(env.obs_spec, hidden_dim=128)`` with
its initial weights, over ``synthetic_market(n_bars=--bars)`` with window 60, shorting
allowed (3 positions) and the default aux horizons (1h, 24h). Stages, each timed
``--repeats`` times after one warm-up (median and best reported: the machines are shared,
and the best run is the one least slowed by neighbours):

- features: :func:`pyppo.features.compute_features` (the per-bar features),
- forward passes: :func:`pyppo.inference.policy_outputs` on them (every decision
  bar once per position, in batches of ``--batch-size`` bars; with ``--plain`` also without
  reusing the model's position-free part),
- walk: :func:`pyppo.inference.walk` (the greedy run through the outputs),
- total: :func:`pyppo.evaluation.backtest` end to end (features, passes, walk, rewards).

Target on the CPU: a 2,000,000-bar backtest in at most 10 s.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from statistics import median

import torch
from common import check_device, machine, print_machine, print_table, synchronize, write_json

from pyppo import ObsSpec, TradingActorCritic, synthetic_market
from pyppo.evaluation import backtest
from pyppo.features import compute_features
from pyppo.inference import BATCH_SIZE, PolicyOutputs, policy_outputs, walk

TARGET_SECONDS = 10.0  # CPU target for 2,000,000 bars


def seconds(fn: Callable[[], object], device: str, repeats: int) -> list[float]:
    """Wall times of ``repeats`` calls of ``fn`` after one warm-up call."""
    times = []
    for i in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        fn()
        synchronize(device)
        if i:
            times.append(time.perf_counter() - start)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--bars", type=int, default=2_000_000)
    parser.add_argument("--window", type=int, default=60)
    parser.add_argument("--hidden-dim", type=int, default=128)
    parser.add_argument("--batch-size", type=int, nargs="+", default=[BATCH_SIZE])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--plain", action="store_true", help="also time forward passes without branch reuse"
    )
    parser.add_argument("--json", default=None, help="also write the results to this file")
    args = parser.parse_args()
    check_device(parser, args.device)

    market = synthetic_market(n_bars=args.bars)
    torch.manual_seed(0)
    # ObsSpec.for_window(window) is what env.obs_spec is for this window.
    model = TradingActorCritic(ObsSpec.for_window(args.window), hidden_dim=args.hidden_dim)
    model = model.to(args.device)
    window, device = args.window, args.device
    stop = window + market.decision_bars(window)
    features = compute_features(market, window, device)

    def forward(batch_size: int, reuse: bool) -> PolicyOutputs:
        return policy_outputs(
            model,
            market,
            window,
            True,
            device,
            batch_size,
            stop=stop,
            features=features,
            reuse=reuse,
        )

    stages: list[tuple[str, object, Callable[[], object]]] = [
        ("features", "-", lambda: compute_features(market, window, device))
    ]
    variants = [("forward passes", True)]
    if args.plain:
        variants.append(("forward passes, no reuse", False))
    for batch_size in args.batch_size:
        for label, reuse in variants:
            stages.append((label, batch_size, lambda b=batch_size, r=reuse: forward(b, r)))
    outputs = forward(BATCH_SIZE, True)
    stages.append(("walk", "-", lambda: walk(outputs)))
    stages.append(
        (
            "total: backtest()",
            BATCH_SIZE,
            lambda: backtest(market, model, window=window, device=device),
        )
    )
    rows = []
    for label, batch, fn in stages:
        times = seconds(fn, device, args.repeats)
        rows.append(
            {"stage": label, "batch": batch, "median_s": median(times), "best_s": min(times)}
        )

    info = machine(device)
    print_machine(info)
    bars = stop - window
    print_table(
        f"backtest of {bars:,} decision bars ({args.bars:,}-bar synthetic market, window "
        f"{window}, hidden_dim {args.hidden_dim}, 3 positions, {device}; {args.repeats} runs)",
        ["stage", "batch", "median s", "best s", "bars/s (median)"],
        [[r["stage"], r["batch"], r["median_s"], r["best_s"], bars / r["median_s"]] for r in rows],
    )
    total = rows[-1]["median_s"]
    target = TARGET_SECONDS * args.bars / 2_000_000 if device == "cpu" else None
    if target is not None:
        verdict = "yes" if total <= target else "NO"
        print(f"\ntarget: total <= {target:.3g} s -> {verdict} (median {total:.3g} s)")
    write_json(
        args.json,
        {
            "benchmark": "backtest",
            "machine": info,
            "args": vars(args),
            "rows": rows,
            "target_seconds": target,
        },
    )


if __name__ == "__main__":
    main()
