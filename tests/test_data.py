"""load_market_data / MarketData / synthetic_market: every error case (unreadable files,
ambiguous columns, untrustworthy prices and timestamps), repairs, intervals, bars per year,
forward returns by hand, and the synthetic market's properties."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
import torch

import pyppo
from pyppo import MarketData, MarketDataError, load_market_data, synthetic_market
from pyppo.data import bars_per_year, horizon_label, horizon_to_bars

SMALL = {"window": 3, "horizons": (1, 2)}  # tiny series: 3-bar window, horizons in bars


def hourly(n: int, start: str = "2024-01-01", price0: float = 100.0) -> pd.DataFrame:
    idx = pd.date_range(start, periods=n, freq="1h")
    close = price0 * np.exp(np.cumsum(np.full(n, 0.001)))
    return pd.DataFrame(
        {
            "Open": close,
            "High": close * 1.01,
            "Low": close * 0.99,
            "Close": close,
            "Volume": np.full(n, 10.0),
        },
        index=idx,
    )


def write_csv(tmp_path, frame: pd.DataFrame, name: str = "bars.csv", index: bool = False) -> str:
    path = tmp_path / name
    frame.to_csv(path, index=index)
    return str(path)


def with_column(frame: pd.DataFrame, name: str, values) -> pd.DataFrame:
    out = frame.reset_index(drop=True)
    out.insert(0, name, values)
    return out


# ----------------------------------------------------------------------------- happy paths


@pytest.mark.parametrize("col", ["Date", "Time", "timestamp", "DateTime", "TIMESTAMP"])
def test_newcomer_csv_with_named_timestamp_column_loads_without_options(tmp_path, col):
    frame = hourly(200)
    stamps = frame.index.strftime("%Y-%m-%d %H:%M:%S")
    path = write_csv(tmp_path, with_column(frame, col, stamps))
    md = load_market_data(path)
    assert len(md) == 200
    assert md.bar_interval == pd.Timedelta("1h")
    assert list(md.frame.columns) == ["open", "high", "low", "close", "volume"]
    assert md.frame.index[0] == pd.Timestamp("2024-01-01 00:00")
    assert md.frame.index.name == "timestamp"


def test_newcomer_csv_with_unnamed_datetime_index_loads_without_options(tmp_path):
    path = write_csv(tmp_path, hourly(200), index=True)  # header cell of the index is empty
    with open(path) as f:
        assert f.readline().startswith(",Open")
    md = load_market_data(path)
    assert len(md) == 200 and md.bar_interval == pd.Timedelta("1h")


def test_dataframe_with_datetime_index(tmp_path):
    md = load_market_data(hourly(200))
    assert md.source == "DataFrame" and len(md) == 200


def test_separate_date_and_time_columns(tmp_path):
    frame = hourly(200)
    out = frame.reset_index(drop=True)
    out.insert(0, "Time", frame.index.strftime("%H:%M"))
    out.insert(0, "Date", frame.index.strftime("%Y-%m-%d"))
    md = load_market_data(write_csv(tmp_path, out))
    assert md.frame.index[25] == pd.Timestamp("2024-01-02 01:00")


def test_epoch_seconds_and_milliseconds():
    frame = hourly(200)
    secs = frame.index.as_unit("ns").asi8 // 10**9
    assert load_market_data(with_column(frame, "ts", secs)).frame.index.equals(frame.index)
    ms = frame.index.as_unit("ns").asi8 // 10**6
    assert load_market_data(with_column(frame, "time", ms)).frame.index.equals(frame.index)


def test_semicolon_separated_csv(tmp_path):
    frame = with_column(hourly(200), "Date", hourly(200).index.strftime("%Y-%m-%d %H:%M"))
    path = tmp_path / "bars.csv"
    frame.to_csv(path, sep=";", index=False)
    assert len(load_market_data(path)) == 200


def test_row_numbers_are_not_timestamps(tmp_path):
    path = write_csv(tmp_path, hourly(200).reset_index(drop=True), index=True)
    with pytest.raises(MarketDataError) as err:
        load_market_data(path)
    msg = str(err.value)
    assert "cannot parse timestamps in column Unnamed: 0 (200 of 200 rows)" in msg
    assert "too small to be Unix epoch times" in msg and "timestamp_col=" in msg


def test_close_only_and_price_col(tmp_path):
    frame = hourly(200)[["Close"]].rename(columns={"Close": "Mid"})
    with pytest.raises(MarketDataError, match=r"no price column found; columns are \['Mid'\]"):
        load_market_data(frame)
    md = load_market_data(frame, price_col="mid")
    assert list(md.frame.columns) == ["close"]
    lower = hourly(200)[["Close"]].rename(columns={"Close": "price"})
    assert list(load_market_data(lower).frame.columns) == ["close"]


def test_parquet_roundtrip(tmp_path):
    pytest.importorskip("pyarrow")
    frame = hourly(200)
    path = tmp_path / "bars.parquet"
    frame.to_parquet(path)
    md = load_market_data(path)
    assert md.fingerprint() == load_market_data(frame).fingerprint()


def test_explicit_timestamp_format_and_col(tmp_path):
    frame = hourly(200)
    stamps = frame.index.strftime("%d.%m.%Y %Hh")
    data = with_column(frame, "when", stamps)
    md = load_market_data(data, timestamp_col="WHEN", timestamp_format="%d.%m.%Y %Hh")
    assert md.frame.index.equals(frame.index.rename("timestamp"))
    with pytest.raises(MarketDataError, match="timestamp_col='nope' not found; columns are"):
        load_market_data(data, timestamp_col="nope")


# ----------------------------------------------------------------------------- every error


def test_missing_file(tmp_path):
    with pytest.raises(MarketDataError, match=r"market data file not found: .*nope\.csv"):
        load_market_data(tmp_path / "nope.csv")
    assert issubclass(MarketDataError, ValueError)


def test_no_timestamp_column():
    frame = hourly(200).reset_index(drop=True)
    with pytest.raises(MarketDataError, match="no timestamp column found.*timestamp_col="):
        load_market_data(frame)


def test_unparseable_timestamps_show_examples_and_suggest_format(tmp_path):
    frame = hourly(200)
    stamps = list(frame.index.strftime("%Y-%m-%d %H:%M"))
    stamps[7] = "not a date"
    stamps[42] = "2024-13-45 99:99"
    path = write_csv(tmp_path, with_column(frame, "timestamp", stamps))
    with pytest.raises(MarketDataError) as err:
        load_market_data(path)
    msg = str(err.value)
    assert "cannot parse timestamps in column timestamp (2 of 200 rows)" in msg
    assert "line 9: 'not a date'" in msg and "line 44: '2024-13-45 99:99'" in msg
    assert "timestamp_format=" in msg


def test_wrong_timestamp_format_says_so():
    frame = with_column(hourly(200), "timestamp", hourly(200).index.strftime("%Y-%m-%d %H:%M"))
    with pytest.raises(MarketDataError, match="timestamp_format='%d/%m/%Y' does not match"):
        load_market_data(frame, timestamp_format="%d/%m/%Y")


def test_day_first_vs_month_first_ambiguity_is_an_error_with_both_formats(tmp_path):
    # Daily bars on days 1..12 of three months: every date reads both ways.
    days = [pd.Timestamp(2024, m, d) for m in (1, 2, 3) for d in range(1, 13)]
    frame = pd.DataFrame(
        {"Date": [d.strftime("%d/%m/%Y") for d in days], "Close": np.linspace(10, 20, len(days))}
    )
    with pytest.raises(MarketDataError) as err:
        load_market_data(frame, window=3, horizons=(1,))
    msg = str(err.value)
    assert "ambiguous" in msg and "'02/01/2024'" in msg
    assert "timestamp_format='%d/%m/%Y' (day-first)" in msg
    assert "timestamp_format='%m/%d/%Y' (month-first)" in msg
    md = load_market_data(frame, timestamp_format="%d/%m/%Y", window=3, horizons=(1,))
    assert md.frame.index[1] == pd.Timestamp("2024-01-02")


def test_day_first_resolved_when_month_first_is_impossible():
    idx = pd.date_range("2024-01-10", periods=200, freq="1h")  # reaches day 13+
    frame = pd.DataFrame({"Date": idx.strftime("%d/%m/%Y %H:%M"), "Close": np.arange(200) + 1.0})
    assert load_market_data(frame).frame.index.equals(idx.rename("timestamp"))
    frame = pd.DataFrame({"Date": idx.strftime("%m/%d/%Y %H:%M"), "Close": np.arange(200) + 1.0})
    assert load_market_data(frame).frame.index.equals(idx.rename("timestamp"))


def test_duplicate_timestamps(tmp_path):
    frame = hourly(200)
    stamps = list(frame.index.strftime("%Y-%m-%d %H:%M"))
    stamps[11] = stamps[10]
    path = write_csv(tmp_path, with_column(frame, "timestamp", stamps))
    with pytest.raises(MarketDataError) as err:
        load_market_data(path)
    msg = str(err.value)
    assert "duplicate timestamps: 2024-01-01 10:00:00 (1 in total)" in msg
    assert "line 12, line 13" in msg and "2 rows involved" in msg


def test_unsorted_timestamps(tmp_path):
    frame = hourly(200)
    stamps = list(frame.index.strftime("%Y-%m-%d %H:%M"))
    stamps[50], stamps[51] = stamps[51], stamps[50]
    path = write_csv(tmp_path, with_column(frame, "timestamp", stamps))
    with pytest.raises(MarketDataError) as err:
        load_market_data(path)
    msg = str(err.value)
    assert "timestamps are not sorted (1 places go back in time)" in msg
    assert "line 53 (2024-01-03 02:00:00) comes after 2024-01-03 03:00:00" in msg
    assert "sort" in msg.lower()


def test_nan_prices_name_rows_and_suggest_repair(tmp_path):
    frame = hourly(200)
    frame.iloc[5, frame.columns.get_loc("Close")] = np.nan
    data = with_column(frame, "timestamp", frame.index.strftime("%Y-%m-%d %H:%M")).astype(object)
    data.loc[9, "Close"] = "12,5"
    path = write_csv(tmp_path, data)
    with pytest.raises(MarketDataError) as err:
        load_market_data(path)
    msg = str(err.value)
    assert "NaN/missing prices in 2 rows" in msg
    assert "line 7 (2024-01-01 05:00:00): close=nan" in msg
    assert (
        "line 11 (2024-01-01 09:00:00): close='12,5' (not a number: a decimal comma? "
        "write '12.5')" in msg
    )
    assert "repair='drop'" in msg and "repair='ffill'" in msg


def test_zero_and_negative_prices():
    frame = hourly(200)
    frame.iloc[3, frame.columns.get_loc("Close")] = 0.0
    frame.iloc[4, frame.columns.get_loc("Low")] = -1.0
    with pytest.raises(MarketDataError) as err:
        load_market_data(frame)
    msg = str(err.value)
    assert "zero or negative prices in 2 rows" in msg
    assert "row 3 (2024-01-01 03:00:00): close=0.0" in msg
    assert "row 4 (2024-01-01 04:00:00): low=-1.0" in msg


def test_error_lists_at_most_five_examples_and_the_total():
    frame = hourly(200)
    frame.iloc[10:30, frame.columns.get_loc("Close")] = np.nan
    with pytest.raises(MarketDataError) as err:
        load_market_data(frame)
    msg = str(err.value)
    assert msg.count("close=nan") == 5 and "20 rows in total" in msg


def test_high_below_low():
    frame = hourly(200)
    frame.iloc[17, frame.columns.get_loc("High")] = 1.0
    with pytest.raises(MarketDataError, match=r"high < low in 1 rows: row 17 .*swapped"):
        load_market_data(frame)


def test_too_few_bars_for_window_and_horizon():
    with pytest.raises(MarketDataError) as err:
        load_market_data(hourly(80))  # window 60 + 24h + 1 = 85
    msg = str(err.value)
    assert (
        "80 bars is too few: need at least 85 = window 60 + longest horizon 24h (24 bars) + 1"
        in msg
    )
    assert len(load_market_data(hourly(85))) == 85


def test_bad_repair_argument():
    with pytest.raises(MarketDataError, match="repair='fix'"):
        load_market_data(hourly(200), repair="fix")


# ----------------------------------------------------------------------------- repairs


def dirty_frame() -> pd.DataFrame:
    frame = hourly(200)
    c = frame.columns.get_loc("Close")
    frame.iloc[0, c] = np.nan  # leading: ffill cannot fill it
    frame.iloc[10, c] = np.nan
    frame.iloc[11, c] = 0.0
    frame.iloc[20, frame.columns.get_loc("Open")] = -5.0
    return frame


def test_repair_drop_counts_rows():
    md = load_market_data(dirty_frame(), repair="drop")
    assert len(md) == 196
    assert (md.repair.nan_rows, md.repair.nonpositive_rows, md.repair.dropped) == (2, 2, 4)
    assert md.repair.filled == 0
    assert (
        "repaired:  4 rows (2 with NaN prices, 2 with zero/negative prices): 4 dropped"
        in md.report()
    )
    assert pd.Timestamp("2024-01-01 10:00") not in md.frame.index


def test_repair_ffill_counts_rows_and_fills_from_last_good_value():
    raw = dirty_frame()
    md = load_market_data(raw, repair="ffill")
    assert len(md) == 199  # the leading NaN row has nothing to fill from
    assert (md.repair.filled, md.repair.dropped) == (3, 1)
    f = md.frame
    assert f.loc["2024-01-01 10:00", "close"] == raw["Close"].iloc[9]
    assert f.loc["2024-01-01 11:00", "close"] == raw["Close"].iloc[9]
    assert f.loc["2024-01-01 20:00", "open"] == raw["Open"].iloc[19]
    assert "3 forward-filled, 1 dropped" in md.report()


# ----------------------------------------------------------------------------- intervals


def test_interval_inference_with_weekend_gaps():
    # Weekday-only hourly bars (Mon 00:00 .. Fri 23:00) for four weeks.
    idx = pd.date_range("2024-01-01", "2024-01-27", freq="1h")
    idx = idx[idx.day_of_week < 5]
    frame = pd.DataFrame({"close": np.linspace(100, 110, len(idx))}, index=idx)
    md = load_market_data(frame)
    assert md.bar_interval == pd.Timedelta("1h")
    n_gaps, missing, largest = md.gaps()
    assert n_gaps == 3  # three weekends inside the range
    assert missing == 3 * 48
    assert largest == pd.Timedelta("49h")
    assert "gaps:      3 (144 missing bars; largest spacing 2 days 01:00:00)" in md.report()


def test_daily_and_minute_intervals():
    idx = pd.date_range("2024-01-01", periods=300, freq="1D")
    md = load_market_data(
        pd.DataFrame({"close": np.arange(1.0, 301.0)}, index=idx), horizons=(1, 5)
    )
    assert md.bar_interval == pd.Timedelta("1D")
    idx = pd.date_range("2024-01-01", periods=3000, freq="15min")
    md = load_market_data(pd.DataFrame({"close": np.arange(1.0, 3001.0)}, index=idx))
    assert md.horizons == (4, 96)


def test_horizon_conversion_errors():
    h = pd.Timedelta("1h")
    assert horizon_to_bars("24h", h) == 24 and horizon_to_bars(3, h) == 3
    with pytest.raises(MarketDataError, match="shorter than the bar interval"):
        horizon_to_bars("30min", h)
    with pytest.raises(MarketDataError, match="not a whole multiple"):
        horizon_to_bars("90min", h)
    with pytest.raises(MarketDataError, match="at least 1 bar"):
        horizon_to_bars(0, h)
    idx = pd.date_range("2024-01-01", periods=300, freq="1D")
    with pytest.raises(MarketDataError, match="horizon '1h' is shorter than the bar interval"):
        load_market_data(pd.DataFrame({"close": np.arange(1.0, 301.0)}, index=idx))


def test_horizon_label_is_the_name_users_read_and_an_identifier_fragment():
    assert horizon_label("1h") == "1h" and horizon_label("24h") == "24h"
    assert horizon_label(" 4h ") == "4h" and horizon_label("1d") == "1d"  # as typed, stripped
    assert horizon_label(pd.Timedelta("15min")) == "15min"
    assert horizon_label(pd.Timedelta("1D")) == "1D"
    assert horizon_label(pd.Timedelta("2h").to_pytimedelta()) == "2h"
    assert horizon_label(3) == "3bars" and horizon_label(np.int64(24)) == "24bars"
    assert horizon_label("1.5h") == "1_5h" and horizon_label("1 h") == "1_h"
    for h in ("1h", "90 min", pd.Timedelta("1D"), 7, "2.5d"):
        assert f"aux_{horizon_label(h)}".isidentifier()
    with pytest.raises(MarketDataError, match="not a duration or a number of bars"):
        horizon_label(True)


def test_market_keeps_horizons_in_bars_and_labels():
    md = synthetic_market(500)
    assert md.horizons == (1, 24) and md.horizon_labels == ("1h", "24h")
    assert "horizons:  1h = 1 bar, 24h = 24 bars" in md.report()
    md = synthetic_market(500, interval="15min", horizons=("1h", 3, pd.Timedelta("1D")))
    assert md.horizons == (4, 3, 96) and md.horizon_labels == ("1h", "3bars", "1D")
    assert "horizons:  1h = 4 bars, 3bars = 3 bars, 1D = 96 bars" in md.report()
    # split() keeps the horizons as they were given, so the parts have the same labels.
    train, test = md.split(0.5)
    assert train.horizons == test.horizons == (4, 3, 96)
    assert train.horizon_labels == test.horizon_labels == ("1h", "3bars", "1D")
    with pytest.raises(MarketDataError, match="each horizon needs its own label"):
        synthetic_market(500, horizons=("1h", "1h"))


def test_decision_bars_leave_room_for_the_window_and_the_longest_horizon():
    md = tiny()  # 8 bars, horizons (1, 2)
    assert md.decision_bars(3) == 8 - 2 - 3
    assert md.decision_bars(5) == 8 - 2 - 5
    # The reward needs a next bar even without horizons.
    assert synthetic_market(500, horizons=()).decision_bars(60) == 500 - 1 - 60
    assert synthetic_market(500).decision_bars(60) == 500 - 24 - 60


# ----------------------------------------------------------------------------- MarketData


def tiny() -> MarketData:
    idx = pd.date_range("2024-01-01", periods=8, freq="1h")
    close = [100.0, 110.0, 99.0, 99.0, 198.0, 99.0, 100.0, 50.0]
    return load_market_data(pd.DataFrame({"close": close}, index=idx), **SMALL)


def test_returns_and_forward_returns_by_hand():
    md = tiny()
    torch.testing.assert_close(
        md.returns,
        torch.tensor([0.0, 0.1, -0.1, 0.0, 1.0, -0.5, 100 / 99 - 1, -0.5], dtype=torch.float64),
    )
    torch.testing.assert_close(md.log_returns[1], torch.tensor(math.log(1.1), dtype=torch.float64))
    nan = float("nan")
    torch.testing.assert_close(
        md.forward_returns(1),
        torch.tensor([0.1, -0.1, 0.0, 1.0, -0.5, 100 / 99 - 1, -0.5, nan], dtype=torch.float64),
        equal_nan=True,
    )
    torch.testing.assert_close(
        md.forward_returns("2h"),
        torch.tensor(
            [-0.01, -0.1, 1.0, 0.0, 100 / 198 - 1, 50 / 99 - 1, nan, nan], dtype=torch.float64
        ),
        equal_nan=True,
    )
    assert md.aux_targets.shape == (8, 2)


def test_split_is_in_time_order_and_keeps_interval():
    md = synthetic_market(1000, seed=3)
    train, test = md.split(train=0.8)
    assert (len(train), len(test)) == (800, 200)
    assert train.frame.index[-1] < test.frame.index[0]
    assert train.bar_interval == test.bar_interval == pd.Timedelta("1h")
    assert torch.isnan(train.forward_returns(24)[-24:]).all()  # never looks into test
    with pytest.raises(MarketDataError, match="test part of split"):
        md.split(train=0.95)


def test_report_counts_extreme_and_nonfinite_returns():
    md = tiny()
    report = md.report()
    assert "bars:      8 from 2024-01-01 00:00:00 to 2024-01-01 07:00:00" in report
    assert "interval:  1h" in report and "gaps:      none" in report
    assert "extreme returns beyond ±100%: 0" in report  # +100 % exactly is not beyond
    assert "non-finite returns: 0" in report


def test_fingerprint_is_stable_and_sensitive():
    a = synthetic_market(500, seed=1)
    assert a.fingerprint() == synthetic_market(500, seed=1).fingerprint()
    assert re.fullmatch(r"[0-9a-f]{64}", a.fingerprint())
    b = synthetic_market(500, seed=1)
    b.frame.iloc[100, b.frame.columns.get_loc("close")] *= 1 + 1e-12
    assert a.fingerprint() != b.fingerprint()
    assert a.fingerprint() != synthetic_market(500, seed=2).fingerprint()


# ----------------------------------------------------------------------------- synthetic


def test_synthetic_is_deterministic_valid_and_round_trips_through_validation():
    a = synthetic_market(3000, seed=7)
    b = synthetic_market(3000, seed=7)
    pd.testing.assert_frame_equal(a.frame, b.frame)
    assert not a.frame.equals(synthetic_market(3000, seed=8).frame)
    assert a.bar_interval == pd.Timedelta("1h") and a.planted == {}
    # Clean synthetic data passes every check of the loader.
    assert load_market_data(a.frame).fingerprint() == a.fingerprint()
    assert synthetic_market(500, interval="15min").bar_interval == pd.Timedelta("15min")


def test_synthetic_is_fat_tailed_clustered_and_has_planted_momentum():
    md = synthetic_market(20_000, seed=0)
    r = md.log_returns.numpy()[1:]
    kurtosis = ((r - r.mean()) ** 4).mean() / r.var() ** 2
    assert kurtosis > 5  # fat tails (normal: 3)
    a = np.abs(r)
    assert np.corrcoef(a[:-1], a[1:])[0, 1] > 0.1  # volatility clustering
    # The planted edge: the sum of the last 3 vol-normalized returns predicts the next one.
    vol = pd.Series(r).pow(2).ewm(span=60).mean().pow(0.5).shift(1).bfill().to_numpy()
    z = r / vol
    signal = z[:-3] + z[1:-2] + z[2:-1]
    corr = np.corrcoef(signal[60:], z[3:][60:])[0, 1]
    assert 0.05 < corr < 0.3


def test_bad_ticks_are_planted_exactly_and_recorded():
    md = synthetic_market(10_000, seed=1, bad_ticks=0.003)
    counts = {k: len(v) for k, v in md.planted.items()}
    assert sum(counts.values()) == 30 and counts == {"zero_price": 10, "nan_bar": 10, "spike": 10}
    close = md.frame["close"].to_numpy()
    assert (close[md.planted["zero_price"]] == 0).all()
    assert (
        np.isnan(md.frame.iloc[md.planted["nan_bar"]][["open", "high", "low", "close"]]).all().all()
    )
    clean = synthetic_market(10_000, seed=1)
    np.testing.assert_allclose(
        close[md.planted["spike"]], 11 * clean.frame["close"].to_numpy()[md.planted["spike"]]
    )
    bad = np.concatenate(list(md.planted.values()))
    assert len(np.unique(bad)) == 30 and bad.min() >= 1
    assert (np.diff(np.sort(bad)) > 1).all()  # never neighbours: effects stay separate
    # Everything else is untouched.
    keep = np.setdiff1d(np.arange(10_000), bad)
    np.testing.assert_array_equal(close[keep], clean.frame["close"].to_numpy()[keep])
    report = md.report()
    assert "planted bad ticks (synthetic): zero_price 10, nan_bar 10, spike 10" in report
    # The loader refuses this data, naming the bad rows.
    with pytest.raises(MarketDataError, match="NaN/missing prices in 10 rows"):
        load_market_data(md.frame)


def test_public_api_is_exported():
    for name in (
        "load_market_data",
        "MarketData",
        "MarketDataError",
        "synthetic_market",
        "TradingEnv",
        "ObsSpec",
    ):
        assert hasattr(pyppo, name)
    for name in (
        "MarketData",
        "MarketDataError",
        "RepairSummary",
        "SyntheticParams",
        "load_market_data",
        "synthetic_market",
        "horizon_to_bars",
        "horizon_label",
        "infer_bar_interval",
        "bars_per_year",
    ):
        assert name in pyppo.data.__all__ and hasattr(pyppo.data, name)
    assert pyppo.data.MarketData is pyppo.MarketData


# ----------------------------------------------------------------------------- refusing what
# ----------------------------------------------------------------------------- cannot be trusted


def stamped(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame with its index as a 'timestamp' text column first, as a CSV holds it."""
    return with_column(frame, "timestamp", frame.index.strftime("%Y-%m-%d %H:%M:%S"))


