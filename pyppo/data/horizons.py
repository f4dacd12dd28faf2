"""Auxiliary horizons: the one conversion from a horizon to bars, and to its label.

A horizon is a duration (``"1h"``, ``"24h"``, a ``pd.Timedelta``) or an int number of bars.
Horizons are counted in bars: :func:`horizon_to_bars` converts a duration with the bar
interval, and gaps (weekends) are not bars, so a 24-bar horizon may span more than 24 hours.

:func:`horizon_label` gives the name users read for a horizon (``"1h"``, ``"24h"``,
``"3bars"``). It is a valid Python identifier fragment, so names such as ``aux_1h`` and
``pred_1h`` are built from it. :class:`pyppo.data.MarketData` keeps both, in the order the
horizons were given, as ``horizons`` (bars) and ``horizon_labels``.
"""

from __future__ import annotations

import datetime
import re

import numpy as np
import pandas as pd

from pyppo.data.errors import MarketDataError

__all__ = ["horizon_to_bars", "horizon_label"]


def horizon_to_bars(horizon: int | str | pd.Timedelta, bar_interval: pd.Timedelta) -> int:
    """Convert a horizon to a whole number of bars.

    An ``int`` is already in bars. A duration (``"1h"``, ``"24h"``, ``pd.Timedelta``) must be
    a positive whole multiple of ``bar_interval``; anything else is an error, because
    rounding would silently train the auxiliary heads on a different horizon than asked.
    """
    if horizon is None or isinstance(horizon, (bool, np.bool_, float)):
        raise MarketDataError(
            f"horizon {horizon!r} is not a duration (like '1h', '24h', '1D') or a whole number "
            "of bars"
        )
    if isinstance(horizon, (int, np.integer)):
        if horizon < 1:
            raise MarketDataError(f"horizon of {horizon} bars: horizons must be at least 1 bar")
        return int(horizon)
    try:
        duration = pd.Timedelta(_pandas_units(horizon) if isinstance(horizon, str) else horizon)
        if pd.isna(duration):
            raise ValueError("not a time")
    except (ValueError, TypeError) as err:
        raise MarketDataError(
            f"horizon {horizon!r} is neither a duration (like '1h', '24h', '1D') "
            "nor a number of bars"
        ) from err
    if duration < bar_interval:
        raise MarketDataError(
            f"horizon {horizon!r} is shorter than the bar interval "
            f"({format_duration(bar_interval)}); use a horizon of at least one bar, or give "
            "horizons in bars, e.g. (1, 24)"
        )
    ratio = duration / bar_interval
    if abs(ratio - round(ratio)) > 1e-9:
        raise MarketDataError(
            f"horizon {horizon!r} is not a whole multiple of the bar interval "
            f"({format_duration(bar_interval)}); give it in bars instead, "
            f"e.g. {max(1, round(ratio))}"
        )
    return int(round(ratio))


def horizon_label(horizon: int | str | pd.Timedelta) -> str:
    """The name users read for a horizon, usable inside identifiers (``aux_1h``, ``pred_1h``).

    A duration string is used as typed, stripped (``"1h"`` -> ``"1h"``, ``"24h"`` -> ``"24h"``);
    a ``pd.Timedelta`` is written short (``pd.Timedelta("15min")`` -> ``"15min"``); an int is a
    number of bars (``3`` -> ``"3bars"``). Every character that is not an ASCII letter or digit
    becomes ``_`` (``"1.5h"`` -> ``"1_5h"``). The horizon itself is checked by
    :func:`horizon_to_bars`, not here.
    """
    if isinstance(horizon, (bool, np.bool_)):
        raise MarketDataError(f"horizon {horizon!r} is not a duration or a number of bars")
    if isinstance(horizon, (int, np.integer)):
        text = f"{int(horizon)}bars"
    elif isinstance(horizon, (datetime.timedelta, np.timedelta64)):
        text = format_duration(pd.Timedelta(horizon))
    else:
        text = str(horizon).strip()
    return re.sub(r"[^0-9A-Za-z]", "_", text)


# Units users type that pandas has deprecated, and what pandas wants instead ("1d" -> "1D").
_DEPRECATED_UNITS = {"d": "D", "H": "h", "T": "min", "S": "s", "L": "ms", "U": "us", "N": "ns"}


def _pandas_units(text: str) -> str:
    """A duration as typed (``"1d"``, ``"4H"``) with the unit pandas accepts without a
    deprecation warning (``"1D"``, ``"4h"``); the label users read keeps their spelling."""
    match = re.fullmatch(r"\s*([0-9.]+)\s*([A-Za-z]+)\s*", text)
    if match is None:
        return text
    number, unit = match.groups()
    return number + _DEPRECATED_UNITS.get(unit, unit)


def format_duration(td: pd.Timedelta) -> str:
    """'1h', '15min', '1D' style: short and the same as what users type."""
    seconds = td.total_seconds()
    for unit, size in (("D", 86400), ("h", 3600), ("min", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{int(seconds // size)}{unit}"
    return str(td)
