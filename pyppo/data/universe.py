"""A universe of symbols: several validated bar series aligned on one calendar.

Each symbol is loaded and validated on its own, with :func:`load_market_data`'s rules, and
keeps its own bars (:attr:`Universe.markets`): a stock's closed hours are not bars of the
stock, so they never become steps of an episode that trades it. The universe adds the one
calendar every symbol is placed on (:attr:`Universe.calendar`, the union of their
timestamps) for what needs the symbols side by side: the time split (one cut for all
symbols), a portfolio's steps, cross-sectional statistics.

Alignment on the calendar (:meth:`Universe.aligned_close`, :meth:`Universe.has_bar`,
:meth:`Universe.listed`): on a calendar bar where a symbol has no bar of its own, the symbol
is untradable. Its price is the last one it had (a position held through the gap is marked
there and earns the move when the next real bar comes); nothing fills at a made-up price.
Before its first bar and after its last (a late listing, a delisting) it is not listed:
flat, and a position held at its last bar is closed at that bar's price.

Symbols are named by their file's stem or their ``symbol`` value; every message names the
symbol and its file.
"""

from __future__ import annotations

import glob
import hashlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pyppo.data.errors import DataSource, MarketDataError, examples_text
from pyppo.data.horizons import format_duration
from pyppo.data.loading import load_market_data, market_from_table
from pyppo.data.market import MarketData, as_nanoseconds, check_length
from pyppo.data.reading import read_table

__all__ = ["SYMBOL_COLUMN", "Universe", "load_universe", "is_universe_source"]

SYMBOL_COLUMN = "symbol"  # the column naming each row's symbol in a long-format table
DATA_SUFFIXES = (".csv", ".parquet", ".pq", ".gz", ".bz2", ".zip", ".xz", ".zst")


