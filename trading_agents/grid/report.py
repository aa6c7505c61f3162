"""``DIR/leaderboard.json`` and ``DIR/report.html`` (self-contained: PNG plots as base64).

Plots: the distribution of excess return over buy-and-hold per strategy (box plot with the
cells as points), and a heatmap of excess return by data item x window for each strategy.
The PNG encoding and the page style are the backtest report's.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trading_agents.backtest.metrics import unsigned_zero
from trading_agents.backtest.report import REPORT_CSS, caps_table, png_data_uri
from trading_agents.fsutil import atomic_write_json, atomic_write_text
from trading_agents.grid.store import CellRow

LEADERBOARD = "leaderboard.json"
REPORT = "report.html"

_COLUMNS = (
    ("label", "strategy"),
    ("done", "cells"),
    ("mean_return_pct", "mean return [%]"),
    ("median_return_pct", "median return [%]"),
    ("mean_excess_pct", "mean excess vs capped B&H [%]"),
    ("excess_ci95_pct", "95% CI (bootstrap)"),
    ("llm_cost_usd", "LLM cost [$]"),
    ("mean_excess_net_pct", "mean excess net of LLM cost [%]"),
    ("beat_buy_hold_share", "beat capped B&H"),
    ("mean_sharpe", "mean Sharpe"),
    ("worst_max_drawdown_pct", "worst max DD [%]"),
    ("failed", "failed"),
)


def write(out_dir: Path, board: Mapping[str, Any], rows: list[CellRow]) -> dict[str, Path]:
    """Write both files atomically; returns their paths."""
    out_dir = Path(out_dir)
    paths = {"leaderboard": out_dir / LEADERBOARD, "report": out_dir / REPORT}
    atomic_write_json(paths["leaderboard"], board)
    atomic_write_text(paths["report"], render_html(board))
    return paths


def render_html(board: Mapping[str, Any]) -> str:
    grid = board["grid"]
    title = f"Grid: {grid['cells']} cells, {len(grid['data'])} data items x {len(grid['windows'])} windows"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title><style>{REPORT_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">excess = return minus buy-and-hold ({_e(grid["reference"])}) on the same cell'
        + (
            f", on a universe minus equal-weight buy-and-hold ({_e(grid['universe_reference'])})"
            if grid.get("universe_reference")
            else ""
        )
        + f", same engine, costs and caps · spec {_e(grid['spec_hash'])} · seed {_e(grid['seed'])}</p>",
    ]
    if grid["failed"] or grid["pending"]:
        parts.append(
            f'<p class="warn">{grid["failed"]} failed, {grid["pending"]} not run; see the cells below</p>'
        )
    parts.append("<h2>Leaderboard</h2>")
    parts.append(_leaderboard_table(board["strategies"]))
    parts.append("<h2>Caps in force</h2>")
    parts.append(
        f"<p>Every strategy, buy-and-hold included, trades under these caps with cash "
        f"{grid['cash']:,.0f}.</p>"
    )
    parts.append(caps_table(grid["risk_caps"]))
    for caption, png in charts(board):
        parts.append(
            f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{png}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    agents = [s for s in board["strategies"] if "llm" in s]
    if agents:
        parts.append("<h2>LLM cost</h2>")
        parts.append(_llm_table(agents))
    parts.append("<h2>Cells</h2>")
    parts.append(_cells_table(board["cells"]))
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def charts(board: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(caption, base64 PNG) of the excess distribution and the per-strategy heatmaps."""
    from matplotlib.figure import Figure

    cells = board["cells"]
    labels = [s["label"] for s in board["strategies"] if not s["reference"]]
    series = {
        lab: [c["excess_pct"] for c in cells if c["label"] == lab and c["excess_pct"] is not None]
        for lab in labels
    }
    labels = [lab for lab in labels if series[lab]]
    if not labels:
        return []
    out = []
    fig = Figure(figsize=(max(5, 1.4 * len(labels) + 2), 4), dpi=100)
    ax = fig.add_subplot()
    ax.boxplot([series[lab] for lab in labels], showmeans=True)
    ax.set_xticks(range(1, len(labels) + 1), labels, fontsize=8)
    for i, lab in enumerate(labels, start=1):
        ax.scatter([i] * len(series[lab]), series[lab], s=10, alpha=0.5, color="#1f4e79")
    ax.axhline(0, color="#c0392b", linewidth=1)
    ax.set_ylabel("excess return over buy-and-hold [%]")
    ax.grid(alpha=0.3)
    out.append(("Distribution of excess return per strategy (one point per cell)", png_data_uri(fig)))

    data = board["grid"]["data"]
    windows = board["grid"]["windows"]
    import numpy as np

    fig = Figure(figsize=(10, max(2.5, 0.35 * len(data) + 1.2) * len(labels)), dpi=100)
    for n, lab in enumerate(labels):
        grid = np.full((len(data), len(windows)), np.nan)
        for c in cells:
            if c["label"] == lab and c["excess_pct"] is not None:
                grid[data.index(c["data"]), windows.index(c["window"])] = c["excess_pct"]
        ax = fig.add_subplot(len(labels), 1, n + 1)
        bound = heatmap_bound(grid)
        image = ax.imshow(grid, aspect="auto", cmap="RdYlGn", vmin=-bound, vmax=bound)
        ax.set_yticks(range(len(data)), data)
        ax.set_xticks(range(len(windows)), [w.replace("..", "\n") for w in windows], fontsize=7)
        ax.set_title(lab, fontsize=9)
        fig.colorbar(image, ax=ax, label="excess [%]")
    out.append(("Excess return by data item x window", png_data_uri(fig)))
    return out


