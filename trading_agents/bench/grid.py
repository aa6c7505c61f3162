"""``trading-agents bench grid``: what running backtests as a Ray grid costs and gains.

Ray is started once in-process (``ray_start_s``), then:

``baseline``
    A grid of baseline cells (2 tickers x 10 half-year windows x 5 strategies = 100 cells;
    ``quick``: 3 windows, 30 cells) run with ``run_grid`` on all cores, against a plain
    sequential loop of :func:`~trading_agents.backtest.runner.run_backtest` on the same cells
    in this process. ``overhead_ratio`` is the grid's wall time over the loop's (below 1 when
    the parallelism wins over Ray's scheduling and the workers' start); ``cells_per_s`` is
    the grid's throughput.
``agents``
    Agent cells on the embedded model (GOOG and SPX, the last five bars of the bundled data:
    four decisions per cell; ``quick``: GOOG, one decision) with 1 worker x 2 threads against 2 workers x 1
    thread, each in a fresh folder (no cached replies): decisions per hour of grid wall time
    (model loads included) and the ratio of the second to the first.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path
from typing import Any

BASELINE_SPEC = """
data: {{tickers: [GOOG, SPX]}}
windows:
  rolling: {{start: 2005-01-01, end: {end}, length: 6m, step: 6m}}
strategies:
  - {{name: sma-cross}}
  - {{name: macd}}
  - {{name: rsi}}
  - {{name: random}}
  - {{name: buy-hold}}
seed: 1
"""

AGENT_SPEC = """
data: {{tickers: [{tickers}]}}
windows: [{{start: {start}, end: 2013-02-28}}]
strategies:
  - {{name: agents, model: embedded, label: smollm2}}
seed: 1
"""


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    """Both measurements; JSON-safe (the CLI writes them to grid.json)."""
    import logging

    import ray

    from trading_agents.grid.run import physical_cores

    out_dir = Path(out_dir) / "grid-bench"
    shutil.rmtree(out_dir, ignore_errors=True)
    out_dir.mkdir(parents=True)
    cores = physical_cores()
    began = time.perf_counter()
    ray.init(num_cpus=cores, include_dashboard=False, log_to_driver=False, logging_level=logging.ERROR)
    ray_start_s = time.perf_counter() - began
    try:
        return {
            "cores": cores,
            "ray_start_s": round(ray_start_s, 2),
            "baseline": baseline(out_dir, cores, quick),
            "agents": agents(out_dir, quick),
        }
    finally:
        ray.shutdown()


def baseline(out_dir: Path, workers: int, quick: bool) -> dict[str, Any]:
    from trading_agents.backtest.runner import run_backtest
    from trading_agents.config.settings import Settings
    from trading_agents.grid.cells import expand
    from trading_agents.grid.run import base_settings, cell_settings, run_grid
    from trading_agents.grid.spec import spec_from_text

    spec = spec_from_text(BASELINE_SPEC.format(end="2006-06-30" if quick else "2009-12-31"))
    cells = expand(spec)
    base = base_settings(spec, None)
    strategies = {s.default_label(): s for s in spec.with_reference()}
    loop_dir = out_dir / "sequential"
    began = time.perf_counter()
    for cell in cells:
        settings = Settings(**cell_settings(base, strategies[cell.label], 1, spec.seed))
        run_backtest(cell.request(loop_dir, spec.seed), settings)
    loop_s = time.perf_counter() - began

    began = time.perf_counter()
    outcome = run_grid(spec, out_dir / "baseline", workers=workers)
    grid_s = time.perf_counter() - began
    return {
        "cells": len(cells),
        "workers": workers,
        "sequential_s": round(loop_s, 2),
        "grid_s": round(grid_s, 2),
        "overhead_ratio": round(grid_s / loop_s, 3),
        "cells_per_s": round(len(cells) / grid_s, 2),
        "sequential_cells_per_s": round(len(cells) / loop_s, 2),
        "done": outcome.counts["done"],
    }


def agents(out_dir: Path, quick: bool) -> dict[str, Any]:
    from trading_agents.grid.run import run_grid
    from trading_agents.grid.spec import spec_from_text

    spec = spec_from_text(
        AGENT_SPEC.format(
            tickers="GOOG" if quick else "GOOG, SPX", start="2013-02-27" if quick else "2013-02-22"
        )
    )
    runs: dict[str, Any] = {}
    for name, workers, threads in (("1x2", 1, 2), ("2x1", 2, 1)):
        began = time.perf_counter()
        try:
            outcome = run_grid(spec, out_dir / f"agents-{name}", workers=workers, threads=threads)
        except Exception as exc:  # a bench reports what it could not measure
            runs[name] = {"skipped": f"{type(exc).__name__}: {exc}"}
            continue
        wall = time.perf_counter() - began
        [row] = [s for s in outcome.leaderboard["strategies"] if s["label"] == "smollm2"]
        decisions = row["llm"]["decisions"]
        runs[name] = {
            "workers": workers,
            "threads_per_worker": threads,
            "cells": row["done"],
            "decisions": decisions,
            "wall_s": round(wall, 2),
            "decisions_per_hour": round(decisions / wall * 3600, 1) if wall else None,
            "llm_calls": row["llm"]["calls"],
            "wall_s_per_decision_in_cells": row["llm"]["wall_s_per_decision"],
        }
    a, b = runs.get("1x2", {}), runs.get("2x1", {})
    ratio = None
    if a.get("decisions_per_hour") and b.get("decisions_per_hour"):
        ratio = round(b["decisions_per_hour"] / a["decisions_per_hour"], 3)
    return {"runs": runs, "ratio_2x1_over_1x2": ratio}
