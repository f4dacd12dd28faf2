"""Command lines: ``pyppo-train`` (scripts/train_rl_agent.py) and ``pyppo-eval``
(scripts/evaluate_agent.py).

Every training flag is generated from :mod:`pyppo.config`'s dataclasses, so the command line
and the Python API share one set of defaults. Data is split in time order: the first 70 % of
bars train the agent, the next 10 % pick the best checkpoint (validation Sharpe), the last
20 % are held out for evaluate_agent.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path

import torch

from pyppo.config import (
    RunConfig,
    add_config_arguments,
    apply,
    config_from_namespace,
    explicit_names,
    get,
    load_toml,
    same_value,
)

TRAIN_FRACTION, VALIDATION_FRACTION = 0.7, 0.1

# Settings a resumed run may change: how long and where it trains, and how often it saves.
RESUMABLE = {
    "epochs",
    "total_steps",
    "run_dir",
    "resume",
    "device",
    "quiet",
    "ppo.checkpoint_every",
}


# -- shared: data, env and model from a run's config ----------------------------------------


def horizons_of(config: RunConfig) -> tuple[int | str, ...]:
    """The configured horizons as the data layer takes them: a bare number is in bars."""
    return tuple(int(h) if str(h).isdigit() else h for h in config.data.horizons)


def load_data(config: RunConfig):
    """The full MarketData a run trains on: the embedded synthetic market or a file."""
    from pyppo.data import load_market_data, synthetic_market

    data = config.data
    if data.path:
        if data.bad_ticks:
            raise SystemExit(
                "--bad-ticks plants bad data in the synthetic market only; "
                "drop it when using --data"
            )
        return load_market_data(
            data.path,
            timestamp_col=data.timestamp_col,
            timestamp_format=data.timestamp_format,
            price_col=data.price_col,
            repair=data.repair,
            window=config.env.window,
            horizons=horizons_of(config),
        )
    return synthetic_market(
        n_bars=data.bars,
        seed=data.data_seed,
        bad_ticks=data.bad_ticks,
        horizons=horizons_of(config),
    )


def split_data(market):
    """(train, validation, test) in time order."""
    train, rest = market.split(TRAIN_FRACTION)
    validation, test = rest.split(VALIDATION_FRACTION / (1 - TRAIN_FRACTION))
    return train, validation, test


def make_env(
    market,
    config: RunConfig,
    device: torch.device,
    *,
    num_envs: int | None = None,
    sanitize: bool | None = None,
):
    """The run's TradingEnv over ``market``."""
    from pyppo.env import TradingEnv

    env = config.env
    return TradingEnv(
        market,
        num_envs=num_envs or env.num_envs,
        episode_length=env.episode_length,
        window=env.window,
        fee=env.fee,
        allow_short=env.allow_short,
        device=device,
        seed=config.ppo.seed,
        sanitize=config.ppo.guards if sanitize is None else sanitize,
    )


def make_model(env, config: RunConfig):
    """The run's model, initialised from the run's seed (the same weights every time)."""
    from pyppo.model import TradingActorCritic

    torch.manual_seed(config.ppo.seed)
    return TradingActorCritic(
        env.obs_spec,
        num_actions=env.single_action_space.n,
        hidden_dim=config.model.hidden_dim,
        aux_limit=config.model.aux_limit,
        aux_labels=env.aux_labels,
    )


