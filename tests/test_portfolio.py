"""The portfolio step (weights under the caps, rebalancing orders), the equal-weight baselines
and the liquidity cap, on the bundled universe's real bars."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pandas as pd
import pytest

from trading_agents.backtest.baselines import EqualWeight, make_baseline
from trading_agents.cli.app import main
from trading_agents.config.settings import RiskSettings
from trading_agents.core import DecisionContext, EngineConfig, PortfolioView, StrategyDecision, run_engine
from trading_agents.core.portfolio import (
    CASH,
    clip_weights,
    conviction_weights,
    current_weights,
    rebalance_intents,
)
from trading_agents.journal import MemoryJournal
from trading_agents.market import load_bars

UNIVERSE = ["AAPL", "GOOG", "IBM", "MSFT"]
RISK = RiskSettings(max_position_pct=0.20, max_gross_exposure_pct=0.9)


def view(cash: float, positions: dict[str, int], prices: dict[str, float]) -> PortfolioView:
    equity = cash + sum(q * prices[t] for t, q in positions.items())
    return PortfolioView(cash, equity, positions, prices, equity, equity, "ACTIVE")


def rules(clips: list[dict]) -> set[tuple[str, str]]:
    return {(c["ticker"], c["rule"]) for c in clips}


# -- weights under every cap ---------------------------------------------------------------------


def test_an_answer_of_300_percent_in_one_ticker_and_negative_cash_is_clipped_under_every_cap() -> None:
    weights, clips = clip_weights({"AAPL": 3.0, "GOOG": 0.1, "cash": -2.1}, UNIVERSE, RISK)
    assert weights["AAPL"] == RISK.max_position_pct
    assert weights["GOOG"] == 0.1 and weights["IBM"] == weights["MSFT"] == 0.0
    assert weights[CASH] == pytest.approx(0.7) and weights[CASH] >= 0
    assert ("AAPL", "max_position_pct") in rules(clips) and (CASH, "cash") in rules(clips)
    assert next(c for c in clips if c["rule"] == "max_position_pct")["asked"] == 3.0


@pytest.mark.parametrize("gross, expected_rule", [(0.5, "max_gross_exposure_pct"), (4.0, "cash")])
def test_the_sum_stays_within_gross_exposure_and_never_borrows(gross: float, expected_rule: str) -> None:
    risk = RiskSettings(max_position_pct=0.5, max_gross_exposure_pct=gross)
    weights, clips = clip_weights(dict.fromkeys(UNIVERSE, 0.5), UNIVERSE, risk)
    invested = sum(weights[t] for t in UNIVERSE)
    assert invested == pytest.approx(min(gross, 1.0), abs=1e-5)
    assert all(0 <= weights[t] <= risk.max_position_pct for t in UNIVERSE)
    assert weights[CASH] == pytest.approx(1.0 - invested, abs=1e-5)
    assert {c["rule"] for c in clips} == {expected_rule}


def test_text_nan_negative_and_unknown_weights_become_zero_and_are_recorded() -> None:
    weights, clips = clip_weights(
        {"AAPL": "lots", "GOOG": math.nan, "IBM": -0.3, "MSFT": True, "TSLA": 0.2}, UNIVERSE, RISK
    )
    assert all(weights[t] == 0.0 for t in UNIVERSE) and weights[CASH] == 1.0
    assert rules(clips) == {(t, "invalid_weight") for t in UNIVERSE} | {("TSLA", "unknown_ticker")}
    json.dumps(clips)  # recorded in the decision record as is


# -- conviction mode -------------------------------------------------------------------------------


def test_conviction_mode_is_deterministic_and_follows_action_and_conviction() -> None:
    reports = {"AAPL": ("BUY", 0.5), "GOOG": ("SELL", 0.9), "IBM": ("HOLD", 0.7), "MSFT": None}
    current = {"AAPL": 0.05, "GOOG": 0.15, "IBM": 0.12, "MSFT": 0.08}
    first = conviction_weights(reports, current, UNIVERSE, RISK)
    assert all(conviction_weights(reports, current, UNIVERSE, RISK) == first for _ in range(5))
    weights, clips = first
    assert weights == {"AAPL": 0.1, "GOOG": 0.0, "IBM": 0.12, "MSFT": 0.08, CASH: 0.7}
    assert clips == []


# -- rebalancing orders ---------------------------------------------------------------------------


def test_orders_are_sells_first_then_buys_within_the_cash_on_hand() -> None:
    prices = {"AAPL": 100.0, "GOOG": 50.0, "IBM": 200.0, "MSFT": 25.0}
    book = view(5_000.0, {"AAPL": 300, "IBM": 100}, prices)  # equity 55,000: AAPL 55%, IBM 36%
    targets = {"AAPL": 0.2, "GOOG": 0.2, "IBM": 0.2, "MSFT": 0.2}
    intents, skipped = rebalance_intents(targets, book, min_trade_pct=0.01, commission=0.001, slippage_bps=5)
    sides = [i.side for i in intents]
    assert sides == ["sell", "sell", "buy", "buy"]
    assert [i.ticker for i in intents] == ["AAPL", "IBM", "GOOG", "MSFT"]
    assert intents[0].quantity == math.floor((300 * 100 - 0.2 * 55_000) / 100)
    spent = sum(i.quantity * prices[i.ticker] * 1.0005 * 1.001 for i in intents if i.side == "buy")
    assert 4_900 < spent <= 5_000.0  # today's sell proceeds arrive tomorrow: buys share today's cash
    assert skipped == []


def test_no_trade_under_min_trade_pct_but_a_zero_target_closes_the_position() -> None:
    prices = {"AAPL": 100.0, "GOOG": 100.0}
    book = view(79_100.0, {"AAPL": 100, "GOOG": 109}, prices)  # 10% and 10.9% of 100,000
    targets = {"AAPL": 0.105, "GOOG": 0.10}
    intents, skipped = rebalance_intents(targets, book, min_trade_pct=0.01, commission=0.0, slippage_bps=0)
    assert intents == [] and len(skipped) == 2
    intents, _ = rebalance_intents(targets, book, min_trade_pct=0.001, commission=0.0, slippage_bps=0)
    assert [(i.ticker, i.side, i.quantity) for i in intents] == [("GOOG", "sell", 9), ("AAPL", "buy", 5)]
    tiny = view(99_000.0, {"AAPL": 10}, prices)  # 1% of equity, target 0: closed despite the floor
    intents, _ = rebalance_intents({"AAPL": 0.0}, tiny, min_trade_pct=0.05, commission=0.0, slippage_bps=0)
    assert [(i.ticker, i.side, i.quantity) for i in intents] == [("AAPL", "sell", 10)]


class SwitchTargets:
    """90% in AAPL until ``switch``, then 90% in IBM, through the portfolio step's orders."""

    name = "switch-targets"

    def __init__(self, switch: int) -> None:
        self.switch = switch
        self.days: list[tuple[list[str], dict[str, float]]] = []

    def decide(self, ctx: DecisionContext) -> StrategyDecision:
        targets = {"AAPL": 0.9, "IBM": 0.0} if ctx.step < self.switch else {"AAPL": 0.0, "IBM": 0.9}
        intents, _ = rebalance_intents(
            targets, ctx.portfolio, min_trade_pct=0.01, commission=0.001, slippage_bps=5
        )
        self.days.append(
            ([f"{i.side} {i.ticker}" for i in intents], current_weights(ctx.portfolio, ["AAPL", "IBM"]))
        )
        return StrategyDecision(intents, {"portfolio": {"targets": targets}})


