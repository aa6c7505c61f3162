"""SIGKILL a paper session and a backtest at random moments and restart them: nothing doubled,
nothing lost, no partial file (the loops live in scripts/kill_loop.py).

The default suite runs a few kills of each; ``make test-slow`` runs 50 of each. One real-LLM
session kill is in tests/test_session.py; a kill inside a step's transaction is in
tests/test_engine_run.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

from trading_agents.config.settings import project_root


def _kill_loop() -> ModuleType:
    path = project_root() / "scripts" / "kill_loop.py"
    spec = importlib.util.spec_from_file_location("kill_loop", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


kill_loop = _kill_loop()


def _assert_session_survived(report: dict, kills: int) -> None:
    assert report["kills"] == kills
    assert report["problems"] == []  # unique ids, one fill per filled order, reconcile clean
    assert report["differences"] == []  # orders, fills, steps, cash, positions as uninterrupted
    assert report["lost_fills"] == 0 and report["duplicated_orders"] == 0
    assert report["steps"] == report["expected_steps"] and report["fills"] > 0


def _assert_backtest_survived(report: dict, kills: int) -> None:
    assert report["kills"] == kills
    assert report["problems"] == []  # every visible file complete after every kill; lock free
    assert report["identical"] is True  # the rerun equals an uninterrupted run
    # SIGKILL between a temporary file's creation and its rename can leave that hidden file (no
    # cleanup is possible); it must be one of ours, never a visible or partial result
    prefixes = (*(f".{name}." for name in (*kill_loop.RESULT_FILES, "baselines.csv")), ".write-test-")
    assert all(n.startswith(prefixes) for n in report["hidden_tmp_files"]), report["hidden_tmp_files"]
    assert report["hidden_tmp_files_now"] == []  # the next run, holding the lock, removed them


def test_session_survives_a_few_kills(tmp_path: Path) -> None:
    report = kill_loop.session_kill_loop(
        tmp_path, 4, start="2012-09-04", end="2013-02-28", sleep_ms=5.0, rng_seed=3
    )
    _assert_session_survived(report, 4)


def test_backtest_survives_a_few_kills(tmp_path: Path) -> None:
    report = kill_loop.backtest_kill_loop(tmp_path, 4, start="2011-01-03", rng_seed=4)
    _assert_backtest_survived(report, 4)


def test_the_checks_can_fail(tmp_path: Path) -> None:
    """The invariants catch a doubled order, a missing fill and a cut-short results file."""
    order = {"client_order_id": "a", "status": "filled"}
    fill = {"order_id": "a"}
    snap = {"reconcile": [], "orders": [order, order], "fills": [fill], "steps": []}
    assert any("duplicated" in p for p in kill_loop.check_session_invariants(snap))
    snap = {"reconcile": [], "orders": [order], "fills": [], "steps": []}
    assert any("0 fills" in p for p in kill_loop.check_session_invariants(snap))
    (tmp_path / "summary.json").write_text('{"metrics": {"return_pct": 1.')
    (tmp_path / ".summary.json.x1.tmp").write_text("{")
    problems, leftovers = kill_loop.check_results_folder(tmp_path)
    assert problems and "summary.json" in problems[0] and leftovers == [".summary.json.x1.tmp"]


@pytest.mark.slow
def test_session_survives_fifty_kills(tmp_path: Path) -> None:
    _assert_session_survived(kill_loop.session_kill_loop(tmp_path, 50), 50)


@pytest.mark.slow
def test_backtest_survives_fifty_kills(tmp_path: Path) -> None:
    _assert_backtest_survived(kill_loop.backtest_kill_loop(tmp_path, 50), 50)
