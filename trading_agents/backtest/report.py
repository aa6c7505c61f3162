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
    One closed round trip per row (ticker, size, entry/exit time and price, pnl, return_pct
    in percent like every ``_pct`` field, commission, bars_held).
``equity.csv``
    One row per bar: equity, cash, exposure, drawdown and the position of each ticker.
``decisions.jsonl``
    One JSON object per strategy decision: ``{"date", "strategy", "ticker", "record"}``
    (``ticker`` when the decision is about one); for the agents strategy the record holds
    each agent's rationale.
``baselines.csv``
    One row per bar: the equity of buy-and-hold and of each baseline run beside it (only
    when the run had bars or baselines to compare with).
``rejected_orders.csv``
    Every clip or veto, one per row: ``date, ticker, source, kind, rule, detail``. ``source``
    ``risk`` is the risk engine on an order (``rule`` names the cap, e.g. ``max_adv_pct``,
    ``max_position_pct``, ``cash``; ``detail`` the quantities and the reason); ``portfolio``
    is a target weight clipped by the portfolio step.
``report.html``
    Opens offline: charts are PNGs embedded as base64 (equity against buy-and-hold under the
    run's caps and uncapped without costs, the price of each ticker with its entries and
    exits, drawdown, exposure and positions), the caps the run traded under, the trade table,
    the metrics table, a comparison table against the baselines (each one saying whether it
    trades under the run's caps), the run's metadata and the decisions.
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

from trading_agents.backtest.metrics import METRIC_NAMES, format_metric, unsigned_zero
from trading_agents.fsutil import atomic_write_bytes, atomic_write_json, atomic_write_text

RESULT_FILES = (
    "summary.json",
    "trades.csv",
    "equity.csv",
    "decisions.jsonl",
    "rejected_orders.csv",
    "report.html",
)
#: Columns of rejected_orders.csv.
REJECTED_COLUMNS = ("date", "ticker", "source", "kind", "rule", "detail")
BASELINES_FILE = "baselines.csv"

#: Packages whose versions are recorded in summary.json (a result is only comparable with
#: one made by the same code and numerics).
VERSIONED_PACKAGES = ("trading-agents", "llama-cpp-python", "autogen-agentchat", "pandas", "numpy")

#: Metrics shown in the comparison table against the baselines.
COMPARISON_KEYS = (
    "return_pct",
    "return_ann_pct",
    "volatility_ann_pct",
    "sharpe",
    "sortino",
    "max_drawdown_pct",
    "num_trades",
    "win_rate_pct",
    "exposure_time_pct",
    "commissions",
    "llm_cost_usd",
    "return_net_pct",
    "excess_return_pct",
    "excess_return_net_pct",
)

MAX_DECISIONS_IN_HTML = 200
MAX_TRADES_IN_HTML = 500
MAX_PRICE_CHARTS = 6

#: Legend text of the uncapped, cost-free buy-and-hold curve (the ``buy_hold_return_pct`` metric).
UNCAPPED_BUY_HOLD = "buy & hold (uncapped, no costs)"

#: The caps of :func:`trading_agents.core.risk.caps_in_force`, as a reader names them.
CAP_LABELS: dict[str, str] = {
    "max_position_pct": "largest position per ticker",
    "max_order_notional": "largest order",
    "max_order_notional_pct": "largest order, share of equity",
    "max_gross_exposure_pct": "gross exposure",
    "max_daily_loss_pct": "daily loss that halts trading",
    "max_drawdown_pct": "drawdown that halts trading",
    "allow_short": "short selling",
}


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
    """Write :data:`RESULT_FILES` (and ``baselines.csv`` when there is something to compare
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
        "metric_names": METRIC_NAMES,
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
    atomic_write_text(paths["rejected_orders"], rejected_orders_csv(result))
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


def rejected_orders_csv(result: Any) -> str:
    """The run's clips and vetoes (risk events and portfolio weight clips) as CSV text."""
    rows: list[dict[str, Any]] = []
    for event in getattr(result, "risk_events", None) or []:
        if event.get("kind") in ("clip", "veto"):
            date = event.get("bar_date")
            rows.append(
                {
                    "date": date,
                    "source": "risk",
                    **{k: event.get(k) for k in ("ticker", "kind", "rule", "detail")},
                }
            )
    for item in result.decisions or []:
        record = item.get("record") or {}
        portfolio = record.get("portfolio") if isinstance(record, Mapping) else None
        for clip in (portfolio or {}).get("clips") or []:
            rows.append(
                {
                    "date": item.get("bar_date", item.get("date")),
                    "ticker": clip.get("ticker"),
                    "source": "portfolio",
                    "kind": "clip",
                    "rule": clip.get("rule"),
                    "detail": f"weight {clip.get('asked')} -> {clip.get('got')}",
                }
            )
    frame = pd.DataFrame(rows, columns=list(REJECTED_COLUMNS))
    if len(frame):
        frame["date"] = frame["date"].astype(str)
        frame = frame.sort_values("date", kind="stable")
    return frame.to_csv(index=False)


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
    if meta.get("risk_caps"):
        parts.append("<h2>Caps this run traded under</h2>")
        parts.append(
            "<p>The strategy and every baseline below trade under these caps, with the same costs; "
            f"only &ldquo;{_e(UNCAPPED_BUY_HOLD)}&rdquo; does not.</p>"
        )
        parts.append(caps_table(meta["risk_caps"]))
    parts.append("<h2>Trades</h2>")
    parts.append(_trades_table(getattr(result, "trades", None)))
    parts.append("<h2>Metrics</h2>")
    parts.append(_metrics_table(metrics))
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
    ax.plot(index, equity, label=f"{name} (under the run's caps)", linewidth=1.6, color="#1f4e79")
    for other, curve in baseline_equity.items():
        ax.plot(
            curve.index,
            curve.to_numpy(dtype=float),
            label=f"{other} (under the run's caps)",
            linewidth=1.3 if other == "buy-hold" else 0.8,
            alpha=0.9 if other == "buy-hold" else 0.6,
            color="#e67e22" if other == "buy-hold" else None,
        )
    if bars:
        ax.plot(
            index,
            buy_hold_curve(bars, index, cash),
            label=UNCAPPED_BUY_HOLD,
            linewidth=1.0,
            linestyle="--",
            color="#999999",
        )
    ax.set_ylabel("equity [$]")
    ax.grid(alpha=0.3)
    ax.legend(loc="best", fontsize=8)
    charts.append(
        ("Equity against buy-and-hold: under the run's caps, and uncapped without costs", png_data_uri(fig))
    )
    if bars:
        charts.extend(_price_charts(result, bars, index))

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
        for key, label in METRIC_NAMES.items()
    )
    return f'<table class="metrics">{rows}</table>'


