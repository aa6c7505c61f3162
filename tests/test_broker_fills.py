"""Exact fills, fees, equity and exposure on hand-built candles (paper broker and engine)."""

from __future__ import annotations

import pandas as pd
import pytest

from trading_agents.config.settings import RiskSettings
from trading_agents.core import (
    BarPrices,
    DecisionContext,
    EngineConfig,
    Order,
    OrderIntent,
    PaperBroker,
    Position,
    StrategyDecision,
    client_order_id,
    run_engine,
)
from trading_agents.journal import Ledger

DATES = pd.DatetimeIndex(
    pd.to_datetime(["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-08"])
)
D0, D1, D2, D3, D4 = DATES
LOOSE = RiskSettings(
    max_position_pct=1.0, max_order_notional=1e9, max_daily_loss_pct=1.0, max_drawdown_pct=1.0
)


def five_bars() -> pd.DataFrame:
    return pd.DataFrame(
        {
            "Open": [100.0, 102.0, 104.0, 106.0, 100.0],
            "High": [101.0, 104.0, 106.0, 107.0, 102.0],
            "Low": [99.0, 101.0, 103.0, 100.0, 98.0],
            "Close": [100.0, 103.0, 105.0, 101.0, 99.0],
            "Volume": [1e6] * 5,
        },
        index=pd.DatetimeIndex(DATES, name="Date"),
    )


class Script:
    """Emits fixed intents at given steps."""

    name = "script"

    def __init__(self, plan: dict[int, list[OrderIntent]]) -> None:
        self.plan = plan

    def decide(self, ctx: DecisionContext) -> StrategyDecision:
        intents = self.plan.get(ctx.step, [])
        return StrategyDecision(intents, {"step": ctx.step} if intents else None)


def test_market_buy_max_gap_up_shrink_sell_all_exact_numbers() -> None:
    plan = {0: [OrderIntent("X", "buy")], 2: [OrderIntent("X", "sell")]}
    cfg = EngineConfig(cash=10_000.0, commission=0.001, slippage_bps=10.0, risk=LOOSE)
    with Ledger.open(":memory:") as ledger:
        res = run_engine({"X": five_bars()}, Script(plan), cfg, ledger, "r")
        assert ledger.reconcile("r") == []

    # Decided at D0 close 100: buy-max resolves with headroom to floor(10000 / (100*1.001*1.001)) = 99.
    # Fills at D1 open 102 + 10 bps = 102.102; 99 is unaffordable there, shrunk to 97 = floor(cash/(p*1.001)).
    buy, sell = res.fills.to_dict("records")
    assert (buy["side"], buy["quantity"], buy["filled_at"]) == ("buy", 97, D1)
    assert buy["price"] == pytest.approx(102.102, rel=1e-12)
    assert buy["commission"] == pytest.approx(97 * 102.102 * 0.001, rel=1e-12)
    assert buy["slippage_cost"] == pytest.approx(97 * 0.102, rel=1e-9)
    order = res.orders.iloc[0]
    assert (order["quantity"], order["filled_quantity"], order["requested_quantity"]) == (99, 97, None)
    assert "shrunk from 99 to 97" in order["reason"]

    cash_after_buy = 10_000 - 97 * 102.102 * 1.001
    eq = res.equity
    assert eq.loc[D0, "equity"] == 10_000.0
    assert eq.loc[D1, "cash"] == pytest.approx(cash_after_buy, rel=1e-12)
    assert eq.loc[D1, "equity"] == pytest.approx(cash_after_buy + 97 * 103, rel=1e-12)
    assert eq.loc[D2, "exposure"] == pytest.approx(97 * 105 / (cash_after_buy + 97 * 105), rel=1e-12)
    assert list(eq["pos_X"]) == [0, 97, 97, 0, 0]

    # Sell-all decided at D2 fills at D3 open 106 - 10 bps.
    assert (sell["side"], sell["quantity"], sell["filled_at"]) == ("sell", 97, D3)
    assert sell["price"] == pytest.approx(105.894, rel=1e-12)
    final = cash_after_buy + 97 * 105.894 * 0.999
    assert res.final_equity == pytest.approx(final, rel=1e-12)
    assert eq.loc[D4, "exposure"] == 0.0
    assert eq["drawdown"].max() == 0.0
    assert eq.loc[D3, "drawdown"] == pytest.approx(final / eq["equity"].cummax()[D3] - 1, rel=1e-9)

    trade = res.trades.iloc[0]
    assert len(res.trades) == 1
    assert (trade["size"], trade["entry_time"], trade["exit_time"], trade["bars_held"]) == (97, D1, D3, 2)
    assert trade["pnl"] == pytest.approx(final - 10_000, rel=1e-9)
    assert trade["commission"] == pytest.approx(res.commissions, rel=1e-12)
    assert [d["record"] for d in res.decisions] == [{"step": 0}, {"step": 2}]


