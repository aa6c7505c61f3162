"""``trading-agents backtest``: replay a strategy over past bars and write a results folder."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from trading_agents.backtest.metrics import METRIC_NAMES, format_metric
from trading_agents.backtest.runner import (
    STRATEGIES,
    BacktestRequest,
    default_lock_file,
    log_to,
    market_closed_message,
    run_backtest,
)
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
)
from trading_agents.errors import TradingAgentsError, UserInputError
from trading_agents.fsutil import exclusive_lock

log = logging.getLogger("trading_agents.backtest")

SUMMARY_KEYS = (
    "return_pct",
    "llm_cost_usd",
    "return_net_pct",
    "excess_return_net_pct",
    "return_ann_pct",
    "sharpe",
    "max_drawdown_pct",
    "num_trades",
    "win_rate_pct",
    "commissions",
)


def backtest(
    strategy: Annotated[
        str, typer.Option("--strategy", "-s", help=f"One of: {', '.join(STRATEGIES)}.")
    ] = "agents",
    ticker: Annotated[
        list[str] | None,
        typer.Option("--ticker", "-t", help="Ticker (repeat for several). Default: the bundled GOOG."),
    ] = None,
    data: Annotated[
        Path | None, typer.Option("--data", help="CSV of daily bars (Date,Open,High,Low,Close,Volume).")
    ] = None,
    start: Annotated[str | None, typer.Option("--start", help="First bar, YYYY-MM-DD.")] = None,
    end: Annotated[str | None, typer.Option("--end", help="Last bar, YYYY-MM-DD.")] = None,
    cash: Annotated[
        float | None, typer.Option("--cash", help="Starting cash (default: config broker.cash).")
    ] = None,
    commission: Annotated[
        float | None,
        typer.Option("--commission", help="Fraction of traded value, e.g. 0.001 (config default)."),
    ] = None,
    slippage_bps: Annotated[
        float | None, typer.Option("--slippage-bps", help="Slippage in basis points (config default).")
    ] = None,
    max_position_pct: Annotated[
        float | None,
        typer.Option(
            "--max-position-pct", help="Largest position per ticker, fraction of equity (config risk)."
        ),
    ] = None,
    fast: Annotated[int, typer.Option("--fast", help="sma-cross: fast SMA window.")] = 10,
    slow: Annotated[int, typer.Option("--slow", help="sma-cross: slow SMA window.")] = 20,
    seed: Annotated[
        int | None, typer.Option("--seed", help="Seed of the random strategy and the LLM.")
    ] = None,
    no_cache: Annotated[
        bool, typer.Option("--no-cache", help="agents: do not reuse cached LLM replies.")
    ] = False,
    blind: Annotated[
        bool,
        typer.Option("--blind", help="agents: hide tickers and dates from the models (look-ahead guard)."),
    ] = False,
    news: Annotated[
        str | None,
        typer.Option("--news", help="agents: news file (JSONL/CSV) or 'yahoo' (config data.news)."),
    ] = None,
    portfolio: Annotated[
        str | None,
        typer.Option(
            "--portfolio",
            help="agents: portfolio.mode: off (each ticker on its own), conviction or llm (target weights).",
        ),
    ] = None,
    baselines: Annotated[
        bool,
        typer.Option("--baselines/--no-baselines", help="Also run the rule-based baselines for comparison."),
    ] = True,
    out: Annotated[
        Path | None,
        typer.Option("--out", "-o", help="Results folder (default results/<strategy>-<tickers>-<time>)."),
    ] = None,
    skip_closed: Annotated[
        bool,
        typer.Option("--skip-closed", help="Exit 0 doing nothing when the exchange is closed today (cron)."),
    ] = False,
    today: Annotated[
        str | None,
        typer.Option("--today", hidden=True, help="Pretend today is this date (for --skip-closed)."),
    ] = None,
    log_file: Annotated[Path | None, typer.Option("--log-file", help="Append a log to this file.")] = None,
    lock_file: Annotated[
        Path | None,
        typer.Option("--lock-file", help="Run lock (default <TRADING_AGENTS_HOME>/backtest.lock)."),
    ] = None,
    endpoint: EndpointOption = None,
    endpoint_model: EndpointModelOption = None,
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Backtest a strategy on past daily bars and write a results folder.

    Files: summary.json, trades.csv, equity.csv, decisions.jsonl, report.html.
    Orders decided at a bar's close fill at the next open, with costs.
    The baselines run on the same data for the comparison table.
    Default window: all bars; for agents the last 60 (three LLM calls a bar).
    A window before a model's training cutoff is warned about: pass --blind.
    A run overlapping another (same --lock-file) exits 6 at once.

    Examples:

      trading-agents backtest -s sma-cross --start 2010-01-04 --slow 30

      trading-agents backtest -s agents --endpoint http://127.0.0.1:8080 --endpoint-model smollm2

      trading-agents backtest -t AAPL -t GOOG -t IBM -t MSFT --portfolio conviction

    A universe runs equal-weight buy-and-hold and 1/N monthly beside it; rejected_orders.csv
    lists every clip and veto.
    """
    from trading_agents.cli.common import settings_from

    request = BacktestRequest(
        strategy=strategy.strip().lower(),
        tickers=[t for t in ticker] if ticker else None,
        data_file=data,
        start=parse_date(start, "--start"),
        end=parse_date(end, "--end"),
        cash=cash,
        commission=commission,
        slippage_bps=slippage_bps,
        max_position_pct=max_position_pct,
        fast=fast,
        slow=slow,
        seed=seed,
        use_cache=not no_cache,
        blind=blind,
        news=news,
        portfolio=portfolio.strip().lower() if portfolio else None,
        baselines=baselines,
        out=out,
    )
    request.validate_inputs()
    if data is not None and not data.is_file():
        raise UserInputError(f"data file {data} does not exist; pass a CSV of daily bars with --data")

    if skip_closed:
        closed = market_closed_message(parse_date(today, "--today"))
        if closed:
            if json_out:
                emit_json({"status": "skipped", "reason": closed})
            else:
                err_console.print(closed, highlight=False)
            return

    settings = settings_from(
        config, **request.setting_overrides(), **endpoint_flags(endpoint, endpoint_model)
    )
    lock = lock_file or default_lock_file(settings)

    def warn(line: str) -> None:
        if log_file is not None:
            log.warning(line)
        else:
            err_console.print(f"[yellow]warning:[/] {line}", highlight=False, soft_wrap=True)

    def note(line: str) -> None:
        if log_file is not None:
            log.info(line)
        else:
            err_console.print(f"[yellow]note:[/] {escape(line)}", highlight=False, soft_wrap=True)

    show_progress = interactive() and not json_out
    with (
        log_to(log_file),
        _logged_errors(),
        exclusive_lock(lock, what="another backtest"),
        _progress(enabled=show_progress) as on_step,
    ):
        outcome = run_backtest(request, settings, on_step=on_step, warn=warn, on_note=note)

    if json_out:
        emit_json(outcome.summary)
        return
    _print_summary(outcome.summary)
    console.print(f"results: {outcome.out_dir}/ (open {outcome.paths['report']})", highlight=False)


