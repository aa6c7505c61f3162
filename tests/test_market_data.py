"""Bundled data, CSV reading, validation and load_bars, on real files."""

from __future__ import annotations

import logging
from datetime import date
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trading_agents.errors import DataUnavailableError, DataValidationError, UserInputError
from trading_agents.market import (
    OHLCV_COLUMNS,
    BundledProvider,
    CSVProvider,
    load_bars,
    read_yahoo_csv,
    validate_bars,
)
from trading_agents.market.bundled import DATA_DIR

HEADER = "Date,Open,High,Low,Close,Adj Close,Volume\n"
GOOD_ROWS = [
    ("2020-01-02", 10.0, 11.0, 9.5, 10.5, 1000),
    ("2020-01-03", 10.5, 11.2, 10.1, 11.0, 1200),
    ("2020-01-06", 11.0, 11.5, 10.8, 11.1, 900),
    ("2020-01-07", 11.1, 11.3, 10.6, 10.7, 1100),
]


def write_csv(path: Path, rows: list[tuple], header: str = HEADER, adj: bool = True) -> Path:
    lines = [header]
    for d, o, h, lo, c, v in rows:
        cells = [d, o, h, lo, c, c, v] if adj else [d, o, h, lo, c, v]
        lines.append(",".join(str(x) for x in cells) + "\n")
    path.write_text("".join(lines))
    return path


def assert_canonical(bars: pd.DataFrame) -> None:
    assert list(bars.columns) == list(OHLCV_COLUMNS)
    assert all(dt == np.float64 for dt in bars.dtypes)
    assert isinstance(bars.index, pd.DatetimeIndex)
    assert bars.index.name == "Date"
    assert bars.index.tz is None
    assert bars.index.is_monotonic_increasing and bars.index.is_unique
    assert (bars.index == bars.index.normalize()).all()


# -- bundled ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ticker", "rows", "first", "last"),
    [
        ("GOOG", 2148, "2004-08-19", "2013-03-01"),
        ("SPX", 5031, "1999-01-04", "2018-12-31"),
        ("IXIC", 5031, "1999-01-04", "2018-12-31"),
    ],
)
def test_bundled_files_load_and_validate(ticker: str, rows: int, first: str, last: str) -> None:
    bars = BundledProvider().bars(ticker)
    assert_canonical(bars)
    assert len(bars) == rows
    assert bars.index[0] == pd.Timestamp(first) and bars.index[-1] == pd.Timestamp(last)
    # Validating the validated frame again changes nothing.
    pd.testing.assert_frame_equal(validate_bars(bars, ticker), bars)


def test_bundled_goog_is_as_traded_not_split_adjusted() -> None:
    bars = BundledProvider().history("goog", end=date(2004, 8, 19))
    assert bars.loc["2004-08-19", "Open"] == 100.0
    assert bars.loc["2004-08-19", "Close"] == 100.34


def test_bundled_files_are_iso_yahoo_format() -> None:
    for name in ("GOOG", "SPX", "IXIC", "AAPL", "IBM", "MSFT", "FB"):
        lines = (DATA_DIR / f"{name}.csv").read_text().splitlines()
        assert lines[0] == HEADER.strip()
        assert lines[1][:4].isdigit() and lines[1][4] == "-"
    assert (DATA_DIR / "README.md").is_file()


def test_bundled_stocks_are_adjusted_across_splits() -> None:
    """AAPL split 2:1 on 2000-06-21 and MSFT on 2003-02-18: adjusted bars show no halving there,
    and the volume divides by the same factor, so a day's dollar volume is the one traded."""
    provider = BundledProvider()
    for ticker, before, after in (("AAPL", "2000-06-20", "2000-06-21"), ("MSFT", "2003-02-14", "2003-02-18")):
        bars = provider.bars(ticker)
        assert 0.8 < bars.loc[after, "Open"] / bars.loc[before, "Close"] < 1.2
    aapl = provider.bars("aapl")
    # 2013-03-01 (after every split the source adjusts for but 2014's 7:1): as traded 430.47 x 19,730,300
    assert aapl.loc["2013-03-01", "Close"] * aapl.loc["2013-03-01", "Volume"] == pytest.approx(
        430.47 * 19_730_300, rel=1e-3
    )


def test_bundled_aliases_and_case() -> None:
    provider = BundledProvider()
    assert provider.tickers() == ["GOOG", "SPX", "IXIC", "AAPL", "IBM", "MSFT", "FB"]
    pd.testing.assert_frame_equal(provider.bars("^gspc"), provider.bars("SPX"))
    pd.testing.assert_frame_equal(provider.bars("^IXIC"), provider.bars("ixic"))
    assert not provider.has("GOOGL")


