"""Backtest metrics: hand-computed values, backtesting.py's definitions, and our engine
against backtesting.py on the same strategy, data and costs."""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from trading_agents.backtest.metrics import METRICS, compute_metrics, drawdown, format_metric

# backtesting.py trips a pandas deprecation warning of its own.
pytestmark = pytest.mark.filterwarnings("ignore:DatetimeIndex.dayofweek is deprecated")

DAYS = pd.DatetimeIndex(["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-08"], name="Date")


def _result(equity: list[float], trades: pd.DataFrame | None = None, cash: float = 100.0, fees: float = 0.0):
    frame = pd.DataFrame({"equity": equity}, index=DAYS[: len(equity)])
    cols = ["ticker", "size", "entry_time", "exit_time", "entry_price", "exit_price", "pnl", "return_pct"]
    return SimpleNamespace(
        equity=frame,
        trades=trades if trades is not None else pd.DataFrame(columns=cols),
        starting_cash=cash,
        commissions=fees,
        decisions=[],
    )


def _bars(closes: dict[str, list[float]]) -> dict[str, pd.DataFrame]:
    return {
        t: pd.DataFrame({"Open": c, "High": c, "Low": c, "Close": c, "Volume": 1e9}, index=DAYS[: len(c)])
        for t, c in closes.items()
    }


@pytest.fixture
def hand_case():
    trades = pd.DataFrame(
        {
            "ticker": ["A", "A"],
            "size": [1, 1],
            "entry_time": pd.to_datetime(["2024-01-02", "2024-01-05"]),
            "exit_time": pd.to_datetime(["2024-01-03", "2024-01-08"]),
            "entry_price": [100.0, 100.0],
            "exit_price": [110.0, 95.0],
            "pnl": [10.0, -5.0],
            "return_pct": [10.0, -5.0],
        }
    )
    result = _result([100.0, 110.0, 99.0, 108.9, 121.0], trades, fees=1.5)
    bars = _bars({"A": [50, 55, 52, 58, 60], "B": [10, 9.5, 9, 9.2, 9]})
    return compute_metrics(result, bars)


def test_hand_computed_equity_metrics(hand_case):
    m = hand_case
    assert list(m) == list(METRICS)
    assert (m["start"], m["end"], m["duration_days"]) == ("2024-01-02", "2024-01-08", 6)
    assert m["equity_start"] == 100.0 and m["equity_final"] == 121.0 and m["equity_peak"] == 121.0
    assert m["return_pct"] == pytest.approx(21.0)
    # Equal weight: A +20%, B -10% -> +5%.
    assert m["buy_hold_return_pct"] == pytest.approx(5.0)
    g = 1.21 ** (1 / 4) - 1  # four daily returns compounding to +21%
    ann = (1 + g) ** 252 - 1
    assert m["return_ann_pct"] == pytest.approx(ann * 100)
    assert m["cagr_pct"] == pytest.approx((1.21 ** (365.25 / 6) - 1) * 100)
    r = np.array([0.10, -0.10, 0.10, 121 / 108.9 - 1])
    vol = math.sqrt((r.var(ddof=1) + (1 + g) ** 2) ** 252 - (1 + g) ** 504)
    assert m["volatility_ann_pct"] == pytest.approx(vol * 100)
    assert m["sharpe"] == pytest.approx(ann / vol)
    assert m["sortino"] == pytest.approx(ann / (math.sqrt(0.01 / 4) * math.sqrt(252)))
    # Peak 110 on Jan 3, trough 99 on Jan 4 (-10%), new high on Jan 8: one 5-day drawdown.
    assert m["max_drawdown_pct"] == pytest.approx(-10.0)
    assert m["avg_drawdown_pct"] == pytest.approx(-10.0)
    assert m["max_drawdown_duration_days"] == 5 and m["avg_drawdown_duration_days"] == 5
    assert m["calmar"] == pytest.approx(ann / 0.10)


