"""``trading-agents dashboard``: a live web page over accounts, backtests, grids and models."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from trading_agents.cli.common import ConfigOption, err_console, settings_from
from trading_agents.errors import UserInputError

KEY_ENV = "TRADING_AGENTS_DASHBOARD_API_KEY"


def default_roots(home: Path) -> list[Path]:
    """``<home>/results`` and ``./results``: where backtests and grids write by default."""
    roots = [Path(home).expanduser() / "results", Path("results")]
    unique: list[Path] = []
    for root in roots:
        if root.resolve() not in {r.resolve() for r in unique}:
            unique.append(root)
    return unique


def dashboard(
    host: Annotated[
        str, typer.Option("--host", help="Bind address; another than loopback needs a key.")
    ] = "127.0.0.1",
    port: Annotated[
        int, typer.Option("--port", min=0, max=65535, help="Port to listen on (0: any free port).")
    ] = 8050,
    results: Annotated[
        list[Path] | None,
        typer.Option(
            "--results",
            help="Folder of backtest results and grids (repeatable; default: <home>/results, ./results).",
        ),
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            envvar=KEY_ENV,
            help=f"Key that enables halt/resume and that every request must carry; better: {KEY_ENV}.",
            show_default=False,
            show_envvar=True,
        ),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="uvicorn's log level.")] = "warning",
    config: ConfigOption = None,
) -> None:
    """Serve a web dashboard over the paper ledger, backtest results folders and grids.

    Pages: accounts (equity against buy-and-hold, cash, positions, risk state, orders with
    fills, decisions with each agent's reply, track record, news; live while `run` writes),
    backtests (equity and drawdown against baselines, trades, metrics, caps), grids
    (leaderboard, excess distribution, data x window heatmap linking to each cell), models
    (registry, selector status, a configured serve's /health and metrics).

    Read-only by default. With an API key, halt and resume buttons appear and every request
    must carry the key (a browser asks for it: any user name, the key as password). Binding
    to an address other than loopback needs a key.

    Examples:

      trading-agents dashboard

      trading-agents dashboard --results results/ --results grids/ --port 8060

      TRADING_AGENTS_DASHBOARD_API_KEY=$(cat ~/.dash-key) trading-agents dashboard --host 0.0.0.0

    Exit codes: 0 stopped cleanly, 2 bad input (no key for a public address, port in use,
    a --results path that is not a folder).
    """
    import uvicorn

    from trading_agents.dashboard.app import DashboardConfig, asgi_app
    from trading_agents.serve.access import bind_socket, require_key_off_loopback

    settings = settings_from(config)
    key = api_key.strip() if api_key and api_key.strip() else None
    require_key_off_loopback(
        host, key is not None, what="serve the dashboard", how=f"{KEY_ENV} (or --api-key)"
    )
    for folder in results or []:
        if not folder.is_dir():
            raise UserInputError(f"--results {folder} is not a folder; pass a results or grid folder")
    roots = list(results) if results else default_roots(settings.paths.home)
    sock = bind_socket(host, port)
    try:
        app = asgi_app(DashboardConfig(settings=settings, roots=roots, api_key=key))
        shown = f"[{host}]" if ":" in host else host
        err_console.print(
            f"dashboard on http://{shown}:{sock.getsockname()[1]}/"
            f" ({'API key required; halt/resume on' if key else 'read-only'});"
            f" results from {', '.join(str(r) for r in roots)}",
            soft_wrap=True,
            highlight=False,
        )
        server = uvicorn.Server(uvicorn.Config(app, log_level=log_level.lower(), timeout_graceful_shutdown=3))
        server.run(sockets=[sock])
    finally:
        sock.close()
