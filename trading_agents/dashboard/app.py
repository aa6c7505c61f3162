"""The dashboard's FastAPI application: server-rendered pages over the ledger and the results
folders, live account updates over server-sent events, and (with an API key only) halt and
resume.

Pages: ``/`` (everything listed), ``/accounts/{run}`` (one paper account; ``?page=N`` pages
the decisions), ``/backtests/{root}/{folder}``, ``/grids/{root}/{folder}``, ``/models``.
``/accounts/{run}/events`` streams ``step`` events (new decision rows as HTML, the account's
figures and new equity points) as the ledger records them; a backtest still running (its
folder has a ledger but no summary.json yet) is shown as its run's account page, kept live by
``/backtests/{root}/{folder}/events`` (the same stream, ended by a ``done`` event).
With a key every request must carry it (``Authorization: Bearer KEY``, or HTTP Basic with
KEY as the password, which a browser asks for); without one the app is read-only and
halt/resume answer 403.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from fastapi import FastAPI, Request
from fastapi.responses import (
    FileResponse,
    HTMLResponse,
    JSONResponse,
    RedirectResponse,
    Response,
    StreamingResponse,
)
from jinja2 import Environment, PackageLoader, select_autoescape
from markupsafe import Markup
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from trading_agents.backtest.results_folder import is_results_folder, read_results
from trading_agents.config.settings import Settings
from trading_agents.dashboard import views
from trading_agents.dashboard.models_view import registry_rows, selector_view, serve_view
from trading_agents.dashboard.sources import Sources, Unavailable, read_leaderboard
from trading_agents.errors import TradingAgentsError
from trading_agents.journal import LEDGER_FILENAME, Ledger
from trading_agents.serve.access import authorization_matches

STATIC = Path(__file__).parent / "static"
#: How often a live stream looks at the ledger (a cheap indexed read, not a page).
LIVE_POLL_S = 0.5
HEARTBEAT_S = 15.0


@dataclass
class DashboardConfig:
    """What the app serves and who may change things."""

    settings: Settings
    roots: list[Path] = field(default_factory=list)
    api_key: str | None = None
    live_poll_s: float = LIVE_POLL_S


def plotly_js() -> Path:
    """plotly.js as the plotly Python package ships it (served locally: pages work offline)."""
    import plotly

    return Path(plotly.__file__).parent / "package_data" / "plotly.min.js"


def create_app(config: DashboardConfig) -> FastAPI:
    """The dashboard for ``config``; wrap it with :func:`asgi_app` to enforce the key."""
    sources = Sources(Path(config.settings.paths.home).expanduser(), list(config.roots))
    env = Environment(
        loader=PackageLoader("trading_agents.dashboard", "templates"), autoescape=select_autoescape()
    )
    env.filters["money"] = lambda v: "-" if v is None else f"{v:,.2f}"
    env.filters["num"] = lambda v, d=2: "-" if v is None else f"{v:,.{d}f}"
    env.filters["tojson_safe"] = _script_json
    can_write = config.api_key is not None
    app = FastAPI(title="trading-agents dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    row_template = env.get_template("rows.html")

    def render(request: Request, name: str, status: int = 200, **context: Any) -> HTMLResponse:
        html = env.get_template(name).render(request=request, can_write=can_write, **context)
        return HTMLResponse(html, status_code=status)

    def folder_link(kind: str) -> Callable[[Any], str | None]:
        def link(path: Any) -> str | None:
            ref = sources.ref_of(path)
            return None if ref is None else f"/{kind}/{ref[0]}/{ref[1]}"

        return link

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> Response:
        if request.url.path.startswith(("/api/", "/static/")) or request.method != "GET":
            return JSONResponse(
                {"error": {"message": str(exc.detail), "code": exc.status_code}}, exc.status_code
            )
        return render(
            request,
            "message.html",
            exc.status_code,
            title="Not found",
            message=f"nothing at {request.url.path}; start from the overview",
        )

    @app.get("/", response_class=HTMLResponse)
    def index(request: Request) -> HTMLResponse:
        runs, ledger_message = [], None
        try:
            with sources.ledger() as led:
                runs = [(r, led.account(r.run_id)) for r in led.runs()]
        except Unavailable as exc:
            ledger_message = exc.message
        folders = sources.folders()
        return render(
            request,
            "index.html",
            runs=runs,
            ledger_message=ledger_message,
            ledger_path=sources.ledger_path,
            backtests=[f for f in folders if f.kind == "backtest"],
            grids=[f for f in folders if f.kind == "grid"],
            roots=sources.roots,
        )

    @app.get("/accounts/{run_id}", response_class=HTMLResponse)
    def account(request: Request, run_id: str, page: int = 1) -> HTMLResponse:
        try:
            with sources.ledger() as led:
                view = views.account_view(led, run_id, page)
        except Unavailable as exc:
            return render(request, "account.html", run_id=run_id, view=None, message=exc.message)
        message = (
            None
            if view is not None
            else f"no run {run_id!r} in the ledger yet; this page shows it once it starts"
        )
        return render(request, "account.html", run_id=run_id, view=view, message=message)

    def live_events(
        request: Request,
        after: int,
        steps: int,
        changes: Callable[[int, int], dict[str, Any] | None],
        finished: Callable[[], str | None] = lambda: None,
    ) -> StreamingResponse:
        """The ``step`` event stream of one ledger run (``changes(last_id, seen_steps)`` says
        what is new); a ``done`` event with ``finished()``'s message ends it."""

        async def stream() -> AsyncIterator[str]:
            last_id, seen_steps, last_beat = after, steps, time.monotonic()
            yield "retry: 1000\n\n"
            while not await request.is_disconnected():
                update = await asyncio.to_thread(changes, last_id, seen_steps)
                if update is not None:
                    last_id = update["last_id"]
                    seen_steps = update["steps"]
                    update["rows_html"] = row_template.render(rows=update.pop("rows"))
                    yield f"event: step\ndata: {json.dumps(update, default=str)}\n\n"
                elif (done := finished()) is not None:
                    yield f"event: done\ndata: {json.dumps({'message': done})}\n\n"
                    return
                elif time.monotonic() - last_beat > HEARTBEAT_S:
                    last_beat = time.monotonic()
                    yield ": heartbeat\n\n"
                await asyncio.sleep(config.live_poll_s)

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"}
        )

    @app.get("/accounts/{run_id}/events")
    async def events(request: Request, run_id: str, after: int = 0, steps: int = 0) -> StreamingResponse:
        return live_events(request, after, steps, lambda a, s: _changes(sources, run_id, a, s))

    async def set_state(run_id: str, state: str, reason: str) -> Response:
        if not can_write:
            return JSONResponse(
                {
                    "error": {
                        "message": "the dashboard is read-only: start it with an API key to halt or resume",
                        "code": 403,
                    }
                },
                403,
            )
        reason = reason.strip() or (
            "halted from the dashboard" if state != "ACTIVE" else "resumed from the dashboard"
        )
        try:
            with Ledger.open(sources.ledger_path) as led:
                led.set_risk_state(state, reason, run_id=run_id)
        except TradingAgentsError as exc:
            return JSONResponse({"error": {"message": exc.message, "code": 400}}, 400)
        return RedirectResponse(f"/accounts/{run_id}", status_code=303)

    @app.post("/accounts/{run_id}/halt")
    async def halt(request: Request, run_id: str) -> Response:
        form = parse_qs((await request.body()).decode("utf-8", "replace"))
        return await set_state(run_id, "HALTED", (form.get("reason") or [""])[0])

    @app.post("/accounts/{run_id}/resume")
    async def resume(run_id: str) -> Response:
        return await set_state(run_id, "ACTIVE", "")

    @app.get("/backtests/{root}/{rel:path}/events")
    async def backtest_events(
        request: Request, root: int, rel: str, after: int = 0, steps: int = 0
    ) -> StreamingResponse:
        try:
            folder = sources.resolve(root, rel)
        except Unavailable as exc:
            raise StarletteHTTPException(404, exc.message) from None
        ledger = folder / LEDGER_FILENAME

        def changes(last_id: int, seen_steps: int) -> dict[str, Any] | None:
            run_id = _folder_run(sources, ledger)
            return None if run_id is None else _changes(sources, run_id, last_id, seen_steps, ledger)

        def finished() -> str | None:
            return "finished: reload for the full results" if is_results_folder(folder) else None

        return live_events(request, after, steps, changes, finished)

    @app.get("/backtests/{root}/{rel:path}", response_class=HTMLResponse)
    def backtest(request: Request, root: int, rel: str, page: int = 1) -> HTMLResponse:
        try:
            path = sources.resolve(root, rel)
            if not is_results_folder(path) and (path / LEDGER_FILENAME).is_file():
                return running_backtest(request, root, rel, path / LEDGER_FILENAME, page)
            folder = read_results(path)
        except (Unavailable, TradingAgentsError) as exc:
            return render(request, "backtest.html", rel=rel, view=None, message=exc.message)
        view = views.backtest_view(folder, _ledger_equity(folder.path, folder.meta.get("run_id")))
        return render(request, "backtest.html", rel=rel, view=view, message=None)

    def running_backtest(request: Request, root: int, rel: str, ledger: Path, page: int) -> HTMLResponse:
        """A backtest still journalling into its folder's ledger: the account page of its
        run, kept live by the folder's event stream."""
        view, message = None, "the backtest has not recorded a step yet; this page fills in as it runs"
        try:
            with sources.ledger(ledger) as led:
                runs = led.runs()
                if runs:
                    view = views.account_view(led, runs[0].run_id, page)
        except Unavailable as exc:
            message = exc.message
        return render(
            request,
            "account.html",
            run_id=view["run"].run_id if view else "",
            view=view,
            message=message,
            heading=f"Backtest {rel} ({_progress(view['run'].status if view else 'running')})",
            events_url=f"/backtests/{root}/{rel}/events",
        )

    @app.get("/grids/{root}/{rel:path}", response_class=HTMLResponse)
    def grid(request: Request, root: int, rel: str) -> HTMLResponse:
        try:
            board = read_leaderboard(sources.resolve(root, rel))
        except Unavailable as exc:
            return render(request, "grid.html", rel=rel, view=None, message=exc.message)
        view = views.grid_view(board, folder_link("backtests"))
        return render(request, "grid.html", rel=rel, view=view, message=None)

    @app.get("/models", response_class=HTMLResponse)
    def models(request: Request) -> HTMLResponse:
        try:
            registry, registry_message = registry_rows(config.settings), None
        except TradingAgentsError as exc:
            registry, registry_message = [], exc.message
        return render(
            request,
            "models.html",
            registry=registry,
            registry_message=registry_message,
            selector=selector_view(config.settings),
            serve=serve_view(config.settings),
        )

    @app.get("/static/plotly.min.js")
    def plotly_bundle() -> FileResponse:
        return FileResponse(plotly_js(), media_type="text/javascript")

    @app.get("/static/{name}")
    def static(name: str) -> FileResponse:
        path = STATIC / name
        if name not in {p.name for p in STATIC.iterdir()}:
            raise StarletteHTTPException(404, f"no static file {name}")
        return FileResponse(path)

    return app


