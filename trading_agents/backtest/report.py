"""The results folder of a backtest: machine-readable files plus one self-contained HTML report.

:func:`write_results` writes, each atomically (a crash never leaves half a file):

``summary.json``
    ``{"metrics": {...}, "baselines": {name: {...}}, "metric_names": {...}, "meta": {...}}``:
    this strategy's metrics (snake_case keys, see :mod:`trading_agents.backtest.metrics`),
    for the agents a ``track_record`` (per action: calls, hit rate, mean realised return; see
    :func:`trading_agents.agents.track_record.action_stats`),
    the baselines' metrics on the same data, the display name of each key, and how the run
    was made (strategy, parameters, tickers, window, costs, model sha256s, seed, the config
    with secrets masked, package versions, LLM call counts, look-ahead warnings).
``trades.csv``
    One closed round trip per row (ticker, size, entry/exit time and price, pnl, return_pct,
    commission, bars_held).
``equity.csv``
    One row per bar: equity, cash, exposure, drawdown and the position of each ticker.
``decisions.jsonl``
    One JSON object per strategy decision: ``{"date", "strategy", "ticker", "record"}``
    (``ticker`` when the decision is about one); for the agents strategy the record holds
    each agent's rationale.
``baselines.csv``
    One row per bar: the equity of buy-and-hold and of each baseline run beside it (only
    when the run had bars or baselines to compare with).
``report.html``
    Opens offline: charts are PNGs embedded as base64 (equity against buy-and-hold,
    drawdown, exposure and positions), the metrics table, a comparison table against the
    baselines, the run's metadata and the decisions.
"""

from __future__ import annotations

import base64
import datetime as dt
import html
import io
import json
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trading_agents.backtest.metrics import METRICS, format_metric
from trading_agents.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text

RESULT_FILES = ("summary.json", "trades.csv", "equity.csv", "decisions.jsonl", "report.html")
BASELINES_FILE = "baselines.csv"

#: Packages whose versions are recorded in summary.json (a result is only comparable with
#: one made by the same code and numerics).
VERSIONED_PACKAGES = ("trading-agents", "llama-cpp-python", "autogen-agentchat", "pandas", "numpy")

#: Metrics shown in the comparison table against the baselines.
COMPARISON_KEYS = (
    "return_pct",
    "buy_hold_return_pct",
    "return_ann_pct",
    "volatility_ann_pct",
    "sharpe",
    "sortino",
    "max_drawdown_pct",
    "num_trades",
    "win_rate_pct",
    "exposure_time_pct",
    "commissions",
)

MAX_DECISIONS_IN_HTML = 200


def package_versions(names: tuple[str, ...] = VERSIONED_PACKAGES) -> dict[str, str | None]:
    """Installed version of each distribution (``None`` when it is not installed)."""
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def write_results(
    out_dir: Path,
    result: Any,
    metrics: Mapping[str, Any],
    *,
    baselines: Mapping[str, Mapping[str, Any]] | None,
    meta: Mapping[str, Any],
    bars: Mapping[str, pd.DataFrame] | None = None,
    baseline_equity: Mapping[str, pd.Series] | None = None,
) -> dict[str, Path]:
    """Write the five result files (and ``baselines.csv`` when there is something to compare
    with) into ``out_dir`` (created) and return their paths by stem.

    ``result`` is an ``EngineResult``; ``metrics`` and each of ``baselines`` come from
    :func:`~trading_agents.backtest.metrics.compute_metrics`. ``bars`` (the engine's input)
    adds the buy-and-hold curve to the equity chart and ``baseline_equity`` the baselines'
    equity curves. Raises :class:`~trading_agents.errors.ResourceError` when ``out_dir`` is
    not writable or the disk is full.
    """
    out_dir = Path(out_dir)
    meta = dict(meta)
    meta.setdefault("versions", package_versions())
    meta.setdefault("written_at", dt.datetime.now(dt.UTC).isoformat(timespec="seconds"))
    summary = {
        "metrics": dict(metrics),
        "baselines": {name: dict(m) for name, m in (baselines or {}).items()},
        "metric_names": METRICS,
        "meta": meta,
    }
    track = track_record_summary(result)
    if track is not None:
        summary["track_record"] = track
    paths = {name.split(".")[0]: out_dir / name for name in RESULT_FILES}

    trades = result.trades if result.trades is not None else pd.DataFrame()
    atomic_write_text(paths["trades"], trades.to_csv(index=False))
    equity = result.equity
    atomic_write_text(paths["equity"], equity.to_csv(index_label=equity.index.name or "Date"))
    atomic_write_text(paths["decisions"], decisions_jsonl(result.decisions or []))
    cash = float(getattr(result, "starting_cash", 0.0) or (equity["equity"].iloc[0] if len(equity) else 0.0))
    curves = comparison_curves(equity, cash, bars, baseline_equity or {})
    if curves is not None:
        paths["baselines"] = out_dir / BASELINES_FILE
        atomic_write_text(paths["baselines"], curves.to_csv(index_label=equity.index.name or "Date"))
    page = render_html(result, summary, bars=bars, baseline_equity=baseline_equity or {})
    atomic_write_bytes(paths["report"], page.encode("utf-8"))
    # written last: a summary.json means the folder is complete (a full disk stops before it)
    atomic_write_json(paths["summary"], _json_ready(summary))
    return paths


