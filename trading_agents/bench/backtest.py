"""``trading-agents bench backtest``: how fast backtests run.

Two measurements, both on the bundled GOOG daily bars:

``engine``
    Bar-steps per second of our engine running SMA crossover (10/20) over every bar,
    against backtesting.py running the same strategy on the same frame in the same process
    (median of several repetitions each; ``ratio`` is ours / theirs, above 1 when ours is
    faster). Our engine does more per bar (risk checks, an in-memory journal with steps
    appended column by column, decision records). Repetitions reuse the prepared market of the same
    unchanged frames, as a backtest and its baselines do; backtesting.py likewise prepares its
    data in ``Backtest(...)``, outside the timed region.
``agents_replay``
    An agents backtest over the last bars (10 with ``quick``, else 20), run twice with a
    fresh LLM response cache under ``out_dir``: the first run calls the models, the replay
    must make zero LLM calls. Reports both runs' ``calls``/``cached_calls``, wall times and
    the replay speedup. Reported as skipped, with the reason, when the agent strategy or
    its models are unavailable.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pandas as pd

from trading_agents.errors import TradingAgentsError

TICKER = "GOOG"
FAST, SLOW = 10, 20


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    """Run both measurements; return JSON-safe results (the CLI writes them to backtest.json)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    from trading_agents.market import load_bars

    goog = load_bars(tickers=[TICKER])[TICKER]
    return {
        "data": {
            "ticker": TICKER,
            "bars": len(goog),
            "start": goog.index[0].date().isoformat(),
            "end": goog.index[-1].date().isoformat(),
        },
        "engine": engine_speed(goog, repeats=2 if quick else 5),
        "agents_replay": agents_replay(out_dir, bars=10 if quick else 20),
    }


def engine_speed(goog: pd.DataFrame, repeats: int = 5) -> dict[str, Any]:
    """Median bar-steps/s of our engine and of backtesting.py on SMA crossover over ``goog``."""
    from trading_agents.backtest.baselines import make_baseline
    from trading_agents.config.settings import RiskSettings
    from trading_agents.core import EngineConfig, run_engine
    from trading_agents.journal import MemoryJournal

    config = EngineConfig(
        cash=100_000.0,
        commission=0.001,
        slippage_bps=0.0,
        risk=RiskSettings(
            max_position_pct=1.0, max_order_notional=1e12, max_daily_loss_pct=1.0, max_drawdown_pct=1.0
        ),
    )
    ours: list[float] = []
    trades = 0
    for i in range(repeats):
        began = time.perf_counter()
        result = run_engine(
            {TICKER: goog},
            make_baseline("sma-cross", fast=FAST, slow=SLOW),
            config,
            MemoryJournal(),
            f"bench-{i}",
        )
        ours.append(time.perf_counter() - began)
        trades = len(result.trades)

    theirs: list[float] = []
    their_trades = None
    try:
        from backtesting import Backtest, Strategy
        from backtesting.lib import crossover
        from backtesting.test import SMA

        class SmaCross(Strategy):
            def init(self) -> None:
                self.fast = self.I(SMA, self.data.Close, FAST)
                self.slow = self.I(SMA, self.data.Close, SLOW)

            def next(self) -> None:
                if crossover(self.fast, self.slow):
                    self.buy()
                elif crossover(self.slow, self.fast):
                    self.position.close()

        import backtesting.backtesting as bt_module

        # Time the backtest loop, not its tqdm progress bar.
        saved_tqdm = bt_module._tqdm
        bt_module._tqdm = lambda seq, **_: seq
        try:
            for _ in range(repeats):
                bt = Backtest(
                    goog,
                    SmaCross,
                    cash=100_000,
                    commission=0.001,
                    trade_on_close=False,
                    exclusive_orders=True,
                    finalize_trades=True,
                )
                began = time.perf_counter()
                stats = bt.run()
                theirs.append(time.perf_counter() - began)
        finally:
            bt_module._tqdm = saved_tqdm
        their_trades = int(stats["# Trades"])
    except ImportError as exc:
        theirs_skipped = f"backtesting.py is not installed ({exc}); pip install backtesting"
    else:
        theirs_skipped = None

    n = len(goog)
    ours_rate = n / statistics.median(ours)
    out: dict[str, Any] = {
        "strategy": f"sma-cross {FAST}/{SLOW}",
        "repeats": repeats,
        "ours_seconds_median": round(statistics.median(ours), 4),
        "ours_bar_steps_per_s": round(ours_rate, 1),
        "ours_trades": trades,
    }
    if theirs:
        theirs_rate = n / statistics.median(theirs)
        out.update(
            backtesting_py_seconds_median=round(statistics.median(theirs), 4),
            backtesting_py_bar_steps_per_s=round(theirs_rate, 1),
            backtesting_py_trades=their_trades,
            ratio_ours_over_theirs=round(ours_rate / theirs_rate, 3),
        )
    else:
        out["backtesting_py_skipped"] = theirs_skipped
    return out