def csv_with_cell(tmp_path, row: int, col: str, text: str, n: int = 200) -> str:
    data = stamped(hourly(n)).astype(object)
    data.loc[row, col] = text
    return write_csv(tmp_path, data)


def test_infinite_prices_in_a_dataframe_name_the_rows():
    frame = hourly(200)
    frame.iloc[5, frame.columns.get_loc("Close")] = np.inf
    frame.iloc[9, frame.columns.get_loc("Low")] = -np.inf
    with pytest.raises(MarketDataError) as err:
        load_market_data(frame)
    msg = str(err.value)
    assert "DataFrame: infinite prices in 2 rows" in msg
    assert "row 5 (2024-01-01 05:00:00): close=inf" in msg
    assert "row 9 (2024-01-01 09:00:00): low=-inf" in msg
    assert "repair='drop'" in msg and "repair='ffill'" in msg


@pytest.mark.parametrize("text", ["inf", "-inf", "Infinity", "-Infinity", "INF", "1e400"])
def test_infinite_prices_in_a_csv_name_the_line(tmp_path, text):
    path = csv_with_cell(tmp_path, 7, "Open", text)
    with pytest.raises(MarketDataError, match=r"infinite prices in 1 rows: line 9 .*open=-?inf"):
        load_market_data(path)


