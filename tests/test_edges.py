"""Trust at the edges: checkpoints that cannot run code or be silently wrong, run dirs that
never lose a run, clean stops on SIGINT/SIGTERM, and evaluation that cannot lie."""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from helpers import SMALL_RUN, same_rows

from pyppo import synthetic_market
from pyppo.checkpoint import CheckpointError, load_checkpoint
from pyppo.cli import eval_main, train_main
from pyppo.metrics import read_metrics

# End to end: trained runs, signals, kill -9 and resume.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
SMALL = SMALL_RUN


def train(run: Path, *extra: str) -> int:
    return train_main([*SMALL, "--run-dir", str(run), *extra])


def last_error(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A finished one-epoch run (checkpoint.pt and best.pt), shared read-only."""
    run = tmp_path_factory.mktemp("trained") / "run"
    assert train(run, "--epochs", "1") == 0
    return run


def copy_run(trained: Path, to: Path) -> Path:
    to.mkdir()
    for f in trained.iterdir():
        if f.is_file():
            (to / f.name).write_bytes(f.read_bytes())
    return to


# -- checkpoints ------------------------------------------------------------------------------


class Payload:
    """Runs a shell command when unpickled."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_payload_runs_no_code_on_evaluate_or_resume(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    marker = tmp_path / "pwned"
    for name in ("checkpoint.pt", "best.pt"):
        state = torch.load(run / name, weights_only=True)
        state["trainer"]["history"] = Payload(marker)
        torch.save(state, run / name)
    assert eval_main([str(run), "--device", "cpu"]) == 2
    assert "does not load (they could run code)" in last_error(capsys)
    assert train_main(["--resume", "--run-dir", str(run), "--quiet"]) == 2
    assert "does not load (they could run code)" in last_error(capsys)
    assert not marker.exists()


def test_flipped_bytes_are_found(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    data = bytearray((run / "checkpoint.pt").read_bytes())
    middle = len(data) // 2
    data[middle : middle + 64] = bytes(b ^ 0xFF for b in data[middle : middle + 64])
    (run / "checkpoint.pt").write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(run / "checkpoint.pt")
    assert train_main(["--resume", "--run-dir", str(run), "--quiet"]) == 2
    assert "corrupt" in last_error(capsys)


def test_missing_keys_and_nan_weights_are_refused(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    state = torch.load(run / "checkpoint.pt", weights_only=True)
    del state["trainer"]["history"], state["ranks"]
    torch.save(state, run / "checkpoint.pt")
    assert train_main(["--resume", "--run-dir", str(run), "--quiet"]) == 2
    assert "lacks ranks, trainer.history" in last_error(capsys)

    for name in ("checkpoint.pt", "best.pt"):
        state = torch.load(trained / name, weights_only=True)
        state["model"]["critic.weight"][0, 0] = float("nan")
        torch.save(state, run / name)
    assert eval_main([str(run), "--device", "cpu"]) == 2
    assert "1 NaN/inf weights" in last_error(capsys)
    assert train_main(["--resume", "--run-dir", str(run), "--quiet"]) == 2
    assert "1 NaN/inf weights" in last_error(capsys)


# -- run dirs ---------------------------------------------------------------------------------


def test_an_existing_run_is_never_overwritten_silently(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    before = (run / "metrics.csv").read_bytes()
    assert train(run, "--total-steps", "256") == 2
    assert "already holds a run" in last_error(capsys)
    assert (run / "metrics.csv").read_bytes() == before
    # --overwrite replaces the whole run: the old best.pt must not outlive it.
    assert train(run, "--total-steps", "256", "--overwrite") == 0
    assert not (run / "best.pt").exists()
    assert len(list(read_metrics(run / "metrics.csv"))) == 1


def test_stray_temporary_files_are_cleaned_at_the_next_start(trained, tmp_path):
    run = copy_run(trained, tmp_path / "run")
    (run / ".checkpoint.pt.k1ll3d.tmp").write_bytes(b"half a checkpoint")
    assert train_main(["--resume", "--run-dir", str(run), "--epochs", "1", "--quiet"]) == 0
    assert not (run / ".checkpoint.pt.k1ll3d.tmp").exists()


# -- stopping and resuming --------------------------------------------------------------------

SLOW = [*SMALL, "--num-steps", "64", "--total-steps", str(8 * 64 * 14)]


def start_training(run: Path, *extra: str) -> subprocess.Popen:
    argv = [
        sys.executable,
        str(ROOT / "scripts" / "train_rl_agent.py"),
        *SLOW,
        "--run-dir",
        str(run),
        *extra,
    ]
    return subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, cwd=ROOT
    )


def wait_for_rows(run: Path, rows: int, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    path = run / "metrics.csv"
    while time.monotonic() < deadline and proc.poll() is None:
        if path.exists() and len(path.read_text().splitlines()) > rows:
            return
        time.sleep(0.05)
    raise AssertionError(f"no {rows} metrics rows within {timeout} s (exit {proc.poll()})")


@pytest.fixture(scope="module")
def straight(tmp_path_factory) -> list[dict]:
    run = tmp_path_factory.mktemp("straight") / "run"
    assert train_main([*SLOW, "--run-dir", str(run)]) == 0
    return list(read_metrics(run / "metrics.csv"))


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_at_an_update_boundary_and_resume_continues_exactly(
    sig, code, straight, tmp_path
):
    run = tmp_path / "run"
    proc = start_training(run)
    wait_for_rows(run, 2, proc)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == code, err
    assert "Traceback" not in err
    assert f"resume with: pyppo-train --resume --run-dir {shlex.quote(str(run))}" in err
    stopped = load_checkpoint(run / "checkpoint.pt").trainer.update
    assert 2 <= stopped < len(straight)
    assert len(list(read_metrics(run / "metrics.csv"))) == stopped

    assert train_main(["--resume", "--run-dir", str(run), "--quiet"]) == 0
    same_rows(straight, list(read_metrics(run / "metrics.csv")))


def test_after_kill_9_resume_writes_each_update_once(straight, tmp_path):
    run = tmp_path / "run"
    proc = start_training(run, "--checkpoint-every", "3")
    wait_for_rows(run, 5, proc)
    proc.kill()
    proc.communicate(timeout=60)
    rows_before = len(list(read_metrics(run / "metrics.csv")))
    saved = load_checkpoint(run / "checkpoint.pt").trainer.update
    assert saved < rows_before  # rows written after the last checkpoint
    assert train_main(["--resume", "--run-dir", str(run), "--quiet"]) == 0
    same_rows(straight, list(read_metrics(run / "metrics.csv")))


def test_flags_that_contradict_a_resumed_run_are_refused(trained, tmp_path, capsys):
    run = copy_run(trained, tmp_path / "run")
    for flag in (["--lr", "0.001"], ["--hidden-dim", "64"], ["--data", str(run / "x.csv")]):
        assert train_main(["--resume", "--run-dir", str(run), "--quiet", *flag]) == 2
        assert "cannot resume with other settings" in last_error(capsys)


# -- evaluation -------------------------------------------------------------------------------


def write_csv(path: Path, freq: str, n: int = 3000, seed: int = 2) -> Path:
    frame = synthetic_market(n, seed=seed).frame.reset_index()
    frame["timestamp"] = frame["timestamp"].iloc[0] + frame.index * pd.Timedelta(freq)
    frame.to_csv(path, index=False)
    return path


def test_evaluation_checks_its_data(tmp_path, capsys):
    data = write_csv(tmp_path / "bars.csv", "1h")
    run = tmp_path / "run"
    assert train(run, "--epochs", "1", "--data", str(data)) == 0
    assert load_checkpoint(run / "checkpoint.pt").run_config.data.path == str(data)
    # Other data overlapping the training period: evaluated, with a warning.
    assert eval_main([str(run), "--device", "cpu", "--data", str(data)]) == 0
    assert "lie in the training period" in capsys.readouterr().err
    # The run's own file replaced: refused.
    write_csv(data, "1h", seed=3)
    assert eval_main([str(run), "--device", "cpu"]) == 2
    assert "changed since the run trained on it" in last_error(capsys)
    # ... and gone.
    data.unlink()
    assert eval_main([str(run), "--device", "cpu"]) == 2
    assert "is gone (pass --data FILE" in last_error(capsys)


@pytest.mark.parametrize(
    ("freq", "labels"), [("1h", ("1h", "24h")), ("4h", ("4h", "4d")), ("1D", ("1d", "24d"))]
)
def test_hourly_four_hour_and_daily_csvs_train_and_evaluate(freq, labels, tmp_path):
    data = write_csv(tmp_path / "bars.csv", freq)
    run = tmp_path / "run"
    assert train(run, "--total-steps", "512", "--data", str(data)) == 0
    state = load_checkpoint(run / "checkpoint.pt")
    assert state.agent.model.aux_labels == labels
    assert eval_main([str(run), "--device", "cpu"]) == 0
    assert f"| pred_{labels[0]} |" in (run / "report.md").read_text()


def test_a_small_held_out_set_is_evaluated(tmp_path):
    run = tmp_path / "run"
    assert (
        train_main([*SMALL, "--bars", "1400", "--run-dir", str(run), "--total-steps", "256"]) == 0
    )
    assert eval_main([str(run), "--device", "cpu"]) == 0  # 280 held-out bars, not 720


# -- every user error is one line -----------------------------------------------------------


def user_errors(tmp_path: Path) -> list[tuple[list[str], str]]:
    (tmp_path / "afile").write_text("x")
    corrupt = tmp_path / "corrupt.parquet"
    corrupt.write_bytes(b"PAR1 not really parquet")
    year = write_csv(tmp_path / "year.csv", "1h", n=400)
    text = year.read_text().splitlines()
    text[200] = "20200" + text[200][4:]
    year.write_text("\n".join(text))
    empty = write_csv(tmp_path / "empty.csv", "1h", n=400)
    text = empty.read_text().splitlines()
    text[100] = "," + text[100].split(",", 1)[1]
    empty.write_text("\n".join(text))
    return [
        (["--bad-ticks", "0.5"], "bad_ticks"),
        (["--batch-size", "0"], "batch_size"),
        (["--lr", "nan"], "lr"),
        (["--window", "0"], "window"),
        (["--gamma", "2"], "gamma"),
        (["--device", "bogus"], "unknown device"),
        (["--run-dir", str(tmp_path / "afile")], "is a file"),
        (["--run-dir", "/proc/pyppo-cannot-write-here"], "cannot write"),
        (["--data", str(tmp_path / "missing.csv")], "missing.csv"),
        (["--data", str(corrupt)], "corrupt.parquet"),
        (["--data", str(year)], "year.csv"),
        (["--data", str(empty)], "empty.csv"),
        (["--horizons", "30min,24h"], "--horizons"),
        (["--no-such-flag"], "unrecognized arguments"),
    ] + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "no CUDA GPU")])


def test_every_user_error_is_one_line_without_a_traceback(tmp_path, capsys):
    for i, (argv, message) in enumerate(user_errors(tmp_path)):
        code = train_main(
            [*SMALL, "--run-dir", str(tmp_path / f"r{i}"), "--total-steps", "256", *argv]
        )
        assert code == 2, argv
        line = last_error(capsys)
        assert line.startswith("error: ") and message in line, (argv, line)


def test_evaluation_errors_are_one_line(trained, tmp_path, capsys):
    assert eval_main([str(tmp_path / "nothing")]) == 2
    assert "does not exist" in last_error(capsys)
    run = copy_run(trained, tmp_path / "run")
    (run / "report.md").mkdir()  # the report cannot be written: found before the backtest
    assert eval_main([str(run), "--device", "cpu"]) == 2
    assert "report.md" in last_error(capsys)


def test_debug_shows_the_traceback(capsys):
    assert train_main(["--lr", "nan", "--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and err.strip().splitlines()[-1].startswith("error: ")


# -- the newcomer's path --------------------------------------------------------------------


def test_a_printed_config_leaves_data_derived_settings_to_the_data(tmp_path, capsys):
    assert train_main(["--lr", "0.0002", "--print-config"]) == 0
    printed = capsys.readouterr().out
    assert 'horizons = "auto"' in printed
    config_file = tmp_path / "run.toml"
    config_file.write_text(printed)
    daily = write_csv(tmp_path / "daily.csv", "1D", n=1500)
    run = tmp_path / "run"
    args = ["--config", str(config_file), "--data", str(daily), "--total-steps", "256"]
    assert train(run, *args) == 0  # the 1h default would not fit daily bars
    assert load_checkpoint(run / "checkpoint.pt").agent.model.aux_labels == ("1d", "24d")


def test_resume_takes_the_same_relative_data_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_csv(tmp_path / "bars.csv", "1h")
    assert train(Path("run"), "--total-steps", "256", "--data", "bars.csv") == 0
    assert train(Path("run"), "--total-steps", "512", "--data", "bars.csv", "--resume") == 0


def test_the_printed_epoch_is_the_epoch_trained(tmp_path, capsys):
    run = tmp_path / "run"
    assert train(run, "--epochs", "1") == 0
    out = capsys.readouterr().out
    printed = int(out.split(" env steps per epoch")[0].rsplit(" ", 1)[1].replace(",", ""))
    rows = list(read_metrics(run / "metrics.csv"))
    assert printed == rows[-1]["env_steps"] and rows[-1]["epoch"] == 1
    assert "nan" not in out.lower().replace("nan/inf", "")


def test_runs_latest_names_the_newest_default_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert train_main([*SMALL, "--total-steps", "256"]) == 0
    latest = tmp_path / "runs" / "latest"
    assert latest.is_symlink() and (latest / "checkpoint.pt").exists()
    assert eval_main(["runs/latest", "--device", "cpu"]) == 0
    assert (latest.resolve() / "report.md").exists()
