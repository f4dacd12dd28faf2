"""Ctrl-C and SIGTERM in pyppo's commands: one line and exit 130/143, at any point.

Three stages of a command, three handlings:

1. **Start-up** (Python importing torch and pyppo, a second or two): :func:`quiet_startup`,
   installed first thing by ``import pyppo`` when the process is one of pyppo's commands,
   ends the process with one line; nothing has been written yet.
2. **The command** (:func:`raised_as_interrupts`, installed by ``pyppo.cli.run_cli``):
   both signals raise :class:`Interrupted`, which unwinds through the command's cleanups
   (temporary files are removed, old outputs stay whole) and becomes one line saying what
   exists.
3. **Training** (:func:`pyppo.training.stop_on_signals`): the first signal asks the trainer
   to stop after the current update and save a checkpoint; a second Ctrl-C raises
   :class:`Interrupted` at once.

Library users who ``import pyppo`` into their own program keep their own signal handling:
only pyppo's command lines install any of this.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import Iterator

# 128 + the signal number, as shells report a process ended by a signal.
EXIT_CODES = {signal.SIGINT: 130, signal.SIGTERM: 143}
# The programs whose start-up is made quiet (console scripts and scripts/*.py).
COMMANDS = frozenset(
    {
        "pyppo-train",
        "pyppo-eval",
        "pyppo-predict",
        "pyppo-export",
        "train_rl_agent.py",
        "evaluate_agent.py",
        "predict_agent.py",
        "export_agent.py",
    }
)


class Interrupted(BaseException):
    """SIGINT or SIGTERM arrived during a command (a ``BaseException``, like
    ``KeyboardInterrupt``: ``except Exception`` does not swallow it).

    :param signum: the signal.
    """

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.signum]

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name


def _raise(signum: int, frame: object) -> None:
    raise Interrupted(signum)


@contextlib.contextmanager
def raised_as_interrupts() -> Iterator[None]:
    """Inside the block SIGINT and SIGTERM raise :class:`Interrupted` (restored after)."""
    previous = {sig: signal.getsignal(sig) for sig in EXIT_CODES}
    for sig in EXIT_CODES:
        signal.signal(sig, _raise)
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _exit_quietly(signum: int, frame: object) -> None:
    name = signal.Signals(signum).name
    os.write(2, f"stopped by {name} while starting: nothing was done\n".encode())
    os._exit(EXIT_CODES[signum])


def quiet_startup() -> None:
    """When this process is one of pyppo's commands, make SIGINT and SIGTERM end it with one
    line until the command installs its own handling (:func:`raised_as_interrupts`)."""
    if os.path.basename(sys.argv[0] if sys.argv else "") in COMMANDS:
        for sig in EXIT_CODES:
            signal.signal(sig, _exit_quietly)
