"""What the command lines share: one-line errors and interrupts, the run's data, env and
model.

Every user error (data, flags, devices, paths, checkpoints) ends the program with one last
line on stderr, ``error: <what> (<fix>)``, and exit code 2; ``--debug`` shows the traceback.
Ctrl-C or SIGTERM ends it with one line saying what exists, and exit code 130 or 143
(:mod:`pyppo.interrupts`); outputs are written whole or not at all (:mod:`pyppo.files`), so
an interrupted command leaves the old ones.
"""

from __future__ import annotations

import argparse
import glob
import re
import shlex
import signal
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pandas as pd
import torch

from pyppo.checkpoint import CheckpointError
from pyppo.config import RunConfig, apply
from pyppo.data import (
    MarketData,
    MarketDataError,
    Universe,
    format_duration,
    horizon_to_bars,
    load_market_data,
    load_universe,
    synthetic_market,
)
from pyppo.data.universe import is_universe_source
from pyppo.env import TradingEnv
from pyppo.files import DiskFullError
from pyppo.interrupts import EXIT_CODES, Interrupted, raised_as_interrupts
from pyppo.model import PortfolioActorCritic, TradingActorCritic
from pyppo.population import PopulationActorCritic
from pyppo.portfolio_env import PortfolioEnv
from pyppo.runlock import RunDirInUse

TRAIN_FRACTION, VALIDATION_FRACTION = 0.7, 0.1


class UserError(Exception):
    """A mistake the user can fix: printed as ``error: <what> (<fix>)``."""

    def __init__(self, what: str, fix: str | None = None) -> None:
        super().__init__(f"{what} ({fix})" if fix else what)


class CommandInterrupted(Exception):
    """A command stopped by a signal, with the one line that says what it left.

    :param exit_code: 130 (SIGINT) or 143 (SIGTERM).
    :param message: what exists now, and how to go on.
    """

    def __init__(self, exit_code: int, message: str) -> None:
        super().__init__(message)
        self.exit_code = exit_code


class Parser(argparse.ArgumentParser):
    """argparse whose errors are one line in pyppo's format."""

    def error(self, message: str) -> None:  # type: ignore[override]
        raise UserError(message, f"see {self.prog} --help")


