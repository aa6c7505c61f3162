"""The fast engine paths change nothing: same trades, fills, equity, records and ledger rows.

``tests/data/engine_reference.json`` holds digests of every result frame and every ledger
table (wall-clock columns left out) for a set of runs over the bundled data: baselines on
GOOG, several tickers with a stale one, a session, a scripted strategy with limit orders,
stops, clips and vetoes, and a tripped kill switch. Each run is checked on the in-memory
journal (its tables as written by the export) and on a file ledger (one transaction per
bar): the two stores must give identical results and identical ledger rows.

Regenerate the reference only for an intended behaviour change:
``python tests/test_engine_perf_equivalence.py --write``.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from trading_agents.backtest.baselines import SmaCross, _mean, make_baseline
from trading_agents.config.settings import RiskSettings
from trading_agents.core import (
    AlignedMarket,
    DecisionContext,
    EngineConfig,
    EngineResult,
    Journal,
    LedgerIntegrityError,
    OrderIntent,
    SlicedBars,
    StepEvent,
    StepRecord,
    StrategyDecision,
    run_engine,
)
from trading_agents.errors import DataValidationError
from trading_agents.journal import Ledger, MemoryJournal, export_run
from trading_agents.market import load_bars

REFERENCE = Path(__file__).parent / "data" / "engine_reference.json"

LOOSE = RiskSettings(
    max_position_pct=1.0, max_order_notional=1e12, max_daily_loss_pct=1.0, max_drawdown_pct=1.0
)
BENCH = EngineConfig(cash=100_000.0, commission=0.001, slippage_bps=0.0, risk=LOOSE)


def _risk(**limits: Any) -> RiskSettings:
    """The limits the reference was recorded under: the per-order cap was then 25,000 by default."""
    return RiskSettings(**{"max_order_notional": 25_000.0, **limits})


DEFAULT = EngineConfig(risk=_risk())

# Columns holding the wall-clock time of a write: they differ between any two runs.
WALL_CLOCK = {"created_at", "updated_at", "applied_at"}
TIMESTAMPED_TABLES = {"runs", "account_state", "decisions", "risk_events", "schema_version"}


class Scripted:
    """A fixed rotation of intents: stops, day and gtc limits, clipped sells, vetoes, buy-max."""

    name = "scripted"

    def decide(self, ctx: DecisionContext) -> StrategyDecision:
        if "GOOG" not in ctx.bars:
            return StrategyDecision([])
        close = float(ctx.bars["GOOG"]["Close"].iloc[-1])
        held = ctx.portfolio.positions.get("GOOG", 0)
        intents: list[OrderIntent] = []
        m = ctx.step % 12
        if m == 0:
            intents.append(OrderIntent("GOOG", "buy", 40, stop_loss=close * 0.97, reason="entry with stop"))
        elif m == 2:
            intents.append(
                OrderIntent("GOOG", "buy", 30, "limit", close * 0.99, "gtc", reason="gtc limit buy")
            )
        elif m == 3:
            intents.append(OrderIntent("GOOG", "buy", 20, "limit", close * 0.995))
        elif m == 5:
            intents.append(OrderIntent("GOOG", "sell", held + 10, reason="more than held"))
        elif m == 6:
            intents.append(OrderIntent("GOOG", "sell", None, "limit", close * 1.01, "gtc"))
        elif m == 8:
            intents += [OrderIntent("NOPE", "buy", 1), OrderIntent("GOOG", "buy", 0)]
        elif m == 9:
            intents += [OrderIntent("SPX", "buy"), OrderIntent("GOOG", "buy", 5)]
        elif m == 10:
            intents.append(OrderIntent("SPX", "sell"))
        record = {"step": ctx.step, "close": close, "ticker": "GOOG"} if intents else None
        return StrategyDecision(intents, record)


def _bars(*tickers: str) -> dict[str, pd.DataFrame]:
    return load_bars(tickers=list(tickers))


RUNS: dict[str, Callable[[], dict[str, Any]]] = {
    "sma-bench": lambda: {"bars": _bars("GOOG"), "strategy": make_baseline("sma-cross"), "config": BENCH},
    "sma-default": lambda: {
        "bars": _bars("GOOG"),
        "strategy": make_baseline("sma-cross", fast=5, slow=30),
        "config": DEFAULT,
    },
    "macd-default": lambda: {"bars": _bars("GOOG"), "strategy": make_baseline("macd"), "config": DEFAULT},
    "rsi-loose": lambda: {
        "bars": _bars("GOOG"),
        "strategy": make_baseline("rsi"),
        "config": EngineConfig(risk=LOOSE),
    },
    "random-default": lambda: {
        "bars": _bars("GOOG"),
        "strategy": make_baseline("random", seed=3, p_trade=0.2),
        "config": DEFAULT,
    },
    "sma-multi-stale": lambda: {
        "bars": _bars("GOOG", "SPX", "IXIC"),
        "strategy": make_baseline("sma-cross", fast=5, slow=30),
        "config": EngineConfig(cash=250_000.0, risk=_risk(max_drawdown_pct=1.0, max_daily_loss_pct=1.0)),
        "start": "2010-01-04",
        "end": "2014-06-30",
    },
    "buyhold-session": lambda: {
        "bars": _bars("GOOG", "SPX"),
        "strategy": make_baseline("buy-hold"),
        "config": EngineConfig(risk=_risk(), decide_on_last_bar=True, close_at_end=False),
        "kind": "session",
        "start": "2012-06-01",
    },
    "scripted": lambda: {
        "bars": _bars("GOOG", "SPX"),
        "strategy": Scripted(),
        "config": EngineConfig(cash=60_000.0, risk=_risk(max_drawdown_pct=0.9, max_daily_loss_pct=0.5)),
        "start": "2011-01-03",
        "end": "2013-03-01",
    },
    "macd-kill-switch": lambda: {
        "bars": _bars("GOOG"),
        "strategy": make_baseline("macd", fast=5, slow=20, signal=5),
        "config": EngineConfig(risk=_risk(max_position_pct=1.0, max_drawdown_pct=0.08)),
    },
}


def _canonical(obj: Any) -> str:
    return json.dumps(obj, default=str, sort_keys=True, allow_nan=True)


def _frame(df: pd.DataFrame) -> str:
    data = {
        "columns": [str(c) for c in df.columns],
        "dtypes": [str(t) for t in df.dtypes],
        "index": [str(df.index.dtype), str(df.index.name), *(str(i) for i in df.index)],
        "rows": [[None if v is pd.NaT else v for v in row] for row in df.astype(object).to_numpy().tolist()],
    }
    return _canonical(data)


def _ledger_tables(journal: Journal, run_id: str) -> dict[str, str]:
    with tempfile.TemporaryDirectory() as tmp:
        copy = Path(tmp) / "copy.sqlite"
        if isinstance(journal, MemoryJournal):
            export_run(journal, run_id, copy)
        else:
            copy.write_bytes(journal.serialize())  # type: ignore[attr-defined]
        db = sqlite3.connect(copy)
        try:
            names = [
                r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")
            ]
            out = {}
            for name in names:
                cur = db.execute(f"SELECT * FROM {name} ORDER BY rowid")
                cols = [d[0] for d in cur.description]
                keep = [i for i, c in enumerate(cols) if not (name in TIMESTAMPED_TABLES and c in WALL_CLOCK)]
                rows = [[row[i] for i in keep] for row in cur]
                out[f"table:{name}"] = _canonical({"columns": [cols[i] for i in keep], "rows": rows})
        finally:
            db.close()
    return out


def _texts(result: EngineResult, journal: Journal) -> dict[str, str]:
    texts = {
        "equity": _frame(result.equity),
        "trades": _frame(result.trades),
        "fills": _frame(result.fills),
        "orders": _frame(result.orders),
        "decisions": _canonical(result.decisions),
        "risk_events": _canonical(
            [{k: v for k, v in e.items() if k != "created_at"} for e in result.risk_events]
        ),
        "scalars": _canonical(
            [
                result.run_id,
                result.strategy,
                str(result.start),
                str(result.end),
                result.starting_cash,
                result.commissions,
                result.resumed_steps,
                result.final_equity,
            ]
        ),
    }
    texts.update(_ledger_tables(journal, result.run_id))
    return texts


def snapshot(name: str, ledger_path: Path | None = None) -> dict[str, Any]:
    """Digests of everything the run ``name`` produced, plus a readable summary: on a
    :class:`MemoryJournal`, or on the SQLite ledger at ``ledger_path``."""
    spec = RUNS[name]()
    journal: Journal = MemoryJournal() if ledger_path is None else Ledger.open(ledger_path)
    try:
        result = run_engine(
            spec["bars"],
            spec["strategy"],
            spec["config"],
            journal,
            "eq",
            kind=spec.get("kind", "backtest"),
            start=spec.get("start"),
            end=spec.get("end"),
        )
        texts = _texts(result, journal)
    finally:
        journal.close()  # type: ignore[attr-defined]
    return {
        "summary": {
            "steps": len(result.equity),
            "trades": len(result.trades),
            "fills": len(result.fills),
            "orders": len(result.orders),
            "risk_events": len(result.risk_events),
            "decisions": len(result.decisions),
            "final_equity": result.final_equity,
        },
        "digests": {k: hashlib.sha256(v.encode()).hexdigest() for k, v in sorted(texts.items())},
    }


@pytest.fixture(scope="module")
def reference() -> dict[str, Any]:
    return json.loads(REFERENCE.read_text())


@pytest.mark.parametrize("name", sorted(RUNS))
def test_in_memory_run_matches_the_reference(name: str, reference: dict[str, Any]) -> None:
    got = snapshot(name)
    want = reference[name]
    assert got["summary"] == want["summary"]
    assert got["summary"]["fills"] > 0 or name == "buyhold-session"
    differing = sorted(k for k in want["digests"] if got["digests"].get(k) != want["digests"][k])
    assert differing == []
    assert set(got["digests"]) == set(want["digests"])


@pytest.mark.parametrize("name", sorted(RUNS))
def test_file_ledger_run_matches_the_reference(name: str, reference: dict[str, Any], tmp_path: Path) -> None:
    got = snapshot(name, tmp_path / "ledger.sqlite")
    want = reference[name]
    assert got["summary"] == want["summary"]
    assert sorted(k for k in want["digests"] if got["digests"].get(k) != want["digests"][k]) == []


def test_reference_runs_exercise_every_path(reference: dict[str, Any]) -> None:
    """The reference is only worth something if the runs hit clips, vetoes, stops and halts."""
    spec = RUNS["scripted"]()
    res = run_engine(
        spec["bars"], spec["strategy"], spec["config"], MemoryJournal(), "x", start=spec["start"]
    )
    rules = {e["rule"] for e in res.risk_events}
    assert {"long_only", "unknown_ticker", "invalid_intent", "max_position_pct"} <= rules
    assert set(res.orders["order_type"]) == {"market", "limit", "stop"}
    assert {"filled", "expired", "cancelled", "rejected"} <= set(res.orders["status"])
    assert reference["macd-kill-switch"]["summary"]["risk_events"] > 0
    assert reference["sma-multi-stale"]["summary"]["risk_events"] > 0


if __name__ == "__main__" and sys.argv[1:] == ["--write"]:
    REFERENCE.parent.mkdir(parents=True, exist_ok=True)
    REFERENCE.write_text(json.dumps({n: snapshot(n) for n in sorted(RUNS)}, indent=1) + "\n")
    print(f"wrote {REFERENCE}")


# -- the fast paths themselves ------------------------------------------------------------------


def _walk(n: int, seed: int, flat_every: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    close = 100 * np.exp(np.cumsum(rng.normal(0, 0.02, n)))
    if flat_every:  # runs of equal closes make exact SMA ties
        close = np.repeat(close[::flat_every], flat_every)[:n]
    idx = pd.bdate_range("2001-01-01", periods=n, name="Date")
    return pd.DataFrame(
        {"Open": close, "High": close * 1.01, "Low": close * 0.99, "Close": close, "Volume": 1e9}, index=idx
    )


def test_mean_helper_is_numpy_mean() -> None:
    rng = np.random.default_rng(0)
    for n in range(1, 200):
        values = rng.random(n + 3)[rng.integers(0, 3) :] * 10.0 ** int(rng.integers(-3, 6))
        assert _mean(values) == values.mean()
        assert type(_mean(values)) is type(values.mean())


@pytest.mark.parametrize(("fast", "slow", "flat"), [(10, 20, 0), (2, 4, 3), (5, 30, 7), (1, 2, 0)])
def test_sma_fast_cross_equals_the_numpy_definition(fast: int, slow: int, flat: int) -> None:
    frame = _walk(600, seed=fast * 100 + slow, flat_every=flat)
    market = AlignedMarket({"X": frame})
    fast_path, exact = SmaCross(fast, slow), SmaCross(fast, slow)
    crosses = 0
    for i in range(slow, len(frame)):
        closes = SlicedBars(market, i).column("X")
        got = fast_path._cross("X", closes)
        assert got == exact.cross(closes), i
        crosses += got != 0
    assert crosses > 5


def test_column_views_are_read_only_prefixes_of_one_array() -> None:
    frame = _walk(50, seed=1)
    market = AlignedMarket({"X": frame})
    a, b = SlicedBars(market, 10).column("X"), SlicedBars(market, 20).column("X")
    assert a.base is b.base and len(a) == 11 and len(b) == 21
    assert np.array_equal(b[:11], a) and np.array_equal(b, frame["Close"].to_numpy()[:21])
    with pytest.raises(ValueError, match="read-only"):
        b[0] = 1.0
    ctx = DecisionContext(frame.index[5], {"X": frame.iloc[:6]}, None, 5)  # type: ignore[arg-type]
    plain = ctx.column("X")
    assert plain.base is None and not plain.flags.writeable and len(plain) == 6
    with pytest.raises(KeyError):
        SlicedBars(market, 10).column("Y")


def test_every_read_of_the_memory_journal_sees_the_steps_committed_so_far() -> None:
    frame = _walk(120, seed=2)
    seen: list[tuple[int, int]] = []
    journal = MemoryJournal()

    def on_step(event: StepEvent) -> None:
        seen.append((event.index, journal.step_count("r")))

    res = run_engine(
        {"X": frame}, make_baseline("sma-cross", fast=3, slow=8), BENCH, journal, "r", on_step=on_step
    )
    assert _reconcile(journal, "r") == []
    assert seen == [(k, k + 1) for k in range(120)]
    assert len(res.fills) > 4


def _reconcile(journal: MemoryJournal, run_id: str) -> list[str]:
    """The ledger's consistency check, on the run as the export writes it."""
    with tempfile.TemporaryDirectory() as tmp:
        path = export_run(journal, run_id, Path(tmp) / "check.sqlite")
        with Ledger.open(path) as ledger:
            return ledger.reconcile(run_id)


