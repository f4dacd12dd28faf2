"""One writer per run dir: an advisory file lock held for as long as a command uses it.

Training (new, resumed or overwritten) holds an exclusive lock on ``RUN/.pyppo.lock`` for the
whole run; evaluation holds a shared one (several evaluations may read a run at once, none
while it trains). The lock is ``flock(2)``: the kernel drops it when its holder exits, however
it exits, so a lock left by a dead process is simply free again (the file it leaves behind
names the old holder and is overwritten by the next one). The holder writes its pid, host,
start time and command into the file, and a refusal names them.

On network file systems ``flock`` works across machines where the server supports locks
(NFSv4, and NFSv3 with lockd: Linux maps it to byte-range locks); where it does not, taking
the lock fails with ``ENOLCK``/``EOPNOTSUPP`` and :class:`RunLock` says that the run dir is
not protected instead of failing the run.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import sys
import time
from pathlib import Path
from types import TracebackType

LOCK_FILE = ".pyppo.lock"
# Errors of a file system that cannot lock.
_NO_LOCKS = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP)


class RunDirInUse(RuntimeError):
    """Another process holds the run dir."""


class RunLock:
    """The lock of one run dir.

    :param run_dir: the run's folder (created if needed).
    :param exclusive: True for a writer (training), False for a reader (evaluation).
    :param command: what the holder is doing, for the message another process sees.
    """

    def __init__(self, run_dir: str | os.PathLike, *, exclusive: bool, command: str) -> None:
        self.run_dir = Path(run_dir)
        self.exclusive = exclusive
        self.command = command
        self.path = self.run_dir / LOCK_FILE
        self._fd: int | None = None
        self.supported = True

    def acquire(self) -> RunLock:
        """Take the lock without waiting; :class:`RunDirInUse` naming the holder if another
        process has it. Returns ``self``."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        # O_NOFOLLOW: a symlink planted as the lock file is an error, never followed.
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o666)
        kind = fcntl.LOCK_EX if self.exclusive else fcntl.LOCK_SH
        try:
            fcntl.flock(fd, kind | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunDirInUse(self._refusal()) from None
        except OSError as err:
            if err.errno not in _NO_LOCKS:
                os.close(fd)
                raise
            self.supported = False
            print(
                f"warning: the file system of {self.run_dir} cannot lock files: pyppo cannot "
                "stop a second command from using this run dir at the same time",
                file=sys.stderr,
            )
        self._fd = fd
        self._write_holder(fd)  # (readers too: a writer refused is told who reads)
        return self

    def release(self) -> None:
        """Give the lock up (closing the file releases it)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.release()

    def _write_holder(self, fd: int) -> None:
        holder = {
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "command": self.command,
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)

    def _refusal(self) -> str:
        try:
            holder = json.loads(self.path.read_text())
            who = (
                f"{holder['command']} (pid {holder['pid']} on {holder['host']}, "
                f"since {holder['started']})"
            )
        except (OSError, ValueError, KeyError, TypeError):
            who = "another process"
        doing = "write to" if self.exclusive else "read"
        return f"{self.run_dir} is in use by {who}: cannot {doing} it until that finishes"