def test_the_book_moves_toward_new_targets_over_several_days_on_real_bars() -> None:
    bars = load_bars(tickers=["AAPL", "IBM"])
    risk = RiskSettings(max_position_pct=1.0, max_adv_pct=None)
    config = EngineConfig(cash=100_000.0, commission=0.001, slippage_bps=5, risk=risk)
    strategy = SwitchTargets(switch=2)
    run_engine(bars, strategy, config, MemoryJournal(), "rebalance", start="2012-06-01", end="2012-06-14")
    orders = [day[0] for day in strategy.days]
    weights = [day[1] for day in strategy.days]
    assert orders[0] == ["buy AAPL"] and weights[1]["AAPL"] == pytest.approx(0.9, abs=0.01)
    assert orders[2] == ["sell AAPL", "buy IBM"]  # sells first; the buy gets only the cash on hand
    assert 0.05 < weights[3]["IBM"] < 0.2 and weights[3]["AAPL"] == 0.0
    assert orders[3] == ["buy IBM"]  # the rest follows once the sale has settled
    assert weights[4]["IBM"] == pytest.approx(0.9, abs=0.01)
    assert all(day == [] for day in orders[5:])  # on target: drift under min_trade_pct is left alone


# -- equal-weight baselines ------------------------------------------------------------------------


