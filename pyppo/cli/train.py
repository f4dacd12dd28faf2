"""``pyppo-train``: flags generated from :mod:`pyppo.config`, run dirs that never lose a run,
and a clean stop on SIGINT/SIGTERM.

Data is split in time order: the first 70 % of bars train the agent, the next 10 % pick the
best checkpoint (validation Sharpe), the last 20 % are held out for ``pyppo-eval``. Flags and
output paths are checked before any data is loaded.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import sys
import time
from pathlib import Path

from pyppo.checkpoint import BEST, LATEST, DataInfo, load_checkpoint, stray_temporaries
from pyppo.cli.common import (
    Parser,
    UserError,
    check_writable,
    load_data,
    make_env,
    make_model,
    run_cli,
    split_data,
)
from pyppo.cli.flags import add_config_arguments, config_from_namespace, explicit_names
from pyppo.config import RunConfig, apply, get, load_toml, same_value
from pyppo.distributed import init_from_environment, on_rank0, rank_and_world
from pyppo.evaluation import BestCheckpoint
from pyppo.metrics import nan_events_table
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
# What a run dir holds; a folder with any of these holds a run.
RUN_FILES = (
    LATEST,
    BEST,
    "metrics.csv",
    "config.json",
    "report.md",
    "equity.png",
    "predictions.png",
    "training.png",
    "equity.csv",
    "trades.csv",
    "tensorboard",
)


def train_parser() -> argparse.ArgumentParser:
    p = Parser(
        prog="pyppo-train",
        description="Train a PPO trading agent (with short- and long-horizon auxiliary return "
        "heads) on the embedded synthetic market or your own OHLCV file.",
    )
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
    config, explicit = RunConfig(), set()
    try:
        if args.config:
            values = load_toml(args.config)
            config, explicit = apply(config, values), explicit_names(values)
        config, from_flags = config_from_namespace(args, config)
    except ValueError as err:
        raise UserError(str(err), "see pyppo-train --help") from None
    return config, explicit | from_flags, args.print_config


def resumed_config(config: RunConfig, explicit: set[str], saved: RunConfig) -> RunConfig:
    """The saved run's config with the settings a resume may change taken from ``config``
    where they are explicit; an explicit setting that contradicts the saved run is an
    error."""
    conflicts = [
        f"{name}={get(config, name)!r} (the run has {get(saved, name)!r})"
        for name in sorted(explicit - RESUMABLE)
        if not same_value(get(config, name), get(saved, name))
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


def prepare_run_dir(config: RunConfig) -> Path:
    """The run dir, checked before any data loads: writable, holding a run exactly when
    ``--resume`` says so (``--overwrite`` deletes an old run), no stray temporary files."""
    run_dir = Path(config.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
    if config.resume and config.overwrite:
        raise UserError("--resume and --overwrite contradict each other", "give one of them")
    if config.resume and config.run_dir is None:
        raise UserError("--resume needs --run-dir", "name the run to continue")
    if config.resume and not (run_dir / LATEST).exists():
        raise UserError(
            f"cannot resume: checkpoint {run_dir / LATEST} does not exist",
            "check --run-dir, or start a new run without --resume",
        )
    holds_run = run_dir.is_dir() and any((run_dir / name).exists() for name in RUN_FILES)
    if holds_run and not config.resume:
        if not config.overwrite:
            raise UserError(
                f"{run_dir} already holds a run",
                "--resume continues it, --overwrite replaces it, or choose another --run-dir",
            )
        for name in RUN_FILES:
            target = run_dir / name
            shutil.rmtree(target) if target.is_dir() else target.unlink(missing_ok=True)
    check_writable(run_dir, "the run dir")
    for stray in stray_temporaries(run_dir):
        stray.unlink()
        print(f"removed {stray.name}, a temporary file left by a killed run")
    return run_dir


def train_main(argv: list[str] | None = None) -> int:
    """``pyppo-train``: returns the exit code (0, 2 on an error, 130/143 when stopped by
    SIGINT/SIGTERM after saving a checkpoint)."""
    return run_cli(_train, argv)


def _train(argv: list[str]) -> int:
    config, explicit, print_only = resolve_config(argv)
    if print_only:
        print(config.to_toml(), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    device = init_from_environment(config.device)  # joins the process group under torchrun
    rank, world = rank_and_world()
    if config.env.num_envs % world:  # (the trainer checks the minibatches)
        raise UserError(
            f"num_envs={config.env.num_envs} does not split evenly over {world} processes",
            "make it a multiple of the number of processes",
        )
    run_dir = on_rank0(lambda: prepare_run_dir(config), device)
    if rank:
        sys.stdout = open(os.devnull, "w")  # noqa: SIM115 (rank 0 alone prints)
    if config.resume:
        saved = load_checkpoint(run_dir / LATEST).run_config
        if saved is None:
            raise UserError(
                f"{run_dir / LATEST} was not written by pyppo-train",
                "resume it from your own code, or start a new run",
            )
        config = resumed_config(config, explicit, saved)
    elif config.data.path:
        config = apply(config, {"data": {"path": str(Path(config.data.path).resolve())}})

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
        train_start=str(train.frame.index[0]),
        train_end=str(validation.frame.index[-1]),
    )
    if rank == 0:
        (run_dir / "config.json").write_text(
            json.dumps({"config": config.to_dict(), "explicit": sorted(explicit)}, indent=2) + "\n"
        )
    if config.resume:
        trainer.load_checkpoint(run_dir / LATEST)
        print(f"resuming {run_dir} at update {trainer.update} ({trainer.env_steps:,} env steps)")
    print(
        f"training on {device}"
        + (f" x {world} processes" if world > 1 else "")
        + f": {len(train):,} bars, {env.num_envs * world} envs, "
        f"{trainer.steps_per_epoch() * env.num_envs * world:,} env steps per epoch -> {run_dir}"
    )
    resume_hint = f"python scripts/train_rl_agent.py --resume --run-dir {run_dir}"
    trainer.stop = StopRequest()
    try:
        with stop_on_signals(trainer.stop):
            if config.total_steps:
                trainer.train(total_steps=config.total_steps)
            else:
                trainer.train(epochs=config.epochs)
    except NonFiniteParametersError as err:
        print(nan_events_table(trainer.history))
        print(f"error: {err}", file=sys.stderr)
        return 2
    except TrainingInterrupted as stop:
        print(f"stopped by {stop}: checkpoint saved; resume with: {resume_hint}", file=sys.stderr)
        return stop.exit_code
    except KeyboardInterrupt:
        print(
            f"stopped at once: the last checkpoint in {run_dir} is kept; resume with: "
            f"{resume_hint}",
            file=sys.stderr,
        )
        return 130
    print(nan_events_table(trainer.history))
    print(
        f"done: {trainer.env_steps:,} env steps; metrics in {run_dir / 'metrics.csv'}; "
        f"evaluate with: python scripts/evaluate_agent.py {run_dir}"
    )
    return 0
