"""Chart specifications for plotly.js (served from the plotly package, never a CDN).

Each function returns ``{"data": [...], "layout": {...}}`` as plain JSON-ready lists, built
without plotly's Python figure classes: a 2,148-bar page stays well inside its render budget.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

_MARGIN = {"l": 60, "r": 20, "t": 30, "b": 40}


def _layout(title: str, y_title: str, **extra: Any) -> dict[str, Any]:
    return {
        "title": {"text": title, "font": {"size": 14}},
        "margin": _MARGIN,
        "height": 320,
        "yaxis": {"title": {"text": y_title}},
        "legend": {"orientation": "h", "y": -0.15},
        **extra,
    }


def _clean(values: Sequence[Any]) -> list[float | None]:
    out: list[float | None] = []
    for v in values:
        f = float(v) if v is not None else math.nan
        out.append(None if math.isnan(f) else round(f, 4))
    return out


#: Every curve says whether it trades under the run's caps (``baselines.csv``'s ``buy_and_hold``
#: is the cost-free, fully invested one; the baselines run under the same caps as the strategy).
UNCAPPED = "buy & hold (uncapped, no costs)"
CAPPED = "(under the run's caps)"


def account_equity(steps: Sequence[Mapping[str, Any]], starting_cash: float) -> dict[str, Any]:
    """The account's equity per recorded step against buy-and-hold of its tickers (equal
    weight, from the prices the steps recorded, starting from the starting cash)."""
    dates = [s["bar_date"].strftime("%Y-%m-%d") for s in steps]
    data = [
        {
            "type": "scatter",
            "mode": "lines+markers",
            "name": "equity",
            "x": dates,
            "y": [s["equity"] for s in steps],
            "line": {"color": "#1f4e79"},
        }
    ]
    first: dict[str, float] = {}
    hold = []
    for s in steps:
        prices = s.get("prices") or {}
        for t, p in prices.items():
            if p and t not in first:
                first[t] = float(p)
        ratios = [float(prices[t]) / first[t] for t in first if prices.get(t)]
        hold.append(round(starting_cash * sum(ratios) / len(ratios), 4) if ratios else None)
    if steps and any(v is not None for v in hold):
        data.append(
            {
                "type": "scatter",
                "mode": "lines",
                "name": UNCAPPED,
                "x": dates,
                "y": hold,
                "line": {"color": "#999999", "dash": "dot"},
            }
        )
    layout = _layout(
        "Equity against buy-and-hold", "equity [$]", xaxis={"type": "date", "tickformat": "%Y-%m-%d"}
    )
    return {"data": data, "layout": layout}


def backtest_equity(equity: pd.DataFrame, baselines: pd.DataFrame | None, name: str) -> dict[str, Any]:
    """The strategy's equity per bar against buy-and-hold and each baseline."""
    dates = [d.strftime("%Y-%m-%d") for d in pd.DatetimeIndex(equity.index)]
    data = [
        {
            "type": "scatter",
            "mode": "lines",
            "name": f"{name} {CAPPED}",
            "x": dates,
            "y": _clean(equity["equity"].tolist()),
            "line": {"color": "#1f4e79", "width": 2},
        }
    ]
    if baselines is not None:
        for col in baselines.columns:
            data.append(
                {
                    "type": "scatter",
                    "mode": "lines",
                    "name": UNCAPPED if col == "buy_and_hold" else f"{col.replace('_', ' ')} {CAPPED}",
                    "x": dates,
                    "y": _clean(baselines[col].reindex(equity.index).tolist()),
                    "line": {"width": 1},
                }
            )
    return {"data": data, "layout": _layout("Equity against buy-and-hold and baselines", "equity [$]")}


def drawdown(equity: pd.DataFrame) -> dict[str, Any]:
    dates = [d.strftime("%Y-%m-%d") for d in pd.DatetimeIndex(equity.index)]
    if "drawdown" in equity:
        dd = equity["drawdown"].astype(float).abs() * -100
    else:
        eq = equity["equity"].astype(float)
        dd = (eq / eq.cummax() - 1) * 100
    data = [
        {
            "type": "scatter",
            "mode": "lines",
            "fill": "tozeroy",
            "name": "drawdown",
            "x": dates,
            "y": _clean(dd.tolist()),
            "line": {"color": "#c0392b", "width": 1},
        }
    ]
    return {"data": data, "layout": _layout("Drawdown", "drawdown [%]", height=220)}


def excess_distribution(cells: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> dict[str, Any]:
    """Excess return over buy-and-hold per strategy: a box with every cell as a point."""
    data = []
    for label in labels:
        ys = [c["excess_pct"] for c in cells if c.get("label") == label and c.get("excess_pct") is not None]
        data.append({"type": "box", "name": label, "y": ys, "boxpoints": "all", "jitter": 0.3})
    return {
        "data": data,
        "layout": _layout("Excess return over buy-and-hold per cell", "excess [%]", showlegend=False),
    }


def heatmap(
    cells: Sequence[Mapping[str, Any]], label: str, data_items: Sequence[str], windows: Sequence[str]
) -> dict[str, Any]:
    """Excess return of ``label`` by data item (rows) x window (columns) as a table of coloured
    cells (red below buy-and-hold, blue above), each linking to that cell's backtest page."""
    by_key = {(c.get("data"), c.get("window")): c for c in cells if c.get("label") == label}
    values = [c["excess_pct"] for c in by_key.values() if c.get("excess_pct") is not None]
    scale = max((abs(v) for v in values), default=0.0) or 1.0
    rows = []
    for item in data_items:
        row = []
        for window in windows:
            c = by_key.get((item, window)) or {}
            value = c.get("excess_pct")
            row.append(
                {
                    "value": value,
                    "status": c.get("status", "missing"),
                    "href": c.get("href"),
                    "colour": _diverging(value / scale) if value is not None else "#eeeeee",
                }
            )
        rows.append({"data": item, "cells": row})
    return {"label": label, "windows": list(windows), "rows": rows}


def _diverging(x: float) -> str:
    """-1 red, 0 white, +1 blue."""
    x = max(-1.0, min(1.0, x))
    if x < 0:
        r, g, b = 255, round(255 * (1 + x * 0.75)), round(255 * (1 + x * 0.75))
    else:
        r, g, b = round(255 * (1 - x * 0.75)), round(255 * (1 - x * 0.45)), 255
    return f"#{r:02x}{g:02x}{b:02x}"