def test_hand_computed_trade_metrics(hand_case):
    m = hand_case
    assert m["num_trades"] == 2
    assert m["exposure_time_pct"] == pytest.approx(80.0)  # bars 0-1 and 3-4 of 5
    assert m["win_rate_pct"] == pytest.approx(50.0)
    assert (m["best_trade_pct"], m["worst_trade_pct"]) == (pytest.approx(10.0), pytest.approx(-5.0))
    assert m["avg_trade_pct"] == pytest.approx((math.sqrt(1.10 * 0.95) - 1) * 100)
    assert m["expectancy_pct"] == pytest.approx(2.5)
    assert m["profit_factor"] == pytest.approx(2.0)
    assert m["sqn"] == pytest.approx(1 / 3)  # sqrt(2) * 2.5 / std([10, -5])
    assert (m["max_trade_duration_days"], m["avg_trade_duration_days"]) == (3, 2)
    assert m["commissions"] == 1.5


def test_flat_run_without_trades_is_json_safe():
    m = compute_metrics(_result([100.0] * 5), _bars({"A": [1, 2, 3, 4, 5]}))
    json.dumps(m, allow_nan=False)
    assert m["num_trades"] == 0 and m["return_pct"] == 0.0 and m["max_drawdown_pct"] == 0.0
    assert m["sharpe"] is None and m["sortino"] is None and m["calmar"] is None
    assert m["win_rate_pct"] is None and m["sqn"] is None and m["max_drawdown_duration_days"] is None
    assert m["buy_hold_return_pct"] == pytest.approx(400.0)
    assert format_metric("sharpe", None) == "--"


def test_drawdown_counts_starting_cash_as_a_peak():
    dd = drawdown(pd.Series([90.0, 95.0, 100.0, 80.0]), 100.0)
    assert dd.tolist() == pytest.approx([0.10, 0.05, 0.0, 0.20])
    m = compute_metrics(_result([90.0, 95.0, 100.0, 80.0, 100.0]), _bars({"A": [1] * 5}))
    assert m["max_drawdown_pct"] == pytest.approx(-20.0)
    # Under water from the first bar until Jan 4 (2 days, -10%), then Jan 4 .. Jan 8 (4 days, -20%).
    assert (m["max_drawdown_duration_days"], m["avg_drawdown_duration_days"]) == (4, 3)
    assert m["avg_drawdown_pct"] == pytest.approx(-15.0)


@pytest.fixture(scope="module")
def goog() -> pd.DataFrame:
    from trading_agents.market import load_bars

    return load_bars(tickers=["GOOG"])["GOOG"]


def _bt_sma_cross(goog: pd.DataFrame, fast: int, slow: int, commission: float, cash: float):
    from backtesting import Backtest, Strategy
    from backtesting.lib import crossover
    from backtesting.test import SMA

    class SmaCross(Strategy):
        def init(self):
            self.fast = self.I(SMA, self.data.Close, fast)
            self.slow = self.I(SMA, self.data.Close, slow)

        def next(self):
            if crossover(self.fast, self.slow):
                self.buy()
            elif crossover(self.slow, self.fast):
                self.position.close()

    bt = Backtest(
        goog,
        SmaCross,
        cash=cash,
        commission=commission,
        trade_on_close=False,
        exclusive_orders=True,
        finalize_trades=True,
    )
    return bt.run()


def test_definitions_match_backtesting_py_on_its_own_equity_and_trades(goog):
    """Feed backtesting.py's equity curve and trades through our formulas: every metric both
    define must agree. (Buy & Hold differs by design: backtesting.py starts it after the
    indicator warm-up, we start it on the window's first bar.)"""
    stats = _bt_sma_cross(goog, 10, 20, 0.002, 10_000)
    eq = stats["_equity_curve"]
    tr = stats["_trades"]
    result = SimpleNamespace(
        equity=pd.DataFrame({"equity": eq["Equity"]}),
        trades=pd.DataFrame(
            {
                "pnl": tr["PnL"],
                "return_pct": tr["ReturnPct"] * 100,
                "entry_time": tr["EntryTime"],
                "exit_time": tr["ExitTime"],
                "commission": tr["Commission"],
            }
        ),
        starting_cash=10_000.0,
        commissions=float(tr["Commission"].sum()),
    )
    ours = compute_metrics(result, {"GOOG": goog})
    durations = {k for k in METRICS if k.endswith("_duration_days")}
    ours_only = {"start", "end", "duration_days", "equity_start", "buy_hold_return_pct"}
    for key, name in METRICS.items():
        if key in ours_only:
            continue
        if key in durations:
            assert ours[key] == stats[name].days, key
        else:
            assert ours[key] == pytest.approx(float(stats[name]), rel=1e-9, abs=1e-9), key
    assert ours["buy_hold_return_pct"] == pytest.approx((goog.Close.iloc[-1] / goog.Close.iloc[0] - 1) * 100)