def test_repair_drops_or_fills_infinite_prices_and_counts_them(tmp_path):
    path = csv_with_cell(tmp_path, 7, "Close", "1e400")
    md = load_market_data(path, repair="ffill")
    close = md.frame["close"].to_numpy()
    assert np.isfinite(close).all() and close[7] == close[6]
    assert (md.repair.inf_rows, md.repair.filled, md.repair.dropped) == (1, 1, 0)
    assert "1 rows (0 with NaN prices, 0 with zero/negative prices, 1 with infinite prices)" in (
        md.report()
    )
    md = load_market_data(path, repair="drop")
    assert len(md) == 199 and (md.repair.inf_rows, md.repair.dropped) == (1, 1)
    assert np.isfinite(md.frame.to_numpy()).all()


def test_the_first_problem_lists_the_others():
    frame = hourly(200)
    frame.iloc[5, frame.columns.get_loc("Close")] = np.nan
    frame.iloc[6, frame.columns.get_loc("Close")] = np.inf
    frame.iloc[7, frame.columns.get_loc("Close")] = 1e9
    with pytest.raises(MarketDataError) as err:
        load_market_data(frame)
    msg = str(err.value)
    assert msg.startswith("DataFrame: NaN/missing prices in 1 rows: row 5")
    assert (
        "(also 1 rows with infinite prices; 1 rows with open/high/low/close that do not fit "
        "together)" in msg
    )