def _script_json(value: Any) -> Markup:
    """JSON safe inside a ``<script>`` element (no ``</script>`` can close it early)."""
    text = (
        json.dumps(value, default=str).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    )
    return Markup(text)


def _changes(
    sources: Sources, run_id: str, after_id: int, seen_steps: int, ledger: Path | None = None
) -> dict[str, Any] | None:
    """What the ledger (default: the session ledger) recorded for ``run_id`` since the client's
    last event, or None."""
    try:
        with sources.ledger(ledger) as led:
            count = led.step_count(run_id)
            new = led.decision_page(run_id, limit=views.PAGE_SIZE, after_id=after_id)
            if count == seen_steps and not new:
                return None
            acct = led.account(run_id)
            fresh = led.steps(run_id)[seen_steps:] if count > seen_steps else []
            events = led.risk_events(run_id, limit=50)
    except Unavailable:
        return None
    return {
        "last_id": max([after_id, *(d["id"] for d in new)]),
        "steps": count,
        "rows": views.decision_rows(new, events),
        "account": None
        if acct is None
        else {
            "cash": acct.cash,
            "equity": acct.last_equity,
            "risk_state": acct.risk_state,
            "halt_reason": acct.halt_reason,
            "last_bar": acct.last_step_date.strftime("%Y-%m-%d") if acct.last_step_date is not None else None,
        },
        "points": [{"x": s["bar_date"].strftime("%Y-%m-%d"), "y": s["equity"]} for s in fresh],
    }


