"""``trading-agents ledger | halt | resume``: inspect the paper account and work its kill switch.

The session ledger is ``<paths.home>/ledger.sqlite``. ``halt`` and ``resume`` do not wait for
a running session: they write the new risk state at once and the engine adopts it at its
next bar.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Any

import typer
from rich.table import Table

from trading_agents.agents.guards import order_text, stopped_by
from trading_agents.agents.track_record import action_stats
from trading_agents.cli.common import ConfigOption, JsonOption, console, emit_json, settings_from
from trading_agents.core import RunInfo
from trading_agents.core.portfolio import book_text
from trading_agents.errors import UserInputError
from trading_agents.journal import Ledger, RiskStateChange, default_ledger_path

NO_LEDGER = "no ledger yet; run `trading-agents run`"

RunOption = Annotated[
    str | None,
    typer.Option("--run", help="Run id (default: the latest paper session, else the latest run)."),
]


def _pick_run(led: Ledger, run: str | None) -> RunInfo | None:
    if run is not None:
        info = led.get_run(run)
        if info is None:
            known = ", ".join(r.run_id for r in led.runs()[:10]) or "none"
            raise UserInputError(f"no run {run!r} in the ledger; known runs: {known}")
        return info
    sessions = led.runs("session")
    if sessions:
        return sessions[0]
    everything = led.runs()
    return everything[0] if everything else None


def ledger(
    config: ConfigOption = None,
    json_out: JsonOption = False,
    run: RunOption = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="Recent orders and decisions to show.")] = 10,
) -> None:
    """Show the paper account: cash, equity, risk state, positions, recent orders and decisions.

    Example: trading-agents ledger --limit 5 --json
    """
    settings = settings_from(config)
    path = default_ledger_path(settings.paths.home)
    if not path.exists():
        if json_out:
            emit_json({"ledger": str(path), "exists": False, "message": NO_LEDGER})
        else:
            console.print(NO_LEDGER)
        return
    with Ledger.open(path) as led:
        info = _pick_run(led, run)
        default_state, default_reason = led.session_default_state()
        doc: dict[str, Any] = {
            "ledger": str(path),
            "exists": True,
            "session_risk_state": default_state,
            "session_halt_reason": default_reason,
            "runs": [
                {"run_id": r.run_id, "kind": r.kind, "strategy": r.strategy, "status": r.status}
                for r in led.runs()[:limit]
            ],
            "run": None,
        }
        if info is not None:
            doc["run"] = _run_doc(led, info, limit)
    if json_out:
        emit_json(doc)
        return
    _print(doc)


def _run_doc(led: Ledger, info: RunInfo, limit: int) -> dict[str, Any]:
    acct = led.account(info.run_id)
    steps = led.steps(info.run_id)
    last = steps[-1] if steps else None
    prices = last["prices"] if last else {}
    positions = led.position_rows(info.run_id, prices)
    events = led.risk_events(info.run_id, limit=limit)
    return {
        "run_id": info.run_id,
        "kind": info.kind,
        "strategy": info.strategy,
        "status": info.status,
        "created_at": info.created_at,
        "starting_cash": info.starting_cash,
        "account": {
            "cash": acct.cash if acct else None,
            "equity": acct.last_equity if acct else None,
            "risk_state": acct.risk_state if acct else None,
            "halt_reason": acct.halt_reason if acct else "",
            "peak_equity": acct.peak_equity if acct else None,
            "last_bar": last["bar_date"].strftime("%Y-%m-%d") if last else None,
            "steps": len(steps),
        },
        "positions": positions,
        "orders": [o.as_dict() for o in led.orders(info.run_id, limit=limit, newest_first=True)],
        "decisions": [_with_stops(d, events) for d in led.decisions(info.run_id, limit=limit)],
        "track_record": action_stats(led.decisions(info.run_id)),
        "risk_events": events,
        "reconcile_problems": led.reconcile(info.run_id),
    }


def _with_stops(decision: dict[str, Any], risk_events: Sequence[dict[str, Any]] = ()) -> dict[str, Any]:
    """A decision row with ``stopped_by``: per ticker, the rule that left the executor's
    proposal without an order, the risk engine's veto of that bar included
    (:func:`~trading_agents.agents.guards.stopped_by`; None when there is an order or nothing
    was proposed)."""
    record = decision.get("record")
    tickers = record.get("tickers") if isinstance(record, dict) else None
    stops = (
        {t: stopped_by(rec, _risk_rules(risk_events, decision["bar_date"], t)) for t, rec in tickers.items()}
        if isinstance(tickers, dict)
        else {}
    )
    return {**decision, "stopped_by": stops}


def _money(value: float | None) -> str:
    return "-" if value is None else f"{value:,.2f}"


def _print(doc: dict[str, Any]) -> None:
    console.print(f"ledger: {doc['ledger']}", highlight=False)
    run = doc["run"]
    if run is None:
        state = doc["session_risk_state"]
        console.print(f"no runs yet; paper sessions will start {state}. Run `trading-agents run`.")
        return
    acct = run["account"]
    state = acct["risk_state"]
    color = {"ACTIVE": "green", "REDUCING": "yellow"}.get(state, "bold red")
    console.print(
        f"run [bold]{run['run_id']}[/] ({run['kind']}, {run['strategy']}, {run['status']}); "
        f"last bar {acct['last_bar'] or '-'}",
        highlight=False,
    )
    reason = f" - {acct['halt_reason']}" if acct["halt_reason"] else ""
    console.print(
        f"cash {_money(acct['cash'])}  equity {_money(acct['equity'])}  risk [{color}]{state}[/]{reason}",
        highlight=False,
    )
    if run["positions"]:
        table = Table(title="Positions")
        for col in ("Ticker", "Qty", "Avg price", "Last", "Value", "Stop"):
            table.add_column(col, justify="left" if col == "Ticker" else "right")
        for p in run["positions"]:
            table.add_row(
                p["ticker"],
                str(p["quantity"]),
                _money(p["avg_price"]),
                _money(p["last_price"]),
                _money(p["market_value"]),
                _money(p["stop_loss"]),
            )
        console.print(table)
    else:
        console.print("no open positions")
    if run["orders"]:
        table = Table(title="Recent orders")
        for col in ("Date", "Side", "Ticker", "Qty", "Filled", "Type", "Status", "Reason"):
            table.add_column(col)
        for o in run["orders"]:
            kind = o["order_type"] + (f" {o['limit_price']:g}" if o["limit_price"] else "")
            table.add_row(
                o["created_at"] or "-",
                o["side"],
                o["ticker"],
                str(o["quantity"]),
                str(o["filled_quantity"]),
                kind,
                o["status"],
                _short(o["reason"]),
            )
        console.print(table)
    if run["decisions"]:
        table = Table(title="Recent decisions")
        for col in ("Date", "Ticker", "Desk", "Order", "Served by"):
            table.add_column(col)
        for d in run["decisions"]:
            for row in _decision_rows(d, run["risk_events"]):
                table.add_row(*row)
        console.print(table)
    for action, s in (run.get("track_record") or {}).items():
        if s["calls"]:
            rate = f"{s['hit_rate']:.0%}" if s["hit_rate"] is not None else "-"
            mean = f"{s['mean_return_pct']:+.2f}%" if s["mean_return_pct"] is not None else "-"
            console.print(
                f"track record {action}: {s['calls']} calls, {s['realised']} realised, "
                f"hit rate {rate}, mean realised move {mean}",
                highlight=False,
            )
    for problem in run["reconcile_problems"]:
        console.print(f"[bold red]ledger inconsistency:[/] {problem}", highlight=False)


def _risk_rules(risk_events: Sequence[dict[str, Any]], bar_date: Any, ticker: str) -> list[str]:
    """``kind:rule`` of the risk engine's events of one bar and ticker."""
    return [
        f"{e['kind']}:{e['rule']}"
        for e in risk_events
        if str(e.get("bar_date"))[:10] == str(bar_date)[:10] and e.get("ticker") in (ticker, None)
    ]


