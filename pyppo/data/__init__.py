"""Market data: loading, validation, repair, reporting, and the embedded synthetic market.

Data flows ``CSV/Parquet/DataFrame -> load_market_data -> MarketData -> TradingEnv``.
Every check exists because dirty market data otherwise turns into inf/NaN returns far away
from its cause: bad data raises a :class:`MarketDataError` that names the offending rows and
says how to fix them; nothing is dropped or changed unless the user asked for it with
``repair=``, and every repair is counted in :meth:`MarketData.report`.

Modules, from the bottom up:

- :mod:`~pyppo.data.errors`: :class:`MarketDataError` and how its messages name rows.
- :mod:`~pyppo.data.horizons`: :func:`horizon_to_bars` and :func:`horizon_label`, the one
  conversion from an auxiliary horizon to bars and to its label (``"1h"``, ``"3bars"``), and
  :func:`format_duration`, how every message writes a bar interval (``"1h"``, ``"15min"``).
- :mod:`~pyppo.data.market`: :class:`MarketData` (the validated bars, their returns and
  forward returns, the horizons), :class:`RepairSummary`, :func:`infer_bar_interval`,
  :func:`bars_per_year`.
- :mod:`~pyppo.data.reading`: reading a file (encodings, separators, compression) into a
  raw table; an unreadable, corrupt or truncated file is a :class:`MarketDataError`.
- :mod:`~pyppo.data.parsing`: finding and parsing the timestamp and price columns.
- :mod:`~pyppo.data.checks`: the checks on timestamps and prices, and ``repair=``.
- :mod:`~pyppo.data.loading`: :func:`load_market_data`, which runs them in order.
- :mod:`~pyppo.data.universe`: :class:`Universe` (several symbols aligned on one calendar)
  and :func:`load_universe` (a dict, files, a directory, a glob or a long-format table).
- :mod:`~pyppo.data.synthetic`: :func:`synthetic_market`, the embedded default market (one
  symbol, or a correlated universe with ``symbols=``).
"""

from __future__ import annotations

from pyppo.data.errors import MarketDataError
from pyppo.data.horizons import format_duration, horizon_label, horizon_to_bars
from pyppo.data.loading import load_market_data
from pyppo.data.market import MarketData, RepairSummary, bars_per_year, infer_bar_interval
from pyppo.data.synthetic import SyntheticParams, synthetic_market
from pyppo.data.universe import Universe, load_universe

__all__ = [
    "MarketData",
    "MarketDataError",
    "RepairSummary",
    "SyntheticParams",
    "load_market_data",
    "load_universe",
    "Universe",
    "synthetic_market",
    "format_duration",
    "horizon_to_bars",
    "horizon_label",
    "infer_bar_interval",
    "bars_per_year",
]
