"""``trading-agents bench dashboard``: how fast the dashboard's pages render on long runs.

A sma-cross backtest over all 2,148 bundled GOOG bars (with its baselines) is written to a
results folder; the dashboard then serves it on a loopback port and each page is fetched
over real HTTP:

``backtest_page``
    The backtest page (equity, drawdown and five comparison curves of 2,148 points each,
    metrics, trades): median and max milliseconds over the repetitions; the target is
    ``target_ms`` (500).
``decisions_page``
    An account page over a session ledger of the same 2,148 bars with one desk-shaped
    decision record per bar (three agents' replies, models, latency, tokens; written by the
    real engine into the real SQLite ledger by a strategy that holds): the first, a middle
    and the last page of the decisions table, each ``PAGE_SIZE`` rows.
"""

from __future__ import annotations

import shutil
import statistics
import threading
import time
from pathlib import Path
from typing import Any

TARGET_MS = 500.0


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    import httpx2
    import uvicorn

    from trading_agents.backtest.runner import BacktestRequest, run_backtest
    from trading_agents.config.settings import load_settings
    from trading_agents.dashboard.app import DashboardConfig, asgi_app
    from trading_agents.dashboard.views import PAGE_SIZE
    from trading_agents.journal import Ledger
    from trading_agents.serve.access import bind_socket

    work = Path(out_dir) / "dashboard-bench"
    shutil.rmtree(work, ignore_errors=True)
    root = work / "results"
    settings = load_settings(None, {"paths.home": str(work / "home")})
    began = time.perf_counter()
    outcome = run_backtest(
        BacktestRequest(strategy="sma-cross", tickers=["GOOG"], out=root / "goog-all"), settings
    )
    backtest_s = time.perf_counter() - began
    bars = outcome.summary["meta"]["window"]["bars"]
    home = work / "home"
    began = time.perf_counter()
    run_id = _desk_ledger(home, settings)
    ledger_s = time.perf_counter() - began
    with Ledger.open_reader(home / "ledger.sqlite") as led:
        decisions = led.decision_count(run_id)
    pages = max(1, -(-decisions // PAGE_SIZE))

    app = asgi_app(DashboardConfig(settings=settings, roots=[root]))
    sock = bind_socket("127.0.0.1", 0)
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.05)
    reps = 5 if quick else 20
    try:
        with httpx2.Client(base_url=base, timeout=120) as client:
            backtest = _timed(client, "/backtests/0/goog-all", reps)
            paging = {
                f"page_{n}": _timed(client, f"/accounts/{run_id}?page={n}", max(3, reps // 2))
                for n in sorted({1, max(1, pages // 2), pages})
            }
    finally:
        server.should_exit = True
        thread.join(30)
        sock.close()
    return {
        "bars": bars,
        "decisions": decisions,
        "page_size": PAGE_SIZE,
        "pages": pages,
        "backtest_s": round(backtest_s, 2),
        "ledger_s": round(ledger_s, 2),
        "backtest_page": {
            **backtest,
            "target_ms": TARGET_MS,
            "meets_target": backtest["median_ms"] < TARGET_MS,
        },
        "decisions_page": paging,
    }


def _timed(client: Any, path: str, reps: int) -> dict[str, Any]:
    client.get(path).raise_for_status()  # warm: templates compiled, files in the page cache
    times = []
    size = 0
    for _ in range(reps):
        started = time.perf_counter()
        response = client.get(path)
        times.append((time.perf_counter() - started) * 1000)
        response.raise_for_status()
        size = len(response.content)
    return {
        "path": path,
        "reps": reps,
        "median_ms": round(statistics.median(times), 1),
        "max_ms": round(max(times), 1),
        "bytes": size,
    }


class _HoldingDesk:
    """Holds on every bar and records what the desk would: three agents' replies, the model
    and the selector's reason, latency and tokens (the shape of an agents decision record)."""

    name = "agents"

    def decide(self, ctx: Any) -> Any:
        from trading_agents.core.decision import StrategyDecision

        agents = [
            {
                "role": "analyst",
                "output": {
                    "key_signals": [{"name": "trend", "value": "flat"}],
                    "rationale": "no clear trend",
                    "action": "HOLD",
                    "conviction": 0.4,
                    "horizon_days": 5,
                },
            },
            {
                "role": "risk",
                "output": {
                    "decision": "reject",
                    "max_position_pct": 0.0,
                    "stop_loss_pct": 0.05,
                    "reasons": [{"reason": "hold"}],
                },
            },
            {
                "role": "executor",
                "output": {"side": "none", "quantity": 0, "order_type": "market", "time_in_force": "day"},
            },
        ]
        for a in agents:
            a.update(
                model="smollm2-135m-instruct",
                route_reason="primary",
                prompt_tokens=420,
                completion_tokens=60,
                latency_s=1.5,
            )
        tickers = {t: {"agents": agents, "guards": [], "intent": None} for t in ctx.bars}
        return StrategyDecision(intents=[], record={"tickers": tickers})


def _desk_ledger(home: Path, settings: Any) -> str:
    """A session ledger with one decision per bundled GOOG bar, written by the engine."""
    from trading_agents.core import EngineConfig, run_engine
    from trading_agents.journal import Ledger
    from trading_agents.market import load_bars

    bars = load_bars(tickers=["GOOG"])
    with Ledger.open(home / "ledger.sqlite", synchronous="OFF") as led:
        run_engine(
            bars, _HoldingDesk(), EngineConfig.for_session(settings), led, "bench-desk", kind="session"
        )
    return "bench-desk"