def test_bundled_unknown_ticker_lists_the_bundled_ones() -> None:
    with pytest.raises(
        DataUnavailableError,
        match=r"no bundled data for GOOGL; bundled tickers are GOOG, SPX, IXIC, AAPL, IBM, MSFT, FB",
    ):
        BundledProvider().history("googl")


def test_bundled_zero_volume_days_are_warned_not_refused(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="trading_agents.market.validate"):
        bars = read_yahoo_csv(DATA_DIR / "IXIC.csv")
    assert (bars["Volume"] == 0).sum() == 2
    assert "2 bars with zero volume: 2015-05-12, 2018-01-09" in caplog.text


# -- CSV formats ---------------------------------------------------------------------------


def test_iso_and_us_dates_parse_the_same(tmp_path: Path) -> None:
    iso = write_csv(tmp_path / "iso.csv", GOOD_ROWS)
    us_rows = [(f"{int(d[5:7])}/{int(d[8:10])}/{d[:4]}", *rest) for d, *rest in GOOD_ROWS]
    us = write_csv(tmp_path / "us.csv", us_rows)
    a, b = read_yahoo_csv(iso), read_yahoo_csv(us)
    assert_canonical(a)
    pd.testing.assert_frame_equal(a, b)
    assert a.loc["2020-01-06", "Close"] == 11.1


def test_without_adj_close_and_unnamed_index_variants(tmp_path: Path) -> None:
    reference = read_yahoo_csv(write_csv(tmp_path / "a.csv", GOOD_ROWS))
    no_adj = write_csv(tmp_path / "b.csv", GOOD_ROWS, header="Date,Open,High,Low,Close,Volume\n", adj=False)
    unnamed = write_csv(tmp_path / "c.csv", GOOD_ROWS, header=",Open,High,Low,Close,Volume\n", adj=False)
    lower = write_csv(tmp_path / "d.csv", GOOD_ROWS, header="date,open,high,low,close,adj_close,volume\n")
    for path in (no_adj, unnamed, lower):
        pd.testing.assert_frame_equal(read_yahoo_csv(path), reference)


def test_iso_dates_with_time_suffix_are_accepted(tmp_path: Path) -> None:
    rows = [(f"{d} 00:00:00-05:00", *rest) for d, *rest in GOOD_ROWS]
    bars = read_yahoo_csv(write_csv(tmp_path / "t.csv", rows))
    assert bars.index[0] == pd.Timestamp("2020-01-02")


# -- CSV and validation errors -------------------------------------------------------------