@pytest.mark.parametrize("commission", [0.0, 0.002])
def test_engine_matches_backtesting_py_on_sma_cross(goog, commission: float) -> None:
    """Our engine and backtesting.py, SMA 10/20 crossover on all bundled GOOG bars, same cash
    and commission, no slippage, next-open fills, risk limits opened up (whole-equity
    positions, no notional cap, no kill switch).

    Every trade must enter and exit on the same bars at the same prices. Sizes may differ by
    a few shares: backtesting.py sizes an order when it fills, with that bar's Open, while
    our risk engine sizes it when it is decided, with the decision bar's Close, so a gap up
    or down buys a share fewer or more, and the small equity gap compounds over 47 trades.
    And the position still open on the last bar is closed at that bar's Close by us, at its
    Open by backtesting.py (``finalize_trades``).
    That is why Return is compared with a 1% relative tolerance (the observed gap is about
    0.3% to 0.6% of the return over 8.5 years).
    """
    from trading_agents.backtest.baselines import make_baseline
    from trading_agents.config.settings import RiskSettings
    from trading_agents.core import EngineConfig, run_engine
    from trading_agents.journal import Ledger

    risk = RiskSettings(
        max_position_pct=1.0, max_order_notional=1e12, max_daily_loss_pct=1.0, max_drawdown_pct=1.0
    )
    config = EngineConfig(cash=10_000, commission=commission, slippage_bps=0.0, risk=risk)
    with Ledger.open(":memory:") as ledger:
        result = run_engine(
            {"GOOG": goog}, make_baseline("sma-cross", fast=10, slow=20), config, ledger, "cmp"
        )
    ours = compute_metrics(result, {"GOOG": goog})
    theirs = _bt_sma_cross(goog, 10, 20, commission, 10_000)
    their_trades = theirs["_trades"]

    assert ours["num_trades"] == theirs["# Trades"] == 47
    assert list(pd.to_datetime(result.trades["entry_time"])) == list(their_trades["EntryTime"])
    assert list(pd.to_datetime(result.trades["exit_time"])) == list(their_trades["ExitTime"])
    assert np.allclose(result.trades["entry_price"], their_trades["EntryPrice"])
    assert np.allclose(result.trades["exit_price"][:-1], their_trades["ExitPrice"][:-1])
    # The position still open at the end: we close it at the last Close, backtesting.py's
    # finalize_trades at the last Open.
    assert result.trades["exit_price"].iloc[-1] == pytest.approx(goog["Close"].iloc[-1])
    assert their_trades["ExitPrice"].iloc[-1] == pytest.approx(goog["Open"].iloc[-1])
    size_gap = np.abs(result.trades["size"].to_numpy() - their_trades["Size"].to_numpy())
    assert np.all(size_gap <= np.maximum(1, 0.05 * their_trades["Size"].to_numpy()))
    assert ours["return_pct"] == pytest.approx(theirs["Return [%]"], rel=0.01)
    assert ours["win_rate_pct"] == pytest.approx(theirs["Win Rate [%]"], abs=100 / 47 + 1e-9)
    assert ours["max_drawdown_pct"] == pytest.approx(theirs["Max. Drawdown [%]"], rel=0.02)


def test_bench_compares_the_same_strategy(goog) -> None:
    """`bench backtest` times both engines on the same trades (speed itself is not asserted)."""
    from trading_agents.bench.backtest import engine_speed

    out = engine_speed(goog, repeats=1)
    assert out["ours_trades"] == out["backtesting_py_trades"] == 47
    assert out["ours_bar_steps_per_s"] > 0 and out["ratio_ours_over_theirs"] > 0
