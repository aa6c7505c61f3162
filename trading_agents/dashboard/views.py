"""What each page shows, as plain data for its template: built from the ledger through the
journal's public reads, from results folders through the results reader, and from grid
leaderboards; decision rows are described with the desk's own helpers (``order_text``,
``stopped_by``, ``action_stats``) so the page says what ``trading-agents ledger`` says.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from trading_agents.agents.guards import order_text, stopped_by
from trading_agents.agents.track_record import action_stats
from trading_agents.backtest.metrics import METRICS, format_metric
from trading_agents.backtest.results_folder import ResultsFolder
from trading_agents.core.portfolio import book_text
from trading_agents.dashboard import charts
from trading_agents.journal import Ledger

PAGE_SIZE = 50
NEWS_DECISIONS = 200  # news shown: what the newest decisions saw


def account_view(led: Ledger, run_id: str, page: int) -> dict[str, Any] | None:
    """Everything the account page shows for ``run_id``; None when the run does not exist (yet)."""
    info = led.get_run(run_id)
    if info is None:
        return None
    acct = led.account(run_id)
    total = led.decision_count(run_id)
    whole = _whole_run(led, run_id, info.starting_cash, total)
    prices = whole["prices"]
    positions = led.position_rows(run_id, prices)
    fills: dict[str, list[dict[str, Any]]] = {}
    for f in led.fills(run_id):
        fills.setdefault(f.order_id, []).append(
            {"quantity": f.quantity, "price": f.price, "at": str(f.filled_at)[:10]}
        )
    orders = [
        {**o.as_dict(), "fills": fills.get(o.client_order_id, [])}
        for o in led.orders(run_id, limit=200, newest_first=True)
    ]
    events = led.risk_events(run_id)
    pages = max(1, math.ceil(total / PAGE_SIZE))
    page = min(max(1, page), pages)
    decisions = led.decision_page(run_id, limit=PAGE_SIZE, offset=(page - 1) * PAGE_SIZE)
    return {
        "run": info,
        "account": acct,
        "steps": whole["steps"],
        "last_bar": whole["last_bar"],
        "positions": positions,
        "orders": orders,
        "risk_events": events[-50:],
        "rows": (rows := decision_rows(decisions, events)),
        "stopped": [r for r in rows if r["stopped_by"]],
        "last_decision_id": max((d["id"] for d in decisions), default=0) if page == 1 else None,
        "page": page,
        "pages": pages,
        "decision_total": total,
        "track_record": whole["track_record"],
        "news": whole["news"],
        "chart": whole["chart"],
    }


_WHOLE_RUN_CACHE: OrderedDict[tuple[str, str, int, int], dict[str, Any]] = OrderedDict()
_CACHE_SIZE = 8


def _whole_run(led: Ledger, run_id: str, starting_cash: float, decisions: int) -> dict[str, Any]:
    """What needs every step and decision of the run (the equity chart, the track record,
    the news seen), computed once per recorded step: the ledger only grows, so the step and
    decision counts identify what was read."""
    key = (str(led.path), run_id, led.step_count(run_id), decisions)
    hit = _WHOLE_RUN_CACHE.get(key)
    if hit is not None:
        _WHOLE_RUN_CACHE.move_to_end(key)
        return hit
    steps = led.steps(run_id)
    everything = led.decisions(run_id)
    whole = {
        "steps": len(steps),
        "last_bar": steps[-1]["bar_date"].strftime("%Y-%m-%d") if steps else None,
        "prices": steps[-1]["prices"] if steps else {},
        "track_record": action_stats(everything),
        "news": news_seen(everything[-NEWS_DECISIONS:]),
        "chart": charts.account_equity(steps, starting_cash),
    }
    _WHOLE_RUN_CACHE[key] = whole
    while len(_WHOLE_RUN_CACHE) > _CACHE_SIZE:
        _WHOLE_RUN_CACHE.popitem(last=False)
    return whole


def decision_rows(
    decisions: Iterable[Mapping[str, Any]], risk_events: Sequence[Mapping[str, Any]]
) -> list[dict]:
    """One row per ticker of each decision: the agents' replies, the order (or what stopped
    the proposal), the models with the selector's reasons, latency and tokens."""
    rows = []
    for d in decisions:
        record = d.get("record") or {}
        tickers = record.get("tickers") if isinstance(record, dict) else None
        if not isinstance(tickers, dict) or not tickers:
            rows.append(
                {
                    "id": d.get("id"),
                    "bar": str(d["bar_date"])[:10],
                    "ticker": d.get("ticker") or "-",
                    "agents": [],
                    "order": _brief(record),
                    "stopped_by": None,
                    "served": "-",
                    "latency_s": None,
                    "tokens": None,
                }
            )
            continue
        bar = str(d["bar_date"])[:10]
        for ticker, rec in tickers.items():
            agents = [a for a in rec.get("agents") or [] if isinstance(a, dict)]
            rules = [
                f"{e['kind']}:{e['rule']}"
                for e in risk_events
                if str(e.get("bar_date"))[:10] == bar and e.get("ticker") in (ticker, None)
            ]
            rows.append(
                {
                    "id": d.get("id"),
                    "bar": bar,
                    "ticker": ticker,
                    "agents": [_agent(a) for a in agents],
                    "skipped": rec.get("skipped"),
                    "order": order_text(rec, rules),
                    "stopped_by": stopped_by(rec),
                    "served": ", ".join(
                        sorted({f"{a.get('model')} ({a.get('route_reason')})" for a in agents})
                    )
                    or "-",
                    "latency_s": round(sum(float(a.get("latency_s") or 0.0) for a in agents), 2),
                    "tokens": sum(
                        int(a.get("prompt_tokens") or 0) + int(a.get("completion_tokens") or 0)
                        for a in agents
                    ),
                }
            )
        book = book_text(record.get("portfolio"))
        if book is not None:  # the portfolio step: targets, clips and the orders toward them
            rows.append(
                {
                    "id": d.get("id"),
                    "bar": bar,
                    "ticker": "book",
                    "agents": [],
                    "skipped": book[0],
                    "order": book[1],
                    "stopped_by": None,
                    "served": "-",
                    "latency_s": None,
                    "tokens": None,
                }
            )
    return rows


