"""The GPU preset against the CPU default: held-out result and wall time, per training seed.

    python benchmarks/bench_preset.py                        # seeds 0 1 2, on a machine with a GPU
    python benchmarks/bench_preset.py --seeds 0 --preset-args --device cpu --total-steps 65536

Per seed, two runs of ``scripts/train_rl_agent.py`` on the default synthetic market, each a
subprocess timed from start to exit (start-up, data, compilation or capture, training,
validation and checkpoints included):

- CPU default: ``--device cpu --seed S`` (every other setting at its default);
- GPU preset: ``--config configs/gpu.toml --seed S`` plus ``--preset-args``.

Each run's best checkpoint is then backtested on the held-out bars
(:func:`pyppo.cli.evaluate_run`, not timed) and its annualized Sharpe ratio compared with
buy-and-hold's on the same bars. The preset wins a seed when it beats buy-and-hold in less
wall time than the CPU default took.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import machine, print_machine, print_table, write_json

from pyppo.cli import evaluate_run

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "train_rl_agent.py"
PRESET = ROOT / "configs" / "gpu.toml"


def train_and_evaluate(argv: list[str], run_dir: Path) -> dict[str, float]:
    """Train with ``argv`` into ``run_dir`` (timed), then backtest its best checkpoint."""
    command = [sys.executable, str(SCRIPT), *argv, "--quiet", "--run-dir", str(run_dir)]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    metrics, _ = evaluate_run(run_dir, device="cpu")
    return {
        "train_seconds": seconds,
        "sharpe": metrics["agent"]["sharpe"],
        "buy_and_hold_sharpe": metrics["buy_and_hold"]["sharpe"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--preset-args",
        nargs=argparse.REMAINDER,
        default=[],
        help="extra flags for the preset's runs (last on the line)",
    )
    parser.add_argument("--json")
    args = parser.parse_args()
    info = machine("cuda" if "cpu" not in args.preset_args else "cpu")
    print_machine(info)

    setups = {
        "CPU default": ["--device", "cpu"],
        "GPU preset": ["--config", str(PRESET), *args.preset_args],
    }
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            for name, argv in setups.items():
                run_dir = Path(tmp) / f"{name.replace(' ', '-')}-{seed}"
                result = train_and_evaluate([*argv, "--seed", str(seed)], run_dir)
                results.append({"setup": name, "seed": seed, **result})
                print(f"  {name}, seed {seed}: {result}", flush=True)

    print_table(
        "held-out Sharpe ratio and training wall time (default synthetic market)",
        ["setup", "seed", "wall s", "Sharpe", "buy & hold", "beats B&H"],
        [
            [
                r["setup"],
                r["seed"],
                r["train_seconds"],
                r["sharpe"],
                r["buy_and_hold_sharpe"],
                "yes" if r["sharpe"] > r["buy_and_hold_sharpe"] else "no",
            ]
            for r in results
        ],
    )
    by_run = {(r["setup"], r["seed"]): r for r in results}
    for seed in args.seeds:
        cpu, gpu = by_run["CPU default", seed], by_run["GPU preset", seed]
        faster = gpu["train_seconds"] < cpu["train_seconds"]
        beats = gpu["sharpe"] > gpu["buy_and_hold_sharpe"]
        print(
            f"seed {seed}: preset beats buy-and-hold: {'yes' if beats else 'NO'}; "
            f"in less wall time than the CPU default: {'yes' if faster else 'NO'} "
            f"({gpu['train_seconds']:.1f} s vs {cpu['train_seconds']:.1f} s)"
        )
    write_json(args.json, {"benchmark": "preset", "machine": info, "results": results})


if __name__ == "__main__":
    main()