def _progress(status: str) -> str:
    """How an unfinished backtest's run status reads on its page ("failed" stays "failed")."""
    return "running" if status in ("created", "running") else status


def _folder_run(sources: Sources, ledger: Path) -> str | None:
    """The run a backtest results folder's ledger holds (None before it is created)."""
    try:
        with sources.ledger(ledger) as led:
            runs = led.runs()
    except Unavailable:
        return None
    return runs[0].run_id if runs else None


def _ledger_equity(folder: Path, run_id: Any) -> float | None:
    """The final equity the folder's ``ledger.sqlite`` recorded (the figure the chart must end on)."""
    path = folder / "ledger.sqlite"
    if not path.is_file() or not run_id:
        return None
    try:
        led = Ledger.open_reader(path)
    except TradingAgentsError:
        return None
    try:
        acct = led.account(str(run_id))
        return None if acct is None else acct.last_equity
    finally:
        led.close()


class _KeyGuard:
    """Every request must carry the key (Bearer, or Basic with the key as password)."""

    def __init__(self, app: ASGIApp, key: str) -> None:
        self.app = app
        self._key = key.encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            header = dict(scope.get("headers") or []).get(b"authorization")
            if not authorization_matches(header, self._key, basic=True):
                body = json.dumps(
                    {
                        "error": {
                            "message": "missing or wrong API key: send Authorization: Bearer <key>"
                            " or sign in with the key as password",
                            "code": 401,
                        }
                    }
                ).encode()
                await send(
                    {
                        "type": "http.response.start",
                        "status": 401,
                        "headers": [
                            (b"content-type", b"application/json"),
                            (b"www-authenticate", b'Basic realm="trading-agents dashboard"'),
                            (b"content-length", str(len(body)).encode()),
                        ],
                    }
                )
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def asgi_app(config: DashboardConfig) -> ASGIApp:
    """What uvicorn runs: the app, behind the key check when there is a key."""
    app = create_app(config)
    return app if config.api_key is None else _KeyGuard(app, config.api_key)