def test_open_or_close_outside_high_low_names_the_rows_and_the_fix():
    frame = hourly(200)
    frame.iloc[12, frame.columns.get_loc("Open")] = 1000.0
    frame.iloc[30, frame.columns.get_loc("Close")] = 1.0
    with pytest.raises(MarketDataError) as err:
        load_market_data(frame)
    msg = str(err.value)
    assert "DataFrame: open/close outside [low, high] in 2 rows" in msg
    assert "row 12 (2024-01-01 12:00:00): open=1000.0 > high=" in msg
    assert "row 30 (2024-01-02 06:00:00): close=1.0 < low=" in msg
    assert "Fix the data" in msg and "drop the high and low columns" in msg
    assert "repair='drop'" in msg
    # Without high and low there is nothing to check against.
    assert len(load_market_data(frame[["Open", "Close"]])) == 200


def test_ohlc_check_tolerates_float_round_off():
    frame = hourly(200)
    high = frame["High"].to_numpy()
    frame["Close"] = high * (1 + 1e-12)  # above high by round-off only
    frame["Open"] = frame["Low"] * (1 - 1e-12)
    assert len(load_market_data(frame)) == 200
    frame.iloc[3, frame.columns.get_loc("Close")] = high[3] * (1 + 1e-6)
    with pytest.raises(MarketDataError, match="outside"):
        load_market_data(frame)