def expect_error(path: Path, pattern: str) -> str:
    with pytest.raises(DataValidationError, match=pattern) as info:
        read_yahoo_csv(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_missing_file_directory_and_empty_file(tmp_path: Path) -> None:
    expect_error(tmp_path / "nope.csv", "does not exist")
    expect_error(tmp_path, "is a directory")
    (tmp_path / "empty.csv").write_text("")
    expect_error(tmp_path / "empty.csv", "is empty")
    (tmp_path / "header.csv").write_text(HEADER)
    expect_error(tmp_path / "header.csv", "header but no rows")


def test_bom_crlf_and_blank_lines_are_fine(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    text = HEADER + "".join(f"{d},{o},{h},{lo},{c},{c},{v}\n" for d, o, h, lo, c, v in GOOD_ROWS) + "\n"
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    pd.testing.assert_frame_equal(
        read_yahoo_csv(path), read_yahoo_csv(write_csv(tmp_path / "plain.csv", GOOD_ROWS))
    )


def test_ragged_and_binary_files(tmp_path: Path) -> None:
    path = tmp_path / "ragged.csv"
    path.write_text(HEADER + "2020-01-02,10,11,9,10.5,10.5,100,7\n")
    expect_error(path, "more fields than the header")
    path.write_text(HEADER + "2020-01-02,10,11,9,10.5,10.5,100\n2020-01-03,10,11,9,10.5,10.5,100,7\n")
    expect_error(path, "not a valid CSV")
    path.write_bytes(bytes(range(256)) * 4)
    expect_error(path, "not a UTF-8 text CSV")


def test_missing_columns_are_named(tmp_path: Path) -> None:
    path = tmp_path / "cols.csv"
    path.write_text("Date,Open,Close\n2020-01-02,1,2\n")
    expect_error(path, r"missing columns High, Low, Volume")
    path.write_text("Day,Open,High,Low,Close,Volume\n2020-01-02,1,2,1,2,3\n")
    expect_error(path, r"no Date column")


def test_non_numeric_value_names_column_and_date(tmp_path: Path) -> None:
    rows = list(GOOD_ROWS)
    rows[2] = ("2020-01-06", 11.0, "11.5x", 10.8, 11.1, 900)
    expect_error(write_csv(tmp_path / "n.csv", rows), r"non-numeric High values \('11.5x'\) on 2020-01-06")


def test_missing_ohlc_values(tmp_path: Path) -> None:
    rows = list(GOOD_ROWS)
    rows[1] = ("2020-01-03", "null", "null", "null", "null", "null")
    rows[3] = ("2020-01-07", 11.1, 11.3, 10.6, "", 1100)
    expect_error(
        write_csv(tmp_path / "m.csv", rows),
        r"missing Open/High/Low/Close/Volume values on 2020-01-03, 2020-01-07",
    )


def test_duplicate_dates(tmp_path: Path) -> None:
    rows = [*GOOD_ROWS, GOOD_ROWS[-1]]
    expect_error(write_csv(tmp_path / "d.csv", rows), r"duplicate dates 2020-01-07; keep one row per date")


def test_unsorted_dates_are_refused_not_sorted(tmp_path: Path) -> None:
    rows = [GOOD_ROWS[0], GOOD_ROWS[2], GOOD_ROWS[1], GOOD_ROWS[3]]
    message = expect_error(write_csv(tmp_path / "u.csv", rows), r"sort the file by Date")
    assert "2020-01-03 comes after 2020-01-06" in message


def test_high_below_close_and_low_above_open(tmp_path: Path) -> None:
    rows = list(GOOD_ROWS)
    rows[1] = ("2020-01-03", 10.5, 10.9, 10.1, 11.0, 1200)
    expect_error(write_csv(tmp_path / "h.csv", rows), r"High below Open or Close on 2020-01-03")
    rows = list(GOOD_ROWS)
    rows[2] = ("2020-01-06", 11.0, 11.5, 11.05, 11.1, 900)
    expect_error(write_csv(tmp_path / "l.csv", rows), r"Low above Open or Close on 2020-01-06")


def test_non_positive_prices_and_negative_volume(tmp_path: Path) -> None:
    rows = list(GOOD_ROWS)
    rows[0] = ("2020-01-02", 0, 11.0, 0, 10.5, 1000)
    expect_error(write_csv(tmp_path / "z.csv", rows), r"zero or negative prices on 2020-01-02")
    rows = list(GOOD_ROWS)
    rows[3] = ("2020-01-07", 11.1, 11.3, 10.6, 10.7, -5)
    expect_error(write_csv(tmp_path / "v.csv", rows), r"negative Volume on 2020-01-07")


def test_many_bad_dates_are_capped_at_five(tmp_path: Path) -> None:
    days = pd.bdate_range("2021-03-01", periods=12)
    rows = [(d.date().isoformat(), 10, 9, 8, 10, 100) for d in days]  # High below Open everywhere
    message = expect_error(write_csv(tmp_path / "many.csv", rows), "High below")
    assert "2021-03-01, 2021-03-02, 2021-03-03, 2021-03-04, 2021-03-05 and 7 more" in message


def test_bad_and_mixed_dates_name_the_row(tmp_path: Path) -> None:
    rows = list(GOOD_ROWS)
    rows[2] = ("01/06/2020", *GOOD_ROWS[2][1:])
    expect_error(write_csv(tmp_path / "mixed.csv", rows), r"data row 3 has the date '01/06/2020'.*YYYY-MM-DD")
    rows = list(GOOD_ROWS)
    rows[1] = ("2020-02-30", *GOOD_ROWS[1][1:])
    expect_error(write_csv(tmp_path / "feb30.csv", rows), r"data row 2 has the date '2020-02-30'")
    rows = [("1/10/2020", *GOOD_ROWS[0][1:]), ("13/01/2020", *GOOD_ROWS[1][1:])]
    expect_error(write_csv(tmp_path / "dayfirst.csv", rows), r"day-first \(data row 2: 13/01/2020\)")
    rows = [("Jan 2 2020", *GOOD_ROWS[0][1:])]
    expect_error(write_csv(tmp_path / "words.csv", rows), r"cannot read the date 'Jan 2 2020' in data row 1")


def test_suspected_unadjusted_split_is_refused(tmp_path: Path) -> None:
    rows = [
        ("2020-01-02", 100.0, 102.0, 99.0, 101.0, 1000),
        ("2020-01-03", 101.0, 103.0, 100.0, 102.0, 1000),
        ("2020-01-06", 51.2, 52.0, 50.5, 51.5, 2000),  # 2-for-1, prices before not adjusted
        ("2020-01-07", 51.5, 52.5, 51.0, 52.0, 2000),
    ]
    message = expect_error(
        write_csv(tmp_path / "split.csv", rows), r"suspected unadjusted 2-for-1 split on 2020-01-06"
    )
    assert "split-adjusted" in message
    rows[2] = ("2020-01-06", 306.0, 310.0, 300.0, 305.0, 300)  # 1-for-3 reverse split
    rows[3] = ("2020-01-07", 305.0, 309.0, 301.0, 306.0, 300)
    expect_error(write_csv(tmp_path / "rsplit.csv", rows), r"1-for-3 reverse split on 2020-01-06")


def test_big_move_that_is_no_split_ratio_passes(tmp_path: Path) -> None:
    rows = [
        ("2020-01-02", 100.0, 102.0, 99.0, 101.0, 1000),
        ("2020-01-03", 45.0, 48.0, 44.0, 46.0, 9000),  # -55%: a crash, not a 1/2 or 1/3 split
    ]
    assert len(read_yahoo_csv(write_csv(tmp_path / "crash.csv", rows))) == 2


def test_gap_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rows = [GOOD_ROWS[0], ("2020-01-20", 10.5, 11.2, 10.1, 11.0, 1200)]
    with caplog.at_level(logging.WARNING):
        read_yahoo_csv(write_csv(tmp_path / "gap.csv", rows))
    assert "1 gaps of more than 7 days, before 2020-01-20 (18 days)" in caplog.text


def test_validate_bars_accepts_tz_aware_yahoo_frames() -> None:
    index = pd.DatetimeIndex(["2024-01-02", "2024-01-03"]).tz_localize("America/New_York")
    raw = pd.DataFrame(
        {
            "Open": [10, 11],
            "High": [11, 12],
            "Low": [9, 10],
            "Close": [10.5, 11.5],
            "Adj Close": [10.4, 11.4],
            "Volume": [100, 200],
            "Dividends": [0.0, 0.0],
            "Stock Splits": [0.0, 0.0],
        },
        index=index,
    )
    bars = validate_bars(raw, "yahoo X")
    assert_canonical(bars)
    assert list(bars.index) == [pd.Timestamp("2024-01-02"), pd.Timestamp("2024-01-03")]


# -- load_bars ------------------------------------------------------------------------------


def test_load_bars_window_is_inclusive() -> None:
    out = load_bars(tickers=["goog", "GOOG", "^GSPC"], start=date(2010, 1, 4), end=date(2010, 1, 8))
    assert list(out) == ["GOOG", "^GSPC"]
    for bars in out.values():
        assert_canonical(bars)
        assert list(bars.index.strftime("%Y-%m-%d")) == [
            "2010-01-04",
            "2010-01-05",
            "2010-01-06",
            "2010-01-07",
            "2010-01-08",
        ]


def test_load_bars_empty_window_names_the_available_range() -> None:
    with pytest.raises(
        UserInputError, match=r"no GOOG bars in 2015-01-01..2015-06-30; available: 2004-08-19..2013-03-01"
    ):
        load_bars(tickers=["GOOG"], start=date(2015, 1, 1), end=date(2015, 6, 30))
    with pytest.raises(UserInputError, match="after end"):
        load_bars(tickers=["GOOG"], start=date(2012, 1, 2), end=date(2011, 1, 1))


def test_load_bars_from_data_file(tmp_path: Path) -> None:
    path = write_csv(tmp_path / "acme.csv", GOOD_ROWS)
    out = load_bars(data_file=path, start=date(2020, 1, 3))
    assert list(out) == ["ACME"]
    assert len(out["ACME"]) == 3
    assert list(load_bars(data_file=path, tickers=["xyz"])) == ["XYZ"]
    with pytest.raises(UserInputError, match="one --data file holds one instrument"):
        load_bars(data_file=path, tickers=["A", "B"])
    with pytest.raises(UserInputError, match="holds ACME only"):
        CSVProvider(path).history("GOOG")


def test_load_bars_bad_arguments() -> None:
    with pytest.raises(UserInputError, match="no tickers given"):
        load_bars()
    with pytest.raises(UserInputError, match="needs a data file"):
        load_bars(tickers=["GOOG"], source="csv")
    with pytest.raises(UserInputError, match="unknown data source"):
        load_bars(tickers=["GOOG"], source="ftp")  # type: ignore[arg-type]
    with pytest.raises(DataUnavailableError, match="no bundled data for NVDA"):
        load_bars(tickers=["NVDA"], source="bundled")
