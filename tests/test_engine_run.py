"""The step engine: no look-ahead, crash/restart, SIGKILL mid-transaction, locking, baselines."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from trading_agents.backtest.baselines import BASELINES, MacdStrategy, SmaCross, make_baseline
from trading_agents.config.settings import RiskSettings
from trading_agents.core import (
    DecisionContext,
    EngineConfig,
    LedgerIntegrityError,
    OrderIntent,
    StrategyDecision,
    run_engine,
)
from trading_agents.errors import DataValidationError, LockBusyError, UserInputError
from trading_agents.journal import Ledger

LOOSE = RiskSettings(
    max_position_pct=1.0, max_order_notional=1e9, max_daily_loss_pct=1.0, max_drawdown_pct=1.0
)
CFG = EngineConfig(cash=50_000.0, risk=LOOSE)


def walk(n: int = 250, seed: int = 7, start: str = "2020-01-01") -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
    open_ = close * (1 + rng.normal(0, 0.004, n))
    high = np.maximum(open_, close) * (1 + np.abs(rng.normal(0, 0.006, n)))
    low = np.minimum(open_, close) * (1 - np.abs(rng.normal(0, 0.006, n)))
    idx = pd.bdate_range(start, periods=n, name="Date")
    return pd.DataFrame({"Open": open_, "High": high, "Low": low, "Close": close, "Volume": 1e6}, index=idx)


class Recorder:
    """Records what it saw; buys when the close is above its mean so far, sells otherwise."""

    name = "recorder"

    def __init__(self) -> None:
        self.seen: list[tuple[pd.Timestamp, pd.Timestamp, int, float]] = []

    def decide(self, ctx: DecisionContext) -> StrategyDecision:
        df = ctx.bars["X"]
        self.seen.append((ctx.as_of, df.index[-1], len(df), float(df["Close"].sum())))
        held = ctx.portfolio.positions.get("X", 0)
        above = df["Close"].iloc[-1] > df["Close"].mean()
        if above and not held:
            return StrategyDecision([OrderIntent("X", "buy", 10)], {"seen": len(df)})
        if not above and held:
            return StrategyDecision([OrderIntent("X", "sell")], {"seen": len(df)})
        return StrategyDecision([])


def test_no_look_ahead_changing_future_bars_does_not_change_past_decisions() -> None:
    a = walk(40)
    b = a.copy()
    t = 20
    b.iloc[t + 1 :, :4] *= 3.0  # a very different future after bar t
    results = []
    recorders = []
    for bars in (a, b):
        rec = Recorder()
        with Ledger.open(":memory:") as ledger:
            results.append(run_engine({"X": bars}, rec, CFG, ledger, "r"))
        recorders.append(rec)
    assert all(as_of == last for as_of, last, _, _ in recorders[0].seen)
    assert recorders[0].seen[: t + 1] == recorders[1].seen[: t + 1]
    assert recorders[0].seen[t + 1] != recorders[1].seen[t + 1]
    cutoff = a.index[t]
    orders = [
        r.orders[r.orders["created_at"] <= cutoff].drop(columns=["updated_at", "status", "filled_quantity"])
        for r in results
    ]
    assert len(orders[0]) > 0
    pd.testing.assert_frame_equal(orders[0], orders[1])


def test_start_keeps_earlier_bars_as_history() -> None:
    df = walk(30)
    rec = Recorder()
    with Ledger.open(":memory:") as ledger:
        res = run_engine({"X": df}, rec, CFG, ledger, "r", start=df.index[10], end=df.index[20])
    assert rec.seen[0][2] == 11 and len(rec.seen) == 10  # no decision on the last bar of a backtest
    assert res.start == df.index[10] and res.end == df.index[20] and len(res.equity) == 11


class CrashAt:
    """Wraps a strategy and raises at step ``k`` (a crash in the middle of a run)."""

    def __init__(self, inner: object, k: int) -> None:
        self.inner, self.k = inner, k
        self.name = inner.name  # type: ignore[attr-defined]

    def decide(self, ctx: DecisionContext) -> StrategyDecision:
        if ctx.step == self.k:
            raise RuntimeError("boom")
        return self.inner.decide(ctx)  # type: ignore[attr-defined]


@pytest.mark.parametrize("baseline", ["macd", "random"])
def test_crash_and_resume_matches_an_uninterrupted_run(tmp_path: Path, baseline: str) -> None:
    df = walk(200)
    params = {"seed": 3, "p_trade": 0.2} if baseline == "random" else {}
    with Ledger.open(tmp_path / "clean.sqlite") as ledger:
        clean = run_engine({"X": df}, make_baseline(baseline, **params), CFG, ledger, "r")
    path = tmp_path / "crash.sqlite"
    with Ledger.open(path) as ledger, pytest.raises(RuntimeError, match="boom"):
        run_engine({"X": df}, CrashAt(make_baseline(baseline, **params), 120), CFG, ledger, "r")
    with Ledger.open(path) as ledger:
        assert ledger.get_run("r").status == "failed"  # type: ignore[union-attr]
        assert ledger.step_count("r") == 120
        assert ledger.reconcile("r") == []
        resumed = run_engine({"X": df}, make_baseline(baseline, **params), CFG, ledger, "r")
        assert ledger.reconcile("r") == []
        assert ledger.get_run("r").status == "completed"  # type: ignore[union-attr]
    assert resumed.resumed_steps == 120
    assert len(clean.fills) >= 4
    pd.testing.assert_frame_equal(resumed.equity, clean.equity)
    pd.testing.assert_frame_equal(resumed.fills, clean.fills)
    pd.testing.assert_frame_equal(resumed.trades, clean.trades)
    assert list(resumed.orders["client_order_id"]) == list(clean.orders["client_order_id"])
    assert resumed.final_equity == clean.final_equity


def test_committing_a_bar_twice_is_refused_by_unique_ids(tmp_path: Path) -> None:
    df = walk(30)
    with Ledger.open(tmp_path / "l.sqlite") as ledger:
        res = run_engine({"X": df}, make_baseline("buy-hold"), CFG, ledger, "r")
        again = run_engine({"X": df}, make_baseline("buy-hold"), CFG, ledger, "r")  # nothing left to do
        assert again.resumed_steps == 30 and again.orders.equals(res.orders)
        from trading_agents.core import StepRecord

        order = ledger.orders("r")[0]
        acct = ledger.account("r")
        assert acct is not None
        dup = StepRecord(
            run_id="r",
            bar_date=df.index[-1] + pd.Timedelta(days=1),
            step_index=99,
            equity=1.0,
            cash=1.0,
            exposure=0.0,
            positions={},
            prices={},
            risk_state="ACTIVE",
            halt_reason="",
            state_version=acct.state_version,
            peak_equity=1.0,
            day_start_equity=1.0,
            new_orders=[order],
        )
        with pytest.raises(LedgerIntegrityError, match="not written"):
            ledger.commit_step(dup)
        assert ledger.reconcile("r") == []
        assert ledger.step_count("r") == 30


KILLER = textwrap.dedent(
    """
    import os, signal, sys
    import pandas as pd
    from trading_agents.core import EngineConfig, run_engine
    from trading_agents.backtest.baselines import make_baseline
    from trading_agents.journal import Ledger
    from trading_agents.config.settings import RiskSettings

    path, frame, kill_at = sys.argv[1], sys.argv[2], int(sys.argv[3])
    risk = RiskSettings(
        max_position_pct=1.0, max_order_notional=1e9, max_daily_loss_pct=1.0, max_drawdown_pct=1.0
    )
    ledger = Ledger.open(path)
    steps = 0

    def trace(sql):
        # Die between the statements of a step's transaction: fills and orders written, step row not.
        global steps
        if sql.startswith("INSERT INTO steps"):
            steps += 1
            if steps == kill_at:
                os.kill(os.getpid(), signal.SIGKILL)

    ledger._db.set_trace_callback(trace)
    run_engine({"X": pd.read_pickle(frame)}, make_baseline("random", seed=5, p_trade=0.3),
               EngineConfig(cash=50_000.0, risk=risk), ledger, "r")
    """
)


def test_sigkill_mid_transaction_then_resume(tmp_path: Path) -> None:
    df = walk(120)
    frame = tmp_path / "x.pkl"
    df.to_pickle(frame)
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    path = tmp_path / "ledger.sqlite"
    proc = subprocess.run(
        [sys.executable, str(script), str(path), str(frame), "70"], capture_output=True, timeout=120
    )
    assert proc.returncode == -9, proc.stderr.decode()[-2000:]
    strategy = make_baseline("random", seed=5, p_trade=0.3)
    with Ledger.open(path) as ledger:
        assert ledger.step_count("r") == 69  # the killed step's transaction left nothing behind
        assert ledger.reconcile("r") == []
        resumed = run_engine({"X": df}, strategy, CFG, ledger, "r")
        assert ledger.reconcile("r") == []
    with Ledger.open(":memory:") as ledger:
        clean = run_engine({"X": df}, make_baseline("random", seed=5, p_trade=0.3), CFG, ledger, "r")
    assert resumed.resumed_steps == 69
    assert resumed.orders["client_order_id"].is_unique
    pd.testing.assert_frame_equal(resumed.equity, clean.equity)
    assert resumed.final_equity == clean.final_equity


HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from trading_agents.fsutil import exclusive_lock
    with exclusive_lock(Path(sys.argv[1] + ".lock")):
        print("locked", flush=True)
        sys.stdin.read()
    """
)


