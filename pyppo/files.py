"""Every file pyppo writes: whole or not at all, never through a planted symlink, readable by
the team.

:func:`replaced` is the one way to write a file: the content goes to a temporary file in the
same folder (created exclusively, so nothing planted there is followed), which is flushed,
fsynced, given the permissions the umask allows (``mkstemp`` alone would make it 0600) and
renamed over the target. The rename is atomic, and it replaces a symlink at the target
instead of writing through it. A reader sees the old file or the new one, never a part; an
error or Ctrl-C on the way leaves the old file and removes the temporary one.
:class:`OutputSet` does the same for files that belong together (a report and its CSVs and
figures): every one is written first, then all are renamed.

A full disk is a :class:`DiskFullError` that names the file.
"""

from __future__ import annotations

import contextlib
import errno
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType

# What a full disk (or a quota) looks like to a write.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


class DiskFullError(OSError):
    """A file could not be written because its disk (or quota) is full."""

    def __init__(self, path: Path) -> None:
        super().__init__(errno.ENOSPC, f"disk full: cannot write {path} (free some space)")
        self.filename = str(path)

    def __str__(self) -> str:
        return self.strerror


def _mode_from_umask() -> int:
    """0o666 less the process's umask: the mode ``open()`` would give a new file."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def _fsync_folder(folder: Path) -> None:
    """Make a rename in ``folder`` durable (not every file system can open a folder)."""
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def temporary_beside(path: Path) -> Path:
    """A new, empty file next to ``path`` with a name no one else uses (``O_EXCL``)."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(tmp)


def _commit(tmp: Path, path: Path) -> None:
    with open(tmp, "rb+") as f:
        f.flush()
        os.fsync(f.fileno())
    os.chmod(tmp, _mode_from_umask())
    os.replace(tmp, path)  # replaces a symlink at path; never follows it


@contextlib.contextmanager
def replaced(path: str | os.PathLike) -> Iterator[Path]:
    """Write ``path`` whole or not at all: yields a temporary path beside it to write to
    (with any tool: ``open``, ``torch.save``, ``savefig``, ``to_csv``); when the block ends
    without an error the file is fsynced and renamed over ``path``.

    :param path: the file to (re)place; its folder is created if needed.
    :raises DiskFullError: when the disk is full (the old ``path`` is left as it was).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_beside(path)
    try:
        yield tmp
        _commit(tmp, path)
    except OSError as err:
        tmp.unlink(missing_ok=True)
        if err.errno in _NO_SPACE:
            raise DiskFullError(path) from None
        raise
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_folder(path.parent)


def write_text(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) to ``path`` through :func:`replaced`."""
    with replaced(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return Path(path)


class OutputSet:
    """Files that appear together or not at all (as near as a file system allows: each is
    written to a temporary file first, then all are renamed in a row).

    Use it as a context manager: ``out.path(name)`` gives the temporary path to write each
    file to; leaving the block without an error renames every one over its target; an error
    or Ctrl-C removes them and leaves the old files as they were.

    :param folder: where the files go.
    """

    def __init__(self, folder: str | os.PathLike) -> None:
        self.folder = Path(folder)
        self._staged: dict[Path, Path] = {}
        self._latest: Path | None = None  # the output being written (named if the disk fills)

    def path(self, name: str) -> Path:
        """The temporary path to write the output ``name`` to."""
        target = self._latest = self.folder / name
        if target not in self._staged:
            self.folder.mkdir(parents=True, exist_ok=True)
            self._staged[target] = temporary_beside(target)
        return self._staged[target]

    def write_text(self, name: str, text: str) -> None:
        """Stage ``text`` as the output ``name``."""
        self.path(name).write_text(text, encoding="utf-8")

    def __enter__(self) -> OutputSet:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        try:
            if kind is None:
                for target, tmp in self._staged.items():
                    try:
                        _commit(tmp, target)
                    except OSError as err:
                        if err.errno in _NO_SPACE:
                            raise DiskFullError(target) from None
                        raise
                _fsync_folder(self.folder)
        finally:
            for tmp in self._staged.values():
                tmp.unlink(missing_ok=True)
        if isinstance(error, OSError) and error.errno in _NO_SPACE:
            raise DiskFullError(self._latest or self.folder) from None


def stray_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Temporary files that a killed process left in ``folder`` (the writers above remove
    their own otherwise)."""
    return sorted(Path(folder).glob(".*.tmp"))