class Universe:
    """Several symbols' validated bars and the calendar they are aligned on.

    :param markets: symbol -> its bars, in the order the symbols are to be listed. Every
        symbol must have the same bar interval and horizons.
    :param source: where the data came from (messages, reports).
    """

    def __init__(self, markets: Mapping[str, MarketData], *, source: str = "dict") -> None:
        if not markets:
            raise MarketDataError("a universe needs at least one symbol")
        self.markets: dict[str, MarketData] = {str(k): v for k, v in markets.items()}
        self.symbols: tuple[str, ...] = tuple(self.markets)
        first_symbol, first = next(iter(self.markets.items()))
        for symbol, market in self.markets.items():
            if market.bar_interval != first.bar_interval:
                raise MarketDataError(
                    f"symbol {symbol!r} ({market.source}) has "
                    f"{format_duration(market.bar_interval)} bars, symbol {first_symbol!r} "
                    f"has {format_duration(first.bar_interval)} bars: resample them to one bar "
                    "interval"
                )
            if market.horizons != first.horizons:
                raise MarketDataError(
                    f"symbol {symbol!r} has horizons {market.horizon_labels}, symbol "
                    f"{first_symbol!r} has {first.horizon_labels}: load them with the same "
                    "horizons"
                )
        self.source = source
        stamps = np.unique(
            np.concatenate([as_nanoseconds(m.frame.index) for m in self.markets.values()])
        )
        self.calendar = pd.DatetimeIndex(pd.to_datetime(stamps, unit="ns"), name="timestamp")

    # -- what every symbol shares ----------------------------------------------------------

    @property
    def bar_interval(self) -> pd.Timedelta:
        return self.markets[self.symbols[0]].bar_interval

    @property
    def horizons(self) -> tuple[int, ...]:
        return self.markets[self.symbols[0]].horizons

    @property
    def horizon_labels(self) -> tuple[str, ...]:
        return self.markets[self.symbols[0]].horizon_labels

    @property
    def window(self) -> int:
        return self.markets[self.symbols[0]].window

    @property
    def planted(self) -> dict[str, np.ndarray]:
        return {}

    def __len__(self) -> int:
        """Bars of the calendar."""
        return len(self.calendar)

    def __getitem__(self, symbol: str) -> MarketData:
        return self.markets[symbol]

    # -- alignment ---------------------------------------------------------------------------

    def bar_positions(self, symbol: str) -> np.ndarray:
        """Where each of ``symbol``'s bars lies on the calendar (int64, increasing)."""
        index = as_nanoseconds(self.markets[symbol].frame.index)
        return np.searchsorted(as_nanoseconds(self.calendar), index)

    def symbol_span(self, symbol: str, lo: int, hi: int) -> tuple[int, int]:
        """``symbol``'s bars ``[a, b)`` whose timestamps are calendar bars ``[lo, hi)``."""
        positions = self.bar_positions(symbol)
        return int(np.searchsorted(positions, lo)), int(np.searchsorted(positions, hi))

    def has_bar(self) -> np.ndarray:
        """``(calendar bars, symbols)`` bool: the symbol has a bar of its own there (it can
        trade)."""
        out = np.zeros((len(self.calendar), len(self.symbols)), dtype=bool)
        for j, symbol in enumerate(self.symbols):
            out[self.bar_positions(symbol), j] = True
        return out

    def listed(self) -> np.ndarray:
        """``(calendar bars, symbols)`` bool: between the symbol's first and last bar."""
        out = np.zeros((len(self.calendar), len(self.symbols)), dtype=bool)
        for j, symbol in enumerate(self.symbols):
            positions = self.bar_positions(symbol)
            out[positions[0] : positions[-1] + 1, j] = True
        return out

    def aligned_close(self) -> np.ndarray:
        """``(calendar bars, symbols)`` float64 closes, the last close carried over the
        bars a listed symbol lacks, NaN where it is not listed."""
        out = np.full((len(self.calendar), len(self.symbols)), np.nan)
        for j, symbol in enumerate(self.symbols):
            positions = self.bar_positions(symbol)
            column = out[:, j]
            column[positions] = self.markets[symbol].close.numpy()
            life = slice(positions[0], positions[-1] + 1)
            column[life] = pd.Series(column[life]).ffill().to_numpy()
        return out

    # -- derived views ---------------------------------------------------------------------

    def decision_bars(self, window: int) -> int:
        """Bars an agent can act on, over all symbols."""
        return sum(max(m.decision_bars(window), 0) for m in self.markets.values())

    def split(self, train: float = 0.8) -> tuple[Universe, Universe]:
        """Split by time into (train, test) at one calendar bar for every symbol: the first
        ``train`` fraction of the calendar and the rest. A symbol with too few bars in a part
        for one decision is left out of that part (listed late, or delisted early); a part
        with no symbol left is an error."""
        if not 0.0 < train < 1.0:
            raise MarketDataError(f"split(train={train}): train must be a fraction in (0, 1)")
        cut = self.calendar[int(round(len(self.calendar) * train))]
        parts = []
        for name, keep in (("train", lambda idx: idx < cut), ("test", lambda idx: idx >= cut)):
            markets = {}
            for symbol, market in self.markets.items():
                sub = market.frame[keep(market.frame.index)]
                try:
                    check_length(sub, market.window, market.horizons, market.horizon_labels, "")
                except MarketDataError:
                    continue
                markets[symbol] = MarketData(
                    sub,
                    bar_interval=market.bar_interval,
                    horizons=market._horizon_spec,
                    window=market.window,
                    repair=market.repair,
                    source=f"{market.source}[{name}]",
                )
            if not markets:
                raise MarketDataError(
                    f"the {name} part of split(train={train}) has no symbol with enough bars "
                    f"(window {self.window} + longest horizon + 1): use more data"
                )
            parts.append(Universe(markets, source=f"{self.source}[{name}]"))
        return parts[0], parts[1]

    def fingerprint(self) -> str:
        """A stable SHA-256 of every symbol's name and data."""
        h = hashlib.sha256()
        for symbol, market in self.markets.items():
            h.update(symbol.encode())
            h.update(market.fingerprint().encode())
        return h.hexdigest()

    def report(self) -> str:
        """A summary printed before training: the calendar and one line per symbol."""
        lines = [
            f"universe: {self.source}",
            f"  symbols:   {len(self.symbols)}",
            f"  calendar:  {len(self.calendar):,} bars from {self.calendar[0]} to "
            f"{self.calendar[-1]}, {format_duration(self.bar_interval)} bars",
        ]
        has = self.has_bar()
        listed = self.listed()
        for j, symbol in enumerate(self.symbols):
            market = self.markets[symbol]
            idx = market.frame.index
            missing = int((listed[:, j] & ~has[:, j]).sum())
            lines.append(
                f"  {symbol}: {len(market):,} bars, {idx[0]} to {idx[-1]}"
                + (f", {missing:,} calendar bars without a bar" if missing else "")
                + (f", repaired {market.repair.describe()}" if market.repair.total else "")
            )
        lines.append(f"  fingerprint: {self.fingerprint()[:16]}")
        return "\n".join(lines)

    def to_files(self, folder: str | Path) -> list[Path]:
        """Write each symbol's bars to ``folder/<symbol>.csv`` (what :func:`load_universe`
        reads back); returns the paths."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for symbol, market in self.markets.items():
            path = folder / f"{symbol}.csv"
            market.frame.to_csv(path)
            paths.append(path)
        return paths

    def __repr__(self) -> str:
        return (
            f"Universe({len(self.symbols)} symbols, {len(self.calendar)} calendar bars, "
            f"interval={format_duration(self.bar_interval)}, source={self.source!r})"
        )


def is_universe_source(source: Any) -> bool:
    """Whether ``source`` names several symbols: a mapping, a list of paths, a directory, a
    glob, several comma-separated paths, or one table with a ``symbol`` column."""
    if isinstance(source, Mapping) or (
        isinstance(source, Sequence) and not isinstance(source, str)
    ):
        return True
    if isinstance(source, pd.DataFrame):
        return _symbol_column(source) is not None
    text = str(source)
    if "," in text or glob.has_magic(text) or Path(text).is_dir():
        return True
    if not Path(text).is_file():
        return False
    raw, _ = read_table(text)
    return _symbol_column(raw) is not None


def load_universe(
    source: str | Path | pd.DataFrame | Mapping[str, Any] | Sequence[str | Path],
    **options: Any,
) -> Universe:
    """Load several symbols, each validated like :func:`load_market_data` (whose keyword
    options, ``window=``, ``horizons=``, ``repair=`` and the rest, apply to every symbol).

    :param source: a dict of symbol -> DataFrame or path; a list of paths; a directory (its
        CSV and Parquet files); a glob such as ``"data/*.csv"``; comma-separated paths; or
        one long-format CSV/Parquet file or DataFrame with a ``symbol`` column.
    :raises MarketDataError: naming the symbol, its file and the offending rows.
    """
    if isinstance(source, Mapping):
        return Universe(
            {str(s): _load_symbol(str(s), v, options) for s, v in source.items()}, source="dict"
        )
    if isinstance(source, pd.DataFrame):
        return _long_format(source, DataSource("DataFrame"), options, "DataFrame")
    if isinstance(source, Sequence) and not isinstance(source, str):
        paths = [Path(p) for p in source]
        label = ", ".join(str(p) for p in paths)
    else:
        text = str(source)
        if "," in text:
            paths = [Path(p.strip()) for p in text.split(",") if p.strip()]
        elif glob.has_magic(text):
            paths = [Path(p) for p in sorted(glob.glob(text))]
            if not paths:
                raise MarketDataError(f"{text}: no file matches; check the pattern")
        elif Path(text).is_dir():
            paths = sorted(p for p in Path(text).iterdir() if _is_data_file(p))
            if not paths:
                raise MarketDataError(
                    f"{text}: no CSV or Parquet file in the directory; put one file per symbol "
                    "there"
                )
        else:
            raw, name = read_table(text)
            if _symbol_column(raw) is None:
                return Universe(
                    {_stem(Path(text)): _load_symbol(_stem(Path(text)), text, options)}, source=text
                )
            return _long_format(raw, name, options, text)
        label = text
    names = [_stem(p) for p in paths]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise MarketDataError(
            f"{label}: several files name the symbol(s) {examples_text(repeated)}; a symbol is "
            "named by its file's stem, so give each symbol one file"
        )
    return Universe(
        {n: _load_symbol(n, p, options) for n, p in zip(names, paths, strict=True)}, source=label
    )


def _load_symbol(symbol: str, source: Any, options: dict[str, Any]) -> MarketData:
    try:
        market = load_market_data(source, **options)
    except MarketDataError as err:
        raise MarketDataError(f"symbol {symbol!r}: {err}") from None
    market.source = f"{symbol} ({market.source})"
    return market


def _long_format(
    raw: pd.DataFrame, name: DataSource, options: dict[str, Any], label: str
) -> Universe:
    column = _symbol_column(raw)
    if column is None:
        raise MarketDataError(f"{name}: no {SYMBOL_COLUMN!r} column to split the symbols by")
    symbols = raw[column]
    if symbols.isna().any():
        rows = np.flatnonzero(symbols.isna().to_numpy())
        lines = [_line(name, p) for p in rows]
        raise MarketDataError(
            f"{name}: rows without a symbol: {examples_text(lines)}; fill them in"
        )
    markets = {}
    for symbol in pd.unique(symbols.astype(str)):
        rows = np.flatnonzero((symbols.astype(str) == symbol).to_numpy())
        table = raw.iloc[rows].drop(columns=[column]).reset_index(drop=True)
        if str(name) == "DataFrame":
            where = DataSource("DataFrame", rows)
        else:
            where = DataSource(str(name), np.array([_line_number(name, p) for p in rows]))
        try:
            market = market_from_table(table, where, **_table_options(options))
        except MarketDataError as err:
            raise MarketDataError(f"symbol {symbol!r}: {err}") from None
        market.source = f"{symbol} ({name})"
        markets[symbol] = market
    return Universe(markets, source=label)


def _table_options(options: dict[str, Any]) -> dict[str, Any]:
    defaults = {
        "timestamp_col": None,
        "timestamp_format": None,
        "price_col": None,
        "repair": None,
        "window": 60,
        "horizons": ("1h", "24h"),
    }
    unknown = set(options) - set(defaults)
    if unknown:
        raise TypeError(f"load_universe: unknown option(s) {sorted(unknown)}")
    return {**defaults, **options}


def _symbol_column(raw: pd.DataFrame) -> Any | None:
    for col in raw.columns:
        if str(col).strip().lower() == SYMBOL_COLUMN:
            return col
    return None


def _line_number(name: DataSource, p: int) -> int:
    lines = getattr(name, "lines", None)
    return int(lines[p]) if lines is not None else int(p) + 2


def _line(name: DataSource, p: int) -> str:
    return f"row {p}" if str(name) == "DataFrame" else f"line {_line_number(name, p)}"


def _stem(path: Path) -> str:
    name = path.name
    for suffix in reversed(path.suffixes):
        if suffix.lower() in DATA_SUFFIXES:
            name = name[: -len(suffix)]
    return name


def _is_data_file(path: Path) -> bool:
    return path.is_file() and any(s.lower() in DATA_SUFFIXES[:3] for s in path.suffixes)
