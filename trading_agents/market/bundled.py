"""Real daily bars shipped with the package, so everything works offline.

======  ==========================================  ========================  =====
Ticker  Instrument                                  Dates                     Rows
======  ==========================================  ========================  =====
GOOG    Google Inc. (class A shares of the time)    2004-08-19 .. 2013-03-01  2148
SPX     S&P 500 index (Yahoo ``^GSPC``)             1999-01-04 .. 2018-12-31  5031
IXIC    NASDAQ Composite index (Yahoo ``^IXIC``)    1999-01-04 .. 2018-12-31  5031
AAPL    Apple Inc.                                  2000-03-01 .. 2013-03-01  3270
IBM     International Business Machines             2000-03-01 .. 2013-03-01  3270
MSFT    Microsoft Corp.                             2000-03-01 .. 2013-03-01  3270
FB      Facebook Inc.                               2012-05-18 .. 2013-03-01   196
======  ==========================================  ========================  =====

GOOG's prices are as traded at the time (its 2014 and 2022 splits lie after the data's end).
AAPL, IBM, MSFT and FB are split- and dividend-adjusted throughout (AAPL split in 2000 and
2005, MSFT in 2003), with volume divided by the same factor so dollar volume is as traded:
no window, whatever its dates, spans an unadjusted split.

Provenance, adjustments and licences: ``trading_agents/market/data/README.md``.
Tickers are case-insensitive; ``^GSPC`` and ``^SPX`` name SPX, ``^IXIC`` names IXIC.
"""

from __future__ import annotations

from datetime import date
from functools import cache
from pathlib import Path

import pandas as pd

from trading_agents.errors import DataUnavailableError
from trading_agents.market.base import normalize_ticker, slice_window

DATA_DIR = Path(__file__).resolve().parent / "data"
BUNDLED_TICKERS: tuple[str, ...] = ("GOOG", "SPX", "IXIC", "AAPL", "IBM", "MSFT", "FB")
ALIASES: dict[str, str] = {"^GSPC": "SPX", "^SPX": "SPX", "^IXIC": "IXIC"}


def resolve_bundled(ticker: str) -> str | None:
    """The bundled name for ``ticker`` (case-insensitive, aliases applied), or ``None``."""
    key = normalize_ticker(ticker)
    key = ALIASES.get(key, key)
    return key if key in BUNDLED_TICKERS else None


@cache
def _load(name: str) -> pd.DataFrame:
    from trading_agents.market.csv_provider import read_yahoo_csv

    return read_yahoo_csv(DATA_DIR / f"{name}.csv")


class BundledProvider:
    """Offline provider over the files in ``market/data`` (read and validated once per process)."""

    name = "bundled"

    def tickers(self) -> list[str]:
        """The bundled tickers, GOOG first: ``["GOOG", "SPX", "IXIC", "AAPL", "IBM", "MSFT", "FB"]``."""
        return list(BUNDLED_TICKERS)

    def has(self, ticker: str) -> bool:
        return resolve_bundled(ticker) is not None

    def bars(self, ticker: str) -> pd.DataFrame:
        """All bundled bars of ``ticker``; :class:`DataUnavailableError` lists the bundled ones."""
        name = resolve_bundled(ticker)
        if name is None:
            raise DataUnavailableError(
                f"no bundled data for {normalize_ticker(ticker)}; bundled tickers are "
                f"{', '.join(BUNDLED_TICKERS)} (use --data FILE.csv or Yahoo for others)"
            )
        return _load(name).copy()

    def history(self, ticker: str, start: date | None = None, end: date | None = None) -> pd.DataFrame:
        """Bundled bars of ``ticker`` in ``[start, end]`` (inclusive; ``None`` = open-ended)."""
        return slice_window(self.bars(ticker), normalize_ticker(ticker), start, end)
