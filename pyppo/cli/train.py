"""``pyppo-train``: flags generated from :mod:`pyppo.config`, run dirs that never lose a run,
and a clean stop on SIGINT/SIGTERM.

Data is split in time order: the first 70 % of bars train the agent, the next 10 % pick the
best checkpoint (validation Sharpe), the last 20 % are held out for ``pyppo-eval``. Flags and
output paths are checked before any data is loaded. The run dir is locked for the whole run
(:mod:`pyppo.runlock`): a second training, resume or overwrite of it is refused.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shlex
import shutil
import sys
import time
from pathlib import Path

from pyppo.checkpoint import BEST, LATEST, DataInfo, load_checkpoint
from pyppo.cli.common import (
    CommandInterrupted,
    Parser,
    UserError,
    check_writable,
    first_and_last,
    load_data,
    make_env,
    make_model,
    resolved_data_path,
    run_cli,
    split_data,
)
from pyppo.cli.flags import add_config_arguments, config_from_namespace, explicit_names
from pyppo.config import RunConfig, apply, format_seeds, get, load_toml, same_value
from pyppo.distributed import init_from_environment, on_rank0, rank_and_world
from pyppo.evaluation import BestCheckpoint
from pyppo.files import stray_temporaries, write_text
from pyppo.interrupts import Interrupted
from pyppo.metrics import METRICS_FILE, nan_events_table
from pyppo.runlock import RunLock
from pyppo.training import (
    NonFiniteParametersError,
    PPOTrainer,
    StopRequest,
    TrainingInterrupted,
    stop_on_signals,
)

# Settings a resumed run may change: how long and where it trains, and how often it saves.
RESUMABLE = {
    "epochs",
    "total_steps",
    "run_dir",
    "resume",
    "overwrite",
    "device",
    "quiet",
    "debug",
    "ppo.checkpoint_every",
    "ppo.compile",
}
CONFIG_FILE = "config.json"  # the run's settings, written before training starts
# What a run dir holds; a folder with any of these holds a run.
RUN_FILES = (
    LATEST,
    BEST,
    METRICS_FILE,
    CONFIG_FILE,
    "report.md",
    "equity.png",
    "predictions.png",
    "training.png",
    "equity.csv",
    "trades.csv",
    "tensorboard",
)
# The link in runs/ to the newest run made there without --run-dir.
LATEST_RUN = "latest"
# Data-derived settings that --print-config writes as "auto" unless they were set.
AUTO = "auto"
DERIVED_FROM_DATA = ("data.horizons",)


def train_parser(
    prog: str = "pyppo-train",
    description: str = "Train a PPO trading agent (with short- and long-horizon auxiliary "
    "return heads) on the embedded synthetic market or your own OHLCV file.",
) -> argparse.ArgumentParser:
    """The parser of every training setting (also the start of other commands' parsers)."""
    p = Parser(prog=prog, description=description)
    p.add_argument(
        "--config",
        metavar="FILE",
        help="read settings from a TOML file (flags given here override it)",
    )
    p.add_argument(
        "--print-config", action="store_true", help="print the resolved settings as TOML and exit"
    )
    add_config_arguments(p)
    return p


def resolve_config(argv: list[str] | None = None) -> tuple[RunConfig, set[str], bool]:
    """The run's config from ``--config`` and flags, the dotted names set explicitly, and
    whether ``--print-config`` was given. Raises :class:`UserError` for a bad value."""
    args = train_parser().parse_args(argv)
    config, explicit = config_from_args(args)
    return config, explicit, args.print_config


def config_from_args(args: argparse.Namespace) -> tuple[RunConfig, set[str]]:
    """The config that parsed training flags (and ``--config``) describe, and the dotted
    names set explicitly. Raises :class:`UserError` for a bad value."""
    config, explicit = RunConfig(), set()
    try:
        if args.config:
            values = load_toml(args.config)
            if values.get("data", {}).get("horizons") == AUTO:  # as --print-config writes it
                del values["data"]["horizons"]
            config, explicit = apply(config, values), explicit_names(values)
        config, from_flags = config_from_namespace(args, config)
    except ValueError as err:
        raise UserError(str(err), "see --help") from None
    return config, explicit | from_flags


def resumed_config(config: RunConfig, explicit: set[str], saved: RunConfig) -> RunConfig:
    """The saved run's config with the settings a resume may change taken from ``config``
    where they are explicit; an explicit setting that contradicts the saved run is an
    error."""
    conflicts = [
        f"{name}={get(config, name)!r} (the run has {get(saved, name)!r})"
        for name in sorted(explicit - RESUMABLE)
        if not same_value(_comparable(name, get(config, name)), _comparable(name, get(saved, name)))
    ]
    if conflicts:
        raise UserError(
            "cannot resume with other settings: " + ", ".join(conflicts),
            "drop those flags, or start a new run",
        )
    # Where the run goes and whether to resume are this command's; how long to train,
    # where and how often to save keep the run's values unless given again.
    resumed = saved
    for name in (RESUMABLE & explicit) | {"run_dir", "resume", "overwrite"}:
        section, _, key = name.rpartition(".")
        value = get(config, name)
        resumed = apply(resumed, {section: {key: value}} if section else {key: value})
    return resumed


def _comparable(name: str, value: object) -> object:
    """A setting as a resume compares it: a data path by the file it names."""
    if name == "data.path" and value:
        return resolved_data_path(str(value))
    return value


def prepare_run_dir(config: RunConfig, hold: contextlib.ExitStack) -> Path:
    """The run dir, checked before any data loads: writable, locked for this run (the lock
    goes on ``hold``), holding a run exactly when ``--resume`` says so (``--overwrite``
    deletes an old run), no stray temporary files."""
    run_dir = Path(config.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
    if config.resume and config.overwrite:
        raise UserError("--resume and --overwrite contradict each other", "give one of them")
    if config.resume and config.run_dir is None:
        raise UserError("--resume needs --run-dir", "name the run to continue")
    if config.resume and not run_dir.is_dir():
        raise UserError(f"cannot resume: {run_dir} does not exist", "check --run-dir")
    check_writable(run_dir, "the run dir")
    mode = "resume" if config.resume else "overwrite" if config.overwrite else "new run"
    hold.enter_context(RunLock(run_dir, exclusive=True, command=f"pyppo-train ({mode})"))
    if config.resume and not (run_dir / LATEST).exists() and not (run_dir / CONFIG_FILE).exists():
        raise UserError(
            f"cannot resume: {run_dir} holds no run ({LATEST} and {CONFIG_FILE} are missing)",
            "check --run-dir, or start a new run without --resume",
        )
    holds_run = any((run_dir / name).exists() for name in RUN_FILES)
    if holds_run and not config.resume:
        if not config.overwrite:
            raise UserError(
                f"{run_dir} already holds a run",
                "--resume continues it, --overwrite replaces it, or choose another --run-dir",
            )
        for name in RUN_FILES:
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    for stray in stray_temporaries(run_dir):
        stray.unlink()
        print(f"removed {stray.name}, a temporary file left by a killed run")
    if config.run_dir is None:
        point_latest_at(run_dir)
    return run_dir


def point_latest_at(run_dir: Path) -> None:
    """Make ``runs/latest`` a link to ``run_dir``, the newest run in the default place, so
    that the next command can name it without its date (nothing breaks where links cannot
    be made)."""
    link = run_dir.parent / LATEST_RUN
    tmp = run_dir.parent / f".{LATEST_RUN}.{os.getpid()}.tmp"
    try:
        tmp.unlink(missing_ok=True)
        tmp.symlink_to(run_dir.name, target_is_directory=True)
        os.replace(tmp, link)  # (a real folder named "latest" is left alone: replace fails)
    except OSError:
        tmp.unlink(missing_ok=True)


def saved_config(run_dir: Path) -> tuple[RunConfig, bool]:
    """The settings of the run in ``run_dir`` and whether it has a checkpoint to continue:
    from ``checkpoint.pt``, else (a run stopped before its first checkpoint) from
    ``config.json``, to start it again from its beginning."""
    if (run_dir / LATEST).exists():
        saved = load_checkpoint(run_dir / LATEST).run_config
        if saved is None:
            raise UserError(
                f"{run_dir / LATEST} was not written by pyppo-train",
                "resume it from your own code, or start a new run",
            )
        return saved, True
    try:
        return RunConfig.from_dict(json.loads((run_dir / CONFIG_FILE).read_text())["config"]), False
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UserError(
            f"cannot resume: {run_dir / CONFIG_FILE} cannot be read ({err})",
            "start the run again with --overwrite",
        ) from None


def command(*args: str | Path) -> str:
    """A command line to show the user, every argument shell-quoted."""
    return " ".join(shlex.quote(str(a)) for a in args)


def what_is_kept(run_dir: Path) -> str:
    """What an interrupted run leaves, and how to go on."""
    resume = command("pyppo-train", "--resume", "--run-dir", run_dir)
    if (run_dir / LATEST).exists():
        return f"{run_dir / LATEST} is kept; resume with: {resume}"
    if (run_dir / CONFIG_FILE).exists():
        return f"no checkpoint yet: start the run again with: {resume}"
    return "nothing was written"


def train_as_configured(trainer: PPOTrainer, config: RunConfig) -> None:
    """Train for the run's ``epochs`` (or ``total_steps``), SIGINT and SIGTERM stopping it
    at the next update boundary with a checkpoint (:class:`TrainingInterrupted`)."""
    trainer.stop = StopRequest()
    with stop_on_signals(trainer.stop):
        if config.total_steps:
            trainer.train(total_steps=config.total_steps)
        else:
            trainer.train(epochs=config.epochs)


def train_main(argv: list[str] | None = None) -> int:
    """``pyppo-train``: returns the exit code (0, 2 on an error, 130/143 when stopped by
    SIGINT/SIGTERM after saving a checkpoint)."""
    return run_cli(_train, argv)


def _train(argv: list[str]) -> int:
    config, explicit, print_only = resolve_config(argv)
    if print_only:
        auto = [name for name in DERIVED_FROM_DATA if name not in explicit]
        print(config.to_toml(auto=auto, auto_value=AUTO), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = init_from_environment(config.device)  # joins the process group under torchrun
    rank, world = rank_and_world()
    if config.env.num_envs % world:  # (the trainer checks the minibatches)
        raise UserError(
            f"num_envs={config.env.num_envs} does not split evenly over {world} processes",
            "make it a multiple of the number of processes",
        )
    with contextlib.ExitStack() as hold:  # rank 0 holds the run dir's lock until the end
        run_dir = on_rank0(lambda: prepare_run_dir(config, hold), device)
        if rank:
            sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (rank 0 alone prints)
        try:
            return _train_in(run_dir, config, explicit, device, rank, world)
        except Interrupted as stop:
            raise CommandInterrupted(
                stop.exit_code, f"stopped by {stop.name}: {what_is_kept(run_dir)}"
            ) from None


def _train_in(
    run_dir: Path, config: RunConfig, explicit: set[str], device, rank: int, world: int
) -> int:
    continuing = False
    if config.resume:
        saved, continuing = saved_config(run_dir)
        config = resumed_config(config, explicit, saved)
        if not continuing:
            print(f"no checkpoint in {run_dir} yet: starting the run again from its beginning")
            shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
    elif config.data.path:
        config = apply(config, {"data": {"path": resolved_data_path(config.data.path)}})

    market, config = load_data(config, explicit | ({"data.horizons"} if config.resume else set()))
    print(market.report())
    train, validation, _ = split_data(market)
    env = make_env(train, config, device, rank=rank, world=world)
    model = make_model(env, config)
    trainer = PPOTrainer(
        model,
        env,
        config.ppo,
        device=device,
        run_dir=run_dir,
        callbacks=[BestCheckpoint(validation)],
        data_fingerprint=market.fingerprint(),
        progress=not config.quiet,
    )
    trainer.run_config = config
    trainer.data_info = DataInfo(
        path=config.data.path,
        source=market.source,
        train_start=str(first_and_last(train)[0]),
        train_end=str(first_and_last(validation)[1]),
    )
    if rank == 0:
        settings = {"config": config.to_dict(), "explicit": sorted(explicit)}
        write_text(run_dir / CONFIG_FILE, json.dumps(settings, indent=2) + "\n")
    if continuing:
        trainer.load_checkpoint(run_dir / LATEST)
        print(f"resuming {run_dir} at update {trainer.update} ({trainer.env_steps:,} env steps)")
    updates = trainer.updates_per_epoch()
    members = trainer.members
    who = (
        f"{members} members (seeds {format_seeds(config.ppo.member_seeds)}) x "
        f"{env.envs_per_member * world} envs"
        if members > 1
        else f"{env.num_envs * world} envs"
    )
    how = "portfolio" if config.env.portfolio else "pooled"
    symbols = f" x {len(env.symbols)} symbols ({how})" if len(env.symbols) > 1 else ""
    print(
        f"training on {device}"
        + (f" x {world} processes" if world > 1 else "")
        + f": {len(train):,} bars{symbols}, {who}, {trainer.env_steps_per_epoch():,} env steps per "
        f"epoch{' per member' if members > 1 else ''} "
        f"({updates} update{'s' if updates != 1 else ''}) -> {run_dir}"
    )
    try:
        train_as_configured(trainer, config)
    except NonFiniteParametersError as err:
        print(nan_events_table(trainer.history))
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:
        raise CommandInterrupted(
            stop.exit_code,
            f"stopped by {stop}: checkpoint saved; resume with: "
            + command("pyppo-train", "--resume", "--run-dir", run_dir),
        ) from None
    print(nan_events_table(trainer.history))
    print(
        f"done: {trainer.env_steps:,} env steps; metrics in {run_dir / METRICS_FILE}; "
        f"evaluate with: {command('pyppo-eval', run_dir)}"
    )
    return 0
