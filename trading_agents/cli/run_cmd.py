"""``trading-agents run``: a paper trading session driven by the agent desk.

Each bar of the window, the analyst, risk and executor agents decide on that bar's close;
an order fills at the next bar's open in the paper broker and everything is recorded in the
session ledger (``$TRADING_AGENTS_HOME/ledger.sqlite``). The account continues across runs:
running the same window again resumes after the last recorded bar and duplicates nothing,
and an order decided on the last bar waits in the ledger for the next run's first bar.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import pandas as pd
import typer
from rich.console import Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from trading_agents.agents.guards import order_text, stopped_by
from trading_agents.cli.common import (
    ConfigOption,
    EndpointModelOption,
    EndpointOption,
    JsonOption,
    console,
    emit_json,
    endpoint_flags,
    err_console,
    interactive,
    parse_date,
    settings_from,
)
from trading_agents.errors import UserInputError

ROLE_ORDER = ("analyst", "risk", "executor")


def run(
    ticker: Annotated[
        list[str] | None,
        typer.Option(
            "--ticker", "-t", help="Ticker to trade (repeat for several). Default: config session.tickers."
        ),
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="CSV of daily bars in Yahoo's format (one instrument).")
    ] = None,
    date: Annotated[str | None, typer.Option("--date", help="Decide on this one bar, YYYY-MM-DD.")] = None,
    start: Annotated[str | None, typer.Option("--start", help="First bar to decide on, YYYY-MM-DD.")] = None,
    end: Annotated[str | None, typer.Option("--end", help="Last bar to decide on, YYYY-MM-DD.")] = None,
    days: Annotated[
        int | None,
        typer.Option("--days", min=1, help="With no dates: the last N bars (config session.days)."),
    ] = None,
    news: Annotated[
        str | None,
        typer.Option("--news", help="News for the agents: a JSONL/CSV file or 'yahoo' (config data.news)."),
    ] = None,
    account: Annotated[str, typer.Option("--account", help="Paper account in the ledger.")] = "paper",
    portfolio: Annotated[
        str | None,
        typer.Option(
            "--portfolio",
            help="portfolio.mode: off (each ticker on its own), conviction or llm (weights for the book).",
        ),
    ] = None,
    seed: Annotated[
        int | None, typer.Option("--seed", min=0, help="LLM sampling seed (config llm.seed).")
    ] = None,
    endpoint: EndpointOption = None,
    endpoint_model: EndpointModelOption = None,
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Run a paper trading session: analyst -> risk -> executor on each bar, paper fills, ledger.

    With no options it trades the bundled GOOG bars with the configured model (the embedded
    SmolLM2 when Mixtral is not downloaded). Paper trading only.

    Examples:

      trading-agents run

      trading-agents run --ticker SPX --start 2018-12-03 --end 2018-12-14

      trading-agents run --data my_prices.csv --date 2024-05-02 --json

      trading-agents run --news trading_agents/market/data/GOOG.news.jsonl --start 2013-02-19

      trading-agents run -t AAPL -t GOOG -t IBM -t MSFT --portfolio conviction --days 3

      trading-agents run --endpoint http://127.0.0.1:8080 --endpoint-model qwen2.5-7b --days 5

    Exit codes: 0 ok, 2 bad input, 3 model failure, 4 data unavailable, 5 the account ended
    HALTED (kill switch), 6 another session holds the ledger.
    """
    from trading_agents.market import load_bars
    from trading_agents.market.news import open_news
    from trading_agents.session import run_session

    if ticker and data is not None:
        raise UserInputError("--ticker and --data are exclusive; pass tickers or a CSV file, not both")
    if date and (start or end):
        raise UserInputError("--date cannot be combined with --start/--end; use one or the other")
    first, last = parse_date(start, "--start"), parse_date(end, "--end")
    if date:
        first = last = parse_date(date, "--date")
    if first and last and first > last:
        raise UserInputError(f"--start {first} is after --end {last}; swap the dates")
    settings = settings_from(
        config,
        **{"llm.seed": seed, "session.days": days, "data.news": news, "portfolio.mode": portfolio},
        **endpoint_flags(endpoint, endpoint_model),
    )
    tickers = [t.upper() for t in (ticker or settings.session.tickers)]

    bars = load_bars(data_file=data) if data is not None else load_bars(tickers=tickers)
    window = _window(bars, first, last, settings.session.days, exact_date=date is not None)
    news_source = open_news(settings.data.news, home=settings.paths.home)  # a bad file stops here

    view = _LiveView(enabled=interactive() and not json_out, plain=not json_out)

    def hook(strategy: Any) -> None:
        strategy.on_event = view.agent_event
        strategy.on_ticker = view.ticker_started

    started = time.monotonic()
    with view.running():
        outcome = run_session(
            settings,
            bars,
            window[0],
            window[1],
            account=account,
            news=news_source,
            on_step=view.step,
            on_note=lambda note: err_console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True),
            prepare=hook,
        )
    for note in getattr(news_source, "notes", ()):
        err_console.print(f"[yellow]note:[/] {escape(note)}", soft_wrap=True)
    summary = _summary(view.events, outcome, account, window, time.monotonic() - started)
    if summary["idle_reason"]:
        err_console.print(f"[yellow]note:[/] {escape(summary['idle_reason'])}", soft_wrap=True)
    if json_out:
        emit_json(summary)
    else:
        _print_summary(summary)
    outcome.raise_if_halted()


