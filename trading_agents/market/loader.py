"""One call that picks the right data source: :func:`load_bars`."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date
from pathlib import Path
from typing import Literal

import pandas as pd

from trading_agents.config.settings import default_home
from trading_agents.errors import UserInputError
from trading_agents.market.base import MarketDataProvider, normalize_ticker
from trading_agents.market.bundled import BUNDLED_TICKERS, BundledProvider
from trading_agents.market.csv_provider import CSVProvider
from trading_agents.market.yahoo import YahooProvider

Source = Literal["auto", "bundled", "yahoo", "csv"]
SOURCES: tuple[str, ...] = ("auto", "bundled", "yahoo", "csv")
# Bundled index names that Yahoo knows under another symbol.
YAHOO_SYMBOLS: dict[str, str] = {"SPX": "^GSPC", "IXIC": "^IXIC"}


def default_cache_dir() -> Path:
    """``$TRADING_AGENTS_HOME/cache/yahoo``.

    Callers holding settings should pass ``settings.paths.home / "cache" / "yahoo"`` instead.
    """
    return default_home() / "cache" / "yahoo"


def load_bars(
    *,
    tickers: Sequence[str] | None = None,
    data_file: Path | None = None,
    start: date | None = None,
    end: date | None = None,
    source: Source = "auto",
    cache_dir: Path | None = None,
) -> dict[str, pd.DataFrame]:
    """Daily bars per ticker, validated and cut to ``[start, end]`` (inclusive).

    * ``data_file`` given: that CSV (one instrument); its ticker is the single entry of
      ``tickers`` or else the file name without extension.
    * otherwise ``tickers`` are required. ``source="auto"`` uses the bundled data when every
      ticker is bundled (GOOG, SPX, IXIC, AAPL, IBM, MSFT, FB and the aliases ^GSPC, ^SPX, ^IXIC) and Yahoo
      Finance otherwise (for all of them, so they share one adjustment convention; SPX and
      IXIC are asked for as ^GSPC and ^IXIC there).

    Keys of the result are the tickers upper-cased, in the order given (duplicates dropped).
    A window with no bars raises :class:`UserInputError` naming the available range; data
    that cannot be fetched raises :class:`~trading_agents.errors.DataUnavailableError`.

    >>> load_bars(tickers=["goog"], start=date(2010, 1, 4), end=date(2010, 1, 8))["GOOG"].shape
    (5, 5)
    """
    if source not in SOURCES:
        raise UserInputError(f"unknown data source {source!r}; use one of {', '.join(SOURCES)}")
    if start is not None and end is not None and pd.Timestamp(start) > pd.Timestamp(end):
        raise UserInputError(f"start {start} is after end {end}; swap the dates")
    names = list(dict.fromkeys(normalize_ticker(t) for t in (tickers or [])))

    if data_file is not None:
        if source not in ("auto", "csv"):
            raise UserInputError(f"--data FILE is a CSV file; it cannot be combined with source {source!r}")
        if len(names) > 1:
            raise UserInputError(
                f"one --data file holds one instrument, but {len(names)} tickers were given "
                f"({', '.join(names)}); pass a single ticker"
            )
        csv = CSVProvider(Path(data_file), ticker=names[0] if names else None)
        return {csv.ticker: csv.history(csv.ticker, start, end)}
    if source == "csv":
        raise UserInputError("source 'csv' needs a data file; pass --data FILE.csv")
    if not names:
        raise UserInputError(
            f"no tickers given; pass tickers (bundled: {', '.join(BUNDLED_TICKERS)}) or --data FILE.csv"
        )

    bundled = BundledProvider()
    if source == "bundled" or (source == "auto" and all(bundled.has(t) for t in names)):
        return {t: bundled.history(t, start, end) for t in names}
    yahoo: MarketDataProvider = YahooProvider(cache_dir if cache_dir is not None else default_cache_dir())
    return {t: yahoo.history(YAHOO_SYMBOLS.get(t, t), start, end) for t in names}
