"""Checkpoints that are never half-written, never silently wrong, and typed.

A checkpoint is one ``torch.save`` file written whole or not at all
(:func:`pyppo.files.replaced`: a temporary file beside it, renamed over it), so a crash
mid-write leaves the last good checkpoint in place (and at worst a stray temporary file,
:func:`pyppo.files.stray_temporaries`).
Loading cannot run code (``weights_only=True``), verifies the zip members' CRC-32, checks the
format version and keys, refuses NaN/inf weights and, when asked, a different data
fingerprint. On disk a checkpoint holds only tensors and plain data (dicts, lists, strings,
numbers, booleans, None); in memory it is a :class:`Checkpoint` (:meth:`Checkpoint.to_dict`,
:meth:`Checkpoint.from_dict`, as :class:`pyppo.RunConfig` does).

:func:`find_checkpoint` is the one rule for which file of a run dir to use, and
:func:`build_model` the one way to rebuild a model from its :class:`~pyppo.model.ModelSpec`
and weights (the trainer, :class:`pyppo.Agent` and ``pyppo-eval`` all use them).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from pyppo.config import PPOConfig, RunConfig, apply
from pyppo.env import EnvSpec, TradingEnv
from pyppo.files import replaced
from pyppo.model import ModelSpec, TradingActorCritic
from pyppo.population import PopulationActorCritic
from pyppo.portfolio_env import PortfolioEnv

# Version 3: typed sections (trainer state without the best score, which belongs to the
# validation callback, under "callbacks"). Version 2 loads too (its best score moves there);
# version 1 pickled its settings and is refused.
FORMAT_VERSION = 3
READABLE_VERSIONS = (2, 3)
# The names of a run dir's checkpoints: the latest state, and the one validation picked.
LATEST, BEST = "checkpoint.pt", "best.pt"
# Where the validation callback keeps its state, and under which key it kept it in format 2.
BEST_CHECKPOINT_CALLBACK = "best_checkpoint"


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
    """Write ``state`` (see :func:`plain_data`) to ``path`` whole or not at all
    (:func:`pyppo.files.replaced`: a temporary file beside it, fsynced, renamed over it)."""
    state = plain_data(state)
    with replaced(path) as tmp:
        torch.save({"format_version": FORMAT_VERSION, **state}, tmp)
    return Path(path)


# The keys of each format version, and of its "trainer" section.
REQUIRED_KEYS = {
    2: ("model", "optimizer", "config", "run_config", "agent", "trainer", "ranks",
        "data_fingerprint", "data"),
    3: ("model", "optimizer", "config", "run_config", "agent", "trainer", "ranks",
        "data_fingerprint", "data", "callbacks"),
}  # fmt: skip
TRAINER_KEYS = {
    2: ("update", "env_steps", "epoch", "best_sharpe", "history"),
    3: ("update", "env_steps", "epoch", "history"),
}


# -- the typed checkpoint ---------------------------------------------------------------


@dataclass
class TrainerState:
    """Where a run is: its counters and the metrics rows of every update so far."""

    update: int = 0
    env_steps: int = 0
    epoch: int = 0
    history: list[dict[str, float]] = field(default_factory=list)


@dataclass(frozen=True)
class AgentSpec:
    """What it takes to use the trained model without the training data: the model's shape
    and the env's observation settings (None for models or envs that are not pyppo's)."""

    model: ModelSpec | None = None
    env: EnvSpec | None = None

    def check_fits(self) -> None:
        """Raise ``ValueError`` unless the model and the env belong together (the same window
        and horizons, the env's actions): what an agent needs to predict."""
        if self.model is None or self.env is None:
            raise ValueError("it has no description of a TradingActorCritic and a TradingEnv")
        actions = 3 if self.env.allow_short else 2
        if (self.model.window, self.model.aux_labels, self.model.num_actions) != (
            self.env.window,
            self.env.aux_labels,
            actions,
        ):
            raise ValueError(
                f"the model (window {self.model.window}, heads {list(self.model.aux_labels)}, "
                f"{self.model.num_actions} actions) does not fit the env (window "
                f"{self.env.window}, horizons {list(self.env.aux_labels)}, {actions} actions)"
            )

    @classmethod
    def of(cls, model: nn.Module, env: Any) -> AgentSpec:
        """The spec of a trainer's model and env."""
        return cls(
            model.describe() if isinstance(model, TradingActorCritic) else None,
            env.describe() if isinstance(env, TradingEnv | PortfolioEnv) else None,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": None if self.model is None else self.model.to_dict(),
            "env": None if self.env is None else self.env.to_dict(),
        }

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> AgentSpec:
        model, env = values.get("model"), values.get("env")
        return cls(
            None if model is None else ModelSpec.from_dict(model),
            None if env is None else EnvSpec.from_dict(env),
        )


@dataclass
class ProcessState:
    """What differs between the processes of a run, saved for each so that a resume
    continues every one exactly: its rollout's and env's state dicts (None for an env that
    cannot save its state) and its random streams."""

    rollout: dict[str, Any]
    env: dict[str, Any] | None
    torch_rng: Tensor  # torch's global CPU generator (model init, ...)
    batch_rng: list[Tensor]  # the minibatch order's generator of each member


@dataclass(frozen=True)
class DataInfo:
    """The data a run trained on: its path (None for the synthetic market), where it came
    from, and the training period (train and validation bars) as timestamps."""

    path: str | None
    source: str
    train_start: str
    train_end: str


@dataclass
class Checkpoint:
    """Everything a saved run holds (:meth:`pyppo.PPOTrainer.checkpoint`).

    :param model: the model's state dict.
    :param optimizer: the optimizer's state dict.
    :param config: the PPO settings it trained with.
    :param trainer: counters and metrics history.
    :param agent: how to rebuild the model and its observations.
    :param ranks: per process (in rank order), its :class:`ProcessState`.
    :param run_config: the command line's whole configuration (None from the Python API).
    :param data_fingerprint: the training data's SHA-256 (resuming on other data is refused).
    :param data: the training data's path and period (None from the Python API).
    :param callbacks: each callback's state by name (the best validation score).
    """

    model: dict[str, Tensor]
    optimizer: dict[str, Any]
    config: PPOConfig
    trainer: TrainerState
    agent: AgentSpec = field(default_factory=AgentSpec)
    ranks: list[ProcessState] = field(default_factory=list)
    run_config: RunConfig | None = None
    data_fingerprint: str | None = None
    data: DataInfo | None = None
    callbacks: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """Plain data and tensors, as written to disk (without the format version)."""
        return {
            "model": self.model,
            "optimizer": self.optimizer,
            "config": dataclasses.asdict(self.config),
            "trainer": dataclasses.asdict(self.trainer),
            "agent": self.agent.to_dict(),
            "ranks": [dataclasses.asdict(process) for process in self.ranks],
            "run_config": None if self.run_config is None else self.run_config.to_dict(),
            "data_fingerprint": self.data_fingerprint,
            "data": None if self.data is None else dataclasses.asdict(self.data),
            "callbacks": self.callbacks,
        }

    @classmethod
    def from_dict(cls, state: dict[str, Any], version: int = FORMAT_VERSION) -> Checkpoint:
        """The inverse of :meth:`to_dict`, also for format ``version`` 2 (whose best
        validation score moves into the validation callback's state). Raises
        ``ValueError`` for a malformed section."""
        trainer = dict(state["trainer"])
        callbacks = dict(state.get("callbacks") or {})
        if version == 2:
            best = trainer.pop("best_sharpe")
            callbacks[BEST_CHECKPOINT_CALLBACK] = {"best_score": float(best)}
        run_config, data = state["run_config"], state["data"]
        return cls(
            model=state["model"],
            optimizer=state["optimizer"],
            config=_ppo_config(state["config"]),
            trainer=TrainerState(**{k: trainer[k] for k in TRAINER_KEYS[FORMAT_VERSION]}),
            agent=AgentSpec.from_dict(state["agent"]),
            ranks=[_process_state(process, version) for process in state["ranks"]],
            run_config=None if run_config is None else _run_config(run_config),
            data_fingerprint=state["data_fingerprint"],
            data=None if data is None else DataInfo(**data),
            callbacks=callbacks,
        )

    def save(self, path: str | os.PathLike) -> Path:
        """Write this checkpoint to ``path`` atomically (:func:`save_checkpoint`)."""
        return save_checkpoint(path, self.to_dict())


def _process_state(values: dict[str, Any], version: int) -> ProcessState:
    if version == 2:  # the random streams were one table
        rng = values["rng"]
        return ProcessState(values["rollout"], values["env"], rng["torch"], [rng["batch"]])
    return ProcessState(**values)


# PPO settings newer than some checkpoints, with the value their runs trained with: a
# checkpoint without them resumes and reports as it trained.
_PPO_SETTINGS_ADDED = {"weight_decay": 0.0}


def _ppo_config(values: dict[str, Any]) -> PPOConfig:
    # Through the config's reader: the same conversions and checks as a TOML file.
    return apply(RunConfig(), {"ppo": {**_PPO_SETTINGS_ADDED, **values}}).ppo


def _run_config(values: dict[str, Any]) -> RunConfig:
    return RunConfig.from_dict({**values, "ppo": {**_PPO_SETTINGS_ADDED, **values.get("ppo", {})}})


def validated_member(checkpoint: Checkpoint) -> int | None:
    """The member of a population's checkpoint that validation picks: the best of the members'
    best validation scores (None when validation never ran)."""
    state = checkpoint.callbacks.get(BEST_CHECKPOINT_CALLBACK, {})
    scores = state.get("best_score")
    if not isinstance(scores, list) or not scores:
        return None
    return max(range(len(scores)), key=lambda k: scores[k])


def find_checkpoint(run: str | os.PathLike) -> Path:
    """The checkpoint to use of ``run``: a checkpoint file as given; in a run dir the one
    validation picked (``best.pt``), else the latest (``checkpoint.pt``). Raises
    :class:`CheckpointError` when there is none."""
    path = Path(run)
    if not path.is_dir():
        return path
    for name in (BEST, LATEST):
        if (path / name).is_file():
            return path / name
    raise CheckpointError(f"{path} holds no checkpoint ({BEST} or {LATEST}): is it a run dir?")


def build_model(
    spec: ModelSpec, weights: dict[str, Tensor], source: str | os.PathLike = "the checkpoint"
) -> TradingActorCritic:
    """The :class:`~pyppo.TradingActorCritic` that ``spec`` describes (a
    :class:`~pyppo.population.PopulationActorCritic` for ``spec.members > 1``), with
    ``weights``, in eval mode on the CPU. Raises :class:`CheckpointError` naming ``source``
    when the weights do not fit or are not finite."""
    model = (
        PopulationActorCritic.from_spec(spec)
        if spec.members > 1
        else TradingActorCritic.from_spec(spec)
    )
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, ValueError) as err:
        raise CheckpointError(
            f"{source} does not fit this version's model: {str(err).splitlines()[0]}"
        ) from None
    bad = sum(int((~torch.isfinite(p)).sum()) for p in model.parameters())
    if bad:
        raise CheckpointError(f"{source} has {bad} NaN/inf weights and cannot be used")
    return model.eval()