def run_cli(main: Callable[[list[str]], int], argv: list[str] | None) -> int:
    """Run ``main``; turn every exception into one ``error:`` line and exit code 2 (the
    traceback too with ``--debug``), and Ctrl-C or SIGTERM into one ``stopped by`` line and
    exit code 130 or 143."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        with raised_as_interrupts():
            return main(argv)
    except CommandInterrupted as stop:
        print(stop, file=sys.stderr)
        return stop.exit_code
    except (Interrupted, KeyboardInterrupt) as stop:
        signum = stop.signum if isinstance(stop, Interrupted) else signal.SIGINT
        name = signal.Signals(signum).name
        print(
            f"stopped by {name}: nothing was changed (outputs are written whole)", file=sys.stderr
        )
        return EXIT_CODES[signum]
    except Exception as err:  # the one place every failure becomes one line
        if "--debug" in argv:
            traceback.print_exc()
        print(f"error: {_one_line(err)}", file=sys.stderr)
        return 2


def _one_line(err: Exception) -> str:
    text = " ".join(str(err).split())
    if isinstance(err, MarketDataError):
        return cli_syntax(text)
    if isinstance(err, (UserError, CheckpointError, RunDirInUse, ValueError)):
        return text
    if isinstance(err, DiskFullError):
        return text
    if isinstance(err, OSError):
        where = f": {err.filename}" if err.filename else ""
        return f"{err.strerror or text}{where} (check the path and its permissions)"
    return f"{type(err).__name__}: {text} (an internal error: rerun with --debug and report it)"


# The data layer's hints name its keyword arguments (repair='drop'); on the command line the
# same settings are flags (--repair drop).
_KEYWORD_HINT = re.compile(r"\b(repair|price_col|timestamp_col|timestamp_format)=('[^']*'|<\w+>)?")


def cli_syntax(text: str) -> str:
    """``text`` with the data loader's keyword hints written as the flags that set them,
    values shell-quoted: ``repair='drop'`` -> ``--repair drop``,
    ``timestamp_format='%d/%m/%Y %H:%M'`` -> ``--timestamp-format '%d/%m/%Y %H:%M'``."""

    def as_flag(match: re.Match) -> str:
        flag = "--" + match.group(1).replace("_", "-")
        value = match.group(2)
        if value is None:
            return flag
        value = value.strip("'")
        if value.startswith("<"):  # a placeholder such as <column>
            return f"{flag} {value[1:-1].upper()}"
        return f"{flag} {shlex.quote(value)}"

    return _KEYWORD_HINT.sub(as_flag, text)


# -- shared: data, env and model from a run's config ----------------------------------------


def horizons_of(config: RunConfig) -> tuple[int | str, ...]:
    """The configured horizons as the data layer takes them: a bare number is in bars."""
    return tuple(int(h) if str(h).isdigit() else h for h in config.data.horizons)


def default_horizons(interval: Any) -> tuple[str, str]:
    """1h and 24h where the bars divide them; else one bar and 24 bars (4h bars: 4h, 4d)."""
    try:
        for h in ("1h", "24h"):
            horizon_to_bars(h, interval)
        return ("1h", "24h")
    except ValueError:
        return (format_duration(interval).lower(), format_duration(24 * interval).lower())


def load_data(config: RunConfig, explicit: set[str] = frozenset()) -> tuple[Any, RunConfig]:
    """The full data a run trains on (the embedded synthetic market, a file, or a universe
    of symbols: several files, a directory, a glob or a table with a ``symbol`` column) and
    the config with its horizons resolved: unless set explicitly they adapt to the bar
    interval."""
    data = config.data
    if not data.path:
        market = synthetic_market(
            n_bars=data.bars, seed=data.data_seed, bad_ticks=data.bad_ticks, horizons=(1,)
        )
    else:
        if data.bad_ticks:
            raise UserError(
                "--bad-ticks plants bad data in the synthetic market only",
                "drop it when using --data",
            )
        options = dict(
            timestamp_col=data.timestamp_col,
            timestamp_format=data.timestamp_format,
            price_col=data.price_col,
            repair=data.repair,
            window=config.env.window,
            horizons=(1,),
        )
        if is_universe_source(data.path):
            market = load_universe(data.path, **options)
        else:
            market = load_market_data(data.path, **options)
    horizons = horizons_of(config)
    if "data.horizons" not in explicit:
        horizons = default_horizons(market.bar_interval)
    for h in horizons:
        try:
            horizon_to_bars(h, market.bar_interval)
        except ValueError as err:
            raise UserError(
                f"--horizons {','.join(map(str, horizons))}: {err}",
                "give two durations that are whole multiples of the bar interval, "
                "or bar counts such as --horizons 1,24",
            ) from None
    if isinstance(market, Universe):
        market = Universe(
            {s: _with_horizons(m, horizons, config) for s, m in market.markets.items()},
            source=market.source,
        )
    else:
        market = _with_horizons(market, horizons, config)
    return market, apply(config, {"data": {"horizons": [str(h) for h in horizons]}})


def _with_horizons(market: MarketData, horizons: tuple, config: RunConfig) -> MarketData:
    return MarketData(
        market.frame,
        bar_interval=market.bar_interval,
        horizons=horizons,
        window=config.env.window,
        repair=market.repair,
        planted=market.planted,
        source=market.source,
    )


def data_paths(path: str) -> list[Path]:
    """The files or folders a ``--data`` value names (several, comma-separated, for a
    universe; a glob stays one pattern)."""
    return [Path(p.strip()) for p in str(path).split(",") if p.strip()]


def resolved_data_path(path: str) -> str:
    """``--data`` with every path made absolute (a run keeps finding its data wherever it is
    resumed or evaluated from)."""
    return ",".join(str(p.resolve()) for p in data_paths(path))


def data_exists(path: str) -> bool:
    """Whether everything ``--data`` names is still there (a glob: any file matches)."""
    return all(
        bool(glob.glob(str(p))) if glob.has_magic(str(p)) else p.exists() for p in data_paths(path)
    )


def first_and_last(data: Any) -> tuple[pd.Timestamp, pd.Timestamp]:
    """The first and the last timestamp of a market or a universe."""
    index = data.calendar if isinstance(data, Universe) else data.frame.index
    return index[0], index[-1]


def split_data(market):
    """(train, validation, test) in time order (a universe's: by time for all symbols)."""
    train, rest = market.split(TRAIN_FRACTION)
    validation, test = rest.split(VALIDATION_FRACTION / (1 - TRAIN_FRACTION))
    return train, validation, test


def make_env(
    market,
    config: RunConfig,
    device: torch.device,
    *,
    rank: int = 0,
    world: int = 1,
    span: tuple[int, int] | None = None,
):
    """The run's training env over ``market``: process ``rank``'s share of the envs, with its
    own seed (of each member, for a population); ``span`` limits the bars whose rewards and
    labels it trains on. A :class:`pyppo.TradingEnv` (one symbol, or pooled symbols), or with
    ``--portfolio`` a :class:`pyppo.PortfolioEnv`."""
    env = config.env
    seeds = [seed + 1000 * rank for seed in config.ppo.member_seeds]
    common = dict(
        num_envs=env.num_envs // world,
        episode_length=env.episode_length,
        window=env.window,
        fee=env.fee,
        allow_short=env.allow_short,
        device=device,
        fill=env.fill,
        spread=env.spread,
        span=span,
    )
    if not env.portfolio:
        seed = seeds[0] if len(seeds) == 1 else seeds
        return TradingEnv(market, seed=seed, sanitize=config.ppo.guards, **common)
    if not isinstance(market, Universe):
        raise UserError(
            "--portfolio trades several symbols together, and the data is one series",
            "pass a folder, a glob, several files or a table with a symbol column to --data",
        )
    if len(seeds) > 1:
        raise UserError("--portfolio trains one seed at a time", "drop --seeds")
    if not config.ppo.guards:
        raise UserError(
            "--no-guards shows what the guards prevent on one symbol's env; a portfolio's "
            "money is always guarded",
            "drop --no-guards or --portfolio",
        )
    return PortfolioEnv(
        market, seed=seeds[0], max_weight=env.max_weight, max_gross=env.max_gross, **common
    )


def make_model(env, config: RunConfig) -> TradingActorCritic:
    """The run's model, initialised from the run's seed (the same weights every time); a
    population (``--seeds``) of models each initialised from its own seed."""

    def seeded(seed: int) -> TradingActorCritic:
        torch.manual_seed(seed)
        if isinstance(env, PortfolioEnv):
            return PortfolioActorCritic(
                env.obs_spec,
                env.num_symbols,
                num_actions=3 if env.allow_short else 2,
                hidden_dim=config.model.hidden_dim,
                aux_limit=config.model.aux_limit,
                aux_labels=env.aux_labels,
            )
        return TradingActorCritic(
            env.obs_spec,
            num_actions=env.single_action_space.n,
            hidden_dim=config.model.hidden_dim,
            aux_limit=config.model.aux_limit,
            aux_labels=env.aux_labels,
        )

    seeds = config.ppo.member_seeds
    if len(seeds) == 1:
        return seeded(seeds[0])
    return PopulationActorCritic.from_members([seeded(seed) for seed in seeds])


def check_writable(folder: Path, what: str, files: tuple[str, ...] = ()) -> None:
    """Create ``folder`` if needed and prove that files (``files`` by name) can be written
    there, before any long work starts."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{what} {folder} is a file, not a folder", "choose another path")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for name in (".pyppo-write-test", *files):
            path = folder / name
            existed = path.exists()
            with open(path, "ab"):
                pass
            if not existed:
                path.unlink()
    except OSError as err:
        raise UserError(
            f"cannot write {err.filename or folder}: {err.strerror}",
            f"{what} must be a folder you can write to",
        ) from None
