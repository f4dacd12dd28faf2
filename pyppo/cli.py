"""Command lines: ``pyppo-train`` (scripts/train_rl_agent.py) and ``pyppo-eval``
(scripts/evaluate_agent.py).

Data is split in time order: the first 70 % of bars train the agent, the next 10 % pick
the best checkpoint (validation Sharpe), the last 20 % are held out for evaluate_agent.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

import torch

TRAIN_FRACTION, VALIDATION_FRACTION = 0.7, 0.1


# -- shared: data and model from a run's settings ------------------------------------------


def load_data(settings: dict[str, Any]):
    """The full MarketData a run trains on: the embedded synthetic market or a file."""
    from pyppo.data import load_market_data, synthetic_market

    if settings.get("data"):
        if settings.get("bad_ticks"):
            raise SystemExit("--bad-ticks plants bad data in the synthetic market only; "
                             "drop it when using --data")
        return load_market_data(
            settings["data"], timestamp_col=settings.get("timestamp_col"),
            timestamp_format=settings.get("timestamp_format"),
            price_col=settings.get("price_col"), repair=settings.get("repair"),
        )
    return synthetic_market(n_bars=settings["bars"], seed=settings["data_seed"],
                            bad_ticks=settings["bad_ticks"])


def split_data(market):
    """(train, validation, test) in time order."""
    train, rest = market.split(TRAIN_FRACTION)
    validation, test = rest.split(VALIDATION_FRACTION / (1 - TRAIN_FRACTION))
    return train, validation, test


def make_env(market, settings: dict[str, Any], device: str, *, num_envs: int | None = None):
    from pyppo.env import TradingEnv

    return TradingEnv(
        market, num_envs=num_envs or settings["num_envs"],
        episode_length=settings["episode_length"], window=settings["window"],
        fee=settings["fee"], allow_short=not settings["long_only"], device=device,
        seed=settings["seed"], sanitize=not settings["no_guards"],
    )


def make_model(env, settings: dict[str, Any]):
    """The run's model, initialised from the run's seed (the same weights every time)."""
    from pyppo.model import TradingActorCritic

    torch.manual_seed(settings["seed"])
    return TradingActorCritic(env.obs_spec, num_actions=env.single_action_space.n,
                              hidden_dim=settings["hidden_dim"])


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# -- pyppo-train --------------------------------------------------------------------------


def train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyppo-train",
        description="Train a PPO trading agent (with 1h/24h auxiliary return heads) on the "
                    "embedded synthetic market or your own OHLCV file.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    run = p.add_argument_group("run")
    run.add_argument("--epochs", type=int, default=10,
                     help="passes over the training bars")
    run.add_argument("--total-steps", type=int, default=None,
                     help="train for this many env steps instead of --epochs")
    run.add_argument("--run-dir", default=None,
                     help="where metrics.csv and checkpoints go (default runs/<date-time>)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --run-dir from its checkpoint.pt")
    run.add_argument("--device", default=None, help="cpu or cuda (default: cuda if present)")
    run.add_argument("--seed", type=int, default=0)
    run.add_argument("--quiet", action="store_true", help="no progress bar")
    data = p.add_argument_group("data")
    data.add_argument("--data", default=None, help="CSV or Parquet file of OHLCV bars "
                      "(default: the embedded synthetic market)")
    data.add_argument("--timestamp-col", default=None)
    data.add_argument("--timestamp-format", default=None, help="e.g. %%d/%%m/%%Y %%H:%%M")
    data.add_argument("--price-col", default=None)
    data.add_argument("--repair", choices=["drop", "ffill"], default=None,
                      help="fix NaN/zero/negative price rows instead of refusing them")
    data.add_argument("--bars", type=int, default=20_000, help="synthetic market length")
    data.add_argument("--data-seed", type=int, default=0, help="synthetic market seed")
    data.add_argument("--bad-ticks", type=float, default=0.0,
                      help="plant zero prices, NaN bars and +1000%% spikes at this rate "
                           "(synthetic market only)")
    nan = p.add_argument_group("NaN protection (the seed note's options)")
    nan.add_argument("--no-aux", action="store_true",
                     help="enable_auxiliary_losses=False: heads still predict, no aux loss")
    nan.add_argument("--aux-1h-coef", type=float, default=0.1)
    nan.add_argument("--aux-24h-coef", type=float, default=0.1)
    nan.add_argument("--nan-policy", choices=["zero", "skip"], default="zero",
                     help="zero: zero NaN/inf gradient elements; skip: skip the whole step")
    nan.add_argument("--max-grad-norm", type=float, default=0.5)
    nan.add_argument("--no-guards", action="store_true",
                     help="turn every guard off (to see a run die loudly; not for real use)")
    ppo = p.add_argument_group("PPO")
    ppo.add_argument("--lr", type=float, default=1e-4,
                     help="Adam learning rate (PPOTrainer defaults to 3e-4; 1e-4 learns the "
                          "synthetic market more reliably across seeds)")
    ppo.add_argument("--num-envs", type=int, default=32)
    ppo.add_argument("--num-steps", type=int, default=256)
    ppo.add_argument("--num-epochs", type=int, default=4, help="PPO epochs per update")
    ppo.add_argument("--batch-size", type=int, default=256)
    ppo.add_argument("--gamma", type=float, default=0.99)
    ppo.add_argument("--gae-lambda", type=float, default=0.95)
    ppo.add_argument("--entropy-coef", type=float, default=0.01)
    ppo.add_argument("--hidden-dim", type=int, default=128)
    ppo.add_argument("--episode-length", type=int, default=720)
    ppo.add_argument("--window", type=int, default=60)
    ppo.add_argument("--fee", type=float, default=1e-4)
    ppo.add_argument("--long-only", action="store_true", help="flat/long actions only")
    return p


def train_main(argv: list[str] | None = None) -> int:
    from pyppo.checkpoint import CheckpointError, load_checkpoint
    from pyppo.trainer import NonFiniteParametersError, PPOTrainer, nan_events_table

    args = train_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    settings = vars(args).copy()
    run_dir = Path(args.run_dir or f"runs/{time.strftime('%Y%m%d-%H%M%S')}")
    if args.resume:
        if args.run_dir is None:
            raise SystemExit("--resume needs --run-dir (the run to continue)")
        try:
            saved = load_checkpoint(run_dir / "checkpoint.pt")
        except CheckpointError as err:
            raise SystemExit(f"cannot resume: {err}") from None
        # The run's own settings win, except how long to train and where to run.
        keep = {k: settings[k] for k in ("epochs", "total_steps", "device", "quiet", "resume")}
        settings = {**saved["extra"]["settings"], **keep}
    device = settings["device"] or default_device()

    market = load_data(settings)
    print(market.report())
    train, validation, _ = split_data(market)
    env = make_env(train, settings, device)
    model = make_model(env, settings)
    trainer = PPOTrainer(
        model, env, lr=settings["lr"], gamma=settings["gamma"],
        gae_lambda=settings["gae_lambda"], entropy_coef=settings["entropy_coef"],
        aux_1h_coef=settings["aux_1h_coef"], aux_24h_coef=settings["aux_24h_coef"],
        enable_auxiliary_losses=not settings["no_aux"], max_grad_norm=settings["max_grad_norm"],
        nan_policy=settings["nan_policy"], num_steps=settings["num_steps"],
        num_epochs=settings["num_epochs"], batch_size=settings["batch_size"], device=device,
        seed=settings["seed"], run_dir=run_dir, validation=validation,
        guards=not settings["no_guards"], data_fingerprint=market.fingerprint(),
        progress=not settings["quiet"],
    )
    trainer.extra["settings"] = {k: v for k, v in settings.items()
                                 if k not in ("resume", "quiet")}
    if settings["resume"]:
        try:
            trainer.load_checkpoint(run_dir / "checkpoint.pt")
        except CheckpointError as err:
            raise SystemExit(f"cannot resume: {err}") from None
        print(f"resuming {run_dir} at update {trainer.update} ({trainer.env_steps:,} env steps)")
    print(f"training on {device}: {len(train):,} bars, {env.num_envs} envs, "
          f"{env.steps_per_epoch * env.num_envs:,} env steps per epoch -> {run_dir}")
    try:
        if settings["total_steps"]:
            trainer.train(total_steps=settings["total_steps"])
        else:
            trainer.train(epochs=settings["epochs"])
    except NonFiniteParametersError as err:
        print(nan_events_table(trainer.history))
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(nan_events_table(trainer.history))
    print(f"done: {trainer.env_steps:,} env steps; metrics in {run_dir / 'metrics.csv'}; "
          f"evaluate with: python scripts/evaluate_agent.py {run_dir}")
    return 0


# -- pyppo-eval ----------------------------------------------------------------------------


def eval_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pyppo-eval",
        description="Backtest a trained agent on the held-out bars against buy-and-hold and a "
                    "random policy; writes report.md and plots into the run directory.")
    p.add_argument("run", help="a run directory (uses best.pt, else checkpoint.pt) or a .pt file")
    p.add_argument("--data", default=None,
                   help="evaluate on this file instead of the run's held-out split")
    p.add_argument("--device", default=None)
    return p


def evaluate_run(run: str | Path, *, data: str | None = None, device: str | None = None
                 ) -> tuple[dict[str, dict[str, float]], Path]:
    """Backtest a run's best checkpoint (else its last) on the held-out bars, or on ``data``;
    write report.md and the plots. Returns ``(metrics by policy, report path)``."""
    from pyppo.checkpoint import CheckpointError, load_checkpoint
    from pyppo.report import write_report

    path = Path(run)
    if path.is_dir():
        path = path / "best.pt" if (path / "best.pt").exists() else path / "checkpoint.pt"
    state = load_checkpoint(path)
    settings = state["extra"]["settings"]
    device = device or default_device()
    if data:
        test = load_data({**settings, "data": data, "bad_ticks": 0.0})
    else:
        test = split_data(load_data(settings))[2]
    env = make_env(test, {**settings, "no_guards": False}, device, num_envs=1)
    model = make_model(env, settings).to(device)
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as err:
        raise CheckpointError(f"checkpoint {path} does not fit this version's model: {err}"
                              ) from err
    model.eval()
    return write_report(path.parent, model, test, settings, state, device=device)


def eval_main(argv: list[str] | None = None) -> int:
    from pyppo.checkpoint import CheckpointError

    args = eval_parser().parse_args(argv)
    try:
        _, report = evaluate_run(args.run, data=args.data, device=args.device)
    except CheckpointError as err:
        raise SystemExit(f"error: {err}") from None
    print(report.read_text())
    return 0
