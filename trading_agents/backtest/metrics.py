"""Performance statistics of a backtest, comparable with backtesting.py's ``Backtest.run()``.

:func:`compute_metrics` turns an engine result into a flat, JSON-safe mapping keyed by
snake_case names; :data:`METRICS` maps each key to the display name used in reports (the
same names backtesting.py prints). A figure that cannot be computed (no trades, a flat
equity curve) is ``None``.

Conventions: a year has 252 trading days (``TRADING_DAYS``) or 365.25 calendar days; the
risk-free rate is 0 unless ``risk_free`` is given (an annual fraction); "returns" are simple
returns of the account equity sampled once per calendar day that has a bar; ratios are
fractions in the formulas and percentages in the output.

Definitions (``E_t`` is the equity after bar ``t``, ``E_0`` the starting cash):

``start`` / ``end`` / ``duration_days``
    First and last bar of the backtest window and the calendar days between them.
``exposure_time_pct``  Exposure Time [%]
    Share of bars on which a trade was open, counting its entry and exit bars (as
    backtesting.py does).
``equity_start`` / ``equity_final`` / ``equity_peak``  Equity Start/Final/Peak [$]
    Starting cash, equity after the last bar, and the highest equity seen.
``return_pct``  Return [%]
    ``(E_final - E_0) / E_0``.
``buy_hold_return_pct``  Buy & Hold Return, uncapped, no costs [%]
    Equal-weight across tickers: the mean of ``last Close / first Close - 1`` inside the
    window, fully invested and without costs (the ``buy-hold`` baseline is the same idea
    traded under the run's caps and costs).
``return_ann_pct``  Return (Ann.) [%]
    Geometric: ``(1 + g) ** 252 - 1`` where ``g`` is the geometric mean daily return.
``cagr_pct``  CAGR [%]
    Calendar: ``(E_final / E_0) ** (1 / years) - 1`` with ``years = duration_days / 365.25``.
``volatility_ann_pct``  Volatility (Ann.) [%]
    Annualised volatility of compounded returns (backtesting.py's formula):
    ``sqrt((var + (1 + g)^2) ** 252 - (1 + g) ** 504)``, ``var`` the daily-return variance.
``sharpe``  Sharpe Ratio
    ``(Return (Ann.) - risk_free) / Volatility (Ann.)``.
``sortino``  Sortino Ratio
    ``(Return (Ann.) - risk_free) / (sqrt(mean(min(r, 0)^2)) * sqrt(252))``.
``calmar``  Calmar Ratio
    ``Return (Ann.) / |Max. Drawdown|``.
``max_drawdown_pct`` / ``avg_drawdown_pct``  Max./Avg. Drawdown [%]
    Drawdown is ``1 - E_t / max(E_0..E_t)``; the maximum, and the mean of each drawdown
    period's deepest point; reported as negative percentages.
``max_drawdown_duration_days`` / ``avg_drawdown_duration_days``
    Calendar days from a peak until equity regains it (or the last bar), longest and mean.
``num_trades``  # Trades
    Closed round trips (a position still open at the end counts once it is closed).
``win_rate_pct``  Win Rate [%]
    Share of trades with positive profit after commissions.
``best_trade_pct`` / ``worst_trade_pct``  Best/Worst Trade [%]
    Highest and lowest trade return (after commissions).
``avg_trade_pct``  Avg. Trade [%]
    Geometric mean of trade returns.
``max_trade_duration_days`` / ``avg_trade_duration_days``
    Calendar days from entry to exit, longest and mean (rounded up to whole days).
``profit_factor``  Profit Factor
    Sum of winning trade returns over the absolute sum of losing trade returns.
``expectancy_pct``  Expectancy [%]
    Arithmetic mean trade return.
``sqn``  SQN
    Van Tharp's System Quality Number: ``sqrt(n) * mean(pnl) / std(pnl)``.
``commissions``  Commissions [$]
    Total commissions paid.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd

TRADING_DAYS = 252

#: snake_case key in summary.json -> display name (backtesting.py's), in report order.
METRICS: dict[str, str] = {
    "start": "Start",
    "end": "End",
    "duration_days": "Duration",
    "exposure_time_pct": "Exposure Time [%]",
    "equity_start": "Equity Start [$]",
    "equity_final": "Equity Final [$]",
    "equity_peak": "Equity Peak [$]",
    "return_pct": "Return [%]",
    "buy_hold_return_pct": "Buy & Hold Return, uncapped, no costs [%]",
    "return_ann_pct": "Return (Ann.) [%]",
    "cagr_pct": "CAGR [%]",
    "volatility_ann_pct": "Volatility (Ann.) [%]",
    "sharpe": "Sharpe Ratio",
    "sortino": "Sortino Ratio",
    "calmar": "Calmar Ratio",
    "max_drawdown_pct": "Max. Drawdown [%]",
    "avg_drawdown_pct": "Avg. Drawdown [%]",
    "max_drawdown_duration_days": "Max. Drawdown Duration",
    "avg_drawdown_duration_days": "Avg. Drawdown Duration",
    "num_trades": "# Trades",
    "win_rate_pct": "Win Rate [%]",
    "best_trade_pct": "Best Trade [%]",
    "worst_trade_pct": "Worst Trade [%]",
    "avg_trade_pct": "Avg. Trade [%]",
    "max_trade_duration_days": "Max. Trade Duration",
    "avg_trade_duration_days": "Avg. Trade Duration",
    "profit_factor": "Profit Factor",
    "expectancy_pct": "Expectancy [%]",
    "sqn": "SQN",
    "commissions": "Commissions [$]",
}

#: What the desk's own LLM calls cost and the returns net of it (added by the backtest
#: runner from the decisions; the benchmark of the excess returns is in ``meta.benchmark``).
COST_METRICS: dict[str, str] = {
    "llm_cost_usd": "LLM Cost [$]",
    "return_net_pct": "Return net of LLM Cost [%]",
    "excess_return_pct": "Excess Return [%]",
    "excess_return_net_pct": "Excess Return net of LLM Cost [%]",
}
#: Display names of every key a summary's metrics may hold.
METRIC_NAMES: dict[str, str] = {**METRICS, **COST_METRICS}

MetricValue = float | int | str | None


def compute_metrics(
    result: Any, bars: Mapping[str, pd.DataFrame], *, risk_free: float = 0.0
) -> dict[str, MetricValue]:
    """Statistics of ``result`` (an ``EngineResult``) over its window of ``bars``.

    ``bars`` are the same frames the engine ran on (they may extend beyond the window;
    only ``result.start .. result.end`` is used for Buy & Hold). Keys are those of
    :data:`METRICS`, values JSON-safe (``NaN`` and infinities become ``None``).
    """
    if not -1 < risk_free < 1:
        raise ValueError("risk_free is an annual fraction in (-1, 1)")
    equity_df: pd.DataFrame = result.equity
    equity = equity_df["equity"].astype(float)
    index = pd.DatetimeIndex(equity.index)
    start_cash = float(result.starting_cash)
    trades: pd.DataFrame = result.trades if result.trades is not None else pd.DataFrame()

    out: dict[str, Any] = {key: None for key in METRICS}
    if equity.empty:
        out["equity_start"] = start_cash
        out["num_trades"] = 0
        out["commissions"] = _total_commissions(result)
        return out

    start, end = index[0], index[-1]
    out["start"] = start.date().isoformat()
    out["end"] = end.date().isoformat()
    out["duration_days"] = int((end - start).days)
    out["exposure_time_pct"] = float(_exposure(trades, index).mean() * 100)
    out["equity_start"] = start_cash
    out["equity_final"] = float(equity.iloc[-1])
    out["equity_peak"] = float(max(equity.max(), start_cash))
    out["return_pct"] = (float(equity.iloc[-1]) - start_cash) / start_cash * 100
    out["buy_hold_return_pct"] = buy_hold_return_pct(bars, start, end)

    day_returns = equity.resample("D").last().dropna().pct_change().dropna()
    gmean = _geometric_mean(day_returns)
    ann_return = (1 + gmean) ** TRADING_DAYS - 1
    out["return_ann_pct"] = ann_return * 100
    years = (end - start).total_seconds() / 86400 / 365.25
    if years > 0 and equity.iloc[-1] > 0:
        out["cagr_pct"] = ((float(equity.iloc[-1]) / start_cash) ** (1 / years) - 1) * 100
    ddof = 1 if len(day_returns) > 1 else 0
    variance = float(day_returns.var(ddof=ddof)) if len(day_returns) else math.nan
    vol = math.sqrt(
        max((variance + (1 + gmean) ** 2) ** TRADING_DAYS - (1 + gmean) ** (2 * TRADING_DAYS), 0.0)
    )
    out["volatility_ann_pct"] = vol * 100
    out["sharpe"] = _ratio(ann_return - risk_free, vol)
    downside = math.sqrt(float(np.mean(day_returns.clip(upper=0) ** 2))) if len(day_returns) else math.nan
    out["sortino"] = _ratio(ann_return - risk_free, downside * math.sqrt(TRADING_DAYS))

    dd = drawdown(equity, start_cash)
    max_dd = float(dd.max())
    durations, peaks = _drawdown_periods(dd)
    out["calmar"] = _ratio(ann_return, max_dd)
    out["max_drawdown_pct"] = -max_dd * 100
    out["avg_drawdown_pct"] = -float(np.mean(peaks)) * 100 if peaks else 0.0
    out["max_drawdown_duration_days"] = max(durations) if durations else None
    out["avg_drawdown_duration_days"] = _ceil_days(float(np.mean(durations))) if durations else None

    out.update(trade_metrics(trades))
    out["commissions"] = _total_commissions(result)
    return {key: _json_safe(out[key]) for key in METRICS}


def trade_metrics(trades: pd.DataFrame) -> dict[str, MetricValue]:
    """The per-trade statistics (# Trades .. SQN) of a trades table.

    Expects the engine's columns ``pnl``, ``return_pct`` (a percent), ``entry_time`` and
    ``exit_time``; open trades (no ``exit_time``) are ignored.
    """
    if len(trades) and "exit_time" in trades:
        trades = trades[trades["exit_time"].notna()]
    n = len(trades)
    out: dict[str, MetricValue] = {
        "num_trades": n,
        "win_rate_pct": None,
        "best_trade_pct": None,
        "worst_trade_pct": None,
        "avg_trade_pct": None,
        "max_trade_duration_days": None,
        "avg_trade_duration_days": None,
        "profit_factor": None,
        "expectancy_pct": None,
        "sqn": None,
    }
    if not n:
        return out
    pnl = trades["pnl"].astype(float)
    returns = trades["return_pct"].astype(float) / 100  # percent -> fraction for the formulas
    held = pd.to_datetime(trades["exit_time"]) - pd.to_datetime(trades["entry_time"])
    held_days = held.dt.total_seconds() / 86400
    out["win_rate_pct"] = float((pnl > 0).mean() * 100)
    out["best_trade_pct"] = float(returns.max() * 100)
    out["worst_trade_pct"] = float(returns.min() * 100)
    out["avg_trade_pct"] = _geometric_mean(returns) * 100
    out["max_trade_duration_days"] = _ceil_days(float(held_days.max()))
    out["avg_trade_duration_days"] = _ceil_days(float(held_days.mean()))
    out["profit_factor"] = _ratio(float(returns[returns > 0].sum()), abs(float(returns[returns < 0].sum())))
    out["expectancy_pct"] = float(returns.mean() * 100)
    out["sqn"] = _ratio(math.sqrt(n) * float(pnl.mean()), float(pnl.std()) if n > 1 else math.nan)
    return {key: _json_safe(value) for key, value in out.items()}


def buy_hold_return_pct(bars: Mapping[str, pd.DataFrame], start: Any, end: Any) -> float | None:
    """Equal-weight buy-and-hold return [%] from the first to the last Close in ``[start, end]``."""
    start, end = pd.Timestamp(start), pd.Timestamp(end)
    rets = []
    for frame in bars.values():
        close = frame["Close"].astype(float)
        close = close[(close.index >= start) & (close.index <= end)].dropna()
        if len(close) and close.iloc[0] > 0:
            rets.append(close.iloc[-1] / close.iloc[0] - 1)
    return float(np.mean(rets) * 100) if rets else None


def drawdown(equity: pd.Series, start_cash: float | None = None) -> pd.Series:
    """Drawdown fraction ``1 - E_t / running peak`` (the peak includes ``start_cash`` if given)."""
    peak = equity.cummax()
    if start_cash is not None:
        peak = peak.clip(lower=start_cash)
    return (1 - equity / peak).fillna(0.0)


def format_metric(key: str, value: MetricValue) -> str:
    """Human-readable form of one metric for tables (``--`` when it is undefined)."""
    if value is None:
        return "--"
    if key.endswith("_days"):
        return f"{int(value)} days"
    if key in ("equity_start", "equity_final", "equity_peak", "commissions"):
        return f"{float(value):,.2f}"
    if isinstance(value, float):
        text = f"{value:,.2f}" if abs(value) >= 1000 else f"{value:.3f}".rstrip("0").rstrip(".") or "0"
        return unsigned_zero(text)
    return str(value)


def unsigned_zero(text: str) -> str:
    """``"-0"``, ``"-0.00"``, ``"-0.0%"`` -> the same without the sign: a value that rounds to zero."""
    if text.startswith("-") and not any(ch in "123456789" for ch in text):
        return text[1:]
    return text


def _exposure(trades: pd.DataFrame, index: pd.DatetimeIndex) -> np.ndarray:
    have = np.zeros(len(index), dtype=bool)
    if not len(trades) or "entry_time" not in trades:
        return have
    for entry, exit_ in zip(trades["entry_time"], trades["exit_time"], strict=False):
        if entry is None or pd.isna(entry):
            continue
        i = int(index.searchsorted(pd.Timestamp(entry), side="left"))
        j = (
            len(index) - 1
            if exit_ is None or pd.isna(exit_)
            else int(index.searchsorted(pd.Timestamp(exit_), side="right") - 1)
        )
        have[i : j + 1] = True
    return have


def _drawdown_periods(dd: pd.Series) -> tuple[list[int], list[float]]:
    """Durations (calendar days, rounded up) and depths of each drawdown period.

    A period runs from the last bar at a peak (``dd == 0``) to the next one, or to the
    last bar while still under water, as in backtesting.py.
    """
    values = dd.to_numpy()
    # Bar 0 opens a period too when equity is already under the starting cash there.
    marks = np.unique(np.r_[0, np.flatnonzero(values == 0), len(values) - 1])
    durations: list[int] = []
    depths: list[float] = []
    for prev, mark in itertools.pairwise(marks):
        if mark > prev + 1 or (prev == 0 and values[0] > 0):
            durations.append(_ceil_days((dd.index[mark] - dd.index[prev]).total_seconds() / 86400))
            depths.append(float(values[prev : mark + 1].max()))
    return durations, depths


def _geometric_mean(returns: pd.Series) -> float:
    growth = returns.fillna(0).to_numpy(dtype=float) + 1
    if not len(growth):
        return 0.0
    if np.any(growth <= 0):
        return 0.0
    return float(np.exp(np.log(growth).sum() / len(growth)) - 1)


def _ratio(num: float, den: float) -> float | None:
    if den is None or not math.isfinite(den) or den == 0 or not math.isfinite(num):
        return None
    return num / den


def _ceil_days(days: float) -> int:
    return math.ceil(days - 1e-9)


def _total_commissions(result: Any) -> float:
    value = getattr(result, "commissions", 0.0)
    if isinstance(value, pd.Series | pd.DataFrame):
        value = float(np.asarray(value).sum())
    return float(value or 0.0)


def _json_safe(value: Any) -> MetricValue:
    if value is None:
        return None
    if isinstance(value, np.integer | bool):
        return int(value)
    if isinstance(value, np.floating | float):
        value = float(value) + 0.0  # -0.0 -> 0.0: no "-0" in files or tables
        return value if math.isfinite(value) else None
    if isinstance(value, pd.Timestamp):
        return value.isoformat()
    return value
