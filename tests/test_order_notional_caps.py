"""The per-order notional cap: a fraction of equity scales with the account, an absolute one
does not, both are off by default, and every results folder names the caps it traded under."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from trading_agents.cli.app import main
from trading_agents.config.settings import RiskSettings
from trading_agents.core import OrderIntent, PortfolioView, RiskEngine
from trading_agents.core.risk import caps_in_force, describe_order_notional, order_notional_cap

DAY = pd.Timestamp("2024-03-01")


def view(cash: float) -> PortfolioView:
    return PortfolioView(cash, cash, {}, {}, cash, cash, "ACTIVE")


def test_pct_cap_scales_with_equity_and_the_absolute_one_does_not() -> None:
    pct = RiskEngine(RiskSettings(max_position_pct=1.0, max_order_notional_pct=0.25))
    for cash in (100_000.0, 1_000_000.0):
        check = pct.check(OrderIntent("GOOG", "buy"), view(cash), 100.0, DAY, DAY)
        assert check.quantity == int(cash * 0.25 / 100)
        assert [e.rule for e in check.events] == ["max_order_notional"]
        assert "25% of equity" in check.events[0].detail
    absolute = RiskEngine(RiskSettings(max_position_pct=1.0, max_order_notional=25_000))
    check = absolute.check(OrderIntent("GOOG", "buy"), view(1_000_000.0), 100.0, DAY, DAY)
    assert check.quantity == 250 and "25,000" in check.events[0].detail


def test_both_caps_the_lower_wins_and_none_by_default() -> None:
    both = RiskSettings(max_order_notional=30_000, max_order_notional_pct=0.25)
    assert order_notional_cap(both, 100_000) == 25_000 and order_notional_cap(both, 200_000) == 30_000
    assert describe_order_notional(both) == "30,000 or 25% of equity, whichever is lower"
    assert order_notional_cap(RiskSettings(), 1e9) is None
    assert describe_order_notional(RiskSettings()) == "none"
    check = RiskEngine(RiskSettings(max_position_pct=1.0)).check(
        OrderIntent("GOOG", "buy"), view(1_000_000.0), 100.0, DAY, DAY
    )
    assert check.quantity == 10_000 and check.events == []  # only the cash bounds it


def _backtest(capsys: pytest.CaptureFixture[str], out: Path, *extra: str) -> dict:
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "backtest",
                "-s",
                "buy-hold",
                "--ticker",
                "GOOG",
                "--start",
                "2012-01-03",
                "--end",
                "2012-06-29",
                "--no-baselines",
                "--out",
                str(out),
                "--json",
                *extra,
            ]
        )
    captured = capsys.readouterr()
    assert exc.value.code in (0, None), captured.err
    return json.loads(captured.out)


def test_buy_hold_with_a_million_invests_the_same_fraction_and_names_its_caps(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    small = _backtest(capsys, tmp_path / "small", "--cash", "100000", "--max-position-pct", "1")
    big = _backtest(capsys, tmp_path / "big", "--cash", "1000000", "--max-position-pct", "1")
    # fully invested either way: the same return to a fraction of a percent (whole shares)
    assert big["metrics"]["return_pct"] == pytest.approx(small["metrics"]["return_pct"], abs=0.3)
    assert big["metrics"]["return_pct"] == pytest.approx(big["metrics"]["buy_hold_return_pct"], abs=2.5)
    caps = big["meta"]["risk_caps"]
    assert caps == caps_in_force(RiskSettings(max_position_pct=1.0))
    assert caps["max_order_notional"] is None and caps["max_order_notional_pct"] is None
    written = json.loads((tmp_path / "big" / "summary.json").read_text())
    assert written["meta"]["risk_caps"] == caps
    report = (tmp_path / "big" / "report.html").read_text()
    assert 'class="caps"' in report and "risk.max_position_pct" in report and "100% of equity" in report
