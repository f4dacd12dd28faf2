"""Training on two processes (torchrun, gloo, CPU): identical parameters on every rank, a NaN
on one rank costs only its own elements, every rank takes the same skip decision, a killed
run resumes exactly, and a two-node launch writes one metrics.csv."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import SMALL_RUN, same_rows

from pyppo.checkpoint import load_checkpoint
from pyppo.metrics import read_metrics

# End to end: torchrun with two processes.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]
SMALL = SMALL_RUN
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def torchrun(*args: str, timeout: float = 240) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [*TORCHRUN, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


SCENARIOS = ("plain", "nan", "nan+skip", "kl", "population")


@pytest.fixture(scope="module")
def scenarios(tmp_path_factory) -> Path:
    """Every worker scenario, run in one two-rank launch."""
    out = tmp_path_factory.mktemp("distributed")
    torchrun(
        "--standalone", "--nproc_per_node=2", "tests/distributed_worker.py", str(out), *SCENARIOS
    )
    return out


def worker(out: Path) -> tuple[dict, dict]:
    return torch.load(out / "rank0.pt"), torch.load(out / "rank1.pt")


def identical(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b, strict=True))


def test_every_rank_starts_and_stays_bitwise_identical(scenarios):
    r0, r1 = worker(scenarios / "plain")
    assert identical(r0["initial"], r1["initial"])  # rank 0's weights, broadcast
    assert identical(r0["final"], r1["final"])
    assert not identical(r0["initial"], r0["final"])  # it did train


def test_a_nan_on_one_rank_is_zeroed_there_and_counted_once(scenarios):
    out = scenarios / "nan"
    r0, r1 = worker(out)
    assert identical(r0["final"], r1["final"])
    assert all(torch.isfinite(p).all() for p in r0["final"])
    planted = sum(json.loads((out / "planted1.json").read_text()))
    assert planted > 0 and json.loads((out / "planted0.json").read_text()) == []
    rows = list(read_metrics(out / "metrics.csv"))
    counts = {k: sum(r[k] for r in rows) for k in rows[0] if k.startswith("nonfinite/")}
    assert counts.pop("nonfinite/grad/aux_1h") == planted
    assert all(v == 0 for v in counts.values()), counts
    log0, log1 = (out / "log0.txt").read_text(), (out / "log1.txt").read_text()
    assert log0.count("NaN/inf gradient detected in aux_1h") == 1
    assert "NaN/inf" not in log1  # rank 0 alone logs


def test_skip_policy_every_rank_skips_the_same_steps(scenarios):
    out = scenarios / "nan+skip"
    r0, r1 = worker(out)
    assert identical(r0["final"], r1["final"])
    assert r0["adam_steps"] == r1["adam_steps"]
    planted_steps = len(json.loads((out / "planted1.json").read_text()))
    rows = list(read_metrics(out / "metrics.csv"))
    assert sum(r["guard/skipped_steps"] for r in rows) == planted_steps == 2
    minibatch_steps = 3 * 2 * 4  # updates x epochs x (128 samples / 32 per rank)
    assert r0["adam_steps"][0] == minibatch_steps - planted_steps


def test_a_population_trains_on_two_ranks_identically(scenarios):
    r0, r1 = worker(scenarios / "population")
    assert identical(r0["initial"], r1["initial"]) and identical(r0["final"], r1["final"])
    assert all(torch.isfinite(p).all() and p.shape[0] == 2 for p in r0["final"])
    assert not identical(r0["initial"], r0["final"])
    assert r0["adam_steps"] == r1["adam_steps"] == [24.0, 24.0]  # 3 updates x 2 epochs x 4
    rows = list(read_metrics(scenarios / "population" / "metrics.csv"))
    assert [r["member"] for r in rows] == [0, 1] * 3


def test_target_kl_stops_every_rank_at_the_same_epoch(scenarios):
    r0, r1 = worker(scenarios / "kl")
    assert identical(r0["final"], r1["final"])
    assert r0["adam_steps"] == r1["adam_steps"]
    epoch_steps = 4  # 128 samples / 32 per rank
    steps = r0["adam_steps"][0]
    assert steps % epoch_steps == 0 and steps < 3 * 2 * epoch_steps  # some epochs were cut


def cli(run: Path, *extra: str) -> list[str]:
    return [
        "--standalone",
        "--nproc_per_node=2",
        "scripts/train_rl_agent.py",
        *SMALL,
        "--run-dir",
        str(run),
        *extra,
    ]


def test_a_killed_two_rank_run_resumes_exactly(tmp_path):
    steps = ["--total-steps", str(8 * 32 * 8)]
    torchrun(*cli(tmp_path / "straight", *steps))
    straight = list(read_metrics(tmp_path / "straight" / "metrics.csv"))

    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [*TORCHRUN, *cli(run, *steps, "--checkpoint-every", "2")],
        cwd=ROOT,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if (
            (run / "checkpoint.pt").exists()
            and (run / "metrics.csv").exists()
            and len((run / "metrics.csv").read_text().splitlines()) > 3
        ):
            break
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    saved = load_checkpoint(run / "checkpoint.pt")
    assert len(saved.ranks) == 2 and saved.trainer.update < len(straight)

    torchrun(
        "--standalone",
        "--nproc_per_node=2",
        "scripts/train_rl_agent.py",
        "--resume",
        "--run-dir",
        str(run),
        "--quiet",
    )
    resumed = list(read_metrics(run / "metrics.csv"))
    same_rows(straight, resumed)


def test_resuming_with_another_world_size_is_a_clear_error(tmp_path, capsys):
    from pyppo.cli import train_main

    run = tmp_path / "run"
    torchrun(*cli(run, "--total-steps", "512"))
    assert train_main(["--resume", "--run-dir", str(run), "--quiet"]) == 2
    assert "written by 2 processes, this run has 1" in capsys.readouterr().err


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_two_node_launch_on_one_machine_writes_one_metrics_csv(tmp_path):
    run = tmp_path / "run"
    endpoint = f"127.0.0.1:{free_port()}"
    common = [
        "--nnodes=2",
        "--nproc_per_node=1",
        "--rdzv_backend=c10d",
        f"--rdzv_endpoint={endpoint}",
        "--rdzv_id=pyppo-test",
    ]
    script = ["scripts/train_rl_agent.py", *SMALL, "--run-dir", str(run), "--epochs", "1"]
    nodes = [
        subprocess.Popen(
            [*TORCHRUN, *common, f"--node_rank={r}", *script],
            cwd=ROOT,
            env=ENV,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for r in (0, 1)
    ]
    for node in nodes:
        _, err = node.communicate(timeout=240)
        assert node.returncode == 0, err[-3000:]
    rows = list(read_metrics(run / "metrics.csv"))
    assert rows and rows[-1]["epoch"] == 1
    assert sorted(p.name for p in run.iterdir() if p.suffix == ".csv") == ["metrics.csv"]
    assert len(load_checkpoint(run / "checkpoint.pt").ranks) == 2