def test_repair_of_rows_whose_ohlc_do_not_fit():
    frame = hourly(200)
    frame.iloc[12, frame.columns.get_loc("Open")] = 1000.0
    md = load_market_data(frame, repair="drop")
    assert len(md) == 199 and pd.Timestamp("2024-01-01 12:00") not in md.frame.index
    assert (md.repair.inconsistent_rows, md.repair.dropped) == (1, 1)
    assert "1 with open/close outside [low, high]): 1 dropped" in md.report()
    # ffill: which value is wrong cannot be told, so the row takes the bar before it whole.
    md = load_market_data(frame, repair="ffill")
    f = md.frame
    before, row = f.iloc[11], f.iloc[12]
    assert [row[c] for c in ("open", "high", "low", "close")] == [
        before[c] for c in ("open", "high", "low", "close")
    ]
    assert row["volume"] == 10.0 and (md.repair.filled, md.repair.dropped) == (1, 0)


def test_ffill_that_would_make_a_row_inconsistent_takes_the_bar_before_whole():
    frame = hourly(200)
    frame.iloc[50, frame.columns.get_loc("Close")] = np.nan
    frame.iloc[50, frame.columns.get_loc("High")] *= 1.5  # this bar sits above the last
    frame.iloc[50, frame.columns.get_loc("Low")] = frame["Close"].iloc[49] * 1.1
    frame.iloc[50, frame.columns.get_loc("Open")] = frame["Close"].iloc[49] * 1.2
    md = load_market_data(frame, repair="ffill")
    f = md.frame
    # The filled close (bar 49's) is below bar 50's low: bar 50 takes bar 49's prices.
    for c in ("open", "high", "low", "close"):
        assert f[c].iloc[50] == f[c].iloc[49]
    assert md.repair.filled == 1


def test_mostly_inconsistent_rows_are_a_column_problem_even_with_repair():
    frame = hourly(200).rename(columns={"High": "Low", "Low": "High"})
    for repair in (None, "drop", "ffill"):
        with pytest.raises(MarketDataError) as err:
            load_market_data(frame, repair=repair)
        msg = str(err.value)
        assert "high < low in 200 rows" in msg and "swapped" in msg
        assert "a column problem rather than bad ticks, so repair= does not apply" in msg


def test_returns_that_overflow_are_refused():
    idx = pd.date_range("2024-01-01", periods=20, freq="1h")
    close = np.full(20, 1e-300)
    close[10:] = 1e10
    with pytest.raises(MarketDataError, match=r"return from the bar before is not a finite"):
        load_market_data(pd.DataFrame({"close": close}, index=idx), **SMALL)


def test_boolean_price_columns_are_refused(tmp_path):
    frame = hourly(200)
    frame["Close"] = frame["Close"] > 100.1
    with pytest.raises(MarketDataError) as err:
        load_market_data(frame)
    msg = str(err.value)
    assert "column 'Close' (the close price) holds booleans (True/False)" in msg
    assert "price_col=" in msg
    pytest.importorskip("pyarrow")
    path = tmp_path / "bars.parquet"
    frame.to_parquet(path)
    with pytest.raises(MarketDataError, match=r"bars\.parquet: column 'Close' .* booleans"):
        load_market_data(path)
    with pytest.raises(MarketDataError, match=r"bars\.csv: column 'Close' .* booleans"):
        load_market_data(write_csv(tmp_path, stamped(frame)))
    objects = hourly(200).astype({"Volume": object})
    objects.iloc[3, objects.columns.get_loc("Volume")] = True
    with pytest.raises(MarketDataError, match="column 'Volume' .the volume. holds booleans"):
        load_market_data(objects)


@pytest.mark.parametrize(
    ("values", "kind"),
    [
        (pd.date_range("2024-01-01", periods=200, freq="1h"), "datetime64"),
        (pd.Categorical(np.arange(200) % 3 + 1.0), "categories"),
        (np.full(200, "abc", dtype=object), "text, not one number ('abc', 'abc', 'abc', ...)"),
    ],
)
def test_other_non_numeric_price_columns_are_refused(values, kind):
    frame = hourly(200)
    frame["Close"] = values
    with pytest.raises(MarketDataError) as err:
        load_market_data(frame)
    assert f"column 'Close' (the close price) holds {kind}" in str(err.value)


