"""``trading-agents grid run|status|report``: evaluation grids of backtests on Ray.

Exit codes: 0 every cell done; 2 bad spec, window without bars, missing model file, or a
spec that changes an existing grid; 4 an unknown ticker (market data unavailable); 7 the Ray
cluster cannot be reached or no node fits a model worker; 8 some cells failed (the others
are stored; a rerun retries the failed ones); 130 interrupted (finished cells are stored; a
rerun resumes).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from trading_agents.cli.common import ConfigOption, JsonOption, console, emit_json, err_console, interactive
from trading_agents.errors import PartialFailureError

EPILOG = (
    "Exit codes: 0 all cells done, 2 bad spec or input, 4 data unavailable, 7 cluster unreachable "
    "or too small, 8 some cells failed, 130 interrupted (rerun resumes)."
)

app = typer.Typer(
    no_args_is_help=True,
    help="Evaluation grids: data x windows x strategies as backtests on Ray, resumable.",
    epilog=EPILOG,
)


@app.command("run", epilog=EPILOG)
def run(
    spec: Annotated[Path, typer.Argument(help="Grid spec (YAML); see configs/grids/example.yaml.")],
    out: Annotated[Path, typer.Option("--out", "-o", help="Grid folder (created; reused to resume).")],
    workers: Annotated[
        int | None,
        typer.Option("--workers", "-w", help="Cells at a time (default: cluster CPUs / threads)."),
    ] = None,
    threads: Annotated[
        int, typer.Option("--threads-per-worker", "-t", help="llama.cpp threads of each agent worker.")
    ] = 1,
    address: Annotated[
        str | None,
        typer.Option("--address", help="Join a Ray cluster: auto, HOST:PORT or ray://HOST:10001."),
    ] = None,
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Run every cell of SPEC not yet done in --out, then write leaderboard.json and report.html.

    Baseline cells run as Ray tasks; agent cells on workers that load their model once.
    Rerunning on the same --out skips finished cells and retries failed ones; a spec that
    changes existing cells is refused, naming the keys.

    Example: trading-agents grid run configs/grids/example.yaml --out results/grid --workers 2
    """
    from trading_agents.grid.run import run_grid
    from trading_agents.grid.spec import load_spec

    grid_spec = load_spec(spec)
    try:
        with _progress(enabled=interactive() and not json_out) as on_progress:
            outcome = run_grid(
                grid_spec,
                out,
                workers=workers,
                threads=threads,
                address=address,
                config=config,
                on_progress=on_progress,
            )
    except PartialFailureError as exc:
        if exc.outcome is not None:
            _show(exc.outcome, json_out)
        raise
    _show(outcome, json_out)


@app.command("status", epilog=EPILOG)
def status(
    out: Annotated[Path, typer.Argument(help="Grid folder.")],
    json_out: JsonOption = False,
) -> None:
    """Cells done, running, pending and failed in a grid folder (with each failure's error).

    Example: trading-agents grid status results/grid --json
    """
    from trading_agents.grid.run import load_grid

    store, _spec = load_grid(out)
    with store:
        rows = store.rows()
        counts = store.counts_of(rows)
    failed = [
        {"key": r.cell.key, "error": r.error, "attempts": r.attempts} for r in rows if r.status == "failed"
    ]
    doc = {"out_dir": str(out), "counts": counts, "failed": failed}
    if json_out:
        emit_json(doc)
        return
    console.print(
        f"{counts['done']}/{counts['total']} done, {counts['running']} running, "
        f"{counts['pending']} pending, {counts['failed']} failed",
        highlight=False,
    )
    for item in failed:
        console.print(f"failed {item['key']}: {item['error']}", highlight=False, soft_wrap=True)


@app.command("report", epilog=EPILOG)
def report(
    out: Annotated[Path, typer.Argument(help="Grid folder.")],
    json_out: JsonOption = False,
) -> None:
    """Rebuild leaderboard.json and report.html from the stored cells; print the leaderboard.

    Example: trading-agents grid report results/grid --json
    """
    from trading_agents.config.settings import RiskSettings
    from trading_agents.core.risk import caps_in_force
    from trading_agents.grid import leaderboard
    from trading_agents.grid import report as grid_report
    from trading_agents.grid.run import load_grid

    store, spec = load_grid(out)
    with store:
        rows = store.rows()
        config = store.meta("config") or {}
    risk = RiskSettings.model_validate(config.get("risk") or {})
    cash = float((config.get("broker") or {}).get("cash") or 0.0)
    board = leaderboard.build(rows, spec, caps=caps_in_force(risk), cash=cash)
    paths = grid_report.write(Path(out), board, rows)
    if json_out:
        emit_json(board)
        return
    _table(board)
    console.print(f"report: {paths['report']}", highlight=False)


def _show(outcome: Any, json_out: bool) -> None:
    if json_out:
        emit_json(
            {
                "out_dir": str(outcome.out_dir),
                "counts": outcome.counts,
                "computed": outcome.computed,
                "elapsed_s": outcome.elapsed_s,
                "leaderboard": outcome.leaderboard,
            }
        )
        return
    _table(outcome.leaderboard)
    c = outcome.counts
    console.print(
        f"{c['done']}/{c['total']} cells done ({outcome.computed} run now, {c['failed']} failed) "
        f"in {outcome.elapsed_s:.1f} s; report: {outcome.paths.get('report')}",
        highlight=False,
    )


def _table(board: dict[str, Any]) -> None:
    from trading_agents.grid.report import fmt

    grid = board["grid"]
    table = Table(title=f"excess over buy-and-hold ({grid['reference']}), {grid['cells']} cells")
    columns = (
        ("label", "strategy"),
        ("done", "cells"),
        ("mean_return_pct", "mean ret %"),
        ("mean_excess_pct", "excess %"),
        ("excess_ci95_pct", "95% CI"),
        ("beat_buy_hold_share", "beat B&H"),
        ("mean_sharpe", "Sharpe"),
        ("worst_max_drawdown_pct", "worst DD %"),
    )
    for _, title in columns:
        table.add_column(title, justify="left" if title == "strategy" else "right")
    for s in board["strategies"]:
        table.add_row(*(fmt(key, s.get(key)) for key, _ in columns))
    console.print(table)


@contextmanager
def _progress(*, enabled: bool) -> Iterator[Any]:
    """A rich progress bar: cells done of total, running, failed, ETA (off without a terminal)."""
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(
        TextColumn("grid"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("cells · {task.fields[running]} running · {task.fields[failed]} failed"),
        TimeRemainingColumn(),
        console=err_console,
        transient=True,
    ) as bar:
        task = bar.add_task("", total=None, running=0, failed=0)

        def on_progress(p: Any) -> None:
            bar.update(task, completed=p.done, total=p.total, running=p.running, failed=p.failed)

        yield on_progress
