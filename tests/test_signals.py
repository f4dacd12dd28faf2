"""Ctrl-C and SIGTERM at any point of any command end it with one line and exit 130/143,
leaving complete old outputs or complete new ones; a run stopped before its first checkpoint
resumes from its beginning; a resumed run's metrics.csv never lacks a row."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import SMALL_RUN, same_rows

from pyppo import Agent
from pyppo.cli import eval_main, predict_main, train_main
from pyppo.evaluation import plots
from pyppo.interrupts import Interrupted
from pyppo.metrics import read_metrics

pytestmark = pytest.mark.slow  # end to end: commands in subprocesses, trained runs

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"


def handles_sigterm(pid: int) -> bool:
    """Whether the process has installed a SIGTERM handler (pyppo's first act at start-up;
    Python itself catches only SIGINT)."""
    status = Path(f"/proc/{pid}/status").read_text()
    caught = int(
        next(line for line in status.splitlines() if line.startswith("SigCgt:")).split()[1], 16
    )
    return bool(caught & (1 << (signal.SIGTERM - 1)))


def start(script: str, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(SCRIPTS / script), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )


def wait_until(condition, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def one_line(proc: subprocess.Popen, code: int) -> str:
    _, err = proc.communicate(timeout=120)
    lines = err.strip().splitlines()
    assert proc.returncode == code and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("signals") / "run"
    assert train_main([*SMALL_RUN, "--total-steps", "256", "--run-dir", str(run)]) == 0
    assert eval_main([str(run), "--device", "cpu"]) == 0
    return run


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads /proc")
@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_at_start_up_is_one_line(sig, code, tmp_path):
    proc = start("train_rl_agent.py", *SMALL_RUN, "--run-dir", str(tmp_path / "run"))
    wait_until(lambda: handles_sigterm(proc.pid), proc)  # pyppo's import has begun
    proc.send_signal(sig)
    line = one_line(proc, code)
    assert line.startswith(f"stopped by {signal.Signals(sig).name}"), line
    assert not (tmp_path / "run" / "config.json").exists()


def test_a_signal_during_evaluation_keeps_the_old_report_whole(run, monkeypatch, capsys):
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.suffix in (".md", ".csv", ".png")}
    real_save = plots.save

    def save_then_signal(fig, path):  # Ctrl-C after the first figure is written
        real_save(fig, path)
        raise Interrupted(signal.SIGINT)

    monkeypatch.setattr(plots, "save", save_then_signal)
    assert eval_main([str(run), "--device", "cpu"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("stopped by SIGINT"), err
    after = {p.name: p.read_bytes() for p in run.iterdir() if p.suffix in (".md", ".csv", ".png")}
    assert after == before and not list(run.glob(".*.tmp"))


def test_a_signal_during_predict_is_one_line(run, monkeypatch, capsys):
    def interrupted(*args, **kwargs):
        raise Interrupted(signal.SIGTERM)

    monkeypatch.setattr(Agent, "predict", interrupted)
    assert predict_main([str(run), "--synthetic"]) == 143
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["stopped by SIGTERM: nothing was changed (outputs are written whole)"]


def test_a_run_stopped_before_its_first_checkpoint_resumes_from_its_beginning(tmp_path, capsys):
    run = tmp_path / "run"
    args = [*SMALL_RUN, "--epochs", "1", "--checkpoint-every", "0", "--run-dir", str(run)]
    proc = start("train_rl_agent.py", *args)
    metrics = run / "metrics.csv"
    wait_until(lambda: metrics.exists() and len(metrics.read_text().splitlines()) > 2, proc)
    proc.kill()  # kill -9: no checkpoint was saved (only at the end)
    proc.communicate(timeout=60)
    assert not (run / "checkpoint.pt").exists() and (run / "config.json").exists()
    assert train_main(["--resume", "--run-dir", str(run), "--quiet"]) == 0
    assert "starting the run again from its beginning" in capsys.readouterr().out
    straight = tmp_path / "straight"
    assert train_main([*args[:-2], "--run-dir", str(straight)]) == 0
    same_rows(list(read_metrics(straight / "metrics.csv")), list(read_metrics(metrics)))


def test_a_resume_puts_back_the_metrics_rows_a_file_lost(tmp_path, capsys):
    run = tmp_path / "run"
    args = [*SMALL_RUN, "--total-steps", str(8 * 32 * 6), "--checkpoint-every", "3"]
    assert train_main([*args[:-4], "--total-steps", str(8 * 32 * 3), "--run-dir", str(run)]) == 0
    (run / "metrics.csv").unlink()  # deleted by hand
    assert train_main([*args, "--run-dir", str(run), "--resume"]) == 0
    assert "held 0 of the 3 rows up to update 3" in capsys.readouterr().out
    straight = tmp_path / "straight"
    assert train_main([*args, "--run-dir", str(straight)]) == 0
    same_rows(list(read_metrics(straight / "metrics.csv")), list(read_metrics(run / "metrics.csv")))


def test_the_row_of_an_update_is_on_disk_before_its_checkpoint(tmp_path, monkeypatch):
    from pyppo.training import trainer as trainer_module

    run = tmp_path / "run"
    seen = []
    save = trainer_module.PPOTrainer.save

    def save_and_look(self, name):
        rows = list(read_metrics(run / "metrics.csv")) if (run / "metrics.csv").exists() else []
        seen.append((self.update, len(rows)))
        return save(self, name)

    monkeypatch.setattr(trainer_module.PPOTrainer, "save", save_and_look)
    args = [*SMALL_RUN, "--total-steps", str(8 * 32 * 4), "--checkpoint-every", "2"]
    assert train_main([*args, "--run-dir", str(run)]) == 0
    assert seen and all(rows == update for update, rows in seen), seen