def test_numbers_written_as_text_still_load(tmp_path):
    frame = hourly(200)
    data = stamped(frame).astype(str)  # every price as text, e.g. from an object column
    md = load_market_data(data)
    np.testing.assert_array_equal(md.frame["close"].to_numpy(), frame["Close"].to_numpy())
    quoted = tmp_path / "quoted.csv"
    data.to_csv(quoted, index=False, quoting=1)  # csv.QUOTE_ALL
    assert load_market_data(quoted).fingerprint() == md.fingerprint()


@pytest.mark.parametrize(
    ("extra", "both"),
    [
        ("close", "column 'Close' and column 'close'"),
        ("Adj Close", "column 'Close' and column 'Adj Close'"),
        ("price", "column 'Close' and column 'price'"),
    ],
)
def test_two_close_columns_are_ambiguous_until_price_col_says_which(extra, both):
    frame = hourly(200)
    frame[extra] = frame["Close"] * 1.001
    with pytest.raises(MarketDataError) as err:
        load_market_data(frame)
    msg = str(err.value)
    assert f"DataFrame: {both} could both be the close price" in msg
    assert "pass price_col='<column>' naming" in msg and "drop the other" in msg
    md = load_market_data(frame, price_col=extra)
    np.testing.assert_array_equal(md.frame["close"].to_numpy(), frame[extra].to_numpy())


def test_price_and_adj_close_are_ambiguous(tmp_path):
    frame = hourly(200)[["Close"]].rename(columns={"Close": "price"})
    frame["adj_close"] = frame["price"]
    with pytest.raises(MarketDataError, match="column 'price' and column 'adj_close' could both"):
        load_market_data(frame)
    assert len(load_market_data(frame, price_col="adj_close")) == 200


def test_a_column_twice_in_a_csv_is_ambiguous(tmp_path):
    path = tmp_path / "bars.csv"
    text = stamped(hourly(200)).to_csv(index=False).splitlines()
    text = [line + "," + line.split(",")[4] for line in text]  # Close again, at the end
    path.write_text("\n".join(text) + "\n")
    with pytest.raises(MarketDataError) as err:
        load_market_data(path)
    assert (
        "column 'Close' and column 'Close.1' (a second 'Close' column in the file, renamed by "
        "pandas) could both be the close price" in str(err.value)
    )


def test_other_ambiguous_roles_name_both_columns():
    frame = hourly(200)
    frame["open"] = frame["Open"]
    with pytest.raises(
        MarketDataError,
        match="column 'Open' and column 'open' could both be the "
        "open price; pyppo does not guess which: drop or rename all but one",
    ):
        load_market_data(frame)
    dup = hourly(200)
    dup = pd.concat([dup, dup[["Close"]]], axis=1)
    with pytest.raises(MarketDataError, match=r"columns appear more than once: 'Close'"):
        load_market_data(dup)


def test_two_timestamp_columns_are_ambiguous_until_timestamp_col_says_which():
    frame = stamped(hourly(200))
    frame.insert(1, "date", frame["timestamp"].str[:10])
    with pytest.raises(MarketDataError) as err:
        load_market_data(frame)
    msg = str(err.value)
    assert "column 'timestamp' and column 'date' could both be the timestamps" in msg
    assert "pass timestamp_col='<column>' naming" in msg
    md = load_market_data(frame.drop(columns=["date"]))
    assert len(load_market_data(frame, timestamp_col="timestamp")) == 200
    assert md.fingerprint() == load_market_data(frame, timestamp_col="timestamp").fingerprint()
    # A DatetimeIndex and a timestamp column are two sources as well.
    indexed = hourly(200)
    indexed.insert(0, "Date", indexed.index.strftime("%Y-%m-%d %H:%M"))
    with pytest.raises(MarketDataError, match="the DatetimeIndex and column 'Date' could both"):
        load_market_data(indexed)
    assert len(load_market_data(indexed, timestamp_col="Date")) == 200
    # A saved row number beside a named timestamp column is not a second candidate.
    saved = stamped(hourly(200))
    saved.insert(0, "Unnamed: 0", np.arange(200))
    assert len(load_market_data(saved)) == 200


def hourly_with_stamp(n: int, row: int, stamp: str, start: str = "2020-01-01") -> pd.DataFrame:
    frame = stamped(hourly(n, start=start))
    frame.loc[row, "timestamp"] = stamp
    return frame


def test_a_mistyped_last_timestamp_is_named(tmp_path):
    path = write_csv(tmp_path, hourly_with_stamp(200, 199, "2042-01-09 07:00:00"))
    with pytest.raises(MarketDataError) as err:
        load_market_data(path)
    msg = str(err.value)
    assert msg.startswith(f"{path}: a timestamp looks mistyped: line 201 has 2042-01-09 07:00:00")
    assert "beyond 100x the median bar spacing (1h) from its one neighbour" in msg
    assert "(line 200: 2020-01-09 06:00:00), while the spacing next to it is regular (1h)" in msg
    assert "Correct the timestamp (e.g. its year), or remove the row" in msg


def test_a_mistyped_first_timestamp_is_named():
    frame = hourly_with_stamp(200, 0, "2002-01-01 00:00:00")
    with pytest.raises(MarketDataError, match="row 0 has 2002-01-01 00:00:00, beyond 100x"):
        load_market_data(frame)


def test_a_mistyped_timestamp_in_the_middle_is_a_typo_not_an_unsorted_file(tmp_path):
    path = write_csv(tmp_path, hourly_with_stamp(200, 100, "2042-01-05 04:00:00"))
    with pytest.raises(MarketDataError) as err:
        load_market_data(path)
    msg = str(err.value)
    assert (
        "line 102 has 2042-01-05 04:00:00, beyond 100x the median bar spacing (1h) from both "
        "neighbours (line 101: 2020-01-05 03:00:00, line 103: 2020-01-05 05:00:00), while "
        "they are regular (2h apart)" in msg
    )
    assert "not sorted" not in msg


def test_unsorted_data_is_still_reported_as_unsorted():
    frame = stamped(hourly(200))
    frame = pd.concat([frame.iloc[100:], frame.iloc[:100]], ignore_index=True)
    with pytest.raises(MarketDataError, match="timestamps are not sorted"):
        load_market_data(frame)
    reversed_ = stamped(hourly(200)).iloc[::-1].reset_index(drop=True)
    with pytest.raises(MarketDataError, match=r"not sorted \(199 places"):
        load_market_data(reversed_)