# -- pyppo-train --------------------------------------------------------------------------


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
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
    whether ``--print-config`` was given."""
    args = train_parser().parse_args(argv)
    config, explicit = RunConfig(), set()
    try:
        if args.config:
            values = load_toml(args.config)
            config, explicit = apply(config, values), explicit_names(values)
        config, from_flags = config_from_namespace(args, config)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None
    return config, explicit | from_flags, args.print_config


def resumed_config(config: RunConfig, explicit: set[str], saved: RunConfig) -> RunConfig:
    """The saved run's config with the settings a resume may change taken from ``config``;
    an explicit setting that contradicts the saved run is an error."""
    conflicts = [
        f"{name}={get(config, name)!r} (the run has {get(saved, name)!r})"
        for name in sorted(explicit - RESUMABLE)
        if not same_value(get(config, name), get(saved, name))
    ]
    if conflicts:
        raise SystemExit(
            "cannot resume with other settings: "
            + ", ".join(conflicts)
            + "; drop those flags, or start a new run"
        )
    resumed = saved
    for name in RESUMABLE:
        values = (
            {name: get(config, name)}
            if "." not in name
            else {name.split(".")[0]: {name.split(".")[1]: get(config, name)}}
        )
        resumed = apply(resumed, values)
    return resumed


def train_main(argv: list[str] | None = None) -> int:
    from pyppo.checkpoint import CheckpointError, load_checkpoint
    from pyppo.device import resolve_device
    from pyppo.metrics import nan_events_table
    from pyppo.trainer import NonFiniteParametersError, PPOTrainer

    config, explicit, print_only = resolve_config(argv)
    if print_only:
        print(config.to_toml(), end="")
        return 0
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    run_dir = Path(config.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
    if config.resume:
        if config.run_dir is None:
            raise SystemExit("--resume needs --run-dir (the run to continue)")
        try:
            saved = load_checkpoint(run_dir / "checkpoint.pt")
        except CheckpointError as err:
            raise SystemExit(f"cannot resume: {err}") from None
        config = resumed_config(config, explicit, RunConfig.from_dict(saved["run_config"]))
    try:
        device = resolve_device(config.device)
    except ValueError as err:
        raise SystemExit(f"error: {err}") from None

    market = load_data(config)
    print(market.report())
    train, validation, _ = split_data(market)
    env = make_env(train, config, device)
    model = make_model(env, config)
    trainer = PPOTrainer(
        model,
        env,
        config.ppo,
        device=device,
        run_dir=run_dir,
        validation=validation,
        data_fingerprint=market.fingerprint(),
        progress=not config.quiet,
    )
    trainer.run_config = config.to_dict()
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(
        json.dumps({"config": config.to_dict(), "explicit": sorted(explicit)}, indent=2) + "\n"
    )
    if config.resume:
        try:
            trainer.load_checkpoint(run_dir / "checkpoint.pt")
        except CheckpointError as err:
            raise SystemExit(f"cannot resume: {err}") from None
        print(f"resuming {run_dir} at update {trainer.update} ({trainer.env_steps:,} env steps)")
    print(
        f"training on {device}: {len(train):,} bars, {env.num_envs} envs, "
        f"{env.steps_per_epoch * env.num_envs:,} env steps per epoch -> {run_dir}"
    )
    try:
        if config.total_steps:
            trainer.train(total_steps=config.total_steps)
        else:
            trainer.train(epochs=config.epochs)
    except NonFiniteParametersError as err:
        print(nan_events_table(trainer.history))
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(nan_events_table(trainer.history))
    print(
        f"done: {trainer.env_steps:,} env steps; metrics in {run_dir / 'metrics.csv'}; "
        f"evaluate with: python scripts/evaluate_agent.py {run_dir}"
    )
    return 0


# -- pyppo-eval ----------------------------------------------------------------------------


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyppo-eval",
        description="Backtest a trained agent on the held-out bars against buy-and-hold and a "
        "random policy; writes report.md and plots into the run directory.",
    )
    p.add_argument("run", help="a run directory (uses best.pt, else checkpoint.pt) or a .pt file")
    p.add_argument(
        "--data", default=None, help="evaluate on this file instead of the run's held-out split"
    )
    p.add_argument("--device", default=None)
    return p


def evaluate_run(
    run: str | Path, *, data: str | None = None, device: str | None = None
) -> tuple[dict[str, dict[str, float]], Path]:
    """Backtest a run's best checkpoint (else its last) on the held-out bars, or on ``data``;
    write report.md and the plots. Returns ``(metrics by policy, report path)``."""
    from pyppo.checkpoint import CheckpointError, load_checkpoint
    from pyppo.device import resolve_device
    from pyppo.report import write_report

    path = Path(run)
    if path.is_dir():
        path = path / "best.pt" if (path / "best.pt").exists() else path / "checkpoint.pt"
    state = load_checkpoint(path)
    config = RunConfig.from_dict(state["run_config"])
    resolved = resolve_device(device)
    if data:
        config = apply(config, {"data": {"path": str(data), "bad_ticks": 0.0}})
        test = load_data(config)
    else:
        test = split_data(load_data(config))[2]
    env = make_env(test, config, resolved, num_envs=1, sanitize=True)
    model = make_model(env, config).to(resolved)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(
            f"checkpoint {path} does not fit this version's model: {err}"
        ) from err
    model.eval()
    return write_report(path.parent, model, test, config, state, device=resolved)


def eval_main(argv: list[str] | None = None) -> int:
    from pyppo.checkpoint import CheckpointError

    args = eval_parser().parse_args(argv)
    try:
        _, report = evaluate_run(args.run, data=args.data, device=args.device)
    except (CheckpointError, ValueError) as err:
        raise SystemExit(f"error: {err}") from None
    print(report.read_text())
    return 0
