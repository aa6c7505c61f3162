"""`trading-agents ledger | halt | resume` against a real session ledger in TRADING_AGENTS_HOME."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from trading_agents.cli.app import main
from trading_agents.config.settings import RiskSettings
from trading_agents.core import DecisionContext, EngineConfig, OrderIntent, StrategyDecision, run_engine
from trading_agents.journal import Ledger


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    with pytest.raises(SystemExit) as exit_info:
        main(list(args))
    out, err = capsys.readouterr()
    return int(exit_info.value.code or 0), out, err


class Buyer:
    name = "buyer"

    def decide(self, ctx: DecisionContext) -> StrategyDecision:
        return StrategyDecision(
            [OrderIntent("GOOG", "buy", 5, reason="test")], {"ticker": "GOOG", "why": "test"}
        )


def bars(n: int) -> pd.DataFrame:
    idx = pd.bdate_range("2024-05-01", periods=n, name="Date")
    closes = [100.0 + i for i in range(n)]
    return pd.DataFrame(
        {"Open": closes, "High": closes, "Low": closes, "Close": closes, "Volume": 1e9}, index=idx
    )


SESSION = EngineConfig(
    cash=10_000.0,
    commission=0.0,
    slippage_bps=0.0,
    risk=RiskSettings(),
    decide_on_last_bar=True,
    close_at_end=False,
)


def session(home: Path, n: int) -> None:
    with Ledger.open(home / "ledger.sqlite") as ledger:
        run_engine({"GOOG": bars(n)}, Buyer(), SESSION, ledger, "paper", kind="session")


def test_no_ledger_is_a_message_not_a_traceback(capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = cli(capsys, "ledger")
    assert code == 0 and "no ledger yet; run `trading-agents run`" in out
    code, out, _ = cli(capsys, "ledger", "--json")
    assert code == 0 and json.loads(out)["exists"] is False
    code, out, _ = cli(capsys, "resume")
    assert code == 0 and "nothing to resume" in out


def test_ledger_shows_account_positions_orders_decisions(
    isolated_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session(isolated_state, 3)
    code, out, _ = cli(capsys, "ledger", "--json", "--limit", "2")
    assert code == 0
    doc = json.loads(out)
    run = doc["run"]
    assert run["run_id"] == "paper" and run["kind"] == "session"
    assert run["account"]["risk_state"] == "ACTIVE"
    assert run["account"]["cash"] == pytest.approx(10_000 - 5 * 101 - 5 * 102)
    assert run["account"]["equity"] == pytest.approx(run["account"]["cash"] + 10 * 102)
    assert run["positions"] == [
        {
            "ticker": "GOOG",
            "quantity": 10,
            "avg_price": pytest.approx(101.5),
            "last_price": 102.0,
            "market_value": 1020.0,
            "stop_loss": None,
        }
    ]
    assert [o["status"] for o in run["orders"]] == ["pending", "filled"]  # newest first, limited to 2
    assert [d["record"]["why"] for d in run["decisions"]] == ["test", "test"]
    assert run["reconcile_problems"] == []

    code, out, _ = cli(capsys, "ledger")
    assert code == 0 and "Positions" in out and "GOOG" in out and "ACTIVE" in out

    code, _, err = cli(capsys, "ledger", "--run", "nope")
    assert code == 2 and "no run 'nope'" in err


def test_halt_persists_blocks_buys_and_resume_restores(
    isolated_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    session(isolated_state, 2)
    code, out, _ = cli(capsys, "halt", "earnings tomorrow")
    assert code == 0 and "ACTIVE -> HALTED" in out and "1 pending order(s) cancelled" in out

    code, out, _ = cli(capsys, "ledger", "--json")
    account = json.loads(out)["run"]["account"]
    assert (account["risk_state"], account["halt_reason"]) == ("HALTED", "earnings tomorrow")

    session(isolated_state, 4)  # two more bars: the buys are vetoed while HALTED
    with Ledger.open(isolated_state / "ledger.sqlite") as ledger:
        orders = ledger.orders("paper")
        assert [o.status for o in orders] == ["filled", "cancelled", "rejected", "rejected"]
        assert ledger.positions("paper")["GOOG"].quantity == 5
        assert ledger.reconcile("paper") == []

    code, out, _ = cli(capsys, "resume", "--json")
    assert code == 0
    changes = json.loads(out)["changes"]
    assert {(c["run_id"], c["old"], c["new"]) for c in changes} == {
        (None, "HALTED", "ACTIVE"),
        ("paper", "HALTED", "ACTIVE"),
    }

    session(isolated_state, 5)
    with Ledger.open(isolated_state / "ledger.sqlite") as ledger:
        assert ledger.orders("paper")[-1].status == "pending"
        events = [(e["kind"], e["rule"]) for e in ledger.risk_events("paper")]
    assert ("halt", "manual") in events and ("resume", "manual") in events


def test_halt_before_the_first_session_applies_to_it(
    isolated_state: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = cli(capsys, "halt", "--reducing", "not yet")
    assert code == 0 and "new paper sessions: ACTIVE -> REDUCING" in out
    session(isolated_state, 2)
    with Ledger.open(isolated_state / "ledger.sqlite") as ledger:
        assert ledger.account("paper").risk_state == "REDUCING"  # type: ignore[union-attr]
        assert {o.status for o in ledger.orders("paper")} == {"rejected"}