def _agent(a: Mapping[str, Any]) -> dict[str, Any]:
    out = a.get("output")
    fields = []
    if isinstance(out, dict):
        for key, value in out.items():
            if isinstance(value, list):
                value = "; ".join(
                    ", ".join(f"{k}={v}" for k, v in item.items()) if isinstance(item, dict) else str(item)
                    for item in value
                )
            fields.append((key, value))
    return {
        "role": a.get("role"),
        "fields": fields,
        "error": a.get("error"),
        "model": a.get("model"),
        "route_reason": a.get("route_reason"),
        "latency_s": a.get("latency_s"),
        "tokens": f"{a.get('prompt_tokens', 0)}+{a.get('completion_tokens', 0)}",
    }


def _brief(record: Any, width: int = 80) -> str:
    text = str(record)
    return text if len(text) <= width else text[: width - 1] + "…"


def news_seen(decisions: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The news items the desk's prompts carried, newest first, once each."""
    seen: dict[tuple[str, str], dict[str, Any]] = {}
    for d in decisions:
        tickers = (d.get("record") or {}).get("tickers") or {}
        for ticker, rec in tickers.items():
            for item in rec.get("news") or []:
                key = (ticker, str(item.get("id") or item.get("headline")))
                seen.setdefault(key, {"ticker": ticker, **item})
    return sorted(seen.values(), key=lambda i: str(i.get("published_at")), reverse=True)


def backtest_view(folder: ResultsFolder, ledger_equity: float | None) -> dict[str, Any]:
    """The backtest page: metrics against baselines, caps, trades, equity and drawdown."""
    meta = folder.meta
    metrics = folder.metrics
    names = folder.summary.get("metric_names") or METRICS
    baselines = folder.summary.get("baselines") or {}
    keys = [
        k
        for k in (
            "return_pct",
            "buy_hold_return_pct",
            "sharpe",
            "max_drawdown_pct",
            "num_trades",
            "win_rate_pct",
            "exposure_time_pct",
            "commissions",
        )
        if k in metrics
    ]
    comparison = [
        {"name": meta.get("strategy", "strategy"), "values": [format_metric(k, metrics.get(k)) for k in keys]}
    ] + [
        {"name": name, "values": [format_metric(k, m.get(k)) for k in keys]} for name, m in baselines.items()
    ]
    trades = folder.trades.head(500).to_dict("records") if len(folder.trades) else []
    return {
        "meta": meta,
        "metrics": [
            (names.get(k, k) if isinstance(names, dict) else k, format_metric(k, v))
            for k, v in metrics.items()
        ],
        "columns": [names.get(k, k) if isinstance(names, dict) else k for k in keys],
        "comparison": comparison,
        "caps": meta.get("risk_caps") or {},
        "trades": trades,
        "trade_total": len(folder.trades),
        "track_record": folder.summary.get("track_record"),
        "bars": len(folder.equity),
        "ledger_equity": ledger_equity,
        "chart": charts.backtest_equity(
            folder.equity, folder.baselines, str(meta.get("strategy", "strategy"))
        ),
        "drawdown": charts.drawdown(folder.equity),
    }


def grid_view(board: Mapping[str, Any], link: Any) -> dict[str, Any]:
    """The grid page: leaderboard with CIs, excess distribution, data x window heatmaps whose
    cells link (``link(out_dir)`` -> URL or None) to each cell's backtest page."""
    cells = [dict(c) for c in board.get("cells") or []]
    for c in cells:
        c["href"] = link(c.get("out_dir")) if c.get("status") == "done" else None
    grid = board["grid"]
    labels = [s["label"] for s in board.get("strategies") or []]
    heatmaps = [
        charts.heatmap(cells, label, grid.get("data") or [], grid.get("windows") or []) for label in labels
    ]
    return {
        "grid": grid,
        "strategies": board.get("strategies") or [],
        "cells": cells,
        "distribution": charts.excess_distribution(cells, labels),
        "heatmaps": heatmaps,
    }
