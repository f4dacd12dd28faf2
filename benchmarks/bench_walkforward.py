"""Walk-forward of the default settings on a market with a planted edge and on one without.

    python benchmarks/bench_walkforward.py                           # 4 windows x 4 seeds
    python benchmarks/bench_walkforward.py --windows 3 --seeds 5 --epochs 3 --bars 5000

Runs ``pyppo-walkforward`` twice with the same flags: on the embedded market (short-horizon
momentum planted) and on the same generator with the edge and the drift taken out
(``momentum_corr = 0``, every regime's drift 0), written to a CSV. Prints, for each, the
agent's out-of-sample Sharpe (the ensemble), the per-(window, seed) IQM with its interval,
the share of runs beating buy-and-hold, each baseline's Sharpe, the DSRs of the active
returns and the verdict, with the wall time. Run dirs go under ``--out``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

from common import machine, print_machine, print_table, write_json

from pyppo import synthetic_market
from pyppo.cli import walkforward_main
from pyppo.data.synthetic import SyntheticParams


def no_edge_csv(path: Path, bars: int) -> Path:
    """The embedded market's generator without its planted momentum and without drift."""
    params = SyntheticParams()
    params = dataclasses.replace(
        params,
        momentum_corr=0.0,
        regimes=tuple(dataclasses.replace(r, drift=0.0) for r in params.regimes),
    )
    synthetic_market(bars, seed=0, params=params).frame.to_csv(path)
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--windows", type=int, default=4)
    parser.add_argument("--seeds", default="4")
    parser.add_argument("--epochs", type=int, default=None, help="default: pyppo-train's")
    parser.add_argument("--bars", type=int, default=20_000)
    parser.add_argument("--out", default="runs/bench_walkforward")
    parser.add_argument("--json", default=None, help="also write the results here")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    common = ["--windows", str(args.windows), "--seeds", args.seeds, "--quiet", "--overwrite"]
    common += ["--bars", str(args.bars)] if args.bars else []
    common += ["--epochs", str(args.epochs)] if args.epochs else []
    markets = {
        "embedded (momentum planted)": [],
        "no edge (momentum 0, no drift)": [
            "--data",
            str(no_edge_csv(out / "no_edge.csv", args.bars)),
        ],
    }
    info = machine("cpu")
    print_machine(info)
    rows, results = [], {}
    for label, data in markets.items():
        run = out / ("embedded" if not data else "no_edge")
        start = time.perf_counter()
        code = walkforward_main([*common, *data, "--run-dir", str(run)])
        seconds = time.perf_counter() - start
        if code != 0:
            raise SystemExit(f"pyppo-walkforward failed on {label} (exit {code})")
        summary = json.loads((run / "report.json").read_text())
        results[label] = {"seconds": seconds, **summary}
        over = summary["agent_over_seeds"]
        sig = summary["significance"]
        rows.append(
            [
                label,
                f"{sig['agent']['sharpe']:.2f}",
                f"{over['iqm']:.2f} [{over['iqm_ci95'][0]:.2f}, {over['iqm_ci95'][1]:.2f}]",
                f"{summary['beats']['buy_and_hold']['share']:.0%}",
                *(
                    f"{sig[n]['sharpe']:.2f}"
                    for n in ("buy_and_hold", "ma_cross_10_30", "momentum_3")
                ),
                f"{sig['agent']['dsr_vs_hold']:.2f} / {sig['agent']['dsr_vs_best']:.2f}",
                "evidence" if sig["agent"]["evidence"] else "no evidence",
                f"{seconds / 60:.1f}",
            ]
        )
    print_table(
        f"walk-forward, {args.windows} windows x seeds {args.seeds}, out of sample",
        [
            "market",
            "agent Sharpe (ensemble)",
            "IQM over (window, seed) [95 % CI]",
            "beats B&H",
            "B&H",
            "ma_cross_10_30",
            "momentum_3",
            "agent DSR vs B&H / best",
            "verdict",
            "minutes",
        ],
        rows,
    )
    for label, result in results.items():
        print(f"{label}: {result['verdict']}")
    write_json(args.json, {"machine": info, "args": vars(args), "results": results})


if __name__ == "__main__":
    main()
