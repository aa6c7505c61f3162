"""YahooProvider without Yahoo: the yfinance call is replaced by failures and canned frames
(Yahoo is unreachable here); the cache files, parsing, validation and retry logic are real."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from yfinance.exceptions import YFPricesMissingError, YFRateLimitError

from trading_agents.errors import DataUnavailableError, UserInputError
from trading_agents.market import YahooProvider, load_bars, read_yahoo_csv
from trading_agents.market.yahoo import is_network_error, is_rate_limit

NOW = datetime(2024, 1, 5, 23, 0, tzinfo=UTC)  # Friday 18:00 in New York, after the close


def yahoo_frame(days: int = 30, last: str = "2024-01-05") -> pd.DataFrame:
    """What ``yf.Ticker(t).history(auto_adjust=False, actions=True)`` returns: tz-aware, extra columns."""
    index = pd.bdate_range(end=last, periods=days).tz_localize("America/New_York")
    close = 100 * np.exp(np.cumsum(np.random.default_rng(3).normal(0, 0.01, days)))
    open_ = close * 0.995
    return pd.DataFrame(
        {
            "Open": open_,
            "High": np.maximum(open_, close) * 1.01,
            "Low": np.minimum(open_, close) * 0.99,
            "Close": close,
            "Adj Close": close * 0.98,
            "Volume": np.arange(days) * 1000 + 5000,
            "Dividends": 0.0,
            "Stock Splits": 0.0,
        },
        index=pd.DatetimeIndex(index, name="Date"),
    )


class FakeYahoo:
    """Plays a scripted list of outcomes (exceptions or frames); counts the calls."""

    def __init__(self, *outcomes: object) -> None:
        self.outcomes = list(outcomes)
        self.calls: list[str] = []

    def __call__(self, ticker: str) -> pd.DataFrame:
        self.calls.append(ticker)
        outcome = self.outcomes.pop(0) if len(self.outcomes) > 1 else self.outcomes[0]
        if isinstance(outcome, BaseException):
            raise outcome
        assert isinstance(outcome, pd.DataFrame)
        return outcome.copy()


def provider(
    tmp_path: Path, fetch: Callable[[str], pd.DataFrame], now: datetime = NOW, **kw: object
) -> tuple[YahooProvider, list[float]]:
    sleeps: list[float] = []
    p = YahooProvider(tmp_path / "cache", fetch=fetch, sleep=sleeps.append, now=lambda: now, **kw)  # type: ignore[arg-type]
    return p, sleeps


def test_fetch_parses_caches_and_reuses(tmp_path: Path) -> None:
    fake = FakeYahoo(yahoo_frame())
    yp, sleeps = provider(tmp_path, fake)
    bars = yp.history("aapl", start=date(2024, 1, 2))
    assert list(bars.columns) == ["Open", "High", "Low", "Close", "Volume"]
    assert bars.index.tz is None and bars.index[0] == pd.Timestamp("2024-01-02")
    assert bars.index[-1] == pd.Timestamp("2024-01-05")
    assert fake.calls == ["AAPL"] and sleeps == []

    csv_path = tmp_path / "cache" / "AAPL.csv"
    meta = json.loads(csv_path.with_suffix(".json").read_text())
    assert meta["fetched_at"] == "2024-01-05T23:00:00+00:00"
    assert meta["rows"] == 30 and meta["last"] == "2024-01-05"
    assert csv_path.read_text().splitlines()[0] == "Date,Open,High,Low,Close,Adj Close,Volume"
    pd.testing.assert_frame_equal(read_yahoo_csv(csv_path).loc["2024-01-02":], bars, rtol=1e-9)

    again = yp.history("AAPL", start=date(2024, 1, 2))  # fresh cache: no second request
    assert fake.calls == ["AAPL"]
    pd.testing.assert_frame_equal(again, bars, rtol=1e-9)


def test_rate_limit_backs_off_exponentially_then_succeeds(tmp_path: Path) -> None:
    fake = FakeYahoo(
        YFRateLimitError(), YFRateLimitError(), RuntimeError("HTTP 429 Too Many Requests"), yahoo_frame()
    )
    yp, sleeps = provider(tmp_path, fake, backoff_s=1.0)
    assert len(yp.history("MSFT")) == 30
    assert len(fake.calls) == 4
    assert len(sleeps) == 3
    for attempt, delay in enumerate(sleeps):
        assert 2**attempt <= delay < 2**attempt + 1.0  # exponential base plus jitter in [0, backoff)


def test_rate_limit_forever_gives_up_after_max_retries(tmp_path: Path) -> None:
    fake = FakeYahoo(YFRateLimitError())
    yp, sleeps = provider(tmp_path, fake, max_retries=2)
    with pytest.raises(DataUnavailableError, match="rate-limiting requests for MSFT"):
        yp.history("MSFT")
    assert len(fake.calls) == 3 and len(sleeps) == 2


def test_network_down_uses_stale_cache_with_warning(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    yp, _ = provider(tmp_path, FakeYahoo(yahoo_frame()))
    yp.history("IBM")
    later = NOW + timedelta(days=10)
    down = FakeYahoo(ConnectionError("Could not resolve host: query2.finance.yahoo.com"))
    yp2, sleeps = provider(tmp_path, down, now=later)
    with caplog.at_level(logging.WARNING, logger="trading_agents.market.yahoo"):
        bars = yp2.history("IBM")
    assert bars.index[-1] == pd.Timestamp("2024-01-05")
    assert len(down.calls) == 2 and len(sleeps) == 1  # one retry for network errors
    assert "using cached IBM data, 10 days stale (fetched at 2024-01-05T23:00+00:00)" in caplog.text


def test_network_down_without_cache(tmp_path: Path) -> None:
    yp, _ = provider(tmp_path, FakeYahoo(TimeoutError("timed out")))
    with pytest.raises(DataUnavailableError) as info:
        yp.history("IBM")
    message = str(info.value)
    assert message.startswith("cannot reach Yahoo Finance for IBM (TimeoutError: timed out)")
    assert message.endswith("use --data FILE.csv or a bundled ticker (GOOG, SPX, IXIC, AAPL, IBM, MSFT, FB)")
    assert info.value.exit_code == 4


@pytest.mark.parametrize(
    "outcome",
    [yahoo_frame().iloc[:0], YFPricesMissingError("ZZZZ", "")],
    ids=["empty-frame", "prices-missing"],
)
def test_unknown_ticker(tmp_path: Path, outcome: object) -> None:
    fake = FakeYahoo(outcome)
    yp, sleeps = provider(tmp_path, fake)
    with pytest.raises(DataUnavailableError, match=r"^no data for ticker ZZZZ from Yahoo; check the symbol$"):
        yp.history("zzzz")
    assert len(fake.calls) == 1 and sleeps == []
    assert not (tmp_path / "cache" / "ZZZZ.csv").exists()


def test_offline_mode_never_fetches(tmp_path: Path) -> None:
    never = FakeYahoo(AssertionError("must not be called"))
    yp, _ = provider(tmp_path, never, offline=True)
    with pytest.raises(DataUnavailableError, match="offline and no cached IBM data"):
        yp.history("IBM")
    provider(tmp_path, FakeYahoo(yahoo_frame()))[0].history("IBM")
    yp_late, _ = provider(tmp_path, never, now=NOW + timedelta(days=3), offline=True)
    assert len(yp_late.history("IBM")) == 30
    assert never.calls == []


def test_old_cache_is_enough_for_a_past_window(tmp_path: Path) -> None:
    provider(tmp_path, FakeYahoo(yahoo_frame()))[0].history("IBM")
    never = FakeYahoo(AssertionError("must not be called"))
    yp, _ = provider(tmp_path, never, now=NOW + timedelta(days=30))
    assert len(yp.history("IBM", start=date(2024, 1, 2), end=date(2024, 1, 4))) == 3
    assert never.calls == []
    refreshed = FakeYahoo(yahoo_frame(last="2024-02-02"))
    yp, _ = provider(tmp_path, refreshed, now=NOW + timedelta(days=30))
    assert yp.history("IBM").index[-1] == pd.Timestamp("2024-02-02")  # open-ended: refetched
    assert len(refreshed.calls) == 1


def test_unfinished_bar_of_today_is_dropped(tmp_path: Path) -> None:
    during = datetime(2024, 1, 5, 19, 0, tzinfo=UTC)  # 14:00 in New York
    yp, _ = provider(tmp_path, FakeYahoo(yahoo_frame()), now=during)
    assert yp.history("IBM").index[-1] == pd.Timestamp("2024-01-04")


def test_corrupt_cache_is_ignored_and_replaced(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    yp, _ = provider(tmp_path, FakeYahoo(yahoo_frame()))
    yp.history("IBM")
    yp.cache_path("IBM").write_text("Date,Open\nnot,a,table\n")
    fake = FakeYahoo(yahoo_frame())
    yp2, _ = provider(tmp_path, fake)
    with caplog.at_level(logging.WARNING):
        assert len(yp2.history("IBM")) == 30
    assert "ignoring unreadable Yahoo cache for IBM" in caplog.text
    assert len(fake.calls) == 1
    assert len(read_yahoo_csv(yp2.cache_path("IBM"))) == 30


def test_symbols_and_cache_names(tmp_path: Path) -> None:
    yp, _ = provider(tmp_path, FakeYahoo(yahoo_frame()))
    assert yp.cache_path("^gspc").name == "%5EGSPC.csv"
    with pytest.raises(UserInputError, match="not a valid Yahoo symbol"):
        yp.history("../etc/passwd")


def test_error_classifiers() -> None:
    assert is_rate_limit(YFRateLimitError())
    assert is_rate_limit(RuntimeError("429 Client Error: Too Many Requests"))
    assert not is_rate_limit(RuntimeError("boom"))
    assert is_network_error(ConnectionRefusedError())
    assert not is_network_error(ValueError("bad json"))


def test_load_bars_routes_unbundled_tickers_to_the_yahoo_cache(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    YahooProvider(cache, fetch=FakeYahoo(yahoo_frame())).refresh("NVDA")
    out = load_bars(tickers=["nvda"], cache_dir=cache, start=date(2024, 1, 3))
    assert list(out) == ["NVDA"] and len(out["NVDA"]) == 3


def test_real_yfinance_call_fails_cleanly_when_yahoo_is_unreachable(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real yfinance request, sent to a proxy port where nothing listens."""
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.setenv(var, "http://127.0.0.1:9")
    monkeypatch.delenv("NO_PROXY", raising=False)
    monkeypatch.delenv("no_proxy", raising=False)
    sleeps: list[float] = []
    yp = YahooProvider(tmp_path / "cache", sleep=sleeps.append)
    with pytest.raises(DataUnavailableError, match=r"cannot reach Yahoo Finance for AAPL .*bundled ticker"):
        yp.history("AAPL")
    assert len(sleeps) == 1


