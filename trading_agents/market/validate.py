"""Checks that daily bars are usable before any indicator, agent or backtest sees them.

:func:`validate_bars` refuses, with one :class:`~trading_agents.errors.DataValidationError`
line naming the source and the offending dates, bars that have:

* missing columns, non-numeric or missing (NaN) values;
* duplicate dates, or dates out of ascending order (never silently re-sorted: an unsorted
  file usually means it was edited by hand, and the user should look at it);
* ``High`` below ``max(Open, Close)`` or ``Low`` above ``min(Open, Close)`` (with a relative
  tolerance of 1e-6 for rounding in the source);
* prices that are zero or negative, or a negative volume;
* a suspected unadjusted stock split: an overnight move of more than 40% whose
  open-to-previous-close ratio is within 5% of 1/k or k for a usual split factor k
  (2, 3, 4, 5, 8, 10, 15, 20, 25, 30, 50, 100).

Some things are allowed but logged as warnings (see :func:`bar_warnings`): zero volume
(index data and half-holidays have it) and gaps of more than 7 calendar days between bars.

Splits: the series must be split-adjusted. Yahoo's ``history(auto_adjust=False,
actions=True)`` already returns OHLC adjusted for past splits (only dividends are left
unadjusted; ``Adj Close`` carries those), so Yahoo data passes; a hand-made file with raw
pre-split prices does not.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable

import numpy as np
import pandas as pd

from trading_agents.errors import DataValidationError
from trading_agents.market.base import OHLCV_COLUMNS, PRICE_COLUMNS

log = logging.getLogger(__name__)

MAX_LISTED_DATES = 5
PRICE_TOLERANCE = 1e-6
GAP_WARNING_DAYS = 7
SPLIT_MIN_MOVE = 0.40
SPLIT_RATIO_TOLERANCE = 0.05
SPLIT_FACTORS: tuple[int, ...] = (2, 3, 4, 5, 8, 10, 15, 20, 25, 30, 50, 100)


def validate_bars(df: pd.DataFrame, source: str) -> pd.DataFrame:
    """Check ``df`` and return it in the canonical bar shape (see :mod:`trading_agents.market.base`).

    ``df`` may have a :class:`~pandas.DatetimeIndex` (tz-aware indexes are converted to the
    exchange's local date) or a ``Date`` column; column names are matched case-insensitively
    and extra columns (``Adj Close``, ``Dividends``, ``Stock Splits``) are dropped.
    ``source`` (a file name or ``"yahoo GOOG"``) starts every error message.

    Returns a new frame; raises :class:`DataValidationError` on the first kind of problem
    found, listing up to five dates and how many more there are.
    """
    if not isinstance(df, pd.DataFrame):
        raise DataValidationError(f"{source}: expected a table of bars, got {type(df).__name__}")
    frame = df.copy()
    frame.columns = [str(c).strip() for c in frame.columns]
    frame = _with_date_index(frame, source)
    frame = _canonical_columns(frame, source)
    frame = _numeric(frame, source)
    _check_missing(frame, source)
    _check_order(frame, source)
    _check_values(frame, source)
    _check_splits(frame, source)
    for warning in bar_warnings(frame, source):
        log.warning(warning)
    return frame


def bar_warnings(bars: pd.DataFrame, source: str) -> list[str]:
    """Allowed oddities in already valid bars: zero-volume days and gaps over 7 calendar days."""
    warnings: list[str] = []
    zero = bars.index[bars["Volume"] == 0]
    if len(zero):
        warnings.append(f"{source}: {len(zero)} bars with zero volume: {format_dates(zero)}")
    if len(bars) > 1:
        gaps = bars.index.to_series().diff().dt.days
        long_gaps = gaps[gaps > GAP_WARNING_DAYS]
        if len(long_gaps):
            shown = long_gaps.iloc[:MAX_LISTED_DATES]
            listed = ", ".join(f"{d.date()} ({int(g)} days)" for d, g in shown.items())
            more = f" and {len(long_gaps) - len(shown)} more" if len(long_gaps) > len(shown) else ""
            warnings.append(
                f"{source}: {len(long_gaps)} gaps of more than {GAP_WARNING_DAYS} days, before {listed}{more}"
            )
    return warnings


def format_dates(dates: Iterable[pd.Timestamp | str], limit: int = MAX_LISTED_DATES) -> str:
    """``"2004-08-20, 2004-08-23 and 3 more"``: the first ``limit`` dates, then a count."""
    items = [d.date().isoformat() if isinstance(d, pd.Timestamp) else str(d) for d in dates]
    shown = ", ".join(items[:limit])
    return f"{shown} and {len(items) - limit} more" if len(items) > limit else shown


def _with_date_index(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    if not isinstance(frame.index, pd.DatetimeIndex):
        date_cols = [c for c in frame.columns if c.lower() in ("date", "datetime")]
        if not date_cols:
            raise DataValidationError(f"{source}: no Date column or date index; add a Date column")
        try:
            index = pd.DatetimeIndex(pd.to_datetime(frame[date_cols[0]], errors="raise"))
        except (ValueError, TypeError) as exc:
            raise DataValidationError(f"{source}: unparseable dates ({exc}); use YYYY-MM-DD dates") from None
        frame = frame.drop(columns=date_cols[0])
        frame.index = index
    index = frame.index
    if index.tz is not None:
        # Yahoo stamps daily bars at midnight exchange time: the local date is the trading day.
        index = index.tz_localize(None)
    if index.hasnans:
        raise DataValidationError(f"{source}: some dates are missing; every row needs a date")
    frame.index = index.normalize().rename("Date")
    return frame


def _canonical_columns(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    by_key = {_key(c): c for c in frame.columns}
    missing = [c for c in OHLCV_COLUMNS if _key(c) not in by_key]
    if missing:
        raise DataValidationError(
            f"{source}: missing columns {', '.join(missing)}; "
            "expected Date,Open,High,Low,Close,Adj Close,Volume (Adj Close optional)"
        )
    out = frame[[by_key[_key(c)] for c in OHLCV_COLUMNS]]
    out.columns = list(OHLCV_COLUMNS)
    return out


def _key(name: str) -> str:
    return "".join(ch for ch in name.lower() if ch.isalnum())


def _numeric(frame: pd.DataFrame, source: str) -> pd.DataFrame:
    out = pd.DataFrame(index=frame.index)
    for col in OHLCV_COLUMNS:
        raw = frame[col]
        values = pd.to_numeric(raw, errors="coerce").astype("float64")
        # A value that was present but did not become a finite number is a typo, not a gap.
        present = raw.notna() & ~raw.astype(str).str.strip().str.lower().isin(("", "nan", "null", "none"))
        bad = present & ~np.isfinite(values)
        if bad.any():
            first = raw[bad].iloc[0]
            dates = format_dates(frame.index[bad.to_numpy()])
            raise DataValidationError(
                f"{source}: non-numeric {col} values ({first!r}) on {dates}; fix those cells"
            )
        out[col] = values
    return out


def _check_missing(frame: pd.DataFrame, source: str) -> None:
    missing = frame.isna()
    rows = missing.any(axis=1)
    if rows.any():
        cols = [c for c in OHLCV_COLUMNS if missing[c].any()]
        raise DataValidationError(
            f"{source}: missing {'/'.join(cols)} values on {format_dates(frame.index[rows.to_numpy()])}; "
            "fill or remove those rows"
        )


def _check_order(frame: pd.DataFrame, source: str) -> None:
    index = frame.index
    dup = index.duplicated(keep="first")
    if dup.any():
        raise DataValidationError(
            f"{source}: duplicate dates {format_dates(index[dup])}; keep one row per date"
        )
    if not index.is_monotonic_increasing:
        pos = int(np.argmax(index[1:] < index[:-1]))
        raise DataValidationError(
            f"{source}: dates out of order: {index[pos + 1].date()} comes after {index[pos].date()}; "
            "sort the file by Date (oldest first)"
        )


def _check_values(frame: pd.DataFrame, source: str) -> None:
    prices = frame[list(PRICE_COLUMNS)]
    nonpos = (prices <= 0).any(axis=1)
    if nonpos.any():
        raise DataValidationError(
            f"{source}: zero or negative prices on {format_dates(frame.index[nonpos.to_numpy()])}; "
            "fix or remove those rows"
        )
    neg_vol = frame["Volume"] < 0
    if neg_vol.any():
        raise DataValidationError(
            f"{source}: negative Volume on {format_dates(frame.index[neg_vol.to_numpy()])}; fix those rows"
        )
    top = prices[["Open", "Close"]].max(axis=1)
    bottom = prices[["Open", "Close"]].min(axis=1)
    high_bad = frame["High"] < top * (1 - PRICE_TOLERANCE)
    if high_bad.any():
        raise DataValidationError(
            f"{source}: High below Open or Close on {format_dates(frame.index[high_bad.to_numpy()])}; "
            "fix those rows (columns swapped?)"
        )
    low_bad = frame["Low"] > bottom * (1 + PRICE_TOLERANCE)
    if low_bad.any():
        raise DataValidationError(
            f"{source}: Low above Open or Close on {format_dates(frame.index[low_bad.to_numpy()])}; "
            "fix those rows (columns swapped?)"
        )


def suspected_splits(bars: pd.DataFrame) -> list[tuple[pd.Timestamp, str]]:
    """Days whose open-to-previous-close jump looks like an unadjusted split (``"2-for-1 split"``, ...)."""
    ratio = (bars["Open"] / bars["Close"].shift(1)).iloc[1:]
    big = ratio[(ratio < 1 - SPLIT_MIN_MOVE) | (ratio > 1 + SPLIT_MIN_MOVE)]
    found: list[tuple[pd.Timestamp, str]] = []
    for day, r in big.items():
        for k in SPLIT_FACTORS:
            if abs(r * k - 1) <= SPLIT_RATIO_TOLERANCE:
                found.append((day, f"{k}-for-1 split"))
                break
            if abs(r / k - 1) <= SPLIT_RATIO_TOLERANCE:
                found.append((day, f"1-for-{k} reverse split"))
                break
    return found


def _check_splits(frame: pd.DataFrame, source: str) -> None:
    splits = suspected_splits(frame)
    if splits:
        day, label = splits[0]
        pos = frame.index.get_loc(day)
        prev_close = frame["Close"].iloc[pos - 1]
        more = f" (and {len(splits) - 1} more)" if len(splits) > 1 else ""
        raise DataValidationError(
            f"{source}: suspected unadjusted {label} on {day.date()} (open {frame['Open'].iloc[pos]:.4g} "
            f"after close {prev_close:.4g}){more}; use split-adjusted data (Yahoo's history is) "
            "or divide the prices before that date by the split factor"
        )
