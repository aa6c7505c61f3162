"""``grid run`` end to end: validate, plan, connect to Ray, run what is pending, report.

Everything that can be checked before any cell runs is checked first, so a bad spec, an
unknown ticker, a window with no bars, a missing model file, an unreachable ``--address`` or
a model that fits no node's memory ends with one ``error:`` line and nothing written.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trading_agents.config.settings import Settings, load_settings
from trading_agents.core.risk import caps_in_force
from trading_agents.errors import (
    DataValidationError,
    PartialFailureError,
    ResourceError,
    UserInputError,
)
from trading_agents.grid.cells import Cell, cell_hash, data_items, expand
from trading_agents.grid.spec import GridSpec, StrategySpec
from trading_agents.grid.store import GridStore

log = logging.getLogger("trading_agents.grid")

CACHE_NAME = "llm_cache.sqlite"
# Settings that do not change a cell's result (where files live, how many threads compute).
_NEUTRAL = {"paths", "huggingface"}


@dataclass
class Progress:
    """What the progress bar shows; passed to ``on_progress`` after every change."""

    total: int
    done: int = 0
    failed: int = 0
    running: int = 0
    skipped: int = 0


@dataclass
class GridOutcome:
    out_dir: Path
    counts: dict[str, int]
    computed: int
    leaderboard: dict[str, Any]
    paths: dict[str, Path] = field(default_factory=dict)
    elapsed_s: float = 0.0


def physical_cores() -> int:
    from utils.llm_integration.loaded_model import physical_cores as cores

    return cores()


def base_settings(
    spec: GridSpec, config: Path | None, overrides: Mapping[str, Any] | None = None
) -> Settings:
    """The config (file, environment) with the spec's broker, risk and llm keys on top, then
    ``overrides`` (command-line flags such as ``--endpoint``)."""
    return load_settings(
        config, {**spec.overrides(), **{k: v for k, v in (overrides or {}).items() if v is not None}}
    )


def cell_settings(base: Settings, strategy: StrategySpec, threads: int, seed: int) -> dict[str, Any]:
    """The JSON-ready settings one cell runs with (what crosses to the worker); agents get the
    grid seed as the LLM seed."""
    data = base.model_dump(mode="json")
    data["huggingface"] = {"token": None, "endpoint": data["huggingface"].get("endpoint")}
    if strategy.name == "agents":
        llm = data["llm"]
        if strategy.model is not None:
            llm["primary"], llm["fallback"] = strategy.primary, strategy.fallback
        llm["n_threads"], llm["seed"] = threads, seed
        llm["ram_cache_mb"] = 0  # no state carried between cells: results independent of order
        if strategy.portfolio is not None:
            data["portfolio"]["mode"] = strategy.portfolio
        endpoint = base.llm.endpoint
        if endpoint is not None and endpoint.api_key is not None:  # the JSON dump masks secrets
            llm["endpoint"]["api_key"] = endpoint.api_key.get_secret_value()
    return data


def spread_over_endpoints(
    cells: list[Cell], per_label: Mapping[str, dict[str, Any]]
) -> Callable[[Cell], dict[str, Any]]:
    """Each cell's settings, agent cells on an endpoint with replicas spread over the servers
    round-robin in the spec's order (``llm.endpoint.base_url`` first, then ``replicas``)."""
    order = {c.key: i for i, c in enumerate(c for c in cells if c.is_agents)}

    def settings_for(cell: Cell) -> dict[str, Any]:
        data = per_label[cell.label]
        endpoint = data["llm"].get("endpoint") if cell.is_agents else None
        if not endpoint or not endpoint.get("replicas"):
            return data
        urls = [endpoint["base_url"], *endpoint["replicas"]]
        data = copy.deepcopy(data)
        data["llm"]["endpoint"]["base_url"] = urls[order[cell.key] % len(urls)]
        return data

    return settings_for


def shared_config(base: Settings) -> dict[str, Any]:
    """The part of the settings that decides results (stored; a change is refused on resume)."""
    data = base.model_dump(mode="json", exclude=_NEUTRAL)
    data["llm"].pop("n_threads", None)
    return data