#: The smallest colour range of a heatmap, in percent either side of 0: a -0.02% cell is a
#: pale tint, not the deepest red.
MIN_HEATMAP_BOUND_PCT = 5.0


def heatmap_bound(values: Any) -> float:
    """The colour scale's half range: symmetric around 0, the largest ``|value|``, at least
    :data:`MIN_HEATMAP_BOUND_PCT`."""
    import numpy as np

    arr = np.asarray(values, dtype=float)
    finite = arr[np.isfinite(arr)]
    largest = float(np.abs(finite).max()) if finite.size else 0.0
    return max(largest, MIN_HEATMAP_BOUND_PCT)


def _leaderboard_table(strategies: list[Mapping[str, Any]]) -> str:
    head = "".join(f"<th>{_e(title)}</th>" for _, title in _COLUMNS)
    body = []
    for s in strategies:
        cells = "".join(f"<td>{_e(fmt(key, s.get(key)))}</td>" for key, _ in _COLUMNS)
        body.append(f"<tr>{cells}</tr>")
    return f'<table class="compare"><tr>{head}</tr>{"".join(body)}</table>'


def _llm_table(agents: list[Mapping[str, Any]]) -> str:
    keys = (
        "decisions",
        "calls",
        "cached_calls",
        "calls_per_decision",
        "prompt_tokens_per_decision",
        "completion_tokens_per_decision",
        "wall_s_per_decision",
        "routes",
    )
    head = "<th>strategy</th>" + "".join(f"<th>{_e(k)}</th>" for k in keys)
    body = "".join(
        "<tr><td>" + _e(s["label"]) + "</td>" + "".join(_llm_cell(k, s["llm"].get(k)) for k in keys) + "</tr>"
        for s in agents
    )
    return f'<table class="compare"><tr>{head}</tr>{body}</table>'


def _llm_cell(key: str, value: Any) -> str:
    """One LLM-cost cell; the routes go one ``model: reason count`` per line so the table fits the page."""
    if key == "routes" and isinstance(value, Mapping):
        lines = "<br>".join(f"{_e(route)}&nbsp;{_e(count)}" for route, count in value.items())
        return f'<td class="routes">{lines or "--"}</td>'
    return f"<td>{_e(fmt(key, value))}</td>"


def _cells_table(cells: list[Mapping[str, Any]]) -> str:
    keys = (
        "key",
        "status",
        "return_pct",
        "excess_pct",
        "llm_cost_usd",
        "excess_net_pct",
        "sharpe",
        "max_drawdown_pct",
        "num_trades",
        "error",
    )
    head = "".join(f"<th>{_e(k)}</th>" for k in keys)
    body = "".join(
        "<tr>" + "".join(f"<td>{_e(fmt(k, c.get(k)))}</td>" for k in keys) + "</tr>" for c in cells
    )
    return f'<table class="meta"><tr>{head}</tr>{body}</table>'


def fmt(key: str, value: Any) -> str:
    """One leaderboard value as table text (``--`` when undefined)."""
    if value is None:
        return "--"
    if key == "beat_buy_hold_share":
        return f"{value:.0%}"
    if key == "llm_cost_usd" and isinstance(value, int | float):
        return f"{value:.4f}"
    if isinstance(value, list | tuple) and len(value) == 2 and all(isinstance(v, int | float) for v in value):
        return f"[{unsigned_zero(f'{value[0]:.2f}')}, {unsigned_zero(f'{value[1]:.2f}')}]"
    if isinstance(value, float):
        return "--" if not math.isfinite(value) else unsigned_zero(f"{value:.2f}")
    if isinstance(value, Mapping):
        return json.dumps(value)
    return str(value)


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))