def _window(
    bars: dict[str, pd.DataFrame], first: dt.date | None, last: dt.date | None, days: int, *, exact_date: bool
) -> tuple[dt.date, dt.date]:
    dates = pd.DatetimeIndex(sorted(set().union(*(f.index for f in bars.values() if len(f)))))
    if not len(dates):
        raise UserInputError("the data has no bars; check the tickers or the data file")
    available = f"{dates[0].date()}..{dates[-1].date()}"
    if exact_date and first is not None and pd.Timestamp(first) not in dates:
        raise UserInputError(f"no bar on {first}; available: {available} (trading days only)")
    lo = pd.Timestamp(first) if first else None
    hi = pd.Timestamp(last) if last else dates[-1]
    inside = dates[(dates <= hi) & (dates >= lo)] if lo is not None else dates[dates <= hi][-days:]
    if not len(inside):
        from trading_agents.backtest.runner import no_bars_message

        raise UserInputError(no_bars_message(first, last, dates[0].date(), dates[-1].date()))
    return inside[0].date(), inside[-1].date()


def _summary(
    events: list[Any], outcome: Any, account: str, window: tuple[dt.date, dt.date], wall_s: float
) -> dict[str, Any]:
    result, strategy, account_state, positions = (
        outcome.result,
        outcome.strategy,
        outcome.account,
        outcome.positions,
    )
    decisions: list[dict[str, Any]] = []
    books: list[dict[str, Any]] = []
    routes: dict[str, int] = {}
    cost = 0.0
    for event in events:
        record = event.decision.record if event.decision is not None else None
        cost += float((record or {}).get("llm_cost_usd") or 0.0)
        book = (record or {}).get("portfolio")
        if book:
            manager = book.get("manager") or {}
            books.append(
                {
                    "date": str(event.bar_date)[:10],
                    **{k: book.get(k) for k in ("mode", "current", "targets", "clips", "orders", "skipped")},
                    "fail_closed": book.get("fail_closed"),
                    "manager_answer": manager.get("answer"),
                    "manager_error": manager.get("error"),
                }
            )
        for tick, rec in ((record or {}).get("tickers") or {}).items():
            agents = [{k: a.get(k) for k in _AGENT_FIELDS} for a in rec.get("agents", [])]
            for a in agents:
                routes[a["route_reason"]] = routes.get(a["route_reason"], 0) + 1
            decisions.append(
                {
                    "date": str(event.bar_date)[:10],
                    "ticker": tick,
                    "agents": agents,
                    "guards": rec.get("guards", []),
                    "intent": rec.get("intent"),
                    "stopped_by": stopped_by(
                        rec, [f"{e.kind}:{e.rule}" for e in event.risk_events if e.ticker in (tick, None)]
                    ),
                    "error": rec.get("error"),
                    "skipped": rec.get("skipped"),
                    **{k: rec[k] for k in _INPUT_FIELDS if k in rec},
                }
            )
    # a step reports every order it touched, so one order appears when placed and again when
    # filled or cancelled; the summary lists each once, in its latest state
    latest = {o.client_order_id: o for e in events for o in e.orders}
    orders = [_plain(o) for o in latest.values()]
    fills = [_plain(f) for e in events for f in e.fills]
    return {
        "account": _plain(account_state)
        | {"name": account, "equity": getattr(account_state, "last_equity", None)},
        "window": {"start": str(window[0]), "end": str(window[1])},
        "models": strategy.desk.describe(),
        "notes": strategy.desk.notes,
        "decisions": decisions,
        "portfolio": books,
        "llm_cost_usd": round(cost, 6),
        "orders": orders,
        "fills": fills,
        "positions": [{"ticker": t} | _plain(p) for t, p in positions.items() if p.quantity],
        "risk_events": [_plain(r) for e in events for r in e.risk_events],
        "route_summary": routes,
        "llm": strategy.llm_stats(),
        "resumed_steps": result.resumed_steps,
        "idle_reason": None if events else idle_reason(account, account_state, window),
        "wall_s": round(wall_s, 2),
    }


