"""Point-in-time market snapshots: what an agent may know about a ticker on a given day.

:func:`build_snapshot` cuts the bars at ``as_of`` itself, before computing anything, so no
bar after ``as_of`` can influence a snapshot (point-in-time by construction, whatever the
caller passes). The snapshot describes the market after the close of its last bar.

:func:`snapshot_to_prompt` renders a snapshot as compact, deterministic text for a model;
``blind=True`` hides the ticker, the dates and the price level so a model cannot recognise
the period and "remember" what happened next.

News (:mod:`trading_agents.market.news`) enters a prompt only through a snapshot: given a
``news`` source, :func:`build_snapshot` keeps the items published by the close of the
decision date (the cut of :func:`~trading_agents.market.news.news_at`), so no caller can
hand a model a later item.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from datetime import date

import pandas as pd
from pydantic import BaseModel, ConfigDict

from trading_agents.errors import UserInputError
from trading_agents.market import indicators as ind
from trading_agents.market.news import (
    BLIND_LABEL,
    DEFAULT_EXCHANGE,
    DEFAULT_MAX_CHARS,
    DEFAULT_MAX_ITEMS,
    NewsItem,
    NewsSource,
    news_at,
    news_to_prompt,
)

YEAR_BARS = 252
RECENT = 5


class MarketSnapshot(BaseModel):
    """Indicators of one ticker after the close of ``as_of`` (the date of the last bar used).

    Percentages are in percent (``-1.5`` means -1.5%). Indicators that need more history
    than is available are ``None``; ``change_*_pct`` are ``0.0`` then. ``high_52w`` and
    ``low_52w`` need a full year (252 bars); ``volume_ratio_20d`` is the last volume over
    the mean of the 20 bars before it (``None`` when that mean is zero, as for some indices).
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    ticker: str
    as_of: date
    last_close: float
    last_open: float
    change_1d_pct: float
    change_5d_pct: float
    change_20d_pct: float
    sma_20: float | None
    sma_50: float | None
    ema_12: float | None
    ema_26: float | None
    rsi_14: float | None
    macd: float | None
    macd_signal: float | None
    atr_14: float | None
    volatility_20d_pct: float | None
    drawdown_pct: float
    high_52w: float | None
    low_52w: float | None
    volume_ratio_20d: float | None
    recent_closes: list[float]
    bars_available: int
    # None: no news source; () : a source with nothing published by this close
    news: tuple[NewsItem, ...] | None = None
    decision_date: date | None = None


def build_snapshot(
    ticker: str,
    bars: pd.DataFrame,
    as_of: date | pd.Timestamp,
    *,
    news: NewsSource | None = None,
    max_news: int = DEFAULT_MAX_ITEMS,
    exchange: str = DEFAULT_EXCHANGE,
) -> MarketSnapshot:
    """Snapshot of ``ticker`` from the bars up to and including ``as_of``.

    ``bars`` are validated bars (see :mod:`trading_agents.market.base`); rows after
    ``as_of`` are cut off here, first. On a day without a bar (weekend, holiday) the last
    earlier bar is used and ``as_of`` in the result is that bar's date.
    With ``news``, the snapshot holds the ``max_news`` most recent items published by the
    close of the date ``as_of`` on ``exchange`` (see :func:`~trading_agents.market.news.news_at`).
    Raises :class:`UserInputError` when ``as_of`` is before the first bar.
    """
    cutoff = _cutoff(ticker, bars, as_of)
    window = bars.loc[:cutoff]
    snap = _snapshot_at(ticker, window, _indicator_table(window), len(window) - 1)
    return _with_news(snap, cutoff, news, max_news, exchange)


def build_snapshots(
    ticker: str,
    bars: pd.DataFrame,
    dates: Sequence[date | pd.Timestamp],
    *,
    news: NewsSource | None = None,
    max_news: int = DEFAULT_MAX_ITEMS,
    exchange: str = DEFAULT_EXCHANGE,
) -> list[MarketSnapshot]:
    """``[build_snapshot(ticker, bars, d) for d in dates]``, computed in one pass (for backtests).

    The result is identical to the one-by-one version (a test holds it to that): every
    indicator here is causal, so computing it once over the bars up to the latest date and
    reading row ``t`` gives the value computed from the bars up to ``t``.
    """
    if not dates:
        return []
    cutoffs = [_cutoff(ticker, bars, d) for d in dates]
    window = bars.loc[: max(cutoffs)]
    table = _indicator_table(window)
    positions = window.index.searchsorted(cutoffs, side="right") - 1
    return [
        _with_news(
            _snapshot_at(ticker, window.iloc[: pos + 1], table, int(pos)), cut, news, max_news, exchange
        )
        for pos, cut in zip(positions, cutoffs, strict=True)
    ]


