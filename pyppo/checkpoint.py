"""Checkpoints that are never half-written and never silently wrong.

A checkpoint is one ``torch.save`` file written to a temporary name beside its target and
renamed over it (``os.replace`` is atomic on POSIX), so a crash mid-write leaves the last
good checkpoint in place (and at worst a stray temporary file, :func:`stray_temporaries`).
Loading cannot run code (``weights_only=True``), verifies the zip members' CRC-32, checks the
format version and keys, refuses NaN/inf weights and, when asked, a different data
fingerprint. A checkpoint holds only tensors and plain data (dicts,
lists, strings, numbers, booleans, None): the trainer's :meth:`~pyppo.PPOTrainer.state_dict`.
"""

from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

# Version 2: plain data only (the config as dicts, the agent's description, the state of
# each process in "ranks"); version 1 pickled its settings.
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


# The keys every checkpoint has, and the keys of its "trainer" section.
REQUIRED_KEYS = (
    "model",
    "optimizer",
    "config",
    "run_config",
    "agent",
    "trainer",
    "ranks",
    "data_fingerprint",
    "data",
)
TRAINER_KEYS = ("update", "env_steps", "epoch", "best_sharpe", "history")


def stray_temporaries(folder: str | os.PathLike) -> list[Path]:
    """Temporary files :func:`save_checkpoint` left in ``folder`` when it was killed
    mid-write (it removes its own otherwise)."""
    return sorted(Path(folder).glob(".*.pt.*.tmp"))


def load_checkpoint(
    path: str | os.PathLike,
    *,
    expect_fingerprint: str | None = None,
    map_location: str | torch.device | None = "cpu",
    require_finite: bool = True,
) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint`, safely.

    Nothing in the file can run code: it is read with ``torch.load(weights_only=True)``,
    which accepts tensors and plain data only. Before that, every member's CRC-32 is
    verified (``zipfile``; ``torch.load`` does not), so flipped bytes are found, and after
    it the keys are checked. Raises :class:`CheckpointError` naming the file when it is
    missing, unreadable (truncated, corrupt, not a checkpoint, holding objects other than
    plain data), of another format version, lacks keys, has NaN/inf weights
    (``require_finite``) or, with ``expect_fingerprint``, was made on other data.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with zipfile.ZipFile(path) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, OSError) as err:
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated and cannot be read ({err}); use "
            "another checkpoint or start a new run"
        ) from None
    if damaged is not None:
        raise CheckpointError(
            f"checkpoint {path} is corrupt: {damaged} fails its CRC check (the file was "
            "damaged after it was written); use another checkpoint or start a new run"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"checkpoint {path} holds objects other than tensors and plain data, which pyppo "
            f"does not load (they could run code): {str(err).splitlines()[0]}"
        ) from None
    except Exception as err:  # torch raises many types for damaged files
        raise CheckpointError(
            f"checkpoint {path} is corrupt or truncated and cannot be read "
            f"({err.__class__.__name__}: {err}); use another checkpoint or start a new run"
        ) from None
    _check_schema(path, state)
    found = state["data_fingerprint"]
    if expect_fingerprint is not None and found != expect_fingerprint:
        raise CheckpointError(
            f"checkpoint {path} was trained on different data (fingerprint {found}, this data "
            f"is {expect_fingerprint}); resume with the same data or start a new run"
        )
    if require_finite:
        bad = sum(
            int((~torch.isfinite(t)).sum())
            for t in state["model"].values()
            if isinstance(t, torch.Tensor) and t.is_floating_point()
        )
        if bad:
            raise CheckpointError(
                f"checkpoint {path} has {bad} NaN/inf weights and cannot be used; take an "
                "earlier checkpoint or retrain"
            )
    return state


def _check_schema(path: Path, state: Any) -> None:
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path} is not a pyppo checkpoint")
    if state["format_version"] != FORMAT_VERSION:
        raise CheckpointError(
            f"checkpoint {path} has format version {state['format_version']}, this pyppo "
            f"reads version {FORMAT_VERSION}; retrain, or use the pyppo version that wrote it"
        )
    missing = [k for k in REQUIRED_KEYS if k not in state]
    trainer = state.get("trainer")
    if isinstance(trainer, dict):
        missing += [f"trainer.{k}" for k in TRAINER_KEYS if k not in trainer]
    elif "trainer" not in missing:
        missing.append("trainer (not a table)")
    if not isinstance(state.get("model"), dict):
        missing.append("model (not a state dict)")
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is incomplete: it lacks {', '.join(missing)}; it was not "
            "written by this pyppo version's trainer. Use another checkpoint or retrain"
        )
