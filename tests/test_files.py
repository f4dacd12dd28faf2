"""Files are written whole or not at all, never through a planted symlink, readable by the
team (the umask), and a full disk is named; run dirs take one writer at a time."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import SMALL_RUN

from pyppo.checkpoint import save_checkpoint
from pyppo.cli import eval_main, train_main
from pyppo.files import DiskFullError, OutputSet, replaced, stray_temporaries, write_text
from pyppo.runlock import LOCK_FILE, RunDirInUse, RunLock

ROOT = Path(__file__).resolve().parents[1]


def test_a_failure_between_write_and_rename_leaves_the_old_file(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old, complete\n")
    with pytest.raises(RuntimeError, match="killed"), replaced(path) as tmp:
        tmp.write_text("new, half writ")
        raise RuntimeError("killed between write and rename")
    assert path.read_text() == "old, complete\n"
    assert stray_temporaries(tmp_path) == []


def test_an_output_set_appears_whole_or_not_at_all(tmp_path):
    (tmp_path / "report.md").write_text("old report\n")
    (tmp_path / "equity.csv").write_text("old equity\n")
    with pytest.raises(KeyboardInterrupt), OutputSet(tmp_path) as out:
        out.write_text("equity.csv", "new equity\n")
        raise KeyboardInterrupt  # Ctrl-C before the report is written
    assert (tmp_path / "equity.csv").read_text() == "old equity\n"
    assert (tmp_path / "report.md").read_text() == "old report\n"
    assert stray_temporaries(tmp_path) == []
    with OutputSet(tmp_path) as out:
        out.write_text("equity.csv", "new equity\n")
        out.write_text("report.md", "new report\n")
    assert (tmp_path / "report.md").read_text() == "new report\n"
    assert (tmp_path / "equity.csv").read_text() == "new equity\n"


def test_a_planted_symlink_is_replaced_not_followed(tmp_path):
    target = tmp_path / "precious.txt"
    target.write_text("do not touch\n")
    link = tmp_path / "run" / "config.json"
    link.parent.mkdir()
    link.symlink_to(target)
    write_text(link, "{}\n")
    assert target.read_text() == "do not touch\n"
    assert not link.is_symlink() and link.read_text() == "{}\n"
    # Checkpoints and output sets write through the same helper.
    ckpt = tmp_path / "run" / "checkpoint.pt"
    ckpt.symlink_to(target)
    save_checkpoint(ckpt, {"model": {}})
    assert target.read_text() == "do not touch\n" and not ckpt.is_symlink()


def test_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        write_text(tmp_path / "a.txt", "x")
        with OutputSet(tmp_path) as out:
            out.write_text("b.txt", "y")
    finally:
        os.umask(old)
    assert (tmp_path / "a.txt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.txt").stat().st_mode & 0o777 == 0o644


def test_a_full_disk_names_the_file_and_keeps_the_old_one(tmp_path):
    path = tmp_path / "report.md"
    path.write_text("old\n")

    def fill_the_disk(tmp: Path) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match=r"disk full: cannot write .*report\.md"):
        with replaced(path) as tmp:
            fill_the_disk(tmp)
    with pytest.raises(DiskFullError, match=r"disk full: cannot write .*trades\.csv"):
        with OutputSet(tmp_path) as out:
            fill_the_disk(out.path("trades.csv"))
    assert path.read_text() == "old\n" and stray_temporaries(tmp_path) == []


# -- one writer per run dir ------------------------------------------------------------------


def test_a_second_holder_is_refused_with_the_first_ones_name(tmp_path):
    with RunLock(tmp_path, exclusive=True, command="pyppo-train (new run)"):
        with pytest.raises(RunDirInUse, match=rf"pyppo-train \(new run\) \(pid {os.getpid()} "):
            RunLock(tmp_path, exclusive=True, command="pyppo-train (resume)").acquire()
        with pytest.raises(RunDirInUse, match="cannot read it"):
            RunLock(tmp_path, exclusive=False, command="pyppo-eval").acquire()
    # Readers share; a writer waits for them.
    with RunLock(tmp_path, exclusive=False, command="pyppo-eval"):
        with RunLock(tmp_path, exclusive=False, command="pyppo-eval"):
            with pytest.raises(RunDirInUse, match="cannot write to it"):
                RunLock(tmp_path, exclusive=True, command="pyppo-train").acquire()


def test_a_lock_left_by_a_dead_process_is_free(tmp_path):
    # A process that takes the lock as RunLock does (without importing torch: fast), then dies.
    code = (
        "import fcntl, json, os; "
        f"fd = os.open({str(tmp_path / LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT); "
        "fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB); "
        "os.write(fd, json.dumps({'pid': os.getpid(), 'host': 'h', 'started': 't', "
        "'command': 'dead'}).encode()); os._exit(9)"
    )
    subprocess.run([sys.executable, "-c", code], check=False)
    holder = json.loads((tmp_path / LOCK_FILE).read_text())
    assert holder["command"] == "dead"  # its note is still there, its lock is not
    with RunLock(tmp_path, exclusive=True, command="pyppo-train"):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()


@pytest.mark.slow
def test_a_run_dir_in_training_refuses_a_second_training_and_an_evaluation(tmp_path, capsys):
    run = tmp_path / "run"
    args = [*SMALL_RUN, "--epochs", "50", "--checkpoint-every", "1", "--run-dir", str(run)]
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "scripts" / "train_rl_agent.py"), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        while not (run / "checkpoint.pt").exists():  # training, with a checkpoint to evaluate
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.1)
        for extra in (["--overwrite"], ["--resume"], []):
            assert train_main([*args, *extra]) == 2
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and "is in use by pyppo-train (new run) (pid" in err[0], err
        assert eval_main([str(run), "--device", "cpu"]) == 2
        assert "is in use by pyppo-train" in capsys.readouterr().err
        assert (run / "config.json").exists()  # --overwrite deleted nothing
    finally:
        proc.kill()
        proc.communicate(timeout=60)
    # The killed run's lock went with it: resuming works.
    assert train_main([*SMALL_RUN, "--epochs", "1", "--run-dir", str(run), "--resume"]) == 0