def _comparison_table(
    name: str, metrics: Mapping[str, Any], baselines: Mapping[str, Mapping[str, Any]]
) -> str:
    """The strategy, each baseline and the uncapped buy-and-hold side by side.

    The first row says whether each column trades under the run's caps; the uncapped,
    cost-free buy-and-hold has a return only (it is a price ratio, not a run).
    """
    names = [name, *baselines, UNCAPPED_BUY_HOLD]
    uncapped = {"return_pct": metrics.get("buy_hold_return_pct")}
    columns = [metrics, *baselines.values(), uncapped]
    head = "<tr><th></th>" + "".join(f"<th>{_e(n)}</th>" for n in names) + "</tr>"
    capped = ["yes"] * (len(names) - 1) + ["no"]
    body = ["<tr><th>Trades under the run's caps</th>" + "".join(f"<td>{c}</td>" for c in capped) + "</tr>"]
    for key in COMPARISON_KEYS:
        cells = "".join(f"<td>{_e(format_metric(key, col.get(key)))}</td>" for col in columns)
        body.append(f"<tr><th>{_e(METRIC_NAMES[key])}</th>{cells}</tr>")
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
        if key == "risk_caps":
            continue  # its own table above
        text = _plain(value)
        rows.append(f"<tr><th>{_e(key)}</th><td>{_e(text)}</td></tr>")
    return f'<table class="meta">{"".join(rows)}</table>'


def caps_rows(caps: Mapping[str, Any]) -> list[tuple[str, str, str]]:
    """``(config key, label, value)`` per cap, values as a reader writes them.

    Fractions of equity become percents, cash amounts get thousands separators, an unset
    cap reads ``no limit`` and ``allow_short`` reads ``allowed``/``not allowed``.
    """
    rows = []
    for key, value in caps.items():
        if key == "allow_short":
            text = "allowed" if value else "not allowed"
        elif value is None:
            text = "no limit"
        elif key.endswith("_pct"):
            text = unsigned_zero(f"{float(value) * 100:.4g}%") + " of equity"
        elif isinstance(value, int | float) and not isinstance(value, bool):
            text = f"{float(value):,.2f}"
        else:
            text = str(value)
        rows.append((key, CAP_LABELS.get(key, key), text))
    return rows


def caps_table(caps: Mapping[str, Any]) -> str:
    """The caps as an HTML table with a header: what, limit, config key."""
    body = "".join(
        f"<tr><td>{_e(label)}</td><td>{_e(text)}</td><td><code>risk.{_e(key)}</code></td></tr>"
        for key, label, text in caps_rows(caps)
    )
    return f'<table class="caps"><tr><th>cap</th><th>limit</th><th>config key</th></tr>{body}</table>'