def _decision_rows(d: dict[str, Any], risk_events: Sequence[dict[str, Any]] = ()) -> list[tuple[str, ...]]:
    """One row per ticker of an agent decision: replies in brief, the order (with the risk
    engine's events of that bar, or what stopped the executor's proposal), model (route reason)."""
    record = d.get("record") or {}
    tickers = record.get("tickers") if isinstance(record, dict) else None
    if not tickers:
        return [(d["bar_date"], d["ticker"] or "-", d["strategy"], "-", _short(str(record), 40))]
    rows = []
    for ticker, rec in tickers.items():
        agents = rec.get("agents") or []
        desk = " / ".join(_brief_reply(a) for a in agents) or rec.get("skipped") or "-"
        order = order_text(rec, _risk_rules(risk_events, d["bar_date"], ticker))
        served = ", ".join(sorted({f"{a.get('model')} ({a.get('route_reason')})" for a in agents})) or "-"
        rows.append((d["bar_date"], ticker, _short(desk, 60), order, _short(served, 60)))
    book = book_text(record.get("portfolio"))
    if book is not None:
        rows.append((d["bar_date"], "book", _short(book[0], 60), _short(book[1], 40), "-"))
    return rows


def _brief_reply(agent: dict[str, Any]) -> str:
    out = agent.get("output")
    if agent.get("error") or not isinstance(out, dict):
        return f"{agent.get('role')}: failed"
    role = agent.get("role")
    key = _VERDICT_FIELD.get(str(role))
    verdict = out.get(key) if key else next(iter(out.values()), "")
    return f"{role}: {verdict}"