def agents_replay(out_dir: Path, bars: int = 20, timeout_s: float = 3600.0) -> dict[str, Any]:
    """:func:`agents_replay_inline` in a child process, so that a crash inside llama.cpp
    (a signal, not an exception) is reported as skipped instead of ending the whole bench."""
    cmd = [sys.executable, "-m", "trading_agents.bench.backtest", str(out_dir), str(bars)]
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout_s, check=False, preexec_fn=_die_with_parent
        )
    except subprocess.TimeoutExpired:
        return {"skipped": f"agents replay did not finish within {timeout_s:.0f} s"}
    if proc.returncode != 0:
        how = f"signal {-proc.returncode}" if proc.returncode < 0 else f"exit code {proc.returncode}"
        tail = (proc.stderr.strip().splitlines() or [""])[-1][:300]
        return {"skipped": f"agents replay process failed ({how}): {tail}"}
    try:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    except (IndexError, json.JSONDecodeError):
        return {"skipped": f"agents replay printed no result: {proc.stdout[-300:]!r}"}


def _die_with_parent() -> None:
    """Linux: SIGTERM the child when the bench process dies, so no model keeps running alone."""
    try:
        import ctypes
        import signal

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def agents_replay_inline(out_dir: Path, bars: int = 20) -> dict[str, Any]:
    """First run vs cached replay of an agents backtest over the last ``bars`` GOOG bars."""
    try:
        from trading_agents.agents.desk_strategy import build_agent_strategy
    except ImportError as exc:
        return {"skipped": f"agent strategy not importable: {exc}"}
    from trading_agents.config.settings import load_settings
    from trading_agents.core import EngineConfig, run_engine
    from trading_agents.journal import MemoryJournal
    from trading_agents.market import load_bars

    home = out_dir / "agents-replay-home"
    cache = out_dir / "agents-replay-cache.sqlite"
    for stale in (cache, cache.with_name(cache.name + "-wal"), cache.with_name(cache.name + "-shm")):
        stale.unlink(missing_ok=True)
    try:
        settings = load_settings(None, {"paths.home": str(home)})
        frame = load_bars(tickers=[TICKER])[TICKER]
        start = frame.index[-bars]
        runs: list[dict[str, Any]] = []
        for attempt in ("first", "replay"):
            strategy = build_agent_strategy(settings, use_cache=True, cache_path=cache)
            try:
                began = time.perf_counter()
                run_engine(
                    {TICKER: frame},
                    strategy,
                    EngineConfig.from_settings(settings),
                    MemoryJournal(),
                    f"bench-agents-{attempt}",
                    start=start,
                )
                wall = time.perf_counter() - began
                stats = strategy.llm_stats()
            finally:
                strategy.close()
            runs.append(
                {
                    "run": attempt,
                    "seconds": round(wall, 3),
                    "calls": stats.get("calls"),
                    "cached_calls": stats.get("cached_calls"),
                    "completion_tokens": stats.get("completion_tokens"),
                    "models": sorted((stats.get("models") or {}).keys()),
                }
            )
    except (TradingAgentsError, ImportError, OSError) as exc:
        return {"skipped": f"agents backtest unavailable: {exc}"}
    first, replay = runs
    return {
        "bars": bars,
        "start": start.date().isoformat(),
        "first": first,
        "replay": replay,
        "replay_llm_calls_zero": replay["calls"] == 0,
        "speedup": round(first["seconds"] / replay["seconds"], 1) if replay["seconds"] > 0 else None,
    }


if __name__ == "__main__":
    # python -m trading_agents.bench.backtest OUT_DIR BARS: the child process of agents_replay.
    print(json.dumps(agents_replay_inline(Path(sys.argv[1]), int(sys.argv[2]))))