@contextmanager
def _logged_errors() -> Iterator[None]:
    """Put the one-line error into the log file too (cron reads the log, not the terminal)."""
    try:
        yield
    except TradingAgentsError as exc:
        if log.hasHandlers():  # else logging's last-resort handler would print the error twice
            log.error("%s (exit code %d)", exc.message, exc.exit_code)
        raise


@contextmanager
def _progress(*, enabled: bool) -> Iterator[Any]:
    """A rich progress bar fed by the engine's step events (bars done / total, ETA)."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("backtest"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("bars"),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
        console=err_console,
        transient=True,
    ) as progress:
        task = progress.add_task("", total=None)

        def on_step(event: Any) -> None:
            progress.update(
                task,
                completed=int(event.index) + 1,
                total=int(event.total),
                description=str(event.bar_date)[:10],
            )

        yield on_step


def _print_summary(summary: dict[str, Any]) -> None:
    """The strategy beside each baseline (all under the run's caps) and the uncapped buy-and-hold."""
    from trading_agents.backtest.report import UNCAPPED_BUY_HOLD

    meta = summary["meta"]
    window = meta["window"]
    table = Table(
        title=f"{meta['strategy']} on {', '.join(meta['tickers'])}: {window['start']}..{window['end']}"
    )
    table.add_column("metric")
    table.add_column(meta["strategy"], justify="right")
    names = list(summary.get("baselines") or {})
    for name in names:
        table.add_column(name, justify="right")
    table.add_column(UNCAPPED_BUY_HOLD, justify="right")
    table.add_row("Trades under the run's caps", *(["yes"] * (len(names) + 1)), "no")
    uncapped = {"return_pct": summary["metrics"].get("buy_hold_return_pct")}
    for key in SUMMARY_KEYS:
        row = [format_metric(key, summary["metrics"].get(key))]
        row += [format_metric(key, summary["baselines"][n].get(key)) for n in names]
        row.append(format_metric(key, uncapped.get(key)))
        table.add_row(METRIC_NAMES[key], *row)
    console.print(table)
