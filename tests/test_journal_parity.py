"""The two journals give the same run: every baseline on several tickers, and an agents
backtest served from the response cache, through ``MemoryJournal`` and the SQLite ledger.

Equity, fills, orders, risk events (their wall-clock ``created_at`` aside), decisions and
the metrics must be identical, and the exported in-memory run must hold the same ledger rows
as the ledger written step by step.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pandas as pd
import pytest

from trading_agents.backtest.baselines import make_baseline
from trading_agents.backtest.metrics import compute_metrics
from trading_agents.backtest.runner import BASELINES
from trading_agents.config.settings import load_settings
from trading_agents.core import EngineConfig, EngineResult, Strategy, run_engine
from trading_agents.journal import Ledger, MemoryJournal, export_run
from trading_agents.market import load_bars

TICKERS = ["GOOG", "IXIC", "SPX"]
START, END = "2012-01-03", "2013-06-28"
WALL_CLOCK = {"created_at", "updated_at", "applied_at"}


def _both(bars: dict[str, pd.DataFrame], make: Any, config: EngineConfig, tmp: Path) -> tuple[Any, ...]:
    """The run on a MemoryJournal (and its export) and on a ledger file, with a fresh strategy each."""
    memory = MemoryJournal()
    a = run_engine(bars, make(), config, memory, "parity", start=START, end=END)
    export_run(memory, "parity", tmp / "exported.sqlite")
    with Ledger.open(tmp / "ledger.sqlite") as ledger:
        b = run_engine(bars, make(), config, ledger, "parity", start=START, end=END)
    return a, b


def _same(a: EngineResult, b: EngineResult, bars: dict[str, pd.DataFrame]) -> None:
    pd.testing.assert_frame_equal(a.equity, b.equity)
    pd.testing.assert_frame_equal(a.fills, b.fills)
    pd.testing.assert_frame_equal(a.orders, b.orders)
    pd.testing.assert_frame_equal(a.trades, b.trades)
    strip = [{k: v for k, v in e.items() if k != "created_at"} for e in a.risk_events]
    assert strip == [{k: v for k, v in e.items() if k != "created_at"} for e in b.risk_events]
    assert _timeless(a.decisions) == _timeless(b.decisions)
    assert compute_metrics(a, bars) == compute_metrics(b, bars)


TIMINGS = {"latency_s", "ttft_s", "wall_s"}  # how long a cached reply took differs; nothing else may


def _timeless(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _timeless(v) for k, v in obj.items() if k not in TIMINGS}
    if isinstance(obj, list):
        return [_timeless(v) for v in obj]
    return obj


def _tables(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    db = sqlite3.connect(path)
    try:
        names = [
            r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
        ]
        out = {}
        for name in names:
            cur = db.execute(f"SELECT * FROM {name} ORDER BY rowid")
            keep = [i for i, d in enumerate(cur.description) if d[0] not in WALL_CLOCK]
            out[name] = [tuple(row[i] for i in keep) for row in cur]
        return out
    finally:
        db.close()


@pytest.mark.parametrize("name", BASELINES)
def test_every_baseline_is_the_same_run_in_both_journals(name: str, tmp_path: Path) -> None:
    bars = load_bars(tickers=TICKERS)
    config = EngineConfig.from_settings(load_settings())

    def make() -> Strategy:
        return make_baseline(name, **({"seed": 7} if name == "random" else {}))

    a, b = _both(bars, make, config, tmp_path)
    _same(a, b, bars)
    assert len(a.equity) > 300
    assert _tables(tmp_path / "exported.sqlite") == _tables(tmp_path / "ledger.sqlite")


def test_an_agents_backtest_from_the_response_cache_is_the_same_run_in_both_journals(tmp_path: Path) -> None:
    from trading_agents.agents.desk_strategy import build_agent_strategy

    settings = load_settings()
    bars = load_bars(tickers=["GOOG"])
    config = EngineConfig.from_settings(settings)
    cache = tmp_path / "responses.sqlite"
    window = {"start": "2013-02-26", "end": "2013-02-28"}
    strategies: list[Any] = []

    def make() -> Any:
        strategy = build_agent_strategy(settings, use_cache=True, cache_path=cache)
        strategies.append(strategy)
        return strategy

    try:
        first = run_engine(bars, make(), config, MemoryJournal(), "agents", **window)  # fills the cache
        memory = MemoryJournal()
        a = run_engine(bars, make(), config, memory, "agents", **window)
        export_run(memory, "agents", tmp_path / "exported.sqlite")
        with Ledger.open(tmp_path / "ledger.sqlite") as ledger:
            b = run_engine(bars, make(), config, ledger, "agents", **window)
        calls = [s.llm_stats() for s in strategies]
    finally:
        for s in strategies:
            s.close()
    assert calls[0]["calls"] > 0
    assert calls[1]["calls"] == calls[2]["calls"] == 0  # both replays served from the cache
    assert calls[1]["cached_calls"] == calls[2]["cached_calls"] == calls[0]["calls"]
    _same(a, b, bars)
    pd.testing.assert_frame_equal(first.equity, a.equity)
    assert len(a.decisions) == 2
    assert _tables(tmp_path / "exported.sqlite")["orders"] == _tables(tmp_path / "ledger.sqlite")["orders"]
