"""Checkpoints that are never half-written and never silently wrong.

A checkpoint is one ``torch.save`` file written to a temporary name beside its target and
renamed over it (``os.replace`` is atomic on POSIX), so a crash mid-write leaves the last
good checkpoint in place. Loading checks the format version and, when asked, that the
run's data fingerprint matches. A checkpoint holds only tensors and plain data (dicts,
lists, strings, numbers, booleans, None): the trainer's :meth:`~pyppo.PPOTrainer.state_dict`.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

# 2: plain data only (the config as dicts, the agent's description); 1 pickled settings.
FORMAT_VERSION = 2


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or belongs to a different run or dataset."""


_PLAIN = (torch.Tensor, str, int, float, bool, type(None))


def plain_data(value: Any, where: str = "state") -> Any:
    """``value`` with tuples as lists; ``TypeError`` naming the place of anything that is not
    a tensor, a number, a string, None, a list or a dict with string or integer keys."""
    if isinstance(value, dict):
        return {k: plain_data(v, f"{where}[{k!r}]") for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain_data(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, _PLAIN):
        return value
    raise TypeError(f"{where} is a {type(value).__name__}: checkpoints hold only plain data")


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write ``state`` (see :func:`plain_data`) to ``path`` atomically (temp file in the same
    folder + rename)."""
    state = plain_data(state)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save({"format_version": FORMAT_VERSION, **state}, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_checkpoint(
    path: str | os.PathLike,
    *,
    expect_fingerprint: str | None = None,
    map_location: str | torch.device | None = "cpu",
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`.

    Raises :class:`CheckpointError` naming the file when it is missing, unreadable
    (truncated, corrupt, not a checkpoint) or, with ``expect_fingerprint``, made on other data.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        state = torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:  # torch raises many types for damaged files
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated and cannot be read "
            f"({err.__class__.__name__}: {err}); use another checkpoint or start a new run"
        ) from err
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path} is not a pyppo checkpoint")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {state['format_version']}, this pyppo "
            f"reads version {FORMAT_VERSION}; retrain, or use the pyppo version that wrote it"
        )
    found = state.get("data_fingerprint")
    if expect_fingerprint is not None and found != expect_fingerprint:
        raise CheckpointError(
            f"checkpoint {path} was trained on different data (fingerprint {found}, this data "
            f"is {expect_fingerprint}); resume with the same data or start a new run"
        )
    return state