def test_equal_weight_buy_and_hold_matches_hand_arithmetic_on_two_tickers() -> None:
    bars = load_bars(tickers=["AAPL", "IBM"])
    risk = RiskSettings(max_position_pct=0.5)
    commission, slip = 0.001, 5.0
    config = EngineConfig(cash=100_000.0, commission=commission, slippage_bps=slip, risk=risk)
    strategy = EqualWeight(risk, commission, slip)
    result = run_engine(bars, strategy, config, MemoryJournal(), "ew", start="2012-09-04", end="2012-09-28")

    days = bars["AAPL"].loc["2012-09-04":"2012-09-28"].index
    s = slip / 10_000
    cash = 100_000.0
    quantities = {}
    for t in ("AAPL", "IBM"):
        close0 = bars[t].loc[days[0], "Close"]
        quantities[t] = math.floor(0.5 * 100_000.0 / (close0 * (1 + s) * (1 + commission)))
    for t, q in quantities.items():  # filled at the next open, slippage against us, commission on top
        price = bars[t].loc[days[1], "Open"] * (1 + s)
        cash -= q * price * (1 + commission)
    final = cash + sum(q * bars[t].loc[days[-1], "Close"] * (1 - commission) for t, q in quantities.items())

    buys = result.fills[result.fills["side"] == "buy"]
    assert dict(zip(buys["ticker"], buys["quantity"], strict=True)) == quantities
    assert set(buys["filled_at"]) == {days[1]}
    assert float(result.equity["equity"].iloc[-1]) == pytest.approx(final, rel=1e-9)


def test_one_over_n_monthly_rebalances_on_the_first_bar_of_each_month() -> None:
    bars = load_bars(tickers=["AAPL", "GOOG", "IBM", "MSFT"])
    risk = RiskSettings(max_position_pct=0.25)
    strategy = make_baseline("equal-weight-monthly", risk=risk, commission=0.001, slippage_bps=5.0)
    config = EngineConfig(cash=100_000.0, risk=risk)
    result = run_engine(bars, strategy, config, MemoryJournal(), "ew-m", start="2012-09-04", end="2012-12-31")
    decided = sorted({d["bar_date"][:7] for d in result.decisions if d["record"]})
    assert decided == ["2012-09", "2012-10", "2012-11", "2012-12"]
    first_days = {d["bar_date"] for d in result.decisions if d["record"]}
    assert first_days == {"2012-09-04", "2012-10-01", "2012-11-01", "2012-12-03"}


# -- liquidity ------------------------------------------------------------------------------------


def test_an_order_above_max_adv_pct_on_a_thin_day_of_real_data_is_clipped_and_listed(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    frame = load_bars(tickers=["AAPL"])["AAPL"]
    adv = (frame["Close"] * frame["Volume"]).rolling(20, min_periods=1).mean()
    thin = adv.iloc[20:].idxmin()  # AAPL's thinnest 20 days in the bundled history
    close = float(frame.loc[thin, "Close"])
    cap = math.floor(0.025 * float(adv.loc[thin]) / close)
    end = frame.index[frame.index.get_loc(thin) + 4]
    out = tmp_path / "thin"
    args = ["backtest", "-s", "buy-hold", "-t", "AAPL", "--start", str(thin.date()), "--end", str(end.date())]
    with pytest.raises(SystemExit) as exc:
        main([*args, "--cash", "100000000", "--no-baselines", "--out", str(out), "--json"])
    captured = capsys.readouterr()
    assert exc.value.code in (0, None), captured.err
    assert 0.2 * 100_000_000 / close > cap  # the position cap alone would allow far more

    rows = list(csv.DictReader((out / "rejected_orders.csv").open()))
    adv_rows = [r for r in rows if r["rule"] == "max_adv_pct"]
    assert len(adv_rows) == 1 and adv_rows[0]["kind"] == "clip" and adv_rows[0]["source"] == "risk"
    assert adv_rows[0]["date"] == str(thin.date()) and adv_rows[0]["ticker"] == "AAPL"
    assert adv_rows[0]["detail"].endswith("(risk.max_adv_pct)") and f"-> {cap}:" in adv_rows[0]["detail"]
    trades = pd.read_csv(out / "trades.csv")
    assert int(trades["size"].iloc[0]) == cap
    summary = json.loads(captured.out)
    assert summary["meta"]["risk_caps"]["max_adv_pct"] == 0.025
