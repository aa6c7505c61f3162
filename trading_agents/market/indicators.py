"""Technical indicators as pure functions of pandas Series/DataFrames.

No look-ahead: the value at row ``t`` depends only on rows ``<= t``, so computing on a
longer history never changes earlier values. Rows before an indicator has enough data
are NaN (never a guess).

Smoothed averages follow the usual conventions (TA-Lib, Wilder 1978): an exponential
average of span ``n`` starts as the simple mean of its first ``n`` values and then
updates ``y[t] = y[t-1] + alpha * (x[t] - y[t-1])`` with ``alpha = 2 / (n + 1)``; Wilder's
smoothing (RSI, ATR) is the same with ``alpha = 1 / n``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

TRADING_DAYS = 252


def returns(close: pd.Series) -> pd.Series:
    """Simple returns ``close[t] / close[t-1] - 1`` (first row NaN)."""
    return close.pct_change(fill_method=None)


def log_returns(close: pd.Series) -> pd.Series:
    """Log returns ``ln(close[t] / close[t-1])`` (first row NaN)."""
    return np.log(close / close.shift(1))


def sma(series: pd.Series, n: int) -> pd.Series:
    """Simple moving average over the last ``n`` rows (NaN for the first ``n - 1``)."""
    _check_window(n)
    return series.rolling(n, min_periods=n).mean()


def ema(series: pd.Series, n: int) -> pd.Series:
    """Exponential moving average of span ``n``, seeded with the SMA of the first ``n`` values."""
    _check_window(n)
    return _seeded_ewm(series, n, 2.0 / (n + 1))


def wilder(series: pd.Series, n: int) -> pd.Series:
    """Wilder's smoothing (``alpha = 1/n``), seeded with the SMA of the first ``n`` values."""
    _check_window(n)
    return _seeded_ewm(series, n, 1.0 / n)


def rsi(close: pd.Series, n: int = 14) -> pd.Series:
    """Wilder's Relative Strength Index in [0, 100].

    Average gain and loss are Wilder-smoothed close-to-close changes; the first value is at
    row ``n``. 100 when there were no losses, 50 when the price did not move at all.
    """
    change = close.diff()
    gain = wilder(change.clip(lower=0.0), n)
    loss = wilder((-change).clip(lower=0.0), n)
    with np.errstate(divide="ignore", invalid="ignore"):
        value = 100.0 - 100.0 / (1.0 + gain / loss)
    value = value.mask((loss == 0) & (gain > 0), 100.0)
    value = value.mask((loss == 0) & (gain == 0), 50.0)
    return value.rename("RSI")


def macd(close: pd.Series, fast: int = 12, slow: int = 26, signal: int = 9) -> pd.DataFrame:
    """MACD: ``macd = ema(fast) - ema(slow)``, ``signal = ema(macd, signal)``, ``hist = macd - signal``."""
    if fast >= slow:
        raise ValueError(f"fast ({fast}) must be shorter than slow ({slow})")
    line = ema(close, fast) - ema(close, slow)
    sig = ema(line, signal)
    return pd.DataFrame({"macd": line, "signal": sig, "hist": line - sig}, index=close.index)


def true_range(bars: pd.DataFrame) -> pd.Series:
    """``max(High - Low, |High - prev Close|, |Low - prev Close|)``; the first row is ``High - Low``."""
    prev = bars["Close"].shift(1)
    ranges = pd.concat(
        [bars["High"] - bars["Low"], (bars["High"] - prev).abs(), (bars["Low"] - prev).abs()], axis=1
    )
    return ranges.max(axis=1, skipna=True).rename("TR")


def atr(bars: pd.DataFrame, n: int = 14) -> pd.Series:
    """Wilder's Average True Range: Wilder smoothing of :func:`true_range` (first value at row ``n - 1``)."""
    return wilder(true_range(bars), n).rename("ATR")


def volatility(close: pd.Series, n: int = 20, periods_per_year: int = TRADING_DAYS) -> pd.Series:
    """Annualized volatility: sample std of the last ``n`` log returns times ``sqrt(periods_per_year)``."""
    _check_window(n, minimum=2)
    return log_returns(close).rolling(n, min_periods=n).std(ddof=1) * np.sqrt(periods_per_year)


def drawdown(close: pd.Series) -> pd.Series:
    """Fraction below the running peak: ``close / cummax(close) - 1`` (0 at a new high, negative below)."""
    return close / close.cummax() - 1.0


def _seeded_ewm(series: pd.Series, n: int, alpha: float) -> pd.Series:
    values = series.to_numpy(dtype="float64")
    out = np.full(len(values), np.nan)
    valid = np.flatnonzero(~np.isnan(values))
    if len(valid) < n:
        return pd.Series(out, index=series.index, name=series.name)
    first = valid[0]  # leading NaNs (e.g. a MACD line before it exists) are skipped
    tail = values[first:].copy()
    if np.isnan(tail).any():
        raise ValueError("gaps (NaN) inside the series; indicators need contiguous data")
    tail = tail[n - 1 :]
    tail[0] = values[first : first + n].mean()
    # pandas' adjust=False recursion starts at its first value: here the SMA seed.
    out[first + n - 1 :] = pd.Series(tail).ewm(alpha=alpha, adjust=False).mean().to_numpy()
    return pd.Series(out, index=series.index, name=series.name)


def _check_window(n: int, minimum: int = 1) -> None:
    if int(n) != n or n < minimum:
        raise ValueError(f"window must be an integer >= {minimum}, got {n}")