def test_weekend_and_holiday_gaps_are_not_typos():
    # Hourly forex: Sunday 22:00 to Friday 21:00, 48-hour gaps, a year of it.
    idx = pd.date_range("2023-01-01", "2023-12-31", freq="1h")
    fx = idx[(idx.day_of_week < 4) | ((idx.day_of_week == 4) & (idx.hour < 22))]
    fx = fx.union(idx[(idx.day_of_week == 6) & (idx.hour >= 22)])
    md = load_market_data(pd.DataFrame({"close": np.linspace(1, 2, len(fx))}, index=fx))
    assert md.gaps()[2] == pd.Timedelta("49h")
    # Daily stock bars: weekdays minus holidays (a 4-day weekend), starting after one.
    days = pd.bdate_range("2023-01-03", "2023-12-29")
    days = days.drop(pd.DatetimeIndex(["2023-04-07", "2023-04-10", "2023-12-25"]))
    md = load_market_data(
        pd.DataFrame({"close": np.linspace(1, 2, len(days))}, index=days), horizons=(1, 5)
    )
    assert md.bar_interval == pd.Timedelta("1D")
    # One bar before the first overnight gap of minute bars: a gap the data has every night.
    minutes = pd.DatetimeIndex(
        [pd.Timestamp("2024-01-02 15:59")]
        + [
            t
            for day in pd.bdate_range("2024-01-03", "2024-01-09")
            for t in pd.date_range(day + pd.Timedelta("9h30min"), periods=390, freq="1min")
        ]
    )
    md = load_market_data(pd.DataFrame({"close": np.linspace(1, 2, len(minutes))}, index=minutes))
    assert len(md) == len(minutes)


@pytest.mark.parametrize(
    ("stamp", "what"),
    [
        (
            "20200-01-01 04:00:00",
            "cannot parse timestamps in column timestamp (1 of 200 rows): "
            "line 7: '20200-01-01 04:00:00'",
        ),
        (
            "2262-05-01 04:00:00",
            "timestamps out of range in column timestamp (1 of 200 rows): "
            "line 7: '2262-05-01 04:00:00'; pyppo reads years 1678 to 2261",
        ),
        ("1500-05-01 04:00:00", "timestamps out of range"),
        ("", "cannot parse timestamps in column timestamp (1 of 200 rows): line 7: empty"),
    ],
)
def test_out_of_range_or_empty_timestamps_name_the_line(tmp_path, stamp, what):
    path = write_csv(tmp_path, hourly_with_stamp(200, 5, stamp))
    with pytest.raises(MarketDataError) as err:
        load_market_data(path)
    assert str(err.value).startswith(f"{path}: {what}")


def test_timestamps_with_and_without_utc_offsets_are_refused(tmp_path):
    frame = stamped(hourly(200))
    frame["timestamp"] = frame["timestamp"].str.replace(" ", "T") + "+02:00"
    md = load_market_data(frame)  # every row with an offset: fine
    assert str(md.frame.index.tz) == "UTC+02:00" and len(md) == 200
    frame.loc[3, "timestamp"] = "2024-01-01T01:00:00Z"  # other offsets convert to UTC
    frame.loc[4, "timestamp"] = "2024-01-01T02:00:00Z"
    frame.loc[5, "timestamp"] = "2024-01-01T03:00:00Z"
    assert str(load_market_data(frame).frame.index.tz) == "UTC"
    frame.loc[5, "timestamp"] = "2024-01-01 05:00:00"
    with pytest.raises(MarketDataError) as err:
        load_market_data(write_csv(tmp_path, frame))
    msg = str(err.value)
    assert "mix UTC offsets and none: 1 of 200 rows have no offset (line 7: " in msg
    assert "Give every timestamp an offset (or none)" in msg


def test_a_corrupt_or_truncated_parquet_file_names_the_file(tmp_path):
    pytest.importorskip("pyarrow")
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"PAR1" + bytes(range(256)) * 4)
    with pytest.raises(
        MarketDataError,
        match=r"garbage\.parquet: not a readable Parquet file "
        r"\(ArrowInvalid: .*re-download or re-export it",
    ):
        load_market_data(garbage)
    good = tmp_path / "good.parquet"
    hourly(200).to_parquet(good)
    cut = tmp_path / "cut.parquet"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(MarketDataError, match=r"cut\.parquet: not a readable Parquet file"):
        load_market_data(cut)
    as_csv = tmp_path / "parquet.csv"
    as_csv.write_bytes(good.read_bytes())
    with pytest.raises(MarketDataError, match="this is a Parquet file; name it .parquet"):
        load_market_data(as_csv)


def test_an_unreadable_file_names_the_file(tmp_path, monkeypatch):
    path = write_csv(tmp_path, stamped(hourly(200)))

    def denied(self):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(type(tmp_path), "read_bytes", denied)
    with pytest.raises(
        MarketDataError,
        match=r"bars\.csv: cannot read the file \(Permission "
        "denied\\); check its permissions",
    ):
        load_market_data(path)


@pytest.mark.parametrize(
    "encoding", ["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32", "latin-1", "cp1252"]
)
def test_other_encodings_load(tmp_path, encoding):
    frame = stamped(hourly(200))
    frame["Bemerkung"] = "geschätzt"  # text beyond ASCII in a column pyppo does not read
    path = tmp_path / "bars.csv"
    path.write_bytes(frame.to_csv(index=False).encode(encoding))
    assert load_market_data(path).fingerprint() == load_market_data(hourly(200)).fingerprint()


def test_binary_files_are_refused(tmp_path):
    path = tmp_path / "bars.csv"
    path.write_bytes(bytes(range(256)) * 20)
    with pytest.raises(MarketDataError, match=r"bars\.csv: binary data, not a CSV file"):
        load_market_data(path)


@pytest.mark.parametrize("sep", [";", "\t", "|"])
def test_other_separators_load(tmp_path, sep):
    path = tmp_path / "bars.csv"
    stamped(hourly(200)).to_csv(path, sep=sep, index=False)
    assert load_market_data(path).fingerprint() == load_market_data(hourly(200)).fingerprint()


def test_decimal_commas_say_how_to_read_them(tmp_path):
    path = tmp_path / "bars.csv"
    stamped(hourly(200)).to_csv(path, sep=";", decimal=",", index=False)
    with pytest.raises(MarketDataError) as err:
        load_market_data(path)
    msg = str(err.value)
    assert "column 'Open' (the open price) holds text, not one number ('100,1" in msg
    assert "pd.read_csv(path, sep=';', decimal=',')" in msg
    frame = pd.read_csv(path, sep=";", decimal=",")
    assert len(load_market_data(frame)) == 200


