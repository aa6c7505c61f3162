"""The leaderboard: per strategy label, how its cells did against buy-and-hold on the same cell.

Excess return of a cell = its return minus the return of the grid's buy-and-hold cell on the
same data item and window (same engine, costs and caps); on a universe item, minus the return
of equal-weight buy-and-hold (``equal-weight``) instead. Each cell also shows the LLM's cost
(``llm_cost_usd``, stored with the decisions), its return net of that cost and the excess
return net of it (``excess_net_pct``; ``mean_excess_net_pct`` per label). Per label: cells, mean and median
return, mean excess with a 95% bootstrap confidence interval (percentile method,
:data:`BOOTSTRAP_RESAMPLES` resamples, fixed seed :data:`BOOTSTRAP_SEED`), the share of
cells that beat buy-and-hold, mean Sharpe, worst max drawdown and, for agents, LLM calls,
tokens and wall time per decision, and the route reasons. Written to ``DIR/leaderboard.json``.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

from trading_agents.grid.spec import GridSpec
from trading_agents.grid.store import CellRow, spec_hash

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 20_240_607
CONFIDENCE = 0.95


def bootstrap_ci(
    values: Iterable[float], *, resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean at :data:`CONFIDENCE`; ``None`` without values."""
    x = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if not len(x):
        return None
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(resamples, len(x)))].mean(axis=1)
    tail = (1 - CONFIDENCE) / 2 * 100
    lo, hi = np.percentile(means, [tail, 100 - tail])
    return round(float(lo), 4), round(float(hi), 4)


def cell_table(
    rows: Iterable[CellRow], reference: str, universe_reference: str | None = None
) -> list[dict[str, Any]]:
    """One entry per cell: key, label, data, window, status, return, excess (also net of the
    LLM's cost), Sharpe, drawdown. Universe cells are measured against ``universe_reference``."""
    rows = list(rows)

    def yardstick(r: CellRow) -> str:
        return universe_reference if r.cell.universe and universe_reference else reference

    ref = {
        (r.cell.data, r.cell.start, r.cell.end): (r.metrics or {}).get("return_pct")
        for r in rows
        if r.cell.label == yardstick(r) and r.status == "done"
    }
    out = []
    for r in rows:
        m = r.metrics or {}
        ret = m.get("return_pct") if r.status == "done" else None
        net = m.get("return_net_pct", ret) if r.status == "done" else None
        base = ref.get((r.cell.data, r.cell.start, r.cell.end))
        out.append(
            {
                "key": r.cell.key,
                "label": r.cell.label,
                "strategy": r.cell.name,
                "data": r.cell.data,
                "window": f"{r.cell.start}..{r.cell.end}",
                "status": r.status,
                "seed": r.cell.seed,
                "return_pct": ret,
                "buy_hold_pct": base,
                "excess_pct": None if ret is None or base is None else round(ret - base, 6),
                "benchmark": yardstick(r),
                "llm_cost_usd": m.get("llm_cost_usd") if r.status == "done" else None,
                "return_net_pct": net,
                "excess_net_pct": None if net is None or base is None else round(net - base, 6),
                "sharpe": m.get("sharpe") if r.status == "done" else None,
                "max_drawdown_pct": m.get("max_drawdown_pct") if r.status == "done" else None,
                "num_trades": m.get("num_trades") if r.status == "done" else None,
                "wall_s": (r.timings or {}).get("wall_s"),
                "error": r.error,
                "out_dir": r.out_dir,
            }
        )
    return out


