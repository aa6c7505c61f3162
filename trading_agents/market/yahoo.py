"""Daily bars from Yahoo Finance (via yfinance), with an on-disk cache that survives outages.

Each fetch asks for the whole daily history of a ticker::

    yf.Ticker(t).history(period="max", interval="1d", auto_adjust=False, actions=True)

``auto_adjust=False`` keeps OHLC as traded with respect to dividends (``Adj Close`` carries
the dividend adjustment and is not returned). Yahoo still adjusts OHLC for *past splits*,
which is what we want: a split would otherwise look like a crash. Because a new split
rewrites the whole past, the cache always holds one complete history per ticker, never
pieces fetched at different times.

Cache: ``<cache_dir>/<ticker>.csv`` (Yahoo format, ISO dates) plus ``<ticker>.json`` with
the fetch time, both written atomically. A cached history is reused without asking Yahoo
when it is younger than ``max_age`` or when it was fetched after the requested ``end``.

Yahoo's blemishes (rows without prices, High/Low not containing the open and close) are
repaired by the fixed, logged rules of :func:`repair_yahoo_bars` before validation.

Failures: rate limits (``YFRateLimitError``, HTTP 429, "Too Many Requests") are retried up
to ``max_retries`` times with exponential backoff and jitter; a network error is retried
once. When Yahoo stays unreachable (or answers empty for a symbol it knew before) the
cached history is used, with a warning saying how stale it is; without a cache a
:class:`~trading_agents.errors.DataUnavailableError` says what to do instead. An unknown
symbol (empty answer, nothing cached) is a DataUnavailableError at once, without retries.
"""

from __future__ import annotations

import json
import logging
import random
import time
from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from urllib.parse import quote
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from trading_agents.errors import DataUnavailableError, DataValidationError, UserInputError
from trading_agents.fsutil import atomic_write_json, atomic_write_text
from trading_agents.market.base import normalize_ticker, slice_window
from trading_agents.market.bundled import BUNDLED_TICKERS
from trading_agents.market.csv_provider import read_yahoo_csv
from trading_agents.market.validate import format_dates, validate_bars

log = logging.getLogger(__name__)

Fetch = Callable[[str], pd.DataFrame]
NEW_YORK = ZoneInfo("America/New_York")
_TICKER_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.^=-_")


class RateLimited(Exception):
    """Yahoo answered "Too Many Requests"."""


class NoData(Exception):
    """Yahoo knows nothing about the symbol (empty history)."""


def yfinance_history(ticker: str, state_dir: Path | None = None) -> pd.DataFrame:
    """The whole daily history of ``ticker`` as yfinance returns it (tz-aware index).

    ``state_dir`` receives yfinance's own cookie and time-zone caches (instead of the
    user's global cache folder).
    """
    import yfinance as yf

    if state_dir is not None:
        state_dir.mkdir(parents=True, exist_ok=True)
        yf.set_tz_cache_location(str(state_dir))
    config = getattr(yf, "config", None)
    if config is not None:  # yfinance >= 1.x: errors are hidden (an empty frame) unless asked for
        config.debug.hide_exceptions = False
        return yf.Ticker(ticker).history(
            period="max", interval="1d", auto_adjust=False, actions=True, timeout=15
        )
    return yf.Ticker(ticker).history(
        period="max", interval="1d", auto_adjust=False, actions=True, raise_errors=True, timeout=15
    )


def is_rate_limit(exc: BaseException) -> bool:
    """yfinance's ``YFRateLimitError``, or anything whose class or message says rate limit / 429."""
    name = type(exc).__name__.lower()
    text = str(exc).lower()
    return (
        "ratelimit" in name
        or "too many requests" in text
        or "rate limit" in text
        or "rate-limit" in text
        or " 429" in f" {text}"
    )


def is_no_data(exc: BaseException) -> bool:
    """yfinance's way of saying the symbol is unknown or delisted."""
    name = type(exc).__name__
    text = str(exc).lower()
    return name in {"YFPricesMissingError", "YFTickerMissingError", "YFTzMissingError"} or (
        "delisted" in text or "no data found" in text or "no price data" in text
    )