class _CrashAt:
    def __init__(self, k: int) -> None:
        self.inner, self.k, self.name = make_baseline("macd"), k, "macd"

    def decide(self, ctx: DecisionContext) -> StrategyDecision:
        if ctx.step == self.k:
            raise RuntimeError("boom")
        return self.inner.decide(ctx)


def test_memory_journal_crash_keeps_the_steps_before_it_and_resumes_identically() -> None:
    frame = _walk(300, seed=3)
    journal = MemoryJournal()
    clean = run_engine({"X": frame}, make_baseline("macd"), DEFAULT, journal, "clean")
    with pytest.raises(RuntimeError, match="boom"):
        run_engine({"X": frame}, _CrashAt(150), DEFAULT, journal, "r")
    assert journal.step_count("r") == 150
    assert journal.get_run("r").status == "failed"  # type: ignore[union-attr]
    assert _reconcile(journal, "r") == []
    resumed = run_engine({"X": frame}, make_baseline("macd"), DEFAULT, journal, "r")
    assert resumed.resumed_steps == 150 and len(clean.fills) >= 4
    pd.testing.assert_frame_equal(resumed.equity, clean.equity)
    pd.testing.assert_frame_equal(
        resumed.fills.drop(columns="order_id"), clean.fills.drop(columns="order_id")
    )