def build(rows: Iterable[CellRow], spec: GridSpec, *, caps: Mapping[str, Any], cash: float) -> dict[str, Any]:
    """The leaderboard document (``leaderboard.json``, ``grid report --json``)."""
    rows = list(rows)
    reference = spec.reference_label()
    universe_reference = spec.universe_reference_label()
    cells = cell_table(rows, reference, universe_reference)
    by_label: dict[str, list[dict[str, Any]]] = {}
    for entry in cells:
        by_label.setdefault(entry["label"], []).append(entry)
    llm_rows: dict[str, list[CellRow]] = {}
    for r in rows:
        if r.cell.is_agents and r.status == "done":
            llm_rows.setdefault(r.cell.label, []).append(r)

    strategies = []
    for strategy in spec.with_reference():
        label = strategy.default_label()
        entries = by_label.get(label, [])
        done = [e for e in entries if e["status"] == "done"]
        returns = [e["return_pct"] for e in done if e["return_pct"] is not None]
        excess = [e["excess_pct"] for e in done if e["excess_pct"] is not None]
        excess_net = [e["excess_net_pct"] for e in done if e["excess_net_pct"] is not None]
        costs = [float(e["llm_cost_usd"] or 0.0) for e in done]
        sharpes = [e["sharpe"] for e in done if _finite(e["sharpe"])]
        drawdowns = [e["max_drawdown_pct"] for e in done if _finite(e["max_drawdown_pct"])]
        row: dict[str, Any] = {
            "label": label,
            "strategy": strategy.name,
            "reference": label in (reference, universe_reference),
            "cells": len(entries),
            "done": len(done),
            "failed": sum(1 for e in entries if e["status"] == "failed"),
            "mean_return_pct": _mean(returns),
            "median_return_pct": round(float(np.median(returns)), 4) if returns else None,
            "mean_excess_pct": _mean(excess),
            "mean_excess_net_pct": _mean(excess_net),
            "llm_cost_usd": round(sum(costs), 6),
            "excess_ci95_pct": bootstrap_ci(excess),
            "beat_buy_hold_share": round(sum(1 for x in excess if x > 0) / len(excess), 4)
            if excess
            else None,
            "mean_sharpe": _mean(sharpes),
            "worst_max_drawdown_pct": round(min(drawdowns), 4) if drawdowns else None,
        }
        if strategy.name == "agents":
            row["llm"] = llm_summary(llm_rows.get(label, []))
        strategies.append(row)
    strategies.sort(key=lambda s: (s["reference"], -_or(s["mean_excess_pct"], -math.inf), s["label"]))
    return {
        "grid": {
            "spec_hash": spec_hash(spec.canonical()),
            "cells": len(cells),
            "done": sum(1 for e in cells if e["status"] == "done"),
            "failed": sum(1 for e in cells if e["status"] == "failed"),
            "pending": sum(1 for e in cells if e["status"] in ("pending", "running")),
            "data": sorted({e["data"] for e in cells}),
            "windows": sorted({e["window"] for e in cells}),
            "reference": reference,
            "universe_reference": universe_reference,
            "seed": spec.seed,
            "cash": cash,
            "broker": spec.broker.model_dump(exclude_unset=True),
            "risk_caps": dict(caps),
            "bootstrap": {"resamples": BOOTSTRAP_RESAMPLES, "seed": BOOTSTRAP_SEED, "confidence": CONFIDENCE},
        },
        "strategies": strategies,
        "cells": cells,
    }


def llm_summary(rows: list[CellRow]) -> dict[str, Any]:
    """LLM calls, tokens and wall time per decision over an agent label's finished cells."""
    llm = [r.llm or {} for r in rows]
    decisions = sum(int(x.get("decisions") or 0) for x in llm)
    wall = sum(float((r.timings or {}).get("wall_s") or 0.0) for r in rows)
    calls = sum(int(x.get("calls") or 0) for x in llm)
    cached = sum(int(x.get("cached_calls") or 0) for x in llm)
    prompt = sum(int(x.get("prompt_tokens") or 0) for x in llm)
    completion = sum(int(x.get("completion_tokens") or 0) for x in llm)
    routes: Counter[str] = Counter()
    for x in llm:
        routes.update(x.get("routes") or {})

    def per(value: float) -> float | None:
        return round(value / decisions, 3) if decisions else None

    return {
        "decisions": decisions,
        "calls": calls,
        "cached_calls": cached,
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "calls_per_decision": per(calls + cached),
        "prompt_tokens_per_decision": per(prompt),
        "completion_tokens_per_decision": per(completion),
        "wall_s_per_decision": per(wall),
        "routes": dict(sorted(routes.items())),
        "models": {k: v for x in llm for k, v in (x.get("models") or {}).items()},
    }


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def _mean(values: list[float]) -> float | None:
    return round(float(np.mean(values)), 4) if values else None


def _or(value: float | None, default: float) -> float:
    return default if value is None else value