def test_a_truncated_csv_file_is_refused(tmp_path):
    path = tmp_path / "bars.csv"
    stamped(hourly(200)).to_csv(path, index=False)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # most likely inside a line
    cut_at = data[: len(data) // 2].count(b"\n") + 1
    with pytest.raises(MarketDataError) as err:
        load_market_data(path)
    msg = str(err.value)
    assert f"bars.csv: line {cut_at} has " in msg and "the file looks cut short" in msg
    # A complete last line without a line end is fine.
    path.write_bytes(data.rstrip(b"\n"))
    assert len(load_market_data(path)) == 200
    gz = tmp_path / "bars.csv.gz"
    import gzip

    gz.write_bytes(gzip.compress(data)[:-50])
    with pytest.raises(MarketDataError, match=r"bars\.csv\.gz: cannot read the \.gz file"):
        load_market_data(gz)
    gz.write_bytes(gzip.compress(data))
    assert len(load_market_data(gz)) == 200


def test_lines_that_do_not_fit_the_header_are_refused(tmp_path):
    path = tmp_path / "bars.csv"
    lines = stamped(hourly(200)).to_csv(index=False).splitlines()
    lines[10] += ",1"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        MarketDataError,
        match=r"not a readable CSV file \(.*Expected 6 fields in "
        r"line 11, saw 7\)",
    ):
        load_market_data(path)
    lines = stamped(hourly(200)).to_csv(index=False).splitlines()
    lines = [lines[0]] + [line + ",1" for line in lines[1:]]  # every data line one too many
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(MarketDataError, match="the data lines have more fields than the header"):
        load_market_data(path)


def test_empty_files(tmp_path):
    path = tmp_path / "bars.csv"
    path.write_bytes(b"")
    with pytest.raises(MarketDataError, match=r"bars\.csv: the file is empty"):
        load_market_data(path)
    path.write_text("\n\n  \n")
    with pytest.raises(MarketDataError, match=r"bars\.csv: the file is empty"):
        load_market_data(path)
    path.write_text("timestamp,close\n")
    with pytest.raises(MarketDataError, match=r"bars\.csv: no rows"):
        load_market_data(path)


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_lines_are_counted_across_blank_lines(tmp_path, newline):
    lines = stamped(hourly(200)).to_csv(index=False).splitlines()
    cells = lines[20].split(",")  # data row 19, file line 21
    lines[20] = ",".join(cells[:4] + ["-1"] + cells[5:])
    path = tmp_path / "bars.csv"
    path.write_bytes(newline.join(lines[:5] + ["", "   "] + lines[5:] + [""]).encode())
    with pytest.raises(MarketDataError, match=r"line 23 \(2024-01-01 19:00:00\): close=-1.0"):
        load_market_data(path)
    path.write_bytes(newline.join(lines + [""]).encode())  # no blank lines
    with pytest.raises(MarketDataError, match=r"line 21 \(2024-01-01 19:00:00\): close=-1.0"):
        load_market_data(path)


# ----------------------------------------------------------------------------- bars per year


def test_bars_per_year_counts_the_bars_the_data_has():
    hours = pd.date_range("2020-01-01", periods=5000, freq="1h")
    assert bars_per_year(hours) == pytest.approx(8766.0, rel=1e-12)
    # Hourly forex bars: weekdays only.
    fx = pd.date_range("2020-01-01", "2021-12-31", freq="1h")
    fx = fx[fx.day_of_week < 5]
    assert bars_per_year(fx) == pytest.approx(120 * 365.25 / 7, rel=0.01)
    assert 6200 < bars_per_year(fx) < 6300
    days = pd.bdate_range("2015-01-01", "2024-12-31")
    assert bars_per_year(days) == pytest.approx(261, rel=0.01)
    md = load_market_data(pd.DataFrame({"close": np.linspace(1, 2, 5000)}, index=hours))
    assert md.bars_per_year == bars_per_year(hours)


@pytest.mark.parametrize("where", [0, 2500, 4999])
def test_bars_per_year_ignores_a_mistyped_timestamp(where):
    hours = pd.date_range("2020-01-01", periods=5000, freq="1h")
    clean = bars_per_year(hours)
    typo = hours.to_series().reset_index(drop=True)
    typo[where] = pd.Timestamp("2042-01-01")
    assert bars_per_year(pd.DatetimeIndex(typo)) == pytest.approx(clean, rel=0.01)
    typo[where] = pd.Timestamp("1990-01-01")
    assert bars_per_year(pd.DatetimeIndex(typo)) == pytest.approx(clean, rel=0.01)
    # The MarketData constructor does not validate, so a typo can reach one.
    frame = pd.DataFrame({"close": np.linspace(1, 2, 5000)}, index=pd.DatetimeIndex(typo))
    assert MarketData(frame.sort_index()).bars_per_year == pytest.approx(clean, rel=0.01)


def test_bars_per_year_of_tiny_or_empty_spans():
    two = pd.date_range("2020-01-01", periods=2, freq="1D")
    assert bars_per_year(two) == pytest.approx(365.25)
    assert bars_per_year(pd.date_range("2020-01-01", periods=4, freq="1D")) == pytest.approx(365.25)
    with pytest.raises(MarketDataError, match="at least 2 bars"):
        bars_per_year(two[:1])
    with pytest.raises(MarketDataError, match="span no time"):
        bars_per_year(pd.DatetimeIndex(["2020-01-01"] * 3))


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": 0}, "window=0: the observation window is a whole number >= 1"),
        ({"window": -5}, "window=-5"),
        ({"horizons": ()}, r"horizons=\(\): give a sequence of one or more horizons"),
        ({"horizons": (None,)}, "horizon None is not a duration"),
        ({"horizons": (1.5,)}, "horizon 1.5 is not a duration"),
    ],
)
def test_loader_arguments_are_checked(kwargs, message):
    with pytest.raises(MarketDataError, match=message):
        load_market_data(hourly(300), **kwargs)


def test_prices_beyond_float32_are_refused():
    frame = hourly(300)
    frame[["Open", "High", "Low", "Close"]] = 1e308
    with pytest.raises(MarketDataError, match=r"prices above 3.4e\+38 .* Rescale the prices"):
        load_market_data(frame)


def test_a_volume_that_is_not_a_number_is_refused(tmp_path):
    frame = hourly(300)
    frame["Volume"] = frame["Volume"].astype(object)
    frame.loc[frame.index[4], "Volume"] = "abc"
    path = write_csv(tmp_path, frame.reset_index(names="timestamp"))
    with pytest.raises(MarketDataError, match=r"volume is not a number in 1 rows: line 6 .*'abc'"):
        load_market_data(path)


def test_lowercase_day_horizons_parse_without_a_pandas_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert horizon_to_bars("1d", pd.Timedelta("1h")) == 24
        assert horizon_to_bars("4H", pd.Timedelta("1h")) == 4
    assert horizon_label("1d") == "1d"  # the name users read keeps their spelling