def decisions_jsonl(decisions: list[Mapping[str, Any]]) -> str:
    """One ``{"date", "strategy", "record"}`` JSON object per line."""
    lines = []
    for item in decisions:
        date = item.get("bar_date", item.get("date"))
        row = {"date": _iso(date), "strategy": item.get("strategy")}
        if item.get("ticker") is not None:
            row["ticker"] = item["ticker"]
        row["record"] = item.get("record")
        lines.append(json.dumps(_json_ready(row), default=str, sort_keys=False))
    return "".join(line + "\n" for line in lines)


def comparison_curves(
    equity: pd.DataFrame,
    cash: float,
    bars: Mapping[str, pd.DataFrame] | None,
    baseline_equity: Mapping[str, pd.Series],
) -> pd.DataFrame | None:
    """Buy-and-hold and each baseline's equity on the run's bars (``baselines.csv``), or None."""
    if not len(equity) or (not bars and not baseline_equity):
        return None
    index = pd.DatetimeIndex(equity.index)
    columns: dict[str, pd.Series] = {}
    if bars:
        columns["buy_and_hold"] = buy_hold_curve(bars, index, cash)
    for name, curve in baseline_equity.items():
        columns[name] = curve.reindex(index)
    return pd.DataFrame(columns, index=index)


def buy_hold_curve(bars: Mapping[str, pd.DataFrame], index: pd.DatetimeIndex, cash: float) -> pd.Series:
    """Equity of an equal-weight, cost-free buy-and-hold of every ticker over ``index``."""
    parts = []
    for frame in bars.values():
        close = frame["Close"].astype(float).reindex(index).ffill().bfill()
        if len(close) and close.iloc[0] > 0:
            parts.append(close / close.iloc[0])
    if not parts:
        return pd.Series(np.nan, index=index)
    return pd.concat(parts, axis=1).mean(axis=1) * cash


