"""Hard limits: clips and vetoes with their reasons, the kill switch, HALTED across restarts."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from trading_agents.config.settings import RiskSettings
from trading_agents.core import (
    DecisionContext,
    EngineConfig,
    OrderIntent,
    PortfolioView,
    RiskEngine,
    StrategyDecision,
    run_engine,
)
from trading_agents.journal import Ledger

DAY = pd.Timestamp("2024-03-01")


def view(
    cash: float = 100_000.0, positions: dict[str, int] | None = None, price: float = 100.0
) -> PortfolioView:
    positions = positions or {}
    equity = cash + sum(q * price for q in positions.values())
    return PortfolioView(cash, equity, positions, {t: price for t in positions}, equity, equity, "ACTIVE")


def test_ten_times_the_limit_is_clipped_to_max_position_pct_with_reason() -> None:
    risk = RiskEngine(RiskSettings(max_position_pct=0.2, max_order_notional=1e9))
    check = risk.check(OrderIntent("GOOG", "buy", 2_000), view(), 100.0, DAY, DAY)
    assert (check.quantity, check.vetoed) == (200, False)  # 20% of 100k at 100
    [event] = check.events
    assert (event.kind, event.rule, event.ticker) == ("clip", "max_position_pct", "GOOG")
    assert "2000 -> 200" in event.detail and "20%" in event.detail


def test_clips_apply_in_order_notional_then_position() -> None:
    risk = RiskEngine(RiskSettings(max_position_pct=0.2, max_order_notional=15_000))
    check = risk.check(OrderIntent("GOOG", "buy", 2_000), view(positions={"GOOG": 100}), 100.0, DAY, DAY)
    # equity 110k: position cap 220 shares -> 120 more; notional cap 150 shares
    assert [e.rule for e in check.events] == ["max_order_notional", "max_position_pct"]
    assert check.quantity == 120


def test_buy_max_resolves_before_checks_with_headroom() -> None:
    risk = RiskEngine(
        RiskSettings(max_position_pct=1.0, max_order_notional=1e9), commission=0.01, slippage_bps=100
    )
    check = risk.check(OrderIntent("GOOG", "buy"), view(cash=10_000.0), 100.0, DAY, DAY)
    assert check.quantity == 98  # floor(10000 / (100 * 1.01 * 1.01)) = floor(98.03)
    assert check.events == []


def test_vetoes_name_their_rule() -> None:
    s = RiskSettings(
        max_position_pct=0.2, max_order_notional=25_000, max_gross_exposure_pct=0.5, max_data_age_days=3
    )
    risk = RiskEngine(s)
    full = risk.check(
        OrderIntent("GOOG", "buy", 10), view(cash=80_000, positions={"GOOG": 200}), 100.0, DAY, DAY
    )
    assert full.vetoed and full.events[-1].rule == "max_position_pct"

    stale = risk.check(OrderIntent("GOOG", "buy", 1), view(), 100.0, DAY, DAY - pd.Timedelta(days=4))
    assert (
        stale.vetoed
        and stale.events[0].rule == "max_data_age_days"
        and "4 days old" in stale.events[0].detail
    )

    short = risk.check(OrderIntent("GOOG", "sell", 5), view(), 100.0, DAY, DAY)
    assert short.vetoed and short.events[0].rule == "long_only"

    bad = risk.check(OrderIntent("GOOG", "buy", 5, "limit"), view(), 100.0, DAY, DAY)
    assert bad.vetoed and bad.events[0].rule == "invalid_intent"

    gross = risk.check(
        OrderIntent("MSFT", "buy", 400),
        view(cash=60_000, positions={"GOOG": 150, "AAPL": 150}),
        100.0,
        DAY,
        DAY,
    )
    # equity 90k: notional 400 -> 250, position 20% -> 180, gross 50% of 90k - 30k held -> 150
    assert [e.rule for e in gross.events] == [
        "max_order_notional",
        "max_position_pct",
        "max_gross_exposure_pct",
    ]
    assert gross.quantity == 150


def test_oversized_sell_is_clipped_to_the_position() -> None:
    check = RiskEngine(RiskSettings()).check(
        OrderIntent("GOOG", "sell", 50), view(positions={"GOOG": 30}), 100.0, DAY, DAY
    )
    assert check.quantity == 30 and [e.rule for e in check.events] == ["long_only"]


def test_halted_allows_only_reducing_orders() -> None:
    risk = RiskEngine(RiskSettings(), state="HALTED")
    pv = view(positions={"GOOG": 30})
    buy = risk.check(OrderIntent("GOOG", "buy", 1), pv, 100.0, DAY, DAY)
    assert buy.vetoed and buy.events[0].rule == "risk_state" and "HALTED" in buy.events[0].detail
    sell = risk.check(OrderIntent("GOOG", "sell"), pv, 100.0, DAY, DAY)
    assert (sell.quantity, sell.vetoed) == (30, False)
    reducing = RiskEngine(RiskSettings(), state="REDUCING")
    assert reducing.check(OrderIntent("MSFT", "buy", 1), pv, 100.0, DAY, DAY).vetoed


def test_kill_switch_daily_loss_and_drawdown() -> None:
    s = RiskSettings(max_daily_loss_pct=0.05, max_drawdown_pct=0.10)
    risk = RiskEngine(s, peak_equity=100.0, day_start_equity=100.0)
    assert risk.update(100.0, DAY) == []
    assert risk.update(96.0, DAY + pd.Timedelta(days=1)) == []  # -4% on the day
    [halt] = risk.update(91.0, DAY + pd.Timedelta(days=2))  # -5.2% on the day
    assert (halt.kind, halt.rule, risk.state) == ("halt", "max_daily_loss_pct", "HALTED")
    assert risk.update(120.0, DAY + pd.Timedelta(days=3)) == []  # stays halted until resume
    assert risk.state == "HALTED"

    dd = RiskEngine(s, peak_equity=100.0, day_start_equity=100.0)
    for i, equity in enumerate([97.0, 94.0, 91.5, 89.5]):  # never -5% in a day, but -10.5% from the peak
        events = dd.update(equity, DAY + pd.Timedelta(days=i))
    assert [e.rule for e in events] == ["max_drawdown_pct"]
    dd.resume()
    assert (dd.state, dd.peak_equity) == ("ACTIVE", 89.5)


class Trader:
    """Buys 10 shares every bar."""

    name = "trader"

    def decide(self, ctx: DecisionContext) -> StrategyDecision:
        held = ctx.portfolio.positions.get("X", 0)
        intents = [OrderIntent("X", "buy", 10)]
        if ctx.as_of.day == 8:
            intents.append(OrderIntent("X", "sell", held // 2 or None))
        return StrategyDecision(intents)


def bars(closes: list[float], start: str = "2024-01-02") -> pd.DataFrame:
    idx = pd.bdate_range(start, periods=len(closes), name="Date")
    return pd.DataFrame(
        {"Open": closes, "High": closes, "Low": closes, "Close": closes, "Volume": 1e9}, index=idx
    )


def test_kill_switch_halts_engine_and_survives_reopening(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    cfg = EngineConfig(
        cash=1_000.0,
        commission=0.0,
        slippage_bps=0.0,
        risk=RiskSettings(max_position_pct=1.0, max_daily_loss_pct=0.05, max_drawdown_pct=0.5),
        decide_on_last_bar=True,
        close_at_end=False,
    )
    # 2024-01-02..05: buys 10 @ 10 on each bar; on 01-05 a -40% close trips the daily-loss limit.
    first = bars([10.0, 10.0, 10.0, 6.0])
    with Ledger.open(path) as ledger:
        run_engine({"X": first}, Trader(), cfg, ledger, "paper", kind="session")
    with Ledger.open(path) as ledger:
        acct = ledger.account("paper")
        assert acct is not None and acct.risk_state == "HALTED"
        assert "daily loss" in acct.halt_reason
        # The order decided on the halting bar was vetoed; nothing grows from now on.
        res = run_engine(
            {"X": bars([10.0, 10.0, 10.0, 6.0, 6.0, 6.0])}, Trader(), cfg, ledger, "paper", kind="session"
        )
        assert ledger.reconcile("paper") == []
    assert res.resumed_steps == 4
    buys = res.orders[res.orders["side"] == "buy"]
    assert list(buys["status"]) == ["filled", "filled", "filled", "rejected", "rejected", "rejected"]
    assert res.equity["pos_X"].iloc[-1] == 15  # 30 held, half sold on 01-08 (decided) -> fills 01-09
    sell = res.orders[res.orders["side"] == "sell"].iloc[0]
    assert sell["status"] == "filled"
    rules = [e["rule"] for e in res.risk_events]
    assert rules[0] == "max_daily_loss_pct" and set(rules[1:]) == {"risk_state"}

    with Ledger.open(path) as ledger:
        [change] = ledger.set_risk_state("ACTIVE", "checked", run_id="paper")
        assert (change.old, change.new) == ("HALTED", "ACTIVE")
        res = run_engine({"X": bars([10.0] * 4 + [6.0] * 3)}, Trader(), cfg, ledger, "paper", kind="session")
        assert ledger.account("paper").risk_state == "ACTIVE"  # type: ignore[union-attr]
    assert res.orders.iloc[-1]["status"] == "pending"  # the buy decided after resume waits for the next bar


def test_invalid_model_output_is_a_veto_not_a_crash() -> None:
    class Garbage:
        name = "garbage"

        def decide(self, ctx: DecisionContext) -> StrategyDecision:
            return StrategyDecision(
                [
                    OrderIntent("X", "hold", 5),  # type: ignore[arg-type]
                    OrderIntent("X", "buy", -3),
                    OrderIntent("NOPE", "buy", 1),
                    OrderIntent("X", "buy", 1.5),  # type: ignore[arg-type]
                ]
            )

    with Ledger.open(":memory:") as ledger:
        res = run_engine({"X": bars([10.0] * 3)}, Garbage(), EngineConfig(), ledger, "g")
        assert ledger.reconcile("g") == []
    assert res.fills.empty
    assert {e["rule"] for e in res.risk_events} == {"invalid_intent", "unknown_ticker"}
    assert set(res.orders["status"]) == {"rejected"}
    assert len(res.orders) == 6  # 3 storable rejections on each of the 2 decision bars


@pytest.mark.parametrize("state", ["HALTED", "REDUCING"])
def test_manual_halt_cancels_pending_growth_orders(tmp_path: Path, state: str) -> None:
    cfg = EngineConfig(cash=1_000.0, decide_on_last_bar=True, close_at_end=False)
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        run_engine({"X": bars([10.0, 10.0])}, Trader(), cfg, ledger, "paper", kind="session")
        assert len(ledger.orders("paper", status="pending")) == 1
        [default, change] = ledger.set_risk_state(state, "news")
        assert default.run_id is None and change.cancelled_orders == 1
        assert ledger.orders("paper", status="pending") == []
        assert ledger.session_default_state() == (state, "news")


def test_engine_adopts_a_halt_written_by_another_connection_mid_run(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    cfg = EngineConfig(
        cash=10_000.0, commission=0.0, slippage_bps=0.0, risk=RiskSettings(max_position_pct=1.0)
    )

    def halt_at_step_3(event: object) -> None:
        if event.index == 3:  # type: ignore[attr-defined]
            with Ledger.open(path) as other:  # what `trading-agents halt` does while a session runs
                other.set_risk_state("HALTED", "operator", run_id="r")

    with Ledger.open(path) as ledger:
        res = run_engine({"X": bars([10.0] * 8)}, Trader(), cfg, ledger, "r", on_step=halt_at_step_3)
        acct = ledger.account("r")
        assert ledger.reconcile("r") == []
    assert acct is not None and (acct.risk_state, acct.halt_reason) == ("HALTED", "operator")
    buys = res.orders[res.orders["side"] == "buy"]
    # Steps 0-2 filled; the buy decided at step 3 was cancelled by the halt; later buys rejected.
    assert list(buys["status"]) == ["filled"] * 3 + ["cancelled"] + ["rejected"] * 3
    assert "cancelled: HALTED" in buys.iloc[3]["reason"]
