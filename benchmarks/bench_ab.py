"""Training speed of this checkout against another commit (A/B), measured side by side.

    python benchmarks/bench_ab.py --against REV [--rounds 6] [--updates 2]

Python-level changes to the trainer are judged by this: both versions train the default
model (TradingActorCritic) on the default market with the same PPO geometry, in alternating
subprocesses (round robin, the first to go alternating, so the machine's slow and fast moments are
shared), and the
table gives each one's median env steps/s and their ratio, per round too.

The other commit is exported into a temporary folder and runs with this checkout's compiled
extension, so only commits whose C++/CUDA sources (``csrc/``) are the same as this
checkout's can be compared; the script refuses others.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
GEOMETRY = dict(num_envs=32, num_steps=256, num_epochs=4, batch_size=256, hidden_dim=128)


def worker(updates: int) -> None:
    """Runs in the tree on ``sys.path[0]``: time ``updates`` PPO updates after one warm-up
    and print their seconds as JSON."""
    # An editable install of this checkout redirects "import pyppo" to it; drop that finder
    # so that the tree this worker was started in is the one imported.
    sys.meta_path[:] = [f for f in sys.meta_path if "ScikitBuild" not in type(f).__name__]
    import torch

    from pyppo import PPOTrainer, TradingActorCritic, TradingEnv, synthetic_market

    train, _ = synthetic_market(seed=0).split(0.7)
    env = TradingEnv(train, num_envs=GEOMETRY["num_envs"], seed=0)
    torch.manual_seed(0)
    model = TradingActorCritic(env.obs_spec, hidden_dim=GEOMETRY["hidden_dim"])
    trainer = PPOTrainer(
        model,
        env,
        num_steps=GEOMETRY["num_steps"],
        num_epochs=GEOMETRY["num_epochs"],
        batch_size=GEOMETRY["batch_size"],
        progress=False,
    )
    per_update = GEOMETRY["num_steps"] * GEOMETRY["num_envs"]
    trainer.train(total_steps=per_update)  # warm-up
    seconds = []
    for _ in range(updates):
        start = time.perf_counter()
        trainer.train(total_steps=(trainer.update + 1) * per_update)
        seconds.append(time.perf_counter() - start)
    print(
        json.dumps({"pyppo": str(Path(sys.modules["pyppo"].__file__).parent), "seconds": seconds})
    )


def export(rev: str | None, into: Path) -> Path:
    """The ``pyppo`` package of commit ``rev`` (None: of this working tree) in ``into``, with
    this checkout's compiled extension copied in."""
    into.mkdir()
    if rev is None:
        shutil.copytree(ROOT / "pyppo", into / "pyppo")
    else:
        # Comment-only differences (-I: lines that are all comment) do not change the build.
        same_sources = (
            subprocess.run(
                [
                    "git",
                    "-C",
                    str(ROOT),
                    "diff",
                    "--quiet",
                    r"-I^\s*(//|/?\*|#)",
                    rev,
                    "--",
                    "csrc",
                    "CMakeLists.txt",
                ]
            ).returncode
            == 0
        )
        if not same_sources:
            sys.exit(
                f"error: {rev} has other C++/CUDA sources than this checkout; build it "
                "and compare by hand"
            )
        archive = subprocess.run(
            ["git", "-C", str(ROOT), "archive", rev, "pyppo"], check=True, capture_output=True
        ).stdout
        subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    import pyppo._build_info
    import pyppo._C

    for module in (pyppo._C, pyppo._build_info):
        shutil.copy(module.__file__, into / "pyppo")
    return into


def run_worker(tree: Path, updates: int) -> list[float]:
    out = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--worker", "--updates", str(updates)],
        cwd=tree,
        check=True,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tree), "PATH": "/usr/bin:/bin"},
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    if Path(result["pyppo"]).resolve() != (tree / "pyppo").resolve():
        sys.exit(f"error: the worker imported {result['pyppo']}, not {tree / 'pyppo'}")
    return result["seconds"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--against", help="the commit to compare with (e.g. HEAD~1)")
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--updates", type=int, default=2, help="timed updates per round")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.updates)
        return
    if not args.against:
        parser.error("--against REV is required")
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from common import machine, print_machine, print_table

    print_machine(machine("cpu"))
    rev = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", args.against],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    head = subprocess.run(
        ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    with tempfile.TemporaryDirectory(prefix="pyppo-ab-") as tmp:
        trees = {
            f"{rev} (A)": export(rev, Path(tmp) / "a"),
            f"this working tree, at {head} (B)": export(None, Path(tmp) / "b"),
        }
        seconds: dict[str, list[float]] = {name: [] for name in trees}
        for round_ in range(args.rounds):
            # Alternate which version goes first, so that neither always follows the other.
            order = list(trees.items()) if round_ % 2 == 0 else list(trees.items())[::-1]
            for name, tree in order:
                seconds[name] += run_worker(tree, args.updates)
    per_update = GEOMETRY["num_steps"] * GEOMETRY["num_envs"]
    speed = {name: per_update / statistics.median(s) for name, s in seconds.items()}
    a, b = speed.values()
    print(f"geometry: {GEOMETRY}, {args.rounds} rounds x {args.updates} updates each")
    print_table(
        "training throughput, A/B (env steps per second, median update)",
        ["version", "env steps/s", "vs A"],
        [[name, s, s / a] for name, s in speed.items()],
    )
    sa, sb = seconds.values()
    ratios = sorted(x / y for x, y in zip(sa, sb, strict=True))
    print(
        f"B / A per update pair: min {ratios[0]:.3f}, median {statistics.median(ratios):.3f}, "
        f"max {ratios[-1]:.3f}; B / A of the medians: {b / a:.3f}"
    )


if __name__ == "__main__":
    main()
