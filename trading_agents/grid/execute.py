"""Cells on Ray Core: baseline cells as plain tasks, agent cells on actors that hold a model.

Only plain data crosses process boundaries: a cell (:meth:`Cell.as_dict`), the settings as
a JSON-ready dict, the grid folder and seed in; a result dict out. A worker writes the cell's
results folder itself; the driver alone writes ``cells.sqlite``.

An :class:`AgentWorker` loads its model(s) once in ``__init__`` (a llama.cpp model is never
pickled) and serves every agent cell of that model. Before each cell it clears the model's
evaluated context, and grids run with ``llm.ram_cache_mb = 0``, so a cell's replies depend
on the cell alone, never on which cells that worker served before. It asks Ray for
``num_cpus`` = threads per worker and ``memory`` = the model's RAM need from its GGUF header
(:func:`utils.llm_integration.model_selector.ram_needed_mb`). A worker killed mid-cell is
restarted by Ray (``max_restarts``) and the cell reruns (``max_task_retries``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections import deque
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from trading_agents.grid.cells import Cell

log = logging.getLogger("trading_agents.grid")

MAX_RESTARTS = 3
MAX_RETRIES = 3
WAIT_S = 0.5

Result = dict[str, Any]


def run_cell(cell: Mapping[str, Any], settings: Mapping[str, Any], grid_dir: str, grid_seed: int) -> Result:
    """Run one cell through :func:`~trading_agents.backtest.runner.run_backtest`; never raises
    for a cell's own failure: the result says ``status: failed`` with the one-line error."""
    from trading_agents.backtest.runner import run_backtest
    from trading_agents.config.settings import Settings

    c = Cell(**cell)
    began = time.perf_counter()
    base: Result = {"key": c.key, "pid": os.getpid()}
    try:
        outcome = run_backtest(c.request(Path(grid_dir), grid_seed), Settings(**settings))
        summary = json.loads((outcome.out_dir / "summary.json").read_text())  # JSON-ready already
        llm = summary["meta"].get("llm")
        if llm is not None:
            llm = {**llm, "decisions": count_decisions(outcome.out_dir / "decisions.jsonl")}
        return {
            **base,
            "status": "done",
            "metrics": summary["metrics"],
            "llm": llm,
            "timings": {
                "wall_s": round(time.perf_counter() - began, 3),
                "bars": summary["meta"]["window"]["bars"],
            },
            "risk_caps": summary["meta"].get("risk_caps"),
            "out_dir": str(outcome.out_dir),
        }
    except Exception as exc:  # a cell's failure is data: recorded, the grid goes on
        return {
            **base,
            "status": "failed",
            "error": one_line(exc),
            "timings": {"wall_s": time.perf_counter() - began},
        }


def count_decisions(path: Path) -> int:
    """Agent decisions in a ``decisions.jsonl``: one per ticker the desk decided on a bar."""
    n = 0
    with contextlib.suppress(OSError), path.open(encoding="utf-8") as fh:
        for line in fh:
            tickers = json.loads(line).get("record", {}).get("tickers", {})
            n += sum(1 for rec in tickers.values() if "agents" in rec)
    return n


def one_line(exc: BaseException) -> str:
    message = getattr(exc, "message", None) or str(exc) or type(exc).__name__
    line = message.strip().splitlines()[0] if message.strip() else type(exc).__name__
    known = ("TradingAgentsError", "LLMError")
    if not any(k in (b.__name__ for b in type(exc).__mro__) for k in known):
        line = f"{type(exc).__name__}: {line}"
    return line


class AgentWorker:
    """Holds the models of one agent configuration and runs its cells (a Ray actor)."""

    def __init__(self, settings: Mapping[str, Any]) -> None:
        self._error: str | None = None
        self._models: list[Any] = []
        try:
            self._models = load_models(settings)
        except Exception as exc:  # recorded on every cell of this worker, not a restart loop
            self._error = one_line(exc)

    def run(
        self, cell: Mapping[str, Any], settings: Mapping[str, Any], grid_dir: str, grid_seed: int
    ) -> Result:
        if self._error is not None:
            return {"key": cell["key"], "pid": os.getpid(), "status": "failed", "error": self._error}
        for llm in self._models:
            llm.llama.reset()  # no prefix carried over from the previous cell
        return run_cell(cell, settings, grid_dir, grid_seed)

    def pid(self) -> int:
        return os.getpid()


