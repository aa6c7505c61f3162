"""Exchange trading calendars, so scheduled runs skip weekends and holidays.

Backed by ``exchange-calendars`` (XNYS is the New York Stock Exchange). A scheduled
``trading-agents backtest --skip-closed`` asks :func:`is_trading_day` about today's date
*in the exchange's time zone* (:func:`exchange_today`), then exits 0 with "market closed on
D; nothing to do" when the answer is no.
"""

from __future__ import annotations

import datetime as dt
import warnings
from functools import lru_cache
from typing import Any

import pandas as pd

from trading_agents.errors import UserInputError

DEFAULT_EXCHANGE = "XNYS"


def is_trading_day(date: dt.date | str | pd.Timestamp, exchange: str = DEFAULT_EXCHANGE) -> bool:
    """True when ``exchange`` holds a regular session on ``date`` (weekends and holidays are not).

    >>> is_trading_day("2024-12-25"), is_trading_day("2024-12-24")
    (False, True)
    """
    day = _as_day(date)
    return bool(_calendar(exchange, day.year).is_session(day))


def exchange_today(exchange: str = DEFAULT_EXCHANGE, now: dt.datetime | None = None) -> dt.date:
    """Today's date where the exchange is (a 21:30 UTC cron run is still "today" in New York)."""
    tz = _calendar(exchange, dt.date.today().year).tz
    moment = pd.Timestamp(now) if now is not None else pd.Timestamp.now(tz="UTC")
    if moment.tzinfo is None:
        moment = moment.tz_localize("UTC")
    return moment.tz_convert(tz).date()


def previous_trading_day(date: dt.date | str | pd.Timestamp, exchange: str = DEFAULT_EXCHANGE) -> dt.date:
    """The last session strictly before ``date``."""
    day = _as_day(date)
    cal = _calendar(exchange, day.year)
    if day <= cal.first_session:
        cal = _calendar(exchange, day.year - 1)
    return cal.date_to_session(day - pd.Timedelta(days=1), direction="previous").date()


def _as_day(date: Any) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(date)
    except (ValueError, TypeError):
        raise UserInputError(f"not a date: {date!r}; use YYYY-MM-DD") from None
    if stamp is pd.NaT:
        raise UserInputError(f"not a date: {date!r}; use YYYY-MM-DD")
    return stamp.tz_localize(None).normalize() if stamp.tzinfo else stamp.normalize()


@lru_cache(maxsize=8)
def _calendar_span(exchange: str, first_year: int, last_year: int) -> Any:
    import exchange_calendars as xcals

    try:
        with warnings.catch_warnings():
            # exchange-calendars trips pandas deprecation warnings that say nothing to our users.
            warnings.simplefilter("ignore")
            return xcals.get_calendar(exchange, start=f"{first_year}-01-01", end=f"{last_year}-12-31")
    except xcals.errors.InvalidCalendarName:
        raise UserInputError(
            f"unknown exchange {exchange!r}; use an ISO MIC such as XNYS, XNAS or XLON"
        ) from None


def _calendar(exchange: str, year: int) -> Any:
    # One calendar per 20-year block keeps construction (about 0.5 s) to once per process.
    block = (year // 20) * 20
    return _calendar_span(exchange.upper(), max(block - 1, 1900), block + 21)