def check_data(spec: GridSpec) -> dict[tuple[str, str, str], int]:
    """Load every data item once and check each window has bars, before any cell runs.

    Returns the bars of each ``(data item, window start, window end)`` (ISO dates). A
    malformed data file (missing columns, bad rows) is bad input here as in ``backtest``:
    :class:`DataValidationError` (exit 2) naming the item, and nothing is written. Raises for
    an unknown ticker (exit 4) or a window with no bars (exit 2) too.
    """
    counts: dict[tuple[str, str, str], int] = {}
    from trading_agents.backtest.runner import BacktestRequest, choose_window, load_request_bars

    for label, ticker, file in data_items(spec):
        tickers = spec.data.universe if label == spec.data.universe_label else [ticker] if ticker else None
        request = BacktestRequest(tickers=tickers, data_file=Path(file) if file else None)
        try:
            bars = load_request_bars(request)
        except DataValidationError as exc:
            raise DataValidationError(f"spec data: {label}: {exc.message}") from None
        for window in spec.window_list():
            try:
                _, _, n_bars = choose_window(
                    bars, "buy-hold", window.start, window.end, names=("start", "end")
                )
            except UserInputError as exc:
                raise UserInputError(f"spec windows: {label}: {exc.message}") from None
            counts[(label, window.start.isoformat(), window.end.isoformat())] = n_bars
    return counts


def connect(address: str | None, num_cpus: int | None) -> bool:
    """Join ``address`` or start Ray in-process; returns whether this call started it."""
    import ray

    if ray.is_initialized():
        return False
    common: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.ERROR}
    if address:
        _reachable(address)
        try:
            ray.init(address=address, **common)
        except (ConnectionError, RuntimeError, ValueError, TimeoutError) as exc:
            raise ResourceError(
                f"cannot join the Ray cluster at {address}: {str(exc).splitlines()[0] if str(exc) else exc}; "
                "start it (`ray start --head`) or fix --address"
            ) from None
        return True
    # Ray starts its workers at niceness 15 by default. Here the workers do the grid's work while
    # the driver waits, so on a machine with other busy processes niced workers would starve.
    os.environ.setdefault("RAY_worker_niceness", "0")
    ray.init(
        num_cpus=num_cpus or physical_cores(),
        include_dashboard=False,
        object_store_memory=200 * 2**20,
        **common,
    )
    return True


def _reachable(address: str) -> None:
    """Fail fast, in one line, when ``host:port`` does not answer (Ray itself retries for a minute)."""
    if address == "auto":
        return
    target = address.removeprefix("ray://")
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise UserInputError(f"--address {address!r} is not auto, HOST:PORT or ray://HOST:PORT")
    try:
        with socket.create_connection((host, int(port)), timeout=5):
            pass
    except OSError as exc:
        raise ResourceError(
            f"cannot reach the Ray cluster at {address}: {exc.strerror or exc}; "
            "start it (`ray start --head`) or fix --address"
        ) from None


def check_fits(needs: dict[str, int], threads: int) -> None:
    """Refuse a model no node can hold, and more threads than any node has (exit 7)."""
    import ray

    nodes = [n for n in ray.nodes() if n.get("Alive")]
    memory = max((n["Resources"].get("memory", 0) for n in nodes), default=0)
    cpus = max((n["Resources"].get("CPU", 0) for n in nodes), default=0)
    if needs and threads > cpus:
        raise ResourceError(
            f"--threads-per-worker {threads} is more than any Ray node's {cpus:g} CPUs; lower it"
        )
    for label, need in needs.items():
        if need > memory:
            raise ResourceError(
                f"{label} needs {need / 2**30:.1f} GiB of RAM but the largest Ray node offers "
                f"{memory / 2**30:.1f} GiB; use a smaller model or larger nodes"
            )


