"""An agents backtest journals each bar into its results folder's ``ledger.sqlite`` as it goes
(what the dashboard streams while it runs); rule-based backtests keep the in-memory journal.

The folder's ledger must hold the same rows an exported in-memory run holds, settled into one
file with nothing beside it; a run that fails keeps the bars it recorded, and one that recorded
none leaves no folder.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.test_journal_parity import _tables
from trading_agents.backtest import runner
from trading_agents.backtest.baselines import make_baseline
from trading_agents.backtest.runner import (
    BacktestRequest,
    close_journal,
    open_journal,
    run_backtest,
    save_ledger,
)
from trading_agents.config.settings import load_settings
from trading_agents.core import EngineConfig, run_engine
from trading_agents.errors import LockBusyError
from trading_agents.journal import Ledger, MemoryJournal
from trading_agents.market import load_bars

START, END = "2012-01-03", "2012-12-31"


def test_folder_ledger_holds_the_exported_run_in_one_settled_file(tmp_path: Path) -> None:
    bars = load_bars(tickers=["GOOG"])
    config = EngineConfig.from_settings(load_settings())
    memory = MemoryJournal()
    run_engine(bars, make_baseline("sma-cross", fast=5, slow=20), config, memory, "bt", start=START, end=END)
    exported = save_ledger(memory, "bt", tmp_path)

    live = tmp_path / "live"
    live.mkdir()
    (live / "ledger.sqlite").write_text("left by an earlier run into the same folder")
    journal = open_journal("agents", live)
    assert isinstance(journal, Ledger)
    run_engine(bars, make_baseline("sma-cross", fast=5, slow=20), config, journal, "bt", start=START, end=END)
    close_journal(journal)
    assert save_ledger(journal, "bt", live) == live / "ledger.sqlite"

    assert [p.name for p in live.iterdir()] == ["ledger.sqlite"]  # no -wal, -shm or lock file
    assert (live / "ledger.sqlite").read_bytes()[18] == 1  # rollback-journal mode, like the export
    tables = _tables(live / "ledger.sqlite")
    assert len(tables["steps"]) > 200 and tables["fills"]
    assert tables == _tables(exported)


def test_a_folder_another_backtest_still_writes_is_left_alone(tmp_path: Path) -> None:
    with Ledger.open(tmp_path / "ledger.sqlite") as other, other.exclusive():
        other.create_run("other", kind="backtest", strategy="agents", starting_cash=1000.0)
        with pytest.raises(LockBusyError, match="another backtest writing"):
            open_journal("agents", tmp_path)
        assert [r.run_id for r in other.runs()] == ["other"]


def test_rule_based_backtests_keep_the_memory_journal(tmp_path: Path) -> None:
    assert isinstance(open_journal("sma-cross", tmp_path), MemoryJournal)
    assert list(tmp_path.iterdir()) == []


class _FailsAfter:
    """Buy-and-hold for ``bars`` decisions, then an error (a model crash, for the cleanup rule)."""

    name = "agents"

    def __init__(self, bars: int) -> None:
        self.inner, self.left = make_baseline("buy-hold"), bars

    def decide(self, ctx: Any) -> Any:
        if self.left == 0:
            raise RuntimeError("the model crashed")
        self.left -= 1
        return self.inner.decide(ctx)


@pytest.mark.parametrize("bars", [0, 2])
def test_a_failed_agents_backtest_keeps_only_the_bars_it_recorded(
    bars: int, tmp_path: Path, isolated_state: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(runner, "build_strategy", lambda *a, **k: _FailsAfter(bars))
    out = tmp_path / "out"
    request = BacktestRequest(
        strategy="agents", tickers=["GOOG"], start="2013-02-04", end="2013-02-28", baselines=False, out=out
    )
    with pytest.raises(RuntimeError, match="the model crashed"):
        run_backtest(request, load_settings())
    if bars == 0:
        assert not out.exists()  # nothing recorded: no half-made folder
        return
    assert [p.name for p in out.iterdir()] == ["ledger.sqlite"]
    with Ledger.open_reader(out / "ledger.sqlite") as led:
        (run,) = led.runs()
        assert run.status == "failed" and led.step_count(run.run_id) == bars
        assert led.reconcile(run.run_id) == []