def idle_reason(account: str, state: Any, window: tuple[dt.date, dt.date]) -> str:
    """Why a run decided nothing, in one line: the account already stands at or after the
    window's last bar (it continues across runs and never trades a bar twice)."""
    last = getattr(state, "last_step_date", None)
    start, end = window
    if last is not None and last.date() > end:
        return (
            f"nothing to decide: account {account!r} already stands at {last.date()}, after the data's"
            f" last bar {end}; trade later bars, or use another --account for this data"
        )
    if last is not None and last.date() >= start:
        return (
            f"nothing to decide: account {account!r} already holds every bar of {start}..{end}"
            f" (last recorded {last.date()}); run again after the next bar, or pass --start/--end"
        )
    return f"nothing to decide in {start}..{end}"


_INPUT_FIELDS = ("news", "track_record", "call", "outcomes")  # what the decision read and settled
_AGENT_FIELDS = (
    "role",
    "model",
    "route_reason",
    "output",
    "error",
    "latency_s",
    "ttft_s",
    "prompt_tokens",
    "cached_prompt_tokens",
    "completion_tokens",
)


def _plain(obj: Any) -> dict[str, Any]:
    if obj is None:
        return {}
    if isinstance(obj, dict):
        return _jsonable(obj)
    if hasattr(obj, "__dataclass_fields__"):
        return _jsonable({k: getattr(obj, k) for k in obj.__dataclass_fields__})
    if hasattr(obj, "keys"):
        return _jsonable(dict(obj))
    return {"value": str(obj)}


def _jsonable(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, pd.Timestamp | dt.date | dt.datetime):
            v = str(v)[:10] if isinstance(v, pd.Timestamp | dt.date) and not getattr(v, "hour", 0) else str(v)
        elif isinstance(v, float) and v != v:  # NaN
            v = None
        elif hasattr(v, "item"):
            v = v.item()
        out[str(k)] = v
    return out


def _print_summary(summary: dict[str, Any]) -> None:
    acct = summary["account"]
    table = Table(title=f"Paper account {acct.get('name')}")
    table.add_column("what")
    table.add_column("value")
    for key in ("cash", "equity", "risk_state"):
        if key in acct:
            value = acct[key]
            table.add_row(key, f"{value:,.2f}" if isinstance(value, float) else str(value))
    for pos in summary["positions"]:
        table.add_row(f"position {pos.get('ticker')}", str(pos.get("quantity")))
    llm = summary["llm"]
    prompt = llm.get("prompt_tokens") or 0
    share = (llm.get("cached_prompt_tokens") or 0) / prompt if prompt else 0.0
    table.add_row("decisions", str(len(summary["decisions"])))
    table.add_row("orders", str(len(summary["orders"])))
    table.add_row("LLM calls", f"{llm.get('calls')} ({share:.0%} of prompt tokens from KV cache)")
    table.add_row("served by", ", ".join(f"{k}: {v}" for k, v in summary["route_summary"].items()) or "-")
    table.add_row("wall time", f"{summary['wall_s']:.1f} s")
    console.print(table)