def test_second_process_on_the_same_ledger_gets_lock_busy(tmp_path: Path) -> None:
    path = tmp_path / "ledger.sqlite"
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    holder = subprocess.Popen(
        [sys.executable, str(script), str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with (
            Ledger.open(path) as ledger,
            pytest.raises(LockBusyError, match=r"another engine run \(pid \d+\)"),
        ):
            run_engine({"X": walk(10)}, make_baseline("buy-hold"), CFG, ledger, "r")
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)
    with Ledger.open(path) as ledger:  # free again once the holder is gone
        assert len(run_engine({"X": walk(10)}, make_baseline("buy-hold"), CFG, ledger, "r").equity) == 10


def test_run_id_of_another_strategy_is_refused() -> None:
    with Ledger.open(":memory:") as ledger:
        run_engine({"X": walk(10)}, make_baseline("buy-hold"), CFG, ledger, "r")
        with pytest.raises(UserInputError, match="choose another run id"):
            run_engine({"X": walk(10)}, make_baseline("rsi"), CFG, ledger, "r")


def test_bad_bars_are_clear_errors() -> None:
    df = walk(10)
    with Ledger.open(":memory:") as ledger:
        with pytest.raises(DataValidationError, match="sorted and unique"):
            run_engine({"X": df.iloc[::-1]}, make_baseline("buy-hold"), CFG, ledger, "r")
        with pytest.raises(DataValidationError, match="lack columns Close"):
            run_engine({"X": df.drop(columns="Close")}, make_baseline("buy-hold"), CFG, ledger, "r")
        with pytest.raises(UserInputError, match="no bars between"):
            run_engine({"X": df}, make_baseline("buy-hold"), CFG, ledger, "r", start="2030-01-01")


def test_missing_bars_are_carried_and_stale_tickers_are_vetoed() -> None:
    x = walk(20, seed=1)
    y = walk(8, seed=2)  # stops trading after 8 bars

    class BuyBoth:
        name = "buy-both"

        def decide(self, ctx: DecisionContext) -> StrategyDecision:
            return StrategyDecision([OrderIntent("X", "buy", 1), OrderIntent("Y", "buy", 1)])

    cfg = EngineConfig(cash=50_000.0, risk=LOOSE.model_copy(update={"max_data_age_days": 5}))
    with Ledger.open(":memory:") as ledger:
        res = run_engine({"X": x, "Y": y}, BuyBoth(), cfg, ledger, "r")
    y_orders = res.orders[res.orders["ticker"] == "Y"]
    # Orders decided on Y's last bars wait for a Y bar that never comes: cancelled at the end.
    assert set(y_orders["status"]) == {"filled", "cancelled", "rejected"}
    assert all(r.endswith("end of run") for r in y_orders[y_orders["status"] == "cancelled"]["reason"])
    stale = [e for e in res.risk_events if e["rule"] == "max_data_age_days"]
    assert stale and all(e["ticker"] == "Y" for e in stale)
    assert res.equity["pos_Y"].max() == 7  # bought on 7 bars that had a next Y bar to fill on
    # Y is carried at its last close until the end-of-run close.
    last_y = y["Close"].iloc[-1]
    y_close = res.fills[(res.fills["ticker"] == "Y") & (res.fills["reason"] == "end of run")]
    assert y_close["price"].tolist() == [last_y]


def test_sma_cross_signals_on_hand_built_closes() -> None:
    closes = [5.0, 5.0, 5.0, 5.0, 5.0, 6.0, 7.0, 4.0, 3.0, 3.0, 3.0]
    idx = pd.bdate_range("2024-01-01", periods=len(closes), name="Date")
    df = pd.DataFrame(
        {"Open": closes, "High": closes, "Low": closes, "Close": closes, "Volume": 1e9}, index=idx
    )
    with Ledger.open(":memory:") as ledger:
        res = run_engine({"X": df}, SmaCross(fast=2, slow=4), CFG, ledger, "r")
    # Cross up at bar 5 (SMA2 5.5 > SMA4 5.25) -> fills bar 6; cross down at bar 8 -> fills bar 9.
    assert res.fills[["side", "filled_at"]].to_records(index=False).tolist() == [
        ("buy", idx[6]),
        ("sell", idx[9]),
    ]
    assert [d["record"]["signals"][0]["signal"] for d in res.decisions] == ["enter", "exit"]


def test_macd_fold_matches_pandas_and_is_incremental() -> None:
    df = walk(120)
    macd = MacdStrategy()
    for k in range(1, len(df) + 1):  # the engine's pattern: one more row each call
        prev, state = macd._fold("X", df.iloc[:k])
    fresh_prev, fresh = MacdStrategy()._fold("X", df)
    assert (prev, state) == (fresh_prev, fresh)  # bit-identical to a full refold
    close = df["Close"]
    line = close.ewm(span=12, adjust=False).mean() - close.ewm(span=26, adjust=False).mean()
    signal = line.ewm(span=9, adjust=False).mean()
    assert state is not None
    assert state[1] - state[2] == pytest.approx(line.iloc[-1], rel=1e-9)
    assert state[3] == pytest.approx(signal.iloc[-1], rel=1e-9)


def test_baselines_are_deterministic() -> None:
    df = walk(250, seed=11)
    for name in BASELINES:
        runs = []
        for _ in range(2):
            with Ledger.open(":memory:") as ledger:
                runs.append(run_engine({"X": df}, make_baseline(name), CFG, ledger, "r"))
        pd.testing.assert_frame_equal(runs[0].fills, runs[1].fills)
        pd.testing.assert_frame_equal(runs[0].equity, runs[1].equity)
        assert len(runs[0].fills) >= 2, name
    with Ledger.open(":memory:") as ledger:
        other = run_engine({"X": df}, make_baseline("random", seed=1), CFG, ledger, "r")
    assert not other.fills.equals(runs[1].fills)  # random is last in BASELINES: seed 0 vs seed 1


def test_make_baseline_errors() -> None:
    with pytest.raises(UserInputError, match="choose one of buy-hold"):
        make_baseline("nope")
    with pytest.raises(UserInputError, match="takes fast, slow; got bogus"):
        make_baseline("sma-cross", bogus=1)
    with pytest.raises(UserInputError, match="fast < slow"):
        make_baseline("sma-cross", fast=30, slow=10)