@pytest.mark.parametrize("store", ["memory", "file"])
def test_a_refused_step_keeps_the_steps_before_it(store: str, tmp_path: Path) -> None:
    journal: Journal = MemoryJournal() if store == "memory" else Ledger.open(tmp_path / "l.sqlite")
    journal.create_run("r", kind="backtest", strategy="s", starting_cash=100.0)
    for k, offset in enumerate([0, 1, 2, 2, 3]):  # the 4th step repeats the 3rd's bar
        bar = pd.Timestamp("2024-01-02") + pd.Timedelta(days=offset)
        rec = StepRecord("r", bar, k, 100.0, 100.0, 0.0, {}, {}, "ACTIVE", "", 0, 100.0, 100.0)
        if k == 3:
            with pytest.raises(LedgerIntegrityError, match="step 2024-01-04"):
                journal.commit_step(rec)
            break
        journal.commit_step(rec)
    assert journal.step_count("r") == 3  # type: ignore[attr-defined]
    assert journal.account("r").last_step_date == pd.Timestamp("2024-01-04")  # type: ignore[union-attr]


def _equity_and_fills(frame: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    res = run_engine({"X": frame}, make_baseline("sma-cross", fast=3, slow=8), BENCH, MemoryJournal(), "r")
    return res.equity, res.fills


def test_a_prepared_market_is_reused_only_while_its_frames_are_unchanged() -> None:
    frame = _walk(200, seed=4)
    first = _equity_and_fills(frame)
    again = _equity_and_fills(frame)  # same frame object: the prepared market is reused
    pd.testing.assert_frame_equal(again[0], first[0])
    pd.testing.assert_frame_equal(again[1], first[1])

    frame.loc[frame.index[50:], ["Open", "High", "Low", "Close"]] *= 1.5  # changed in place
    changed = _equity_and_fills(frame)
    fresh = _equity_and_fills(frame.copy())
    pd.testing.assert_frame_equal(changed[0], fresh[0])
    pd.testing.assert_frame_equal(changed[1], fresh[1])
    assert not changed[0]["equity"].equals(first[0]["equity"])

    frame.index = frame.index + pd.Timedelta(days=1)  # new dates, same prices
    moved = _equity_and_fills(frame)
    assert moved[0].index[0] == frame.index[0]

    frame.iloc[10, frame.columns.get_loc("Close")] = np.nan  # validation still runs
    with pytest.raises(DataValidationError, match="missing or non-positive"):
        _equity_and_fills(frame)
