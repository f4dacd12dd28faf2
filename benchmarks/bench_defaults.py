"""How close a training configuration comes to the market's planted edge, on fresh seeds.

    python benchmarks/bench_defaults.py                                # defaults, seeds 100-109
    python benchmarks/bench_defaults.py --config runs/sweep/best.toml  # a sweep's settings

Trains one population (``--seeds``, default ten seeds no sweep uses) with the given settings
on the default market, then scores every member on the held-out test bars: its Sharpe ratio,
the reference rule's (k and sign picked on those bars: an upper mark of what a simple rule
made there), the ratio, buy-and-hold's, its exposure, and its short head's correlation with
the realized 1-bar return beside the best linear predictor's (fit on the training bars).
Prints the table, the interquartile mean and the worst ratio, and the wall time of training.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
from common import machine, print_machine, print_table, write_json

from pyppo import stats
from pyppo.checkpoint import build_model, find_checkpoint, load_checkpoint
from pyppo.cli import split_data, train_main
from pyppo.cli.common import load_data
from pyppo.evaluation import backtest
from pyppo.evaluation.baselines import ReferenceRule
from pyppo.evaluation.report import backtest_settings, linear_predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=None, help="a TOML of settings (default: defaults)")
    parser.add_argument("--seeds", default="100-109")
    parser.add_argument("--out", default="runs/bench_defaults")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    run = Path(args.out)
    # Always the default market (a sweep's best.toml names the data seed it was tuned on).
    argv = ["--seeds", args.seeds, "--data-seed", "0", "--run-dir", str(run), "--overwrite"]
    argv += ["--quiet"]
    argv += ["--config", args.config] if args.config else []
    start = time.perf_counter()
    if train_main(argv) != 0:
        raise SystemExit("training failed")
    minutes = (time.perf_counter() - start) / 60
    checkpoint = load_checkpoint(find_checkpoint(run))
    config = checkpoint.run_config
    market, _ = load_data(config, {"data.horizons"})
    train, _, test = split_data(market)
    population = build_model(checkpoint.agent.model, checkpoint.model)
    common = backtest_settings(config)
    hold = backtest(test, "buy_and_hold", **common)
    references = [backtest(test, rule, **common) for rule in ReferenceRule.every()]
    reference = max(references, key=lambda r: stats.sharpe_for_ranking(r.sharpe))
    linear = linear_predictions(train, test, config.env.window, market.horizons[0])
    seeds = config.ppo.member_seeds
    rows, ratios, sharpes = [], [], []
    for k, seed in enumerate(seeds):
        agent = backtest(test, population.member(k), **common)
        ratio = stats.sharpe_for_ranking(agent.sharpe) / reference.sharpe
        head = stats.correlation(agent.preds["pred_1h"], agent.targets["pred_1h"])
        best_linear = stats.correlation(
            linear[: len(agent.targets["pred_1h"])], agent.targets["pred_1h"]
        )
        ratios.append(ratio)
        sharpes.append(stats.sharpe_for_ranking(agent.sharpe))
        rows.append(
            [
                seed,
                f"{agent.sharpe:.2f}",
                f"{reference.sharpe:.2f}",
                f"{ratio:.2f}",
                f"{hold.sharpe:.2f}",
                f"{100 * np.mean(agent.positions != 0):.0f} %",
                f"{head:+.3f}",
                f"{best_linear:+.3f}",
            ]
        )
    info = machine("cpu")
    print_machine(info)
    print_table(
        f"{args.config or 'defaults'}: {len(seeds)} fresh seeds on the default market's test bars",
        [
            "seed",
            "agent Sharpe",
            "reference",
            "ratio",
            "buy & hold",
            "exposure",
            "pred_1h corr",
            "linear corr",
        ],
        rows,
    )
    beats = sum(s > hold.sharpe for s in sharpes)
    print(
        f"IQM Sharpe {stats.iqm(np.array(sharpes)):.2f}, "
        f"IQM ratio {stats.iqm(np.array(ratios)):.2f}, "
        f"worst ratio {min(ratios):.2f}, {beats} of {len(seeds)} beat buy-and-hold; "
        f"training took {minutes:.1f} min for {len(seeds)} members"
    )
    write_json(args.json, {"machine": info, "args": vars(args), "rows": rows, "minutes": minutes})


if __name__ == "__main__":
    main()