# the field that says what each agent decided (the analyst writes its signals first)
_VERDICT_FIELD = {"analyst": "action", "risk": "decision", "executor": "side"}


def _short(text: str, width: int = 50) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _set_state(config: Any, state: str, reason: str, run: str | None, json_out: bool) -> None:
    settings = settings_from(config)
    path = default_ledger_path(settings.paths.home)
    if state == "ACTIVE" and not path.exists():
        if json_out:
            emit_json({"ledger": str(path), "exists": False, "changes": [], "message": NO_LEDGER})
        else:
            console.print(f"{NO_LEDGER}; nothing to resume")
        return
    with Ledger.open(path) as led:
        changes = led.set_risk_state(state, reason, run_id=run)
    if json_out:
        emit_json({"ledger": str(path), "state": state, "changes": [_change_doc(c) for c in changes]})
        return
    for c in changes:
        who = f"run {c.run_id}" if c.run_id else "new paper sessions"
        cancelled = f"; {c.cancelled_orders} pending order(s) cancelled" if c.cancelled_orders else ""
        console.print(f"{who}: {c.old} -> [bold]{c.new}[/]{cancelled}", highlight=False)
    if state != "ACTIVE":
        console.print(f"reason: {reason}. Only reducing orders pass until `trading-agents resume`.")


def _change_doc(c: RiskStateChange) -> dict[str, Any]:
    return {
        "run_id": c.run_id,
        "old": c.old,
        "new": c.new,
        "reason": c.reason,
        "cancelled_orders": c.cancelled_orders,
    }


def halt(
    config: ConfigOption = None,
    reason: Annotated[
        str, typer.Argument(help="Why trading stops (stored in the ledger).")
    ] = "halted by hand",
    run: Annotated[
        str | None, typer.Option("--run", help="Halt one run only (default: all sessions).")
    ] = None,
    reducing: Annotated[
        bool,
        typer.Option("--reducing", help="REDUCING instead of HALTED (same effect: only reducing orders)."),
    ] = False,
    json_out: JsonOption = False,
) -> None:
    """Stop trading: the account goes HALTED (only orders that reduce positions pass).

    Pending orders that would grow a position are cancelled; the state lasts until `resume`.

    Example: trading-agents halt "earnings tomorrow"
    """
    if not reason.strip():
        raise UserInputError(
            "give a reason for the halt, for example: trading-agents halt 'earnings tomorrow'"
        )
    _set_state(config, "REDUCING" if reducing else "HALTED", reason.strip(), run, json_out)


def resume(
    config: ConfigOption = None,
    run: Annotated[
        str | None, typer.Option("--run", help="Resume one run only (default: all sessions).")
    ] = None,
    json_out: JsonOption = False,
) -> None:
    """Return a HALTED or REDUCING account to ACTIVE.

    Peak and day-start equity restart from the last equity, so the same loss cannot re-trip it.

    Example: trading-agents resume
    """
    _set_state(config, "ACTIVE", "resumed by hand", run, json_out)