def test_limit_orders_gtc_day_expiry_and_end_of_run_close() -> None:
    plan = {
        0: [
            OrderIntent("X", "buy", 10, "limit", 101.5),  # D1: open 102 > 101.5 >= low 101 -> at the limit
            OrderIntent("X", "buy", 5, "limit", 100.0),  # D1 low 101: not reached, day order expires
            OrderIntent("X", "buy", 5, "limit", 99.0, "gtc"),  # waits until D4 (low 98)
        ],
        1: [OrderIntent("X", "sell", 4, "limit", 105.0)],  # D2: open 104 < 105 <= high 106 -> at 105
    }
    cfg = EngineConfig(cash=10_000.0, commission=0.001, slippage_bps=50.0, risk=LOOSE)
    with Ledger.open(":memory:") as ledger:
        res = run_engine({"X": five_bars()}, Script(plan), cfg, ledger, "r")
        assert ledger.reconcile("r") == []
    fills = res.fills[["side", "quantity", "price", "filled_at", "reason"]].to_records(index=False).tolist()
    assert fills == [
        ("buy", 10, 101.5, D1, ""),
        ("sell", 4, 105.0, D2, ""),
        ("buy", 5, 99.0, D4, ""),
        ("sell", 11, 99.0, D4, "end of run"),  # closed at the last Close, no slippage
    ]
    statuses = dict(zip(res.orders["limit_price"].fillna(0), res.orders["status"], strict=True))
    assert statuses == {101.5: "filled", 100.0: "expired", 99.0: "filled", 105.0: "filled", 0: "filled"}
    value = 10 * 101.5 + 4 * 105 + 5 * 99 + 11 * 99
    assert res.commissions == pytest.approx(0.001 * value, rel=1e-12)
    cash = 10_000 - 10 * 101.5 + 4 * 105 - 5 * 99 + 11 * 99 - 0.001 * value
    assert res.final_equity == pytest.approx(cash, rel=1e-12)
    assert res.equity.loc[D4, "cash"] == pytest.approx(cash, rel=1e-12)
    assert res.equity.loc[D1, "equity"] == pytest.approx(10_000 - 1015 * 1.001 + 10 * 103, rel=1e-12)


def test_broker_stop_loss_exits_pessimistically() -> None:
    broker = PaperBroker(
        0.0,
        commission=0.0,
        slippage_bps=10.0,
        positions={"A": Position(10, 100.0, 95.0), "B": Position(5, 50.0, 45.0)},
    )
    fills, orders = broker.process_bar(D1, {"A": BarPrices(97, 98, 94, 96), "B": BarPrices(40, 41, 39, 40)})
    by_ticker = {f.ticker: f for f in fills}
    assert by_ticker["A"].price == pytest.approx(95 * 0.999)  # low crossed the stop: exit at the stop
    assert by_ticker["B"].price == pytest.approx(40 * 0.999)  # gapped below: exit at the open
    assert broker.positions == {}
    assert all(o.order_type == "stop" and o.status == "filled" for o in orders)
    assert broker.cash == pytest.approx(10 * 95 * 0.999 + 5 * 40 * 0.999)


def test_broker_limit_sell_at_open_and_no_short_without_position() -> None:
    broker = PaperBroker(1_000.0, commission=0.0, slippage_bps=0.0, positions={"A": Position(3, 10.0)})
    sell = Order(client_order_id("r", D0, "A", "sell", 0), "A", "sell", 5, "limit", 11.0, created_at=D0)
    naked = Order(client_order_id("r", D0, "B", "sell", 1), "B", "sell", 5, created_at=D0)
    broker.submit(sell)
    broker.submit(naked)
    fills, changed = broker.process_bar(D1, {"A": BarPrices(12, 12, 11, 11), "B": BarPrices(5, 5, 5, 5)})
    assert [(f.ticker, f.quantity, f.price) for f in fills] == [
        ("A", 3, 12.0)
    ]  # open above limit; only 3 held
    assert sell.filled_quantity == 3 and "shrunk from 5 to 3" in sell.reason
    assert naked.status == "cancelled" and broker.quantity("B") == 0
    assert {o.client_order_id for o in changed} == {sell.client_order_id, naked.client_order_id}


def test_broker_never_lets_cash_go_negative() -> None:
    broker = PaperBroker(1_000.0, commission=0.01, slippage_bps=0.0)
    broker.submit(Order("a", "A", "buy", 10, created_at=D0))
    broker.submit(Order("b", "A", "buy", 10, created_at=D0))
    fills, _ = broker.process_bar(D1, {"A": BarPrices(60, 60, 60, 60)})
    assert [f.quantity for f in fills] == [10, 6]  # 1000 - 606 = 394 buys 6 at 60.6 each
    assert broker.cash >= 0
    assert broker.cash == pytest.approx(1_000 - 16 * 60 * 1.01)


def test_client_order_ids_are_deterministic() -> None:
    a = client_order_id("run", D0, "GOOG", "buy", 0)
    assert a == client_order_id("run", pd.Timestamp("2024-01-02"), "GOOG", "buy", 0)
    assert len(a) == 20
    assert a != client_order_id("run", D0, "GOOG", "buy", 1)
    assert a != client_order_id("run2", D0, "GOOG", "buy", 0)