def desk_models(settings: Mapping[str, Any]) -> list[Any]:
    """The distinct :class:`~utils.llm_integration.loaded_model.LocalLLM` objects the desk uses."""
    import asyncio

    from trading_agents.agents.clients import build_desk_models
    from trading_agents.config.settings import Settings

    desk = build_desk_models(Settings(**settings))
    found: dict[int, Any] = {}
    for client in desk.clients.values():
        for side in (client, getattr(client, "primary", None), getattr(client, "fallback", None)):
            llm = getattr(side, "llm", None) if side is not None else None
            if llm is not None and hasattr(llm, "spec"):
                found[id(llm)] = llm
        with contextlib.suppress(Exception):
            asyncio.run(client.close())
    return list(found.values())


def load_models(settings: Mapping[str, Any]) -> list[Any]:
    models = desk_models(settings)
    for llm in models:
        _ = llm.llama  # load now, once
    return models


def ram_need_bytes(settings: Mapping[str, Any]) -> int:
    """RAM the desk's models need (file plus KV cache, from their GGUF headers), in bytes."""
    from utils.llm_integration.model_selector import ram_needed_mb

    total = 0.0
    for llm in desk_models(settings):
        total += ram_needed_mb(llm.spec) or 0.0
    return int(total * 2**20)


def execute(
    cells: list[Cell],
    settings_for: Callable[[Cell], dict[str, Any]],
    *,
    grid_dir: Path,
    grid_seed: int,
    workers: int,
    threads: int,
    memory_for: Callable[[Cell], int],
    on_submit: Callable[[Cell], None],
    on_result: Callable[[Cell, Result], None],
    concurrency: int | None = None,
) -> None:
    """Run ``cells`` on the connected Ray cluster, at most ``workers`` at a time.

    Agent cells on an external endpoint (``llm.endpoint``) load no model: their actors take no
    CPU and ``concurrency`` of them (default ``workers``) keep that many desks in flight.

    Baseline cells first (tasks), then each agent configuration in turn on its own pool of
    ``workers`` actors. ``on_result`` sees every result as it arrives (any order). On an
    interrupt the work in flight is cancelled and the actors are killed before re-raising.
    """
    import ray

    task = ray.remote(num_cpus=1, max_retries=MAX_RETRIES)(run_cell)
    worker_cls = ray.remote(max_restarts=MAX_RESTARTS, max_task_retries=MAX_RETRIES)(AgentWorker)
    in_flight: dict[Any, tuple[Cell, Any]] = {}
    actors: list[Any] = []
    folder = str(grid_dir)

    def collect() -> Any:
        ready, _ = ray.wait(list(in_flight), num_returns=1, timeout=WAIT_S)
        freed = []
        for ref in ready:
            cell, actor = in_flight.pop(ref)
            try:
                result = ray.get(ref)
            except ray.exceptions.RayError as exc:
                result = {"key": cell.key, "status": "failed", "error": f"worker lost: {one_line(exc)}"}
            on_result(cell, result)
            freed.append(actor)
        return freed

    try:
        queue = deque(c for c in cells if not c.is_agents)
        while queue or in_flight:
            while queue and len(in_flight) < workers:
                cell = queue.popleft()
                on_submit(cell)
                in_flight[task.remote(cell.as_dict(), settings_for(cell), folder, grid_seed)] = (cell, None)
            collect()

        groups: dict[str, list[Cell]] = {}
        for cell in cells:
            if cell.is_agents:
                llm = dict(settings_for(cell)["llm"])
                if llm.get("endpoint"):  # replicas of one endpoint: one pool, cells spread over them
                    llm["endpoint"] = {k: v for k, v in llm["endpoint"].items() if k != "base_url"}
                groups.setdefault(json.dumps(llm, sort_keys=True), []).append(cell)
        for group in groups.values():
            settings = settings_for(group[0])
            if settings["llm"].get("endpoint"):
                options: dict[str, Any] = {"num_cpus": 0}
                pool = concurrency or workers
            else:
                options, pool = {"num_cpus": threads, "memory": memory_for(group[0])}, workers
            actors = [worker_cls.options(**options).remote(settings) for _ in range(min(pool, len(group)))]
            idle = list(actors)
            queue = deque(group)
            while queue or in_flight:
                while queue and idle:
                    actor, cell = idle.pop(0), queue.popleft()
                    on_submit(cell)
                    ref = actor.run.remote(cell.as_dict(), settings_for(cell), folder, grid_seed)
                    in_flight[ref] = (cell, actor)
                idle += collect()
            _kill(actors)
            actors = []
    finally:
        if in_flight:  # interrupted: stop what runs, the caller requeues it
            for ref, (_, actor) in in_flight.items():
                if actor is None:
                    with contextlib.suppress(Exception):
                        ray.cancel(ref, force=True)
        _kill(actors)


def _kill(actors: list[Any]) -> None:
    import ray

    for actor in actors:
        with contextlib.suppress(Exception):
            ray.kill(actor, no_restart=True)
