"""Fuzzing load_market_data with corrupted copies of one valid hourly OHLCV CSV file.

Every corruption (cell values, timestamps, structure, encodings, separators, truncation;
alone or a few at once) must end in one of two ways: a MarketDataError, or a MarketData
whose prices are finite, positive and OHLC-consistent, with sorted unique timestamps. Any
other exception is a loader bug.
"""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pyppo import MarketData, MarketDataError, load_market_data

N_ROWS = 60
TOLERANCE = 1e-9  # the loader's relative tolerance for open/close against low/high
PRICES = ("open", "high", "low", "close")
FUZZ = settings(
    max_examples=100,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def valid_frame() -> pd.DataFrame:
    """~60 hourly bars, written by pandas as timestamp,open,high,low,close,volume."""
    rng = np.random.default_rng(0)
    idx = pd.date_range("2020-03-02", periods=N_ROWS, freq="1h")
    close = 100.0 * np.exp(np.cumsum(rng.normal(0.0, 0.01, N_ROWS)))
    open_ = np.concatenate([[100.0], close[:-1]])
    high = np.maximum(open_, close) * (1 + rng.uniform(0, 0.005, N_ROWS))
    low = np.minimum(open_, close) * (1 - rng.uniform(0, 0.005, N_ROWS))
    volume = rng.integers(1, 1000, N_ROWS).astype(float)
    return pd.DataFrame(
        {
            "timestamp": idx.strftime("%Y-%m-%d %H:%M:%S"),
            "open": open_,
            "high": high,
            "low": low,
            "close": close,
            "volume": volume,
        }
    )


def valid_table() -> tuple[list[str], list[list[str]]]:
    rows = list(csv.reader(io.StringIO(valid_frame().to_csv(index=False))))
    return rows[0], rows[1:]


class Table:
    """A CSV file being corrupted: header and rows as text, then how it is written."""

    def __init__(self) -> None:
        self.header, self.rows = valid_table()
        self.sep = ","
        self.newline = "\n"
        self.encoding = "utf-8"
        self.cut: float | None = None  # keep this fraction of the bytes
        self.cut_mid_line = False
        self.empty = False

    def to_bytes(self) -> bytes:
        if self.empty:
            return b""
        out = io.StringIO()
        writer = csv.writer(out, delimiter=self.sep, lineterminator=self.newline)
        writer.writerow(self.header)
        writer.writerows(self.rows)
        data = out.getvalue().encode(self.encoding, errors="replace")
        if self.cut_mid_line:
            data = data[: max(0, len(data) - 7)]  # the line end and the last few characters
        if self.cut is not None:
            data = data[: int(len(data) * self.cut)]
        return data


class Op:
    """One corruption, with a readable repr for hypothesis' failure reports."""

    def __init__(self, apply: Callable[[Table], None], what: str) -> None:
        self.apply, self.what = apply, what

    def __call__(self, table: Table) -> None:
        self.apply(table)

    def __repr__(self) -> str:
        return self.what


# -- cell values ------------------------------------------------------------------------------

BAD_CELLS = [
    "abc",
    "",
    "inf",
    "-inf",
    "Infinity",
    "-Infinity",
    "INF",
    "nan",
    "NaN",
    "1e308",
    "1e400",
    "-1e400",
    "-1",
    "-0.0",
    "0",
    "0.0",
    "1e-320",
    "1e-300",
    "True",
    "1,5",
    " 101.5 ",
    "0x10",
    "99999999999999999999999",
    "1.5e",
    "--1",
    "101.5.3",
    "€100",
]


@st.composite
def cell_op(draw: st.DrawFn) -> Op:
    row = draw(st.integers(0, N_ROWS - 1))
    col = draw(st.integers(1, 5))  # open, high, low, close, volume
    value = draw(
        st.one_of(
            st.sampled_from(BAD_CELLS),
            st.floats(allow_nan=True, allow_infinity=True).map(repr),
            st.floats(-1e3, 1e3).map(lambda x: f"{x:.6g}"),
        )
    )
    whole_column = draw(st.integers(0, 9)) == 0  # now and then the value in every row

    def op(t: Table) -> None:
        for r in range(len(t.rows)) if whole_column else [row]:
            if r < len(t.rows) and col < len(t.rows[r]):
                t.rows[r][col] = value

    return Op(op, f"cell(row={'all' if whole_column else row}, col={col}, value={value!r})")


# -- timestamps -------------------------------------------------------------------------------


@st.composite
def timestamp_op(draw: st.DrawFn) -> Op:
    row = draw(st.integers(0, N_ROWS - 1))
    kind = draw(
        st.sampled_from(
            [
                "year",
                "empty",
                "duplicate",
                "swap",
                "zone_one",
                "zone_all",
                "zone_mixed",
                "garbage",
                "epoch",
                "date_only",
                "day_first",
                "reverse",
            ]
        )
    )
    year = draw(st.sampled_from(["2042", "2002", "20200", "2262", "1600", "0000", "9999", "2021"]))
    zone = draw(st.sampled_from(["Z", "+02:00", "-05:00", "+0530", " UTC", "+00:00"]))
    garbage = draw(st.sampled_from(["not a date", "2020-13-45 99:99:99", "yesterday", "1"]))

    def op(t: Table) -> None:
        rows = t.rows
        stamped = [x for x in rows if x]  # blank lines have no timestamp
        r = min(row, len(rows) - 1)
        if not stamped or (kind not in ("swap", "reverse") and not rows[r]):
            return
        if kind == "year":
            rows[r][0] = year + rows[r][0][4:]
        elif kind == "empty":
            rows[r][0] = ""
        elif kind == "duplicate" and rows[r - 1]:
            rows[r][0] = rows[r - 1][0]
        elif kind == "swap" and r + 1 < len(rows):
            rows[r], rows[r + 1] = rows[r + 1], rows[r]
        elif kind == "zone_one":
            rows[r][0] += zone
        elif kind == "zone_all":
            for x in stamped:
                x[0] = x[0].replace(" ", "T") + zone
        elif kind == "zone_mixed":
            for i, x in enumerate(stamped):
                x[0] += zone if i % 2 else "+01:00"
        elif kind == "garbage":
            rows[r][0] = garbage
        elif kind == "epoch":
            for x in stamped:
                stamp = pd.to_datetime(x[0], errors="coerce", format="ISO8601")
                x[0] = str(int(stamp.timestamp())) if stamp is not pd.NaT else x[0]
        elif kind == "date_only":
            rows[r][0] = rows[r][0][:10]
        elif kind == "day_first":
            for x in stamped:
                x[0] = f"{x[0][8:10]}/{x[0][5:7]}/{x[0][:4]}{x[0][10:]}"
        elif kind == "reverse":
            rows.reverse()

    return Op(op, f"timestamp({kind}, row={row}, year={year}, zone={zone!r}, {garbage!r})")


# -- structure --------------------------------------------------------------------------------

NAMES = ["Close", "CLOSE", "price", "adj_close", "Adj Close", "x", "", "date", "time", "open"]


@st.composite
def structure_op(draw: st.DrawFn) -> Op:
    kind = draw(
        st.sampled_from(
            [
                "drop_col",
                "rename_col",
                "dup_col",
                "extra_col",
                "drop_rows",
                "dup_row",
                "sep",
                "encoding",
                "newline",
                "cut",
                "cut_mid_line",
                "empty",
                "header_only",
                "extra_field",
                "short_line",
                "blank_lines",
            ]
        )
    )
    col = draw(st.integers(0, 5))
    name = draw(st.sampled_from(NAMES))
    row = draw(st.integers(0, N_ROWS - 1))
    count = draw(st.integers(1, N_ROWS))
    sep = draw(st.sampled_from([";", "\t", "|"]))
    encoding = draw(st.sampled_from(["utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1"]))
    accent = draw(st.booleans())
    cut = draw(st.floats(0.0, 1.0))

    def op(t: Table) -> None:
        width = len(t.header)
        c = min(col, width - 1) if width else 0
        if kind == "drop_col" and width:
            del t.header[c]
            for x in t.rows:
                del x[c : c + 1]
        elif kind == "rename_col" and width:
            t.header[c] = name
        elif kind == "dup_col" and width:
            t.header.append(t.header[c] if name == "x" else t.header[c].upper())
            for x in t.rows:
                x.append(x[c] if c < len(x) else "")
        elif kind == "extra_col":
            t.header.append(name)
            for i, x in enumerate(t.rows):
                x.append(str(i))
        elif kind == "drop_rows":
            del t.rows[row : row + count]
        elif kind == "dup_row" and t.rows:
            t.rows.insert(row, list(t.rows[min(row, len(t.rows) - 1)]))
        elif kind == "sep":
            t.sep = sep
        elif kind == "encoding":
            t.encoding = encoding
            if accent and t.header:
                t.header[-1] += "é"
        elif kind == "newline":
            t.newline = "\r\n"
        elif kind == "cut":
            t.cut = cut
        elif kind == "cut_mid_line":
            t.cut_mid_line = True
        elif kind == "empty":
            t.empty = True
        elif kind == "header_only":
            t.rows = []
        elif kind == "extra_field" and t.rows:
            for x in t.rows if count % 2 else t.rows[row : row + 1]:
                x.append("1")
        elif kind == "short_line" and t.rows:
            r = min(row, len(t.rows) - 1)
            t.rows[r] = t.rows[r][: max(1, len(t.rows[r]) - 2)]
        elif kind == "blank_lines" and t.rows:
            t.rows.insert(min(row, len(t.rows)), [])

    return Op(
        op,
        f"structure({kind}, col={col}, name={name!r}, row={row}, count={count}, sep={sep!r}, "
        f"encoding={encoding}, accent={accent}, cut={cut})",
    )


# -- the property -----------------------------------------------------------------------------


def check_outcome(data: bytes, repair: str | None = None) -> None:
    """Write the bytes, load them: a MarketDataError, or bars that can be trusted."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bars.csv"
        path.write_bytes(data)
        try:
            market = load_market_data(path, window=3, horizons=(1, 2), repair=repair)
        except MarketDataError as err:
            assert str(path) in str(err)  # every message names the file
            assert "\n" not in str(err)  # and is one line (the CLI prints it so)
            return
    assert_trustworthy(market)


def assert_trustworthy(market: MarketData) -> None:
    frame = market.frame
    idx = frame.index
    assert isinstance(idx, pd.DatetimeIndex)
    assert idx.is_monotonic_increasing and idx.is_unique
    prices = {c: frame[c].to_numpy(dtype=np.float64) for c in PRICES if c in frame.columns}
    assert "close" in prices
    for c, v in prices.items():
        assert np.isfinite(v).all() and (v > 0).all(), c
    high, low = prices.get("high"), prices.get("low")
    for c in ("open", "close"):
        if c in prices and high is not None:
            assert (prices[c] <= high * (1 + TOLERANCE)).all(), c
        if c in prices and low is not None:
            assert (prices[c] >= low * (1 - TOLERANCE)).all(), c
    if high is not None and low is not None:
        assert (high >= low * (1 - TOLERANCE)).all()
    assert np.isfinite(market.log_returns.numpy()).all()


def corrupted(ops: list[Op]) -> bytes:
    table = Table()
    for op in ops:
        op(table)
    return table.to_bytes()


@FUZZ
@given(st.lists(cell_op(), min_size=1, max_size=3))
def test_fuzz_cell_values(ops: list[Op]) -> None:
    check_outcome(corrupted(ops))


@FUZZ
@given(st.lists(timestamp_op(), min_size=1, max_size=2))
def test_fuzz_timestamps(ops: list[Op]) -> None:
    check_outcome(corrupted(ops))


@FUZZ
@given(st.lists(structure_op(), min_size=1, max_size=3))
def test_fuzz_structure(ops: list[Op]) -> None:
    check_outcome(corrupted(ops))


@FUZZ
@given(st.lists(st.one_of(cell_op(), timestamp_op(), structure_op()), min_size=2, max_size=4))
def test_fuzz_mixed(ops: list[Op]) -> None:
    check_outcome(corrupted(ops))


@FUZZ
@given(
    st.lists(st.one_of(cell_op(), cell_op(), timestamp_op()), min_size=1, max_size=4),
    st.sampled_from(["drop", "ffill"]),
)
def test_fuzz_repaired_prices(ops: list[Op], repair: str) -> None:
    check_outcome(corrupted(ops), repair)


# -- the uncorrupted file ---------------------------------------------------------------------


def test_the_valid_file_loads_with_every_value_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_bytes(Table().to_bytes())
    market = load_market_data(path, window=3, horizons=(1, 2))
    expected = pd.read_csv(path)
    assert len(market) == N_ROWS == len(expected)
    stamps = pd.DatetimeIndex(pd.to_datetime(expected["timestamp"]))
    assert market.frame.index.as_unit("ns").equals(stamps.as_unit("ns"))
    assert list(market.frame.columns) == ["open", "high", "low", "close", "volume"]
    for c in market.frame.columns:
        np.testing.assert_array_equal(market.frame[c].to_numpy(), expected[c].to_numpy(float))
    assert market.repair.total == 0
    assert_trustworthy(market)


@pytest.mark.parametrize("encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-32", "latin-1"])
@pytest.mark.parametrize("sep", [",", ";", "\t", "|"])
def test_the_valid_file_in_other_encodings_and_separators_loads_the_same(
    tmp_path: Path, encoding: str, sep: str
) -> None:
    plain = tmp_path / "plain.csv"
    plain.write_bytes(Table().to_bytes())
    reference = load_market_data(plain, window=3, horizons=(1, 2))
    table = Table()
    table.encoding, table.sep = encoding, sep
    path = tmp_path / "bars.csv"
    path.write_bytes(table.to_bytes())
    market = load_market_data(path, window=3, horizons=(1, 2))
    assert market.fingerprint() == reference.fingerprint()