def is_network_error(exc: BaseException) -> bool:
    """Connection, DNS and timeout failures (stdlib, requests and curl_cffi flavours)."""
    if isinstance(exc, OSError):  # ConnectionError, TimeoutError and curl_cffi's errors are OSErrors
        return True
    names = {cls.__name__ for cls in type(exc).__mro__}
    return bool(names & {"ConnectionError", "Timeout", "DNSError", "ProxyError", "SSLError", "CurlError"})


def repair_yahoo_bars(raw: pd.DataFrame, source: str) -> pd.DataFrame:
    """Fix Yahoo's known blemishes by fixed rules, each logged with its dates.

    1. Rows with a missing, zero or negative Open/High/Low/Close are dropped (dividend-only
       rows and holes in old histories).
    2. A missing Volume becomes 0.
    3. High is raised to ``max(Open, Close)`` and Low lowered to ``min(Open, Close)`` where
       Yahoo's extremes do not contain the open and close (a known rounding artefact).

    Bundled and user CSV files are never repaired: they are validated as they are.
    """
    frame = raw.copy()
    prices = frame[["Open", "High", "Low", "Close"]].apply(pd.to_numeric, errors="coerce")
    bad = (prices.isna() | (prices <= 0)).any(axis=1)
    if bad.any():
        log.warning(
            "%s: dropped %d rows without valid prices: %s", source, int(bad.sum()), _dates(frame.index[bad])
        )
        frame, prices = frame.loc[~bad], prices.loc[~bad]
    frame["Volume"] = pd.to_numeric(frame["Volume"], errors="coerce").fillna(0.0)
    top = prices[["Open", "Close"]].max(axis=1)
    bottom = prices[["Open", "Close"]].min(axis=1)
    fix = (prices["High"] < top) | (prices["Low"] > bottom)
    if fix.any():
        log.warning("%s: widened High/Low to the open and close on %s", source, _dates(frame.index[fix]))
    frame["High"] = np.maximum(prices["High"], top)
    frame["Low"] = np.minimum(prices["Low"], bottom)
    frame["Open"], frame["Close"] = prices["Open"], prices["Close"]
    return frame


def _dates(index: pd.Index) -> str:
    return format_dates(pd.DatetimeIndex(index).tz_localize(None) if getattr(index, "tz", None) else index)