def _with_news(
    snap: MarketSnapshot, cutoff: pd.Timestamp, news: NewsSource | None, max_news: int, exchange: str
) -> MarketSnapshot:
    if news is None:
        return snap
    items = news_at(news, snap.ticker, cutoff, max_items=max_news, exchange=exchange)
    return snap.model_copy(update={"news": items, "decision_date": cutoff.date()})


def _cutoff(ticker: str, bars: pd.DataFrame, as_of: date | pd.Timestamp) -> pd.Timestamp:
    cutoff = pd.Timestamp(as_of)
    if cutoff.tzinfo is not None:
        cutoff = cutoff.tz_localize(None)
    cutoff = cutoff.normalize()
    if not isinstance(bars.index, pd.DatetimeIndex) or not bars.index.is_monotonic_increasing:
        raise UserInputError(f"{ticker} bars need a sorted date index; load them with load_bars")
    if bars.empty or cutoff < bars.index[0]:
        first = bars.index[0].date().isoformat() if not bars.empty else "none"
        raise UserInputError(
            f"as-of date {cutoff.date()} is before the first {ticker} bar ({first}); choose a later date"
        )
    return cutoff


def _indicator_table(window: pd.DataFrame) -> pd.DataFrame:
    """Every indicator of the snapshot, per row; row ``t`` uses rows ``<= t`` only."""
    close, volume = window["Close"], window["Volume"]
    macd = ind.macd(close)
    return pd.DataFrame(
        {
            "change_1d": close / close.shift(1) - 1.0,
            "change_5d": close / close.shift(5) - 1.0,
            "change_20d": close / close.shift(20) - 1.0,
            "sma_20": ind.sma(close, 20),
            "sma_50": ind.sma(close, 50),
            "ema_12": ind.ema(close, 12),
            "ema_26": ind.ema(close, 26),
            "rsi_14": ind.rsi(close, 14),
            "macd": macd["macd"],
            "macd_signal": macd["signal"],
            "atr_14": ind.atr(window, 14),
            "volatility_20d": ind.volatility(close, 20),
            "drawdown": ind.drawdown(close),
            "high_52w": window["High"].rolling(YEAR_BARS, min_periods=YEAR_BARS).max(),
            "low_52w": window["Low"].rolling(YEAR_BARS, min_periods=YEAR_BARS).min(),
            "prior_volume_20d": volume.shift(1).rolling(20, min_periods=20).mean(),
        },
        index=window.index,
    )


def _snapshot_at(ticker: str, window: pd.DataFrame, table: pd.DataFrame, pos: int) -> MarketSnapshot:
    row = table.iloc[pos]
    bar = window.iloc[pos]
    prior_volume = float(row["prior_volume_20d"])

    def pct(name: str) -> float:
        value = float(row[name])
        return round(value * 100.0, 2) if math.isfinite(value) else 0.0

    return MarketSnapshot(
        ticker=ticker,
        as_of=window.index[pos].date(),
        last_close=_price(bar["Close"]),
        last_open=_price(bar["Open"]),
        change_1d_pct=pct("change_1d"),
        change_5d_pct=pct("change_5d"),
        change_20d_pct=pct("change_20d"),
        sma_20=_opt(row["sma_20"], _price),
        sma_50=_opt(row["sma_50"], _price),
        ema_12=_opt(row["ema_12"], _price),
        ema_26=_opt(row["ema_26"], _price),
        rsi_14=_opt(row["rsi_14"], lambda v: round(v, 2)),
        macd=_opt(row["macd"], _sig),
        macd_signal=_opt(row["macd_signal"], _sig),
        atr_14=_opt(row["atr_14"], _sig),
        volatility_20d_pct=_opt(row["volatility_20d"] * 100.0, lambda v: round(v, 2)),
        drawdown_pct=round(float(row["drawdown"]) * 100.0, 2),
        high_52w=_opt(row["high_52w"], _price),
        low_52w=_opt(row["low_52w"], _price),
        volume_ratio_20d=round(float(bar["Volume"]) / prior_volume, 2) if prior_volume > 0 else None,
        recent_closes=[_price(v) for v in window["Close"].iloc[max(0, pos - RECENT + 1) : pos + 1]],
        bars_available=pos + 1,
    )


