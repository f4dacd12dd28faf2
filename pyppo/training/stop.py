"""Stopping a run cleanly: SIGINT (Ctrl-C) and SIGTERM become a request that the trainer
reads at the next update boundary, where it saves a checkpoint and stops.

The decision is a flag read between updates, never an exception in the middle of one, so a
stopped run is always at a state a resume continues exactly (and, across processes, one
that every process can agree on). A second Ctrl-C stops at once.
"""

from __future__ import annotations

import contextlib
import signal
import sys
from collections.abc import Iterator

from pyppo.interrupts import EXIT_CODES, Interrupted


class StopRequest:
    """Whether, and by which signal, a stop at the next update boundary was asked for."""

    def __init__(self) -> None:
        self.signal: int | None = None

    @property
    def requested(self) -> bool:
        return self.signal is not None

    def request(self, signum: int) -> None:
        self.signal = signum


class TrainingInterrupted(Exception):
    """Training stopped at an update boundary on request; a checkpoint was saved."""

    def __init__(self, signum: int, update: int) -> None:
        super().__init__(f"{signal.Signals(signum).name} at update {update}")
        self.signal = signum
        self.update = update

    @property
    def exit_code(self) -> int:
        """130 for SIGINT, 143 for SIGTERM (128 + the signal number, as shells report)."""
        return EXIT_CODES[self.signal]


@contextlib.contextmanager
def stop_on_signals(stop: StopRequest) -> Iterator[StopRequest]:
    """Inside the block, SIGINT and SIGTERM request a stop (one line on stderr says so); a
    second SIGINT raises :class:`pyppo.interrupts.Interrupted` at once. Handlers are
    restored after."""
    previous = {sig: signal.getsignal(sig) for sig in EXIT_CODES}

    def handle(signum: int, frame: object) -> None:
        if stop.requested and signum == signal.SIGINT:
            raise Interrupted(signum)
        stop.request(signum)
        print(
            f"\n{signal.Signals(signum).name}: stopping after this update and saving a "
            "checkpoint (Ctrl-C again to stop at once)",
            file=sys.stderr,
            flush=True,
        )

    for sig in EXIT_CODES:
        signal.signal(sig, handle)
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
