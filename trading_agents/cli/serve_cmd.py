"""``trading-agents serve``: the configured models and the selector behind an OpenAI-compatible API."""

from __future__ import annotations

from typing import Annotated

import typer

from trading_agents.cli.common import ConfigOption, err_console, settings_from
from trading_agents.serve.access import bind_socket, require_key_off_loopback


def serve(
    host: Annotated[
        str | None, typer.Option("--host", help="Bind address (config serve.host, default 127.0.0.1).")
    ] = None,
    port: Annotated[
        int | None, typer.Option("--port", min=1, max=65535, help="Port (config serve.port, default 8000).")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            help="Key clients must send (Authorization: Bearer KEY); better: TRADING_AGENTS_SERVE__API_KEY.",
            show_default=False,
        ),
    ] = None,
    log_level: Annotated[
        str, typer.Option("--log-level", help="uvicorn's log level: warning, info, debug.")
    ] = "info",
    config: ConfigOption = None,
) -> None:
    """Serve the configured models over the OpenAI chat-completions API (FastAPI on uvicorn).

    One process loads each model once and shares it with every client: the daily session, the
    cron backtests and grid workers on one machine point `llm.server_url` at it instead of
    loading Mixtral three times. Models: the configured primary and fallback, any other
    registry model whose file is downloaded, and `selector` (primary with fallback, routed per
    call). Structured output (`response_format` json_object / json_schema) is enforced by the
    llama.cpp grammar.

    Binding to an address other than loopback needs an API key.

    Examples:

      trading-agents serve

      TRADING_AGENTS_SERVE__API_KEY=$(cat ~/.serve-key) trading-agents serve --host 0.0.0.0 --port 8000

      curl -s localhost:8000/v1/chat/completions -H 'content-type: application/json' \\
        -d '{"model": "selector", "messages": [{"role": "user", "content": "Hello"}]}'

    Exit codes: 0 stopped cleanly, 2 bad input (flag, config, no key for a public address,
    port in use), 3 the primary model cannot load and there is no fallback.
    """
    import uvicorn

    from trading_agents.serve.app import asgi_app
    from trading_agents.serve.backend import Backend

    settings = settings_from(config, **{"serve.host": host, "serve.port": port, "serve.api_key": api_key})
    cfg = settings.serve
    require_key_off_loopback(
        cfg.host,
        cfg.api_key is not None,
        what="serve",
        how="TRADING_AGENTS_SERVE__API_KEY (or serve.api_key, or --api-key)",
    )
    sock = bind_socket(cfg.host, cfg.port)
    try:
        backend = Backend(settings)
        for note in backend.notes:
            err_console.print(f"[yellow]note:[/] {note}", soft_wrap=True, highlight=False)
        backend.startup()  # a primary that cannot load stops here, with one error line
        app = asgi_app(settings, backend)
        shown = f"[{cfg.host}]" if ":" in cfg.host else cfg.host
        err_console.print(
            f"serving {', '.join(backend.model_ids())} on http://{shown}:{cfg.port}/v1"
            f" ({'API key required' if cfg.api_key else 'no API key'})",
            soft_wrap=True,
            highlight=False,
        )
        server = uvicorn.Server(
            uvicorn.Config(app, log_level=log_level.lower(), lifespan="on", timeout_graceful_shutdown=10)
        )
        server.run(sockets=[sock])
    finally:
        sock.close()