def render_html(
    result: Any,
    summary: Mapping[str, Any],
    *,
    bars: Mapping[str, pd.DataFrame] | None = None,
    baseline_equity: Mapping[str, pd.Series] | None = None,
) -> str:
    """The self-contained HTML report (inline CSS, base64 PNG charts, no scripts)."""
    meta = summary["meta"]
    metrics = summary["metrics"]
    baselines = summary["baselines"]
    name = str(meta.get("strategy", getattr(result, "strategy", "strategy")))
    charts = _charts(result, name, bars, baseline_equity or {})
    title = f"Backtest: {name} on {', '.join(meta.get('tickers') or [])}"
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_e(title)}</title>",
        f"<style>{REPORT_CSS}</style></head><body>",
        f"<h1>{_e(title)}</h1>",
        f'<p class="sub">{_e(metrics.get("start"))} to {_e(metrics.get("end"))} · '
        f"run {_e(meta.get('run_id', getattr(result, 'run_id', '')))}</p>",
    ]
    for warning in meta.get("lookahead_warnings") or []:
        parts.append(f'<p class="warn">look-ahead warning: {_e(warning)}</p>')
    for caption, png in charts:
        parts.append(
            f'<figure><img alt="{_e(caption)}" src="data:image/png;base64,{png}">'
            f"<figcaption>{_e(caption)}</figcaption></figure>"
        )
    parts.append("<h2>Metrics</h2>")
    parts.append(_metrics_table(metrics))
    if baselines:
        parts.append("<h2>Against baselines (same data, same engine, same costs)</h2>")
        parts.append(_comparison_table(name, metrics, baselines))
    if summary.get("track_record"):
        parts.append("<h2>Track record (the desk's BUY and SELL calls)</h2>")
        parts.append(_track_table(summary["track_record"]))
    parts.append("<h2>Run</h2>")
    parts.append(_meta_table(meta))
    decisions = list(getattr(result, "decisions", None) or [])
    if decisions:
        shown = decisions[:MAX_DECISIONS_IN_HTML]
        more = len(decisions) - len(shown)
        parts.append(f"<h2>Decisions ({len(decisions)})</h2>")
        if more:
            parts.append(f"<p>First {len(shown)} shown; all are in decisions.jsonl.</p>")
        for item in shown:
            date = _iso(item.get("bar_date", item.get("date")))
            body = json.dumps(_json_ready(item.get("record")), indent=2, default=str)
            parts.append(
                f"<details><summary>{_e(date)} · {_e(item.get('strategy'))}</summary>"
                f"<pre>{_e(body)}</pre></details>"
            )
    parts.append("</body></html>")
    return "\n".join(parts) + "\n"


def _charts(
    result: Any,
    name: str,
    bars: Mapping[str, pd.DataFrame] | None,
    baseline_equity: Mapping[str, pd.Series],
) -> list[tuple[str, str]]:
    from matplotlib.figure import Figure  # no pyplot: no GUI backend, safe in cron and threads

    equity_df: pd.DataFrame = result.equity
    if equity_df is None or equity_df.empty:
        return []
    index = pd.DatetimeIndex(equity_df.index)
    equity = equity_df["equity"].astype(float)
    cash = float(getattr(result, "starting_cash", equity.iloc[0]))
    charts: list[tuple[str, str]] = []

    fig = Figure(figsize=(10, 4), dpi=100)
    ax = fig.add_subplot()
    ax.plot(index, equity, label=name, linewidth=1.6, color="#1f4e79")
    if bars:
        ax.plot(
            index,
            buy_hold_curve(bars, index, cash),
            label="buy & hold (no costs)",
            linewidth=1.0,
            color="#999999",
        )
    for other, curve in baseline_equity.items():
        ax.plot(curve.index, curve.to_numpy(dtype=float), label=other, linewidth=0.8, alpha=0.7)
    ax.set_ylabel("equity [$]")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    charts.append(("Equity against buy-and-hold", png_data_uri(fig)))

    fig = Figure(figsize=(10, 2.5), dpi=100)
    ax = fig.add_subplot()
    dd = equity_df["drawdown"].astype(float) if "drawdown" in equity_df else (1 - equity / equity.cummax())
    ax.fill_between(index, -dd.abs() * 100, 0, color="#c0392b", alpha=0.5, step="post")
    ax.set_ylabel("drawdown [%]")
    ax.grid(alpha=0.3)
    charts.append(("Drawdown", png_data_uri(fig)))

    pos_cols = [c for c in equity_df.columns if str(c).startswith("pos_")]
    if "exposure" in equity_df or pos_cols:
        fig = Figure(figsize=(10, 2.5), dpi=100)
        ax = fig.add_subplot()
        if "exposure" in equity_df:
            ax.fill_between(
                index,
                equity_df["exposure"].astype(float) * 100,
                0,
                step="post",
                color="#27ae60",
                alpha=0.4,
                label="exposure [% of equity]",
            )
            ax.set_ylabel("exposure [%]")
        if pos_cols:
            ax2 = ax.twinx()
            for col in pos_cols:
                ax2.step(index, equity_df[col].astype(float), where="post", linewidth=0.9, label=str(col)[4:])
            ax2.set_ylabel("position [shares]")
            ax2.legend(loc="upper right", fontsize=8)
        ax.grid(alpha=0.3)
        ax.legend(loc="upper left", fontsize=8)
        charts.append(("Exposure and positions", png_data_uri(fig)))
    return charts


