"""The SQLite ledger: schema and migrations, reconcile, backups, no secrets, clear open errors."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trading_agents.backtest.baselines import make_baseline
from trading_agents.config.settings import RiskSettings, load_settings
from trading_agents.core import EngineConfig, run_engine
from trading_agents.errors import UserInputError
from trading_agents.journal import Ledger, MemoryJournal, export_run
from trading_agents.journal.migrations import MIGRATIONS

CFG = EngineConfig(cash=10_000.0, risk=RiskSettings(max_position_pct=1.0, max_order_notional=1e9))


def walk(n: int = 60) -> pd.DataFrame:
    close = 50 * np.exp(np.cumsum(np.random.default_rng(4).normal(0, 0.02, n)))
    idx = pd.bdate_range("2021-01-04", periods=n, name="Date")
    return pd.DataFrame({"Open": close, "High": close * 1.01, "Low": close * 0.99, "Close": close}, index=idx)


def test_schema_wal_foreign_keys_and_migrations(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger.open(path) as ledger:
        assert ledger.migrations_applied() == [m.__name__ for m in MIGRATIONS]
    with Ledger.open(path) as ledger:  # reopening applies nothing twice
        assert ledger.migrations_applied() == [m.__name__ for m in MIGRATIONS]
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {
        "schema_version",
        "runs",
        "account_state",
        "steps",
        "orders",
        "fills",
        "positions",
        "decisions",
        "risk_events",
    } <= tables
    db.close()
    with Ledger.open(path) as ledger, pytest.raises(sqlite3.IntegrityError), ledger.transaction() as conn:
        conn.execute(
            "INSERT INTO fills (client_order_id, run_id, ticker, side, quantity, price, commission,"
            " slippage_cost, filled_at) VALUES ('nope', 'nope', 'X', 'buy', 1, 1, 0, 0, '2024-01-01')"
        )


def test_reconcile_is_clean_and_catches_tampering(tmp_path: Path) -> None:
    path = tmp_path / "l.sqlite"
    with Ledger.open(path) as ledger:
        res = run_engine({"X": walk()}, make_baseline("random", seed=2, p_trade=0.3), CFG, ledger, "r")
        assert len(res.fills) > 4
        assert ledger.reconcile("r") == []
        with ledger.transaction() as db:
            db.execute("UPDATE account_state SET cash = cash + 1 WHERE run_id = 'r'")
            db.execute("UPDATE fills SET quantity = quantity + 1 WHERE id = 1")
        problems = ledger.reconcile("r")
    assert any(p.startswith("cash") for p in problems)
    assert any("filled_quantity" in p for p in problems)
    assert any(p.startswith("X: position") for p in problems)


def test_memory_journal_export_to_file(tmp_path: Path) -> None:
    journal = MemoryJournal()
    res = run_engine({"X": walk()}, make_baseline("sma-cross", fast=3, slow=8), CFG, journal, "bt")
    export_run(journal, "bt", tmp_path / "copy.sqlite")
    with Ledger.open(tmp_path / "copy.sqlite") as copy:
        assert copy.reconcile("bt") == []
        assert copy.step_count("bt") == len(res.equity)
        assert [o.client_order_id for o in copy.orders("bt")] == list(res.orders["client_order_id"])


def test_secrets_are_never_stored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRADING_AGENTS_HUGGINGFACE__TOKEN", "hf_supersecret123")
    settings = load_settings()
    assert settings.huggingface.token is not None
    path = tmp_path / "l.sqlite"
    with Ledger.open(path) as ledger:
        run_engine(
            {"X": walk(10)}, make_baseline("buy-hold"), CFG, ledger, "r", record_config=settings.public_dict()
        )
        assert ledger.get_run("r").config["settings"]["risk"]["max_position_pct"] == 0.2  # type: ignore[union-attr]
    assert b"hf_supersecret123" not in path.read_bytes()
    wal = Path(f"{path}-wal")
    assert not wal.exists() or b"hf_supersecret123" not in wal.read_bytes()


def test_not_a_ledger_is_a_clear_error(tmp_path: Path) -> None:
    bogus = tmp_path / "bogus.sqlite"
    bogus.write_bytes(b"this is not sqlite at all" * 100)
    with pytest.raises(UserInputError, match="not a usable trading-agents ledger"):
        Ledger.open(bogus)
    with pytest.raises(UserInputError, match="is a directory"):
        Ledger.open(tmp_path)


def test_decisions_and_risk_events_are_recorded_per_step() -> None:
    with Ledger.open(":memory:") as ledger:
        res = run_engine({"X": walk()}, make_baseline("sma-cross", fast=3, slow=8), CFG, ledger, "r")
        recent = ledger.decisions("r", limit=2)
    assert res.decisions and all(d["strategy"] == "sma-cross" for d in res.decisions)
    assert [d["record"] for d in recent] == [d["record"] for d in res.decisions[-2:]]
    assert all(d["ticker"] == "X" for d in res.decisions)