def _trades_table(trades: pd.DataFrame | None) -> str:
    if trades is None or not len(trades):
        return "<p>No closed trades (a position still open at the end is not a trade).</p>"
    cols = (
        ("ticker", "ticker"),
        ("size", "shares"),
        ("entry_time", "entry"),
        ("entry_price", "entry price"),
        ("exit_time", "exit"),
        ("exit_price", "exit price"),
        ("bars_held", "bars held"),
        ("pnl", "P&L [$]"),
        ("return_pct", "return [%]"),
        ("commission", "commission [$]"),
    )
    head = "".join(f"<th>{_e(title)}</th>" for _, title in cols)
    rows = []
    for _, trade in trades.head(MAX_TRADES_IN_HTML).iterrows():
        cells = []
        for key, _ in cols:
            value = trade.get(key)
            if key == "ticker":
                text = str(value)
            elif key.endswith("_time"):
                text = _iso(value) or "-"
            elif key in ("size", "bars_held"):
                text = f"{float(value):,.0f}"
            elif key == "return_pct":
                text = unsigned_zero(f"{float(value):+.2f}")
            else:
                text = unsigned_zero(f"{float(value):,.2f}")
            cls = ' class="neg"' if key in ("pnl", "return_pct") and float(value) < 0 else ""
            cells.append(f"<td{cls}>{_e(text)}</td>")
        rows.append(f"<tr>{''.join(cells)}</tr>")
    more = len(trades) - min(len(trades), MAX_TRADES_IN_HTML)
    note = f"<p>First {MAX_TRADES_IN_HTML} shown; all are in trades.csv.</p>" if more > 0 else ""
    return f'{note}<table class="trades"><tr>{head}</tr>{"".join(rows)}</table>'


def _price_charts(
    result: Any, bars: Mapping[str, pd.DataFrame], index: pd.DatetimeIndex
) -> list[tuple[str, str]]:
    """One price chart per ticker (the first few), buys and sells marked where they filled."""
    from matplotlib.figure import Figure

    fills = getattr(result, "fills", None)
    trades = getattr(result, "trades", None)
    out = []
    for ticker in list(bars)[:MAX_PRICE_CHARTS]:
        close = bars[ticker]["Close"].astype(float)
        close = close[(close.index >= index[0]) & (close.index <= index[-1])]
        if close.empty:
            continue
        fig = Figure(figsize=(10, 3.2), dpi=100)
        ax = fig.add_subplot()
        ax.plot(close.index, close.to_numpy(), color="#555555", linewidth=1.0, label=f"{ticker} close")
        buys, sells = _marks(ticker, fills, trades)
        if buys:
            ax.scatter(
                *zip(*buys, strict=True), marker="^", s=50, color="#1e8449", zorder=3, label="buy (fill)"
            )
        if sells:
            ax.scatter(
                *zip(*sells, strict=True), marker="v", s=50, color="#c0392b", zorder=3, label="sell (fill)"
            )
        ax.set_ylabel("price [$]")
        ax.grid(alpha=0.3)
        ax.legend(loc="best", fontsize=8)
        out.append((f"{ticker}: price with entries and exits", png_data_uri(fig)))
    return out


def _marks(ticker: str, fills: Any, trades: Any) -> tuple[list[tuple[Any, float]], list[tuple[Any, float]]]:
    """(time, price) of the buys and sells of ``ticker``: from the fills, else from the trades."""
    buys: list[tuple[Any, float]] = []
    sells: list[tuple[Any, float]] = []
    if (
        isinstance(fills, pd.DataFrame)
        and len(fills)
        and {"ticker", "side", "price", "filled_at"} <= set(fills)
    ):
        mine = fills[fills["ticker"] == ticker]
        for side, at, price in zip(mine["side"], mine["filled_at"], mine["price"], strict=True):
            (buys if str(side).lower() == "buy" else sells).append((pd.Timestamp(at), float(price)))
    elif isinstance(trades, pd.DataFrame) and len(trades):
        mine = trades[trades["ticker"] == ticker]
        for _, t in mine.iterrows():
            entry = buys if float(t["size"]) > 0 else sells
            exit_ = sells if float(t["size"]) > 0 else buys
            entry.append((pd.Timestamp(t["entry_time"]), float(t["entry_price"])))
            if t.get("exit_time") is not None and not pd.isna(t.get("exit_time")):
                exit_.append((pd.Timestamp(t["exit_time"]), float(t["exit_price"])))
    return buys, sells


def _plain(value: Any) -> str:
    """A metadata value as text: JSON's ``null``/``true``/``false``, never Python's ``None``/``False``."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if (
        isinstance(value, Mapping)
        and value
        and all(not isinstance(v, Mapping | list) for v in value.values())
    ):
        return ", ".join(f"{k}: {_plain(v)}" for k, v in value.items())
    if isinstance(value, Mapping | list):
        return json.dumps(_json_ready(value), default=str)
    return str(value)


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
td.neg{color:#c0392b}table.caps td{text-align:left}
td.routes{text-align:left;white-space:nowrap;font-size:.85em}
table.compare,table.meta{max-width:100%}table.meta td{overflow-wrap:anywhere}
"""
