"""Pieces every command shares: consoles, JSON output, settings loading, shared options."""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from trading_agents.config.settings import Settings, load_settings
from trading_agents.errors import ConfigError, UserInputError

#: Width of tables written to a pipe or file: wide enough that no column is cut or wrapped
#: (the table takes only the width its content needs); a terminal keeps its own width.
PIPE_WIDTH = 1000


def _console(*, stderr: bool) -> Console:
    stream = sys.stderr if stderr else sys.stdout
    tty = stream.isatty()
    return Console(stderr=stderr, width=None if tty else PIPE_WIDTH)


console = _console(stderr=False)
err_console = _console(stderr=True)

ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config", "-c", help="YAML config file (default: $TRADING_AGENTS_CONFIG or configs/default.yaml)."
    ),
]
JsonOption = Annotated[
    bool, typer.Option("--json", help="Print one machine-readable JSON document on stdout.")
]


EndpointOption = Annotated[
    str | None,
    typer.Option(
        "--endpoint",
        metavar="URL",
        help="Run the desk on this OpenAI-compatible server (llama-server, vLLM, Ollama): llm.endpoint.",
    ),
]
EndpointModelOption = Annotated[
    str | None,
    typer.Option(
        "--endpoint-model", metavar="NAME", help="The model the endpoint serves (config llm.endpoint.model)."
    ),
]


def endpoint_flags(url: str | None, model: str | None) -> dict[str, Any]:
    """``--endpoint URL --endpoint-model NAME`` as settings overrides (``None``: not given)."""
    return {"llm.endpoint.base_url": url, "llm.endpoint.model": model}


def settings_from(config: Path | None, **flags: Any) -> Settings:
    """Load settings with CLI flags on top (keys like ``"llm.seed"``; ``None`` means not given)."""
    given = {k: v for k, v in flags.items() if v is not None}
    try:
        return load_settings(config, given)
    except ConfigError as exc:
        for flag, key, other in (
            ("--endpoint-model", "llm.endpoint.model", "--endpoint URL (or llm.endpoint.base_url)"),
            ("--endpoint", "llm.endpoint.base_url", "--endpoint-model NAME (or llm.endpoint.model)"),
        ):
            missing = other.split("(or ")[1].rstrip(")")
            if key in given and f"{missing}: Field required" in str(exc):
                raise UserInputError(f"{flag} needs {other}") from None
        raise


def emit_json(obj: Any) -> None:
    """Write ``obj`` as JSON to stdout (only JSON goes to stdout in ``--json`` mode)."""
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")
    sys.stdout.flush()


def interactive() -> bool:
    """True when a person is watching (progress bars and live views only then)."""
    return sys.stderr.isatty() and sys.stdout.isatty()


def parse_date(value: str | None, flag: str) -> dt.date | None:
    """A ``YYYY-MM-DD`` option value, or a one-line :class:`UserInputError` naming the flag."""
    if value is None or not value.strip():
        return None
    try:
        return dt.date.fromisoformat(value.strip())
    except ValueError:
        raise UserInputError(f"{flag} {value!r} is not a date; use YYYY-MM-DD") from None


def quiet_libraries() -> None:
    """Keep third-party loggers from printing tracebacks for failures we already report."""
    for name in ("autogen_core", "autogen_agentchat", "autogen_core.events", "yfinance", "httpx"):
        logging.getLogger(name).setLevel(logging.CRITICAL)
