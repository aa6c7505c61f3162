"""``trading-agents grid run|status|report``: evaluation grids of backtests on Ray.

Exit codes: 0 every cell done; 2 bad spec, window without bars, malformed data file, missing
model file, or a spec that changes an existing grid; 4 an unknown ticker (market data unavailable); 7 the Ray
cluster cannot be reached or no node fits a model worker; 8 some cells failed (the others
are stored; a rerun retries the failed ones); 130 interrupted (finished cells are stored; a
rerun resumes).

What ``grid run`` tells the person waiting goes to stderr: a progress bar on a terminal, else
one progress line every few seconds; before agent cells start, an estimate (cells x bars x
measured seconds per decision); on Ctrl-C, how many cells are done and that a rerun resumes.
While Ray runs, the process's own stderr (Ray's worker and retry messages) goes to
``DIR/grid.log`` instead.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from trading_agents.cli.common import (
    PIPE_WIDTH,
    ConfigOption,
    EndpointModelOption,
    EndpointOption,
    JsonOption,
    console,
    emit_json,
    endpoint_flags,
)
from trading_agents.errors import PartialFailureError

EPILOG = (
    "Exit codes: 0 all cells done, 2 bad spec or input, 4 data unavailable, 7 cluster unreachable "
    "or too small, 8 some cells failed, 130 interrupted (rerun resumes)."
)

#: Seconds between two progress lines when stderr is not a terminal.
PROGRESS_EVERY_S = 5.0
#: Where Ray's own output goes while a grid runs (inside the grid folder).
LOG_NAME = "grid.log"

app = typer.Typer(
    no_args_is_help=True,
    help="Evaluation grids: data x windows x strategies as backtests on Ray, resumable.",
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
    quick: Annotated[
        bool,
        typer.Option(
            "--quick",
            help="Every data item and strategy on one short window (the spec's last two weeks): "
            "minutes, not hours. Use its own --out.",
        ),
    ] = False,
    concurrency: Annotated[
        int | None,
        typer.Option(
            "--concurrency",
            "-c",
            min=1,
            help="Agent desks in flight on an --endpoint (its parallel slots); default: --workers.",
        ),
    ] = None,
    endpoint: EndpointOption = None,
    endpoint_model: EndpointModelOption = None,
    config: ConfigOption = None,
    json_out: JsonOption = False,
) -> None:
    """Run every cell of SPEC not yet done in --out, then write leaderboard.json and report.html.

    Baseline cells run as Ray tasks; agent cells on workers that load their model once.
    Before agent cells start, an estimate of their time is printed; without a terminal a
    progress line is printed every few seconds. Rerunning on the same --out skips finished
    cells and retries failed ones (Ctrl-C keeps what is done); a spec that changes existing
    cells is refused, naming the keys. Ray's own messages go to --out/grid.log.

    Agent cells on an --endpoint (an OpenAI-compatible server) load no model here; --concurrency
    keeps that many desks in flight against the server's parallel slots.

    Example: trading-agents grid run configs/grids/example.yaml --out results/grid --workers 2

    Example: trading-agents grid run configs/grids/example.yaml --out results/grid-quick --quick

    Example: trading-agents grid run configs/grids/example.yaml -o results/grid \\
      --endpoint http://127.0.0.1:8080 --endpoint-model smollm2 --concurrency 4
    """
    from trading_agents.grid.run import run_grid
    from trading_agents.grid.spec import load_spec

    grid_spec = load_spec(spec)
    if quick:
        grid_spec = grid_spec.quick()
    with _user_stream() as stream:
        view = GridProgress(stream, bar=stream.isatty() and not json_out)
        try:
            with view.running():
                outcome = run_grid(
                    grid_spec,
                    out,
                    workers=workers,
                    threads=threads,
                    address=address,
                    config=config,
                    on_progress=view.update,
                    on_note=view.note if quick else _with_quick_hint(view.note),
                    ray_output=ray_output_to_log,
                    concurrency=concurrency,
                    overrides=endpoint_flags(endpoint, endpoint_model),
                )
        except PartialFailureError as exc:
            if exc.outcome is not None:
                _show(exc.outcome, json_out)
            raise
        except KeyboardInterrupt:
            view.note(view.interrupted_line())
            raise typer.Exit(130) from None
    _show(outcome, json_out)


def _with_quick_hint(note: Callable[[str], None]) -> Callable[[str], None]:
    """Estimates of agent work also name ``--quick``, the short variant of the same grid."""

    def noted(line: str) -> None:
        note(f"{line}; for a first look in minutes add --quick" if "agent cell" in line else line)

    return noted


class GridProgress:
    """What a person waiting for ``grid run`` sees on stderr.

    With a terminal: a rich progress bar. Without one: a line now, then one every
    ``every_s`` seconds while cells run (a heartbeat thread; ``clock`` is injectable), and a
    last one at the end. Notes (the estimate) are printed as they come.
    """

    def __init__(
        self,
        stream: IO[str],
        *,
        bar: bool,
        every_s: float = PROGRESS_EVERY_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.console = Console(file=stream, width=None if bar else PIPE_WIDTH, highlight=False)
        self.bar = bar
        self.every_s = every_s
        self.clock = clock
        self.state: Any = None
        self.began = clock()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._update_bar: Callable[[Any], None] | None = None

    @contextmanager
    def running(self) -> Iterator[None]:
        if self.bar:
            with self._progress_bar():
                yield
            return
        beat = threading.Thread(target=self._heartbeat, name="grid-progress", daemon=True)
        beat.start()
        try:
            yield
        finally:
            self._stop.set()
            beat.join()

    def update(self, progress: Any) -> None:
        first = self.state is None
        self.state = progress
        if self._update_bar is not None:
            self._update_bar(progress)
        elif first or progress.done == progress.total:
            self._line()

    def note(self, line: str) -> None:
        with self._lock:
            self.console.print(line, soft_wrap=True)

    def interrupted_line(self) -> str:
        p = self.state
        done, total = (p.done, p.total) if p is not None else (0, 0)
        return f"interrupted: {done} of {total} cells done; rerun the same command to resume"

    def progress_line(self) -> str:
        from trading_agents.grid.estimate import duration_text

        p = self.state
        elapsed = self.clock() - self.began
        line = f"grid: {p.done}/{p.total} cells done, {p.running} running, {p.failed} failed"
        # no naive time left: an agent cell takes hundreds of times a baseline cell; the estimate
        # note gives the agent cells' time from a measurement instead
        return line + f"; {duration_text(elapsed)} elapsed"

    def _line(self) -> None:
        if self.state is not None:
            self.note(self.progress_line())

    def _heartbeat(self) -> None:
        while not self._stop.wait(self.every_s):
            if self.state is not None and self.state.done < self.state.total:
                self._line()

    @contextmanager
    def _progress_bar(self) -> Iterator[None]:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(
            TextColumn("grid"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("cells · {task.fields[running]} running · {task.fields[failed]} failed"),
            TimeRemainingColumn(),
            console=self.console,
            transient=True,
        ) as bar:
            task = bar.add_task("", total=None, running=0, failed=0)

            def on_progress(p: Any) -> None:
                bar.update(task, completed=p.done, total=p.total, running=p.running, failed=p.failed)

            self._update_bar = on_progress
            try:
                yield
            finally:
                self._update_bar = None


@contextmanager
def _user_stream() -> Iterator[IO[str]]:
    """A stream on the terminal's stderr that stays there while fd 2 is sent to the grid log."""
    try:
        fd = os.dup(sys.stderr.fileno())
    except (AttributeError, OSError, ValueError):  # stderr replaced by an object without a descriptor
        yield sys.stderr
        return
    stream = os.fdopen(fd, "w", buffering=1, encoding="utf-8", errors="replace")
    try:
        yield stream
    finally:
        stream.close()


