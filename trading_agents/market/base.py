"""The shape every market data source returns, and the provider protocol.

Bars are a :class:`pandas.DataFrame` with

* a tz-naive, normalized :class:`~pandas.DatetimeIndex` named ``Date`` (the exchange's
  local trading day), sorted ascending, one row per day;
* exactly the float64 columns ``Open, High, Low, Close, Volume``.

Prices are as traded: they are *not* adjusted for dividends (``Adj Close`` is read from
files but never returned). Stock splits are the one adjustment: a series must be
split-adjusted, because an unadjusted split looks like a 50% crash to every indicator;
:func:`trading_agents.market.validate.validate_bars` refuses series with a suspected
unadjusted split.
"""

from __future__ import annotations

from datetime import date
from typing import Protocol, runtime_checkable

import pandas as pd

from trading_agents.errors import UserInputError

OHLCV_COLUMNS: tuple[str, ...] = ("Open", "High", "Low", "Close", "Volume")
PRICE_COLUMNS: tuple[str, ...] = ("Open", "High", "Low", "Close")


@runtime_checkable
class MarketDataProvider(Protocol):
    """Anything that returns daily bars for a ticker.

    ``history`` returns validated bars (see the module docstring) between ``start`` and
    ``end`` inclusive; ``None`` means from the first or up to the last available bar.
    It raises :class:`~trading_agents.errors.DataUnavailableError` when the ticker has no
    data and :class:`~trading_agents.errors.UserInputError` when the window is empty.
    """

    name: str

    def history(self, ticker: str, start: date | None = None, end: date | None = None) -> pd.DataFrame: ...


def normalize_ticker(ticker: str) -> str:
    """Tickers are case-insensitive: ``" goog "`` -> ``"GOOG"``. Empty ones are a user error."""
    clean = str(ticker).strip().upper()
    if not clean:
        raise UserInputError("empty ticker; pass a symbol such as GOOG")
    return clean


def slice_window(
    bars: pd.DataFrame, ticker: str, start: date | None = None, end: date | None = None
) -> pd.DataFrame:
    """Bars between ``start`` and ``end`` inclusive.

    Raises :class:`UserInputError` when ``start`` is after ``end`` or when no bar falls in
    the window; the message names the date range that is available.
    """
    if start is not None and end is not None and pd.Timestamp(start) > pd.Timestamp(end):
        raise UserInputError(f"start {_d(start)} is after end {_d(end)}; swap the dates")
    lo = pd.Timestamp(start).normalize() if start is not None else None
    hi = pd.Timestamp(end).normalize() if end is not None else None
    window = bars.loc[lo:hi]
    if window.empty:
        if bars.empty:
            raise UserInputError(f"no {ticker} bars at all; use another data source")
        asked = f"{_d(start) if start is not None else '...'}..{_d(end) if end is not None else '...'}"
        raise UserInputError(
            f"no {ticker} bars in {asked}; available: {date_range_text(bars)}; choose dates inside that range"
        )
    return window.copy()


def date_range_text(bars: pd.DataFrame) -> str:
    """``"2004-08-19..2013-03-01"`` for a non-empty frame of bars."""
    return f"{bars.index[0].date().isoformat()}..{bars.index[-1].date().isoformat()}"


def _d(value: date | pd.Timestamp) -> str:
    return pd.Timestamp(value).date().isoformat()
