"""How long a grid's agent cells will take: cells x bars x measured seconds per decision.

The seconds per decision are measured, never assumed: from the agent cells this grid folder
has already finished (a resumed or extended grid), else from the first agent cell of this
run, after which :func:`estimate_line` is printed again with the figure.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from trading_agents.grid.cells import Cell


def decisions_of(cells: Iterable[Cell], bars: Mapping[tuple[str, str, str], int]) -> int:
    """Agent decisions the ``cells`` will make: one per bar of each agent cell's window."""
    return sum(bars.get((c.data, c.start, c.end), 0) for c in cells if c.is_agents)


def measured_seconds_per_decision(rows: Iterable[Any]) -> float | None:
    """Wall seconds per decision over finished agent cells (``CellRow``-like rows or result dicts)."""
    wall = 0.0
    decisions = 0
    for row in rows:
        status = row.get("status") if isinstance(row, Mapping) else row.status
        llm = row.get("llm") if isinstance(row, Mapping) else row.llm
        timings = row.get("timings") if isinstance(row, Mapping) else row.timings
        if status != "done" or not llm or not timings:
            continue
        n = int(llm.get("decisions") or 0)
        if n:
            decisions += n
            wall += float(timings.get("wall_s") or 0.0)
    return wall / decisions if decisions else None


def duration_text(seconds: float) -> str:
    """``"45 s"``, ``"2 min 05 s"``, ``"12 min"``, ``"3 h 20 min"``, ``"2 d 4 h"``."""
    seconds = max(0.0, seconds)
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 600:
        whole = round(seconds)
        return f"{whole // 60} min {whole % 60:02d} s"
    minutes = round(seconds / 60)
    if minutes < 90:
        return f"{minutes} min"
    hours, minutes = divmod(minutes, 60)
    if hours < 48:
        return f"{hours} h {minutes} min" if minutes else f"{hours} h"
    days, hours = divmod(hours, 24)
    return f"{days} d {hours} h" if hours else f"{days} d"


def estimate_line(
    cells: int, decisions: int, seconds_per_decision: float | None, workers: int, *, source: str
) -> str:
    """One line: the agent work ahead and, once measured, how long it takes on ``workers``."""
    head = f"grid: {cells} agent cell{'s' if cells != 1 else ''}, {decisions:,} decisions (cells x bars)"
    if seconds_per_decision is None:
        return f"{head}; seconds per decision not measured yet: an estimate follows the first agent cell"
    total = decisions * seconds_per_decision / max(1, workers)
    return (
        f"{head} x {seconds_per_decision:.1f} s per decision ({source}) / {workers} "
        f"worker{'s' if workers != 1 else ''}: about {duration_text(total)}"
    )