def test_yahoo_blemishes_are_repaired_by_rule(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = yahoo_frame()
    raw.iloc[3, raw.columns.get_loc("Open")] = 0.0  # hole in an old history
    raw.iloc[5, raw.columns.get_loc("Close")] = np.nan  # dividend-only row
    day7 = raw.index[7]
    raw.loc[day7, "High"] = raw.loc[day7, "Close"] * 0.999  # High a hair below Close
    raw.iloc[9, raw.columns.get_loc("Volume")] = np.nan
    yp, _ = provider(tmp_path, FakeYahoo(raw))
    with caplog.at_level(logging.WARNING, logger="trading_agents.market.yahoo"):
        bars = yp.history("IBM")
    assert len(bars) == 28
    assert raw.index[3].tz_localize(None) not in bars.index
    fixed = bars.loc[day7.tz_localize(None)]
    assert fixed["High"] == max(fixed["Open"], fixed["Close"])
    assert bars["Volume"].iloc[7] == 0.0  # raw row 9, after two dropped rows
    assert "dropped 2 rows without valid prices" in caplog.text
    assert f"widened High/Low to the open and close on {day7.date()}" in caplog.text


def test_other_failures_and_empty_answers_fall_back_to_cache(tmp_path: Path) -> None:
    provider(tmp_path, FakeYahoo(yahoo_frame()))[0].history("IBM")
    later = NOW + timedelta(days=2)
    for outcome in (KeyError("chart"), yahoo_frame().iloc[:0]):
        fake = FakeYahoo(outcome)
        yp, sleeps = provider(tmp_path, fake, now=later)
        assert len(yp.history("IBM")) == 30
        assert len(fake.calls) == 1 and sleeps == []
    yp, _ = provider(tmp_path, FakeYahoo(KeyError("chart")))
    with pytest.raises(
        DataUnavailableError, match=r"^Yahoo Finance request failed for MSFT \(KeyError: 'chart'\)"
    ):
        yp.history("MSFT")


def test_load_bars_asks_yahoo_for_index_symbols(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    YahooProvider(cache, fetch=FakeYahoo(yahoo_frame())).refresh("^GSPC")
    out = load_bars(tickers=["spx"], source="yahoo", cache_dir=cache)
    assert list(out) == ["SPX"] and len(out["SPX"]) == 30