# -- files ------------------------------------------------------------------------------


def load_checkpoint(
    path: str | os.PathLike,
    *,
    expect_fingerprint: str | None = None,
    map_location: str | torch.device | None = "cpu",
    require_finite: bool = True,
) -> Checkpoint:
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
    try:
        return Checkpoint.from_dict(state, state["format_version"])
    except (ValueError, TypeError, KeyError) as err:
        raise CheckpointError(
            f"checkpoint {path} is malformed ({err}); it was not written by pyppo's trainer. "
            "Use another checkpoint or retrain"
        ) from None


def _check_schema(path: Path, state: Any) -> None:
    if not isinstance(state, dict) or "format_version" not in state:
        raise CheckpointError(f"{path} is not a pyppo checkpoint")
    version = state["format_version"]
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"checkpoint {path} has format version {version}, this pyppo reads versions "
            f"{', '.join(map(str, READABLE_VERSIONS))}; retrain, or use the pyppo version "
            "that wrote it"
        )
    missing = [k for k in REQUIRED_KEYS[version] if k not in state]
    trainer = state.get("trainer")
    if isinstance(trainer, dict):
        missing += [f"trainer.{k}" for k in TRAINER_KEYS[version] if k not in trainer]
    elif "trainer" not in missing:
        missing.append("trainer (not a table)")
    if not isinstance(state.get("model"), dict):
        missing.append("model (not a state dict)")
    if missing:
        raise CheckpointError(
            f"checkpoint {path} is incomplete: it lacks {', '.join(missing)}; it was not "
            "written by this pyppo version's trainer. Use another checkpoint or retrain"
        )