def png_data_uri(fig: Any) -> str:
    buf = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buf, format="png")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def track_record_summary(result: Any) -> dict[str, Any] | None:
    """Hit rate and mean realised return per action, when the decisions hold calls."""
    from trading_agents.agents.track_record import action_stats

    stats = action_stats(getattr(result, "decisions", None) or [])
    return stats if any(s["calls"] for s in stats.values()) else None


def _track_table(stats: Mapping[str, Mapping[str, Any]]) -> str:
    cols = ("calls", "realised", "partial", "pending", "hit_rate", "mean_return_pct")
    head = "<tr><th>action</th>" + "".join(f"<th>{_e(c)}</th>" for c in cols) + "</tr>"
    rows = []
    for action, s in stats.items():
        cells = []
        for c in cols:
            v = s.get(c)
            if v is None:
                text = "-"
            elif c == "hit_rate":
                text = f"{v:.0%}"
            else:
                text = f"{v:+.2f}%" if c == "mean_return_pct" else str(v)
            cells.append(f"<td>{_e(text)}</td>")
        rows.append(f"<tr><td>{_e(action)}</td>{''.join(cells)}</tr>")
    return f"<table>{head}{''.join(rows)}</table>"


def _metrics_table(metrics: Mapping[str, Any]) -> str:
    rows = "".join(
        f"<tr><th>{_e(label)}</th><td>{_e(format_metric(key, metrics.get(key)))}</td></tr>"
        for key, label in METRICS.items()
    )
    return f'<table class="metrics">{rows}</table>'


def _comparison_table(
    name: str, metrics: Mapping[str, Any], baselines: Mapping[str, Mapping[str, Any]]
) -> str:
    names = [name, *baselines]
    columns = [metrics, *baselines.values()]
    head = "<tr><th></th>" + "".join(f"<th>{_e(n)}</th>" for n in names) + "</tr>"
    body = []
    for key in COMPARISON_KEYS:
        cells = "".join(f"<td>{_e(format_metric(key, col.get(key)))}</td>" for col in columns)
        body.append(f"<tr><th>{_e(METRICS[key])}</th>{cells}</tr>")
    return f'<table class="compare">{head}{"".join(body)}</table>'


def _meta_table(meta: Mapping[str, Any]) -> str:
    rows = []
    for key, value in meta.items():
        if key == "config":
            text = json.dumps(_json_ready(value), indent=2, default=str)
            rows.append(
                f"<tr><th>config</th><td><details><summary>settings (secrets masked)</summary>"
                f"<pre>{_e(text)}</pre></details></td></tr>"
            )
            continue
        if isinstance(value, Mapping | list):
            text = json.dumps(_json_ready(value), default=str)
        else:
            text = "" if value is None else str(value)
        rows.append(f"<tr><th>{_e(key)}</th><td>{_e(text)}</td></tr>")
    return f'<table class="meta">{"".join(rows)}</table>'


def _iso(value: Any) -> str | None:
    if value is None:
        return None
    if isinstance(value, pd.Timestamp | dt.datetime):
        stamp = pd.Timestamp(value)
        return stamp.date().isoformat() if stamp == stamp.normalize() else stamp.isoformat()
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _json_ready(obj: Any) -> Any:
    """Replace what JSON cannot hold: NaN/inf -> None, numpy scalars -> Python, dates -> ISO."""
    if isinstance(obj, Mapping):
        return {str(k): _json_ready(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_json_ready(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float):
        return obj if np.isfinite(obj) else None
    if isinstance(obj, pd.Timestamp | dt.date | dt.datetime):
        return _iso(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


REPORT_CSS = """
body{font-family:-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:2em auto;max-width:1040px;
color:#222}
h1{margin-bottom:.2em}.sub{color:#666;margin-top:0}
.warn{background:#fff3cd;border:1px solid #e0c36a;padding:.6em;border-radius:4px}
figure{margin:1em 0}figure img{max-width:100%}figcaption{color:#666;font-size:.9em}
table{border-collapse:collapse;margin:.5em 0 1.5em;font-size:.92em}
th,td{border-bottom:1px solid #ddd;padding:.3em .8em;text-align:right;vertical-align:top}
th{text-align:left;font-weight:600}table.meta td{text-align:left;word-break:break-all}
pre{background:#f6f8fa;padding:.6em;overflow-x:auto;font-size:.85em}
details summary{cursor:pointer}
"""
