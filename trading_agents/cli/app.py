"""Entry point of ``trading-agents``. Each noun lives in its own module under this package.

Exit codes: 0 ok, 1 internal error, 2 bad input (flag, config, data or model file),
3 model failure, 4 market data unavailable, 5 risk halt, 6 lock busy, 7 resource
(memory, disk, permissions; an unreachable or too small Ray cluster), 8 some grid cells
failed, 130 interrupted. The list is printed by the top-level ``--help`` only; a command's
help names the codes particular to it.
"""

from __future__ import annotations

import sys

import click
import typer
from rich.markup import escape
from typer.exceptions import TyperException

from trading_agents.cli import (
    backtest_cmd,
    bench_cmd,
    dashboard_cmd,
    grid_cmd,
    ledger_cmd,
    models_cmd,
    run_cmd,
    schedule_cmd,
    serve_cmd,
)
from trading_agents.cli.common import err_console, quiet_libraries
from trading_agents.cli.help_text import tidy_metavars
from trading_agents.errors import TradingAgentsError
from utils.llm_integration.errors import LLMError

EPILOG = (
    "Exit codes: 0 ok, 1 internal error, 2 bad input, 3 model failure, 4 data unavailable, "
    "5 risk halt, 6 lock busy, 7 resource (memory, disk, permissions), 8 some grid cells failed, "
    "130 interrupted."
)

app = typer.Typer(
    name="trading-agents",
    help="CPU-first multi-agent LLM trading: local GGUF models, AutoGen agents, paper broker, backtests.",
    epilog=EPILOG,
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
app.add_typer(models_cmd.app, name="models")
app.command("run")(run_cmd.run)
app.command("ledger")(ledger_cmd.ledger)
app.command("halt")(ledger_cmd.halt)
app.command("resume")(ledger_cmd.resume)
app.command("backtest")(backtest_cmd.backtest)
app.add_typer(bench_cmd.app, name="bench")
app.add_typer(schedule_cmd.app, name="schedule")
app.add_typer(grid_cmd.app, name="grid")
app.command("serve")(serve_cmd.serve)
app.command("dashboard")(dashboard_cmd.dashboard)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; user mistakes end as one ``error:`` line and a documented exit code."""
    quiet_libraries()
    try:
        command = tidy_metavars(typer.main.get_command(app))
        code = command.main(args=argv, standalone_mode=False, prog_name="trading-agents")
    except TradingAgentsError as exc:
        _error_line(exc.message)
        sys.exit(exc.exit_code)
    except LLMError as exc:
        _error_line(exc.message)
        sys.exit(3)
    except (click.exceptions.Exit, typer.Exit) as exc:
        sys.exit(exc.exit_code)
    except (click.ClickException, TyperException) as exc:  # typer >= 0.25 raises its own click's
        message = exc.format_message().strip()
        if message:  # empty: no arguments, and the help was printed instead
            _error_line(f"{message} (see `trading-agents --help`)")
        sys.exit(exc.exit_code)
    except (click.exceptions.Abort, typer.Abort, KeyboardInterrupt):
        err_console.print("interrupted")
        sys.exit(130)
    # without standalone mode, a command's `raise typer.Exit(n)` comes back as the return value
    sys.exit(code if isinstance(code, int) else 0)


def _error_line(message: str) -> None:
    err_console.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)


if __name__ == "__main__":
    main()