@contextmanager
def ray_output_to_log(out_dir: Path) -> Iterator[None]:
    """Send file descriptor 2 (this process's and Ray's processes' stderr) to ``DIR/grid.log``.

    Ray prints its workers' errors and retries (``Task AgentWorker.run failed. There are 3
    retries remaining``) on stderr, mostly on Ctrl-C; they belong in the log, not between the
    progress lines. The original stderr is back when the block ends.
    """
    created = not out_dir.exists()
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except OSError:
        yield
        return
    try:
        with open(out_dir / LOG_NAME, "ab") as log:
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
                os.close(saved)
    except BaseException:
        if created and {p.name for p in out_dir.iterdir()} <= {LOG_NAME}:
            # refused before any cell (an unreachable cluster): leave nothing behind, as promised
            (out_dir / LOG_NAME).unlink(missing_ok=True)
            out_dir.rmdir()
        raise


@app.command("status")
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


@app.command("report")
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
    yardstick = grid["reference"] + (
        f"; universes: {grid['universe_reference']}" if grid.get("universe_reference") else ""
    )
    table = Table(title=f"excess over buy-and-hold ({yardstick}, under the same caps), {grid['cells']} cells")
    columns = (
        ("label", "strategy"),
        ("done", "cells"),
        ("mean_return_pct", "mean ret %"),
        ("mean_excess_pct", "excess %"),
        ("excess_ci95_pct", "95% CI"),
        ("beat_buy_hold_share", "beat capped B&H"),
        ("llm_cost_usd", "LLM $"),
        ("mean_excess_net_pct", "excess net %"),
        ("mean_sharpe", "Sharpe"),
        ("worst_max_drawdown_pct", "worst DD %"),
    )
    for _, title in columns:
        table.add_column(title, justify="left" if title == "strategy" else "right")
    for s in board["strategies"]:
        table.add_row(*(fmt(key, s.get(key)) for key, _ in columns))
    console.print(table)