class YahooProvider:
    """Yahoo Finance daily bars with a cache in ``cache_dir``.

    ``offline=True`` never touches the network (cache only). ``fetch`` and ``sleep`` exist
    so tests can stand in for Yahoo and for waiting; ``now`` for the clock.

    >>> provider = YahooProvider(Path("~/.trading-agents/cache/yahoo"))
    >>> provider.history("AAPL", start=date(2024, 1, 2))  # doctest: +SKIP
    """

    name = "yahoo"

    def __init__(
        self,
        cache_dir: Path,
        max_retries: int = 4,
        offline: bool = False,
        *,
        max_age: timedelta = timedelta(hours=6),
        backoff_s: float = 2.0,
        max_backoff_s: float = 60.0,
        fetch: Fetch | None = None,
        sleep: Callable[[float], None] = time.sleep,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if max_retries < 0:
            raise UserInputError(f"max_retries must be >= 0, got {max_retries}")
        self.cache_dir = Path(cache_dir).expanduser()
        self.max_retries = max_retries
        self.offline = offline
        self.max_age = max_age
        self.backoff_s = backoff_s
        self.max_backoff_s = max_backoff_s
        self._fetch = fetch
        self._sleep = sleep
        self._now = now

    # -- public -------------------------------------------------------------------------

    def history(self, ticker: str, start: date | None = None, end: date | None = None) -> pd.DataFrame:
        """Bars of ``ticker`` in ``[start, end]`` (inclusive), from the cache or from Yahoo."""
        symbol = self._symbol(ticker)
        cached = self._read_cache(symbol)
        if cached is not None and self._cache_is_enough(cached[1], end):
            return slice_window(cached[0], symbol, start, end)
        if self.offline:
            if cached is None:
                raise DataUnavailableError(
                    f"offline and no cached {symbol} data in {self.cache_dir}; "
                    f"use --data FILE.csv or a bundled ticker ({', '.join(BUNDLED_TICKERS)})"
                )
            self._warn_stale(symbol, *cached)
            return slice_window(cached[0], symbol, start, end)
        try:
            bars = self.refresh(symbol)
        except DataUnavailableError as exc:
            # Even "no data" falls back: the symbol was known when the cache was written, and
            # Yahoo sometimes answers empty while it is throttling.
            if cached is None:
                raise
            log.warning("%s", exc)
            self._warn_stale(symbol, *cached)
            bars = cached[0]
        return slice_window(bars, symbol, start, end)

    def refresh(self, ticker: str) -> pd.DataFrame:
        """Fetch the whole history of ``ticker`` from Yahoo now, cache it and return the bars."""
        symbol = self._symbol(ticker)
        raw = self._fetch_with_retries(symbol)
        bars = self._to_bars(symbol, raw)
        self._write_cache(symbol, raw, bars)
        return bars

    def cache_path(self, ticker: str) -> Path:
        return self.cache_dir / f"{quote(self._symbol(ticker), safe='')}.csv"

    # -- fetching -----------------------------------------------------------------------

    def _fetch_with_retries(self, symbol: str) -> pd.DataFrame:
        fetch = self._fetch or (lambda s: yfinance_history(s, self.cache_dir / "yfinance"))
        attempt = 0
        network_failures = 0
        while True:
            try:
                raw = fetch(symbol)
            except Exception as exc:
                if is_rate_limit(exc):
                    if attempt >= self.max_retries:
                        raise DataUnavailableError(
                            f"Yahoo Finance is rate-limiting requests for {symbol} "
                            f"(gave up after {attempt + 1} tries); wait a few minutes and retry"
                        ) from RateLimited(str(exc))
                    self._backoff(attempt, symbol, "rate limited")
                    attempt += 1
                    continue
                if is_no_data(exc):
                    raise self._no_data(symbol) from NoData(str(exc))
                if is_network_error(exc) and network_failures < min(1, self.max_retries):
                    network_failures += 1
                    self._backoff(attempt, symbol, f"network error ({type(exc).__name__})")
                    attempt += 1
                    continue
                what = (
                    "cannot reach Yahoo Finance" if is_network_error(exc) else "Yahoo Finance request failed"
                )
                raise DataUnavailableError(
                    f"{what} for {symbol} ({type(exc).__name__}: {_first_line(exc)}); "
                    f"use --data FILE.csv or a bundled ticker ({', '.join(BUNDLED_TICKERS)})"
                ) from exc
            if raw is None or len(raw) == 0:
                raise self._no_data(symbol) from NoData("empty history")
            return raw

    def _backoff(self, attempt: int, symbol: str, why: str) -> None:
        delay = min(self.max_backoff_s, self.backoff_s * 2**attempt)
        delay += random.uniform(0, self.backoff_s)
        log.info("Yahoo %s for %s; retrying in %.1f s", why, symbol, delay)
        self._sleep(delay)

    @staticmethod
    def _no_data(symbol: str) -> DataUnavailableError:
        return DataUnavailableError(f"no data for ticker {symbol} from Yahoo; check the symbol")

    def _to_bars(self, symbol: str, raw: pd.DataFrame) -> pd.DataFrame:
        missing = [c for c in ("Open", "High", "Low", "Close", "Volume") if c not in raw.columns]
        if missing:
            raise DataUnavailableError(
                f"Yahoo sent no {', '.join(missing)} column for {symbol}; "
                "update yfinance or use --data FILE.csv"
            )
        frame = self._drop_unfinished_bar(repair_yahoo_bars(raw, f"yahoo {symbol}"))
        if frame.empty:
            raise self._no_data(symbol) from NoData("no complete bars")
        try:
            return validate_bars(frame, f"yahoo {symbol}")
        except DataValidationError as exc:
            raise DataUnavailableError(f"Yahoo sent unusable data: {exc}") from None

    def _drop_unfinished_bar(self, frame: pd.DataFrame) -> pd.DataFrame:
        """Today's bar is still moving until the New York close (16:00, plus 20 min for late prints)."""
        if frame.empty or not isinstance(frame.index, pd.DatetimeIndex):
            return frame
        now_ny = self._now().astimezone(NEW_YORK)
        last = frame.index[-1]
        last_day = (last.tz_convert(NEW_YORK) if last.tzinfo else last).date()
        closed = now_ny.hour * 60 + now_ny.minute >= 16 * 60 + 20
        if last_day >= now_ny.date() and not closed:
            return frame.iloc[:-1]
        return frame

    # -- cache --------------------------------------------------------------------------

    def _symbol(self, ticker: str) -> str:
        symbol = normalize_ticker(ticker)
        if len(symbol) > 24 or not set(symbol) <= _TICKER_CHARS:
            raise UserInputError(f"{ticker!r} is not a valid Yahoo symbol; use letters, digits and . ^ = -")
        return symbol

    def _meta_path(self, symbol: str) -> Path:
        return self.cache_path(symbol).with_suffix(".json")

    def _read_cache(self, symbol: str) -> tuple[pd.DataFrame, datetime] | None:
        path, meta_path = self.cache_path(symbol), self._meta_path(symbol)
        if not path.is_file() or not meta_path.is_file():
            return None
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            fetched_at = datetime.fromisoformat(meta["fetched_at"])
            if fetched_at.tzinfo is None:
                fetched_at = fetched_at.replace(tzinfo=UTC)
            bars = read_yahoo_csv(path)
        except (OSError, ValueError, KeyError, TypeError, DataValidationError) as exc:
            log.warning("ignoring unreadable Yahoo cache for %s (%s)", symbol, _first_line(exc))
            return None
        return bars, fetched_at

    def _cache_is_enough(self, fetched_at: datetime, end: date | None) -> bool:
        if self._now() - fetched_at < self.max_age:
            return True
        return end is not None and fetched_at.astimezone(NEW_YORK).date() > pd.Timestamp(end).date()

    def _write_cache(self, symbol: str, raw: pd.DataFrame, bars: pd.DataFrame) -> None:
        out = bars.copy()
        adj = raw.get("Adj Close") if isinstance(raw, pd.DataFrame) else None
        if adj is not None:
            adj_index = pd.DatetimeIndex(adj.index)
            if adj_index.tz is not None:
                adj_index = adj_index.tz_localize(None)
            adj = pd.Series(adj.to_numpy(dtype="float64"), index=adj_index.normalize())
            adj = adj[~adj.index.duplicated(keep="last")]
            out.insert(4, "Adj Close", adj.reindex(out.index).fillna(out["Close"]))
        else:
            out.insert(4, "Adj Close", out["Close"])
        out.index = out.index.strftime("%Y-%m-%d")
        out.index.name = "Date"
        atomic_write_text(self.cache_path(symbol), out.to_csv(float_format="%.10g"))
        atomic_write_json(
            self._meta_path(symbol),
            {
                "ticker": symbol,
                "source": "yahoo",
                "fetched_at": self._now().astimezone(UTC).isoformat(timespec="seconds"),
                "rows": len(bars),
                "first": bars.index[0].date().isoformat(),
                "last": bars.index[-1].date().isoformat(),
            },
        )

    def _warn_stale(self, symbol: str, bars: pd.DataFrame, fetched_at: datetime) -> None:
        today = self._now().astimezone(NEW_YORK).date()
        stale = (today - bars.index[-1].date()).days
        log.warning(
            "using cached %s data, %d days stale (fetched at %s)",
            symbol,
            stale,
            fetched_at.astimezone(UTC).isoformat(timespec="minutes"),
        )


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    text = text.splitlines()[0].split(" See https://")[0].rstrip(". ")
    return text if len(text) <= 160 else text[:157] + "..."