def snapshot_to_prompt(
    s: MarketSnapshot,
    blind: bool = False,
    *,
    names: Sequence[str] = (),
    max_news_chars: int = DEFAULT_MAX_CHARS,
) -> str:
    """Compact text for a model (about 150 tokens on a tokenizer that spends one token per
    digit); the same snapshot always gives the same text.

    Prices have 3 significant digits (4 when ``blind``), percentages one decimal, RSI and
    volatility none: every digit is a token to evaluate on every decision, and the comparisons
    the desk rules weigh are spelled out on the ``Signals:`` line. ATR is shown as a share of
    the close, volume as a multiple of its 20-day average; the open and the 52-week range are
    left out (the drawdown from the peak says where the price stands). The number of bars is
    shown only while it is under a year.

    ``blind=True`` writes ``ASSET`` instead of the ticker, a day number instead of the date,
    and every price rebased so that the close 4 bars back is 100 (returns, percentages, RSI and
    volume ratio are unchanged), so the model cannot recall the period.
    A snapshot with news ends with a NEWS section (:func:`~trading_agents.market.news.news_to_prompt`;
    under ``blind`` the ticker, ``names`` and dates inside the items are masked too).
    """
    base = s.recent_closes[0] if blind and s.recent_closes and s.recent_closes[0] > 0 else None
    digits = 4 if blind else 3

    def p(value: float | None) -> str:
        if value is None:
            return "n/a"
        return _num(value * 100.0 / base if base else value, digits)

    def pct(value: float | None, signed: bool = True) -> str:
        if value is None:
            return "n/a"
        return f"{value:+.1f}%" if signed else f"{value:.1f}%"

    def change(value: float, k: int) -> str:
        return pct(value) if s.bars_available > k else "n/a"

    if blind:
        head = f"{BLIND_LABEL}, day {s.bars_available} (daily bars; prices rebased: close 4 bars back = 100)"
    else:
        history = f" ({s.bars_available} daily bars)" if s.bars_available < YEAR_BARS else ""
        head = f"{s.ticker} after the close of {s.as_of.isoformat()}{history}"
    atr = (
        f"ATR14 {s.atr_14 / s.last_close * 100:.1f}% of close"
        if s.atr_14 is not None and s.last_close
        else "ATR14 n/a"
    )
    vol = f"{s.volatility_20d_pct:.0f}%" if s.volatility_20d_pct is not None else "n/a"
    volume = f"{s.volume_ratio_20d:.1f}x" if s.volume_ratio_20d is not None else "n/a"
    lines = [
        head,
        f"Close {p(s.last_close)}; change 1d {change(s.change_1d_pct, 1)}, "
        f"5d {change(s.change_5d_pct, 5)}, 20d {change(s.change_20d_pct, 20)}.",
        f"Trend: SMA20 {p(s.sma_20)}, SMA50 {p(s.sma_50)}, EMA12 {p(s.ema_12)}, EMA26 {p(s.ema_26)}.",
        f"Momentum: RSI14 {f'{s.rsi_14:.0f}' if s.rsi_14 is not None else 'n/a'}, "
        f"MACD {p(s.macd)} (signal {p(s.macd_signal)}).",
        f"Risk: {atr}, volatility {vol} a year, drawdown {pct(s.drawdown_pct)}; volume {volume} average.",
        *([f"Signals: {reading}."] if (reading := signal_reading(s)) else []),
    ]
    if s.news is not None:
        day = s.decision_date or s.as_of
        lines.append(
            news_to_prompt(s.news, s.ticker, day, blind=blind, names=names, max_chars=max_news_chars)
        )
    return "\n".join(lines)


def signal_reading(s: MarketSnapshot) -> str:
    """The snapshot's comparisons in words, read the way the desk rules weigh them: trend up
    when the close is above SMA50 and EMA12 above EMA26 (down when both are below, mixed
    otherwise), momentum up or down as MACD is above or below its signal, RSI stretched above
    70 and washed out below 30. The same numbers as the lines above, so a small model need not
    compare decimals to see the trend; empty when the history is too short."""
    parts: list[str] = []
    if None not in (s.sma_50, s.ema_12, s.ema_26):
        above = (s.last_close >= s.sma_50, s.ema_12 >= s.ema_26)  # type: ignore[operator]
        trend = "up" if all(above) else "down" if not any(above) else "mixed"
        parts.append(f"trend {trend}")
    if s.macd is not None and s.macd_signal is not None:
        parts.append(f"momentum {'up' if s.macd >= s.macd_signal else 'down'}")
    if s.rsi_14 is not None:
        mood = "stretched" if s.rsi_14 > 70 else "washed out" if s.rsi_14 < 30 else "neutral"
        parts.append(f"RSI {s.rsi_14:.0f} {mood}")
    return ", ".join(parts)


def _price(value: float) -> float:
    value = float(value)
    return round(value, 2) if abs(value) >= 1 else _sig(value)


def _sig(value: float, digits: int = 4) -> float:
    return float(f"{float(value):.{digits}g}")


def _opt(value: float, rounder: Callable[[float], float]) -> float | None:
    value = float(value)
    return None if not math.isfinite(value) else rounder(value)


def _num(value: float, digits: int = 3) -> str:
    """Short, stable rendering with ``digits`` significant digits, never in exponent form and
    never with more than 2 decimals: 724 (723.67), 27.3, 7.68, 0.123."""
    if value == 0:
        return "0"
    magnitude = math.floor(math.log10(abs(value)))
    decimals = min(2, max(0, digits - 1 - magnitude)) if abs(value) >= 1 else digits - 1 - magnitude
    return f"{round(value, decimals):.{decimals}f}"