def run_grid(
    spec: GridSpec,
    out_dir: Path,
    *,
    workers: int | None = None,
    threads: int = 1,
    address: str | None = None,
    config: Path | None = None,
    on_progress: Callable[[Progress], None] | None = None,
    on_result: Callable[[Cell, dict[str, Any]], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    ray_output: Callable[[Path], contextlib.AbstractContextManager[Any]] | None = None,
    concurrency: int | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> GridOutcome:
    """Run the cells of ``spec`` that ``out_dir`` does not hold yet; write the leaderboard.

    ``on_note`` receives one-line notes meant for the person waiting: the estimate of the
    agent cells (cells x bars x measured seconds per decision) before they start, and again
    once the first one has measured it. ``ray_output(out_dir)`` is entered around the Ray
    part of the run, once the spec has been validated (the CLI sends Ray's own output to
    the grid's log there).

    Agent cells on an external endpoint (``llm.endpoint``, ``--endpoint``) run as light
    clients that load no model, ``concurrency`` desks in flight (default: ``workers``).

    Raises :class:`PartialFailureError` (exit 8) after writing everything when some cells
    failed; the store and leaderboard then hold the rest.
    """
    from trading_agents.grid import execute

    began = time.monotonic()
    if threads < 1:
        raise UserInputError(f"--threads-per-worker must be at least 1 (got {threads})")
    if workers is not None and workers < 1:
        raise UserInputError(f"--workers must be at least 1 (got {workers})")
    if concurrency is not None and concurrency < 1:
        raise UserInputError(f"--concurrency must be at least 1 (got {concurrency})")
    out_dir = Path(out_dir).resolve()
    base = base_settings(spec, config, overrides)
    cells = expand(spec)
    bars = check_data(spec)
    strategies = {s.default_label(): s for s in spec.with_reference()}
    per_label = {label: cell_settings(base, s, threads, spec.seed) for label, s in strategies.items()}
    endpoint = base.llm.endpoint
    if endpoint is not None and any(s.name == "agents" for s in strategies.values()):
        from utils.llm_integration.endpoint_client import check_endpoint

        for url in endpoint.replicas:  # base_url is checked when the desk is built below
            check_endpoint(url, endpoint.model, endpoint.api_key, structured=endpoint.structured)
    needs: dict[str, int] = {}
    for label, s in strategies.items():
        if s.name == "agents":
            needs[label] = execute.ram_need_bytes(per_label[label])  # also checks the model files
    shared = shared_config(base)
    canonical = spec.canonical()
    hashed = [(c, cell_hash(c, shared)) for c in cells]
    finished_keys: set[str] = set()
    if (out_dir / "cells.sqlite").is_file():
        with GridStore.open(out_dir, create=False) as store:
            store.check_compatible(canonical, shared)
            finished_keys = {r.cell.key for r in store.rows() if r.status == "done"}
    work = any(c.key not in finished_keys for c in cells)

    quiet = ray_output(out_dir) if (work and ray_output is not None) else contextlib.nullcontext()
    with quiet:
        return _run_and_report(
            spec,
            out_dir,
            cells=cells,
            hashed=hashed,
            canonical=canonical,
            shared=shared,
            per_label=per_label,
            needs=needs,
            bars=bars,
            base=base,
            workers=workers,
            threads=threads,
            address=address,
            work=work,
            began=began,
            on_progress=on_progress,
            on_result=on_result,
            on_note=on_note,
            concurrency=concurrency,
        )


def _run_and_report(
    spec: GridSpec,
    out_dir: Path,
    *,
    cells: list[Cell],
    hashed: list[tuple[Cell, str]],
    canonical: dict[str, Any],
    shared: dict[str, Any],
    per_label: dict[str, dict[str, Any]],
    needs: dict[str, int],
    bars: dict[tuple[str, str, str], int],
    base: Settings,
    workers: int | None,
    threads: int,
    address: str | None,
    work: bool,
    began: float,
    on_progress: Callable[[Progress], None] | None,
    on_result: Callable[[Cell, dict[str, Any]], None] | None,
    on_note: Callable[[str], None] | None,
    concurrency: int | None,
) -> GridOutcome:
    """Connect to Ray, run the pending cells, write the leaderboard (see :func:`run_grid`)."""
    from trading_agents.grid import estimate, execute, leaderboard, report

    started = connect(address, None if address else physical_cores()) if work else False
    try:
        n_workers = workers or 1
        if work:
            import ray

            check_fits(needs, threads)
            n_workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)) // threads)
        with GridStore.open(out_dir) as store:
            store.prepare(canonical, shared, hashed)
            todo = store.pending(c.key for c in cells)
            progress = Progress(total=len(cells), skipped=len(cells) - len(todo))
            progress.done = progress.skipped
            _notify(on_progress, progress)
            agent_todo = [c for c in todo if c.is_agents]
            n_workers_agents = min(n_workers, len(agent_todo)) or 1
            measured = estimate.measured_seconds_per_decision(store.rows(c.key for c in cells))
            if agent_todo and on_note is not None:
                on_note(
                    estimate.estimate_line(
                        len(agent_todo),
                        estimate.decisions_of(agent_todo, bars),
                        measured,
                        n_workers_agents,
                        source="measured on this grid's finished cells",
                    )
                )

            def submitted(cell: Cell) -> None:
                store.mark_running(cell.key)
                progress.running += 1
                _notify(on_progress, progress)

            def finished(cell: Cell, result: dict[str, Any]) -> None:
                store.record(result)
                finished_now.add(cell.key)
                progress.running -= 1
                progress.done += 1
                progress.failed += result.get("status") != "done"
                _notify(on_progress, progress)
                nonlocal measured
                if measured is None and cell.is_agents and on_note is not None:
                    measured = estimate.measured_seconds_per_decision([result])
                    left = [c for c in agent_todo if store_pending(c)]
                    if measured is not None and left:
                        on_note(
                            estimate.estimate_line(
                                len(left),
                                estimate.decisions_of(left, bars),
                                measured,
                                n_workers_agents,
                                source=f"measured on {cell.key}",
                            ).replace("grid: ", "grid: still to run: ", 1)
                        )
                if on_result is not None:
                    on_result(cell, result)

            finished_now: set[str] = set()

            def store_pending(cell: Cell) -> bool:
                return cell.key not in finished_now

            try:
                execute.execute(
                    todo,
                    spread_over_endpoints(cells, per_label),
                    grid_dir=out_dir,
                    grid_seed=spec.seed,
                    workers=n_workers,
                    concurrency=concurrency,
                    threads=threads,
                    memory_for=lambda c: needs.get(c.label, 0),
                    on_submit=submitted,
                    on_result=finished,
                )
            finally:
                store.requeue_running()
            rows = store.rows(c.key for c in cells)
            counts = store.counts_of(rows)
    finally:
        if started:
            import ray

            with contextlib.suppress(Exception):
                ray.shutdown()

    board = leaderboard.build(rows, spec, caps=caps_in_force(base.risk), cash=base.broker.cash)
    paths = report.write(out_dir, board, rows)
    outcome = GridOutcome(
        out_dir=out_dir,
        counts=counts,
        computed=len(todo),
        leaderboard=board,
        paths=paths,
        elapsed_s=round(time.monotonic() - began, 2),
    )
    if counts["failed"]:
        first = next(r for r in rows if r.status == "failed")
        raise PartialFailureError(
            f"{counts['failed']} of {counts['total']} cells failed (first: {first.cell.key}: {first.error}); "
            f"the others are in {out_dir}; fix the cause and rerun to retry them",
            outcome=outcome,
        )
    return outcome


def _notify(callback: Callable[[Progress], None] | None, progress: Progress) -> None:
    if callback is not None:
        callback(progress)


def load_grid(out_dir: Path) -> tuple[GridStore, GridSpec]:
    """Open an existing grid folder (``grid status`` and ``grid report``)."""
    from trading_agents.grid.spec import parse_spec

    store = GridStore.open(Path(out_dir), create=False)
    spec = parse_spec(store.meta("spec"), str(Path(out_dir) / "cells.sqlite"), check_files=False)
    return store, spec