DECISION_COLUMNS = ("date", "ticker", "analyst", "risk", "executor", "order", "model")


class _LiveView:
    """A rich live table of decisions with the agent currently thinking; plain lines without a TTY."""

    def __init__(self, *, enabled: bool, plain: bool) -> None:
        self.enabled = enabled
        self.plain = plain and not enabled
        self.rows: list[tuple[str, ...]] = []
        self.events: list[Any] = []  # this invocation's steps (resumed ones are already recorded)
        self.status = Text("starting...")
        self.tokens = 0
        self.current: dict[str, str] = {}
        self._live: Live | None = None
        self._header_printed = False

    @contextmanager
    def running(self) -> Iterator[None]:
        if not self.enabled:
            yield
            return
        with Live(self._render(), console=console, refresh_per_second=8, transient=False) as live:
            self._live = live
            try:
                yield
            finally:
                self._live = None

    def _render(self) -> Group:
        table = Table(title="Decisions", expand=False)
        for col in DECISION_COLUMNS:
            table.add_column(col)
        for row in self.rows[-15:]:
            table.add_row(*row)
        return Group(table, self.status)

    def _refresh(self) -> None:
        if self._live is not None:
            self._live.update(self._render())

    def ticker_started(self, ticker: str, as_of: Any) -> None:
        self.current = {"ticker": ticker, "date": str(as_of)[:10]}

    def agent_event(self, kind: str, payload: Any) -> None:
        if kind == "start":
            self.tokens = 0
            where = f"{self.current.get('date', '')} {self.current.get('ticker', '')}"
            self.status = Text(f"{where}: {payload} is thinking...", style="cyan")
        elif kind == "token":
            self.tokens += 1
            if self.tokens % 8 == 0:
                self.status = Text(f"{self.status.plain.split(' (')[0]} ({self.tokens} tokens)", style="cyan")
        elif kind == "done":
            self.current[payload.role] = _brief(payload.role, payload.output, payload.error)
            self.current["model"] = f"{payload.model} ({payload.route_reason})"
        self._refresh()

    def step(self, event: Any) -> None:
        self.events.append(event)
        record = (event.decision.record or {}).get("tickers", {}) if event.decision else {}
        for tick, rec in record.items():
            agents = {a["role"]: a for a in rec.get("agents", [])}
            cells = [
                _brief(r, agents[r]["output"], agents[r].get("error")) if r in agents else "-"
                for r in ROLE_ORDER
            ]
            vetoes = [e for e in event.risk_events if getattr(e, "ticker", tick) in (tick, None)]
            order = order_text(rec, [f"{e.kind}:{e.rule}" for e in vetoes])
            model = next((f"{a['model']} ({a['route_reason']})" for a in agents.values()), "-")
            row = (str(event.bar_date)[:10], tick, *cells, order, model)
            self.rows.append(row)
            if self.plain:
                # one tab-separated table (rich would expand the tabs): a header, then a row per decision
                if not self._header_printed:
                    console.file.write("\t".join(DECISION_COLUMNS) + "\n")
                    self._header_printed = True
                console.file.write("\t".join(row) + "\n")
                console.file.flush()
        self.status = Text(f"bar {event.index + 1}/{event.total} done; equity {event.equity:,.2f}")
        self._refresh()


def _brief(role: str, output: dict[str, Any] | None, error: str | None) -> str:
    if error or output is None:
        return "failed"
    if role == "analyst":
        return f"{output['action']} {output['conviction']:.2f}"
    if role == "risk":
        return f"{output['decision']} {output['max_position_pct']:.0%}"
    return f"{output['side']} {output['quantity']}"
