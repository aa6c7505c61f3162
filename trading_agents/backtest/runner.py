"""One backtest from request to results folder: what ``trading-agents backtest`` and cron run.

:func:`run_backtest` validates a :class:`BacktestRequest`, loads the bars, picks the
window, builds the strategy, runs the engine (and, for the comparison table, the
baselines on the same bars, window, costs and risk limits), computes the metrics and writes
the results folder (:mod:`trading_agents.backtest.report`).

Default windows: the whole available range for the rule-based strategies (they are
cheap), but only the last :data:`AGENT_DEFAULT_BARS` bars for ``agents``, because every
bar costs three LLM calls. Bars before the window are still handed to the engine, so
indicators and agents see point-in-time history from the first bar of the window on.

Cron safety lives here too: :func:`default_lock_file` (one run at a time, see
:func:`trading_agents.fsutil.exclusive_lock`), :func:`log_to` (append a log file) and
:func:`market_closed_message` (skip weekends and exchange holidays).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import logging
import sys
import tempfile
import time
from collections.abc import Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict

from trading_agents.backtest.calendar import DEFAULT_EXCHANGE, exchange_today, is_trading_day
from trading_agents.backtest.metrics import compute_metrics
from trading_agents.backtest.report import package_versions, track_record_summary, write_results
from trading_agents.config.settings import Settings
from trading_agents.core.risk import caps_in_force
from trading_agents.errors import UserInputError

log = logging.getLogger("trading_agents.backtest")

STRATEGIES: tuple[str, ...] = (
    "agents",
    "buy-hold",
    "sma-cross",
    "macd",
    "rsi",
    "random",
    "equal-weight",
    "equal-weight-monthly",
)
#: Rule-based strategies run next to the chosen one for the comparison table.
BASELINES: tuple[str, ...] = ("buy-hold", "sma-cross", "macd", "rsi", "random")
#: Also run beside a universe (several tickers) or a portfolio-mode backtest; the first is the
#: benchmark of ``excess_return_pct`` there.
PORTFOLIO_BASELINES: tuple[str, ...] = ("equal-weight", "equal-weight-monthly")
PORTFOLIO_MODES: tuple[str, ...] = ("off", "conviction", "llm")
AGENT_DEFAULT_BARS = 60
DEFAULT_TICKER = "GOOG"
LOCK_NAME = "backtest.lock"

StepCallback = Callable[[Any], None]


class BacktestRequest(BaseModel):
    """Everything a backtest is asked to do; ``None`` means "from the settings" or "default".

    ``tickers`` and ``data_file`` are exclusive; neither means the bundled GOOG bars.
    ``cash``, ``commission``, ``slippage_bps`` and ``max_position_pct`` default to the
    config's ``broker`` and ``risk`` sections. ``seed`` seeds the ``random`` strategy and
    the LLM. ``fast``/``slow`` are the SMA windows of ``sma-cross`` (also as a baseline).
    ``response_cache`` is the LLM response cache file (default ``<home>/llm_cache.sqlite``).
    """

    model_config = ConfigDict(extra="forbid")

    strategy: str = "agents"
    tickers: list[str] | None = None
    data_file: Path | None = None
    start: dt.date | None = None
    end: dt.date | None = None
    cash: float | None = None
    commission: float | None = None
    slippage_bps: float | None = None
    max_position_pct: float | None = None
    fast: int = 10
    slow: int = 20
    seed: int | None = None
    use_cache: bool = True
    response_cache: Path | None = None
    blind: bool = False
    baselines: bool = True
    out: Path | None = None
    source: str = "auto"
    news: str | None = None  # agents: a news file or "yahoo" (config data.news)
    portfolio: str | None = None  # agents: portfolio.mode (off, conviction, llm)

    def validate_inputs(self) -> None:
        """Raise :class:`UserInputError` (one line: what is wrong, what to do) for a bad request."""
        if self.strategy not in STRATEGIES:
            choices = ", ".join(STRATEGIES)
            raise UserInputError(f"unknown strategy {self.strategy!r}; choose one of: {choices}")
        if self.tickers and self.data_file is not None:
            raise UserInputError("--ticker and --data are exclusive; pass tickers or a CSV file, not both")
        if self.start and self.end and self.start > self.end:
            raise UserInputError(f"--start {self.start} is after --end {self.end}; swap the dates")
        if self.cash is not None and not self.cash > 0:
            raise UserInputError(f"--cash must be greater than 0 (got {self.cash:g})")
        if self.commission is not None and not 0 <= self.commission < 0.1:
            raise UserInputError(
                f"--commission is a fraction of traded value in [0, 0.1), e.g. 0.001 for 0.1% "
                f"(got {self.commission:g})"
            )
        if self.slippage_bps is not None and self.slippage_bps < 0:
            raise UserInputError(f"--slippage-bps cannot be negative (got {self.slippage_bps:g})")
        if self.max_position_pct is not None and not 0 < self.max_position_pct <= 1:
            raise UserInputError(
                f"--max-position-pct is a fraction of equity in (0, 1] (got {self.max_position_pct:g})"
            )
        if self.fast < 1 or self.slow <= self.fast:
            raise UserInputError(f"--fast must be >= 1 and below --slow (got {self.fast} and {self.slow})")
        if self.portfolio is not None and self.portfolio not in PORTFOLIO_MODES:
            raise UserInputError(
                f"unknown portfolio mode {self.portfolio!r}; choose one of: {', '.join(PORTFOLIO_MODES)}"
            )
        if self.seed is not None and self.seed < 0:
            raise UserInputError(f"--seed must be >= 0 (got {self.seed})")

    def setting_overrides(self) -> dict[str, Any]:
        """The flags that are also settings, as ``load_settings`` overrides."""
        return {
            "broker.cash": self.cash,
            "broker.commission": self.commission,
            "broker.slippage_bps": self.slippage_bps,
            "risk.max_position_pct": self.max_position_pct,
            "llm.seed": self.seed,
            "data.news": self.news,
            "portfolio.mode": self.portfolio,
        }


@dataclass
class BacktestOutcome:
    """What a finished backtest produced: the folder, its files and the summary written."""

    out_dir: Path
    paths: dict[str, Path]
    summary: dict[str, Any]
    result: Any
    warnings: list[str] = field(default_factory=list)


def run_backtest(
    request: BacktestRequest,
    settings: Settings,
    *,
    on_step: StepCallback | None = None,
    warn: Callable[[str], None] | None = None,
    on_note: Callable[[str], None] | None = None,
) -> BacktestOutcome:
    """Run ``request`` with ``settings`` (flags already applied) and write its results folder.

    ``on_step`` receives the engine's ``StepEvent`` after every bar (for progress bars);
    ``warn`` receives each warning line and ``on_note`` each note of the desk (a substitute
    model serving), both by default to the log. Errors are :mod:`trading_agents.errors` exceptions.
    """
    from trading_agents.core import EngineConfig, run_engine

    request.validate_inputs()
    warn = warn or log.warning
    began = time.monotonic()
    bars = load_request_bars(request)
    news = _open_news(request, settings)  # before anything is written: a bad news file is exit 2
    tickers = list(bars)
    start, end, n_bars = choose_window(bars, request.strategy, request.start, request.end)
    log.info(
        "backtest %s on %s from %s to %s (%d bars)", request.strategy, ",".join(tickers), start, end, n_bars
    )

    warnings: list[str] = []
    if request.strategy == "agents":
        for line in lookahead_warnings(settings, start, blind=request.blind):
            warnings.append(line)
            warn(line)

    config = EngineConfig.from_settings(settings)
    run_id = make_run_id(request.strategy, tickers, start, end)
    out_dir = Path(request.out or default_out_dir(request.strategy, tickers))
    created = ensure_writable(out_dir)  # before the run: an LLM backtest can take hours
    strategy = build_strategy(request.strategy, request, settings, news=news)
    for note in getattr(getattr(strategy, "desk", None), "notes", ()):
        (on_note or log.info)(note)
    journal = open_journal(request.strategy, out_dir)
    try:
        result = run_engine(
            bars,
            strategy,
            config,
            journal,
            run_id,
            kind="backtest",
            start=start,
            end=end,
            on_step=on_step,
            record_config=settings.public_dict(),
        )
        llm = _llm_stats(strategy)
        if llm is not None and llm.get("served"):  # a fallback that served is warned about too
            for line in lookahead_warnings(settings, start, blind=request.blind, served=llm["served"]):
                if line not in warnings:
                    warnings.append(line)
                    warn(line)
    except BaseException:
        recorded = journal.get_run(run_id) is not None and journal.step_count(run_id) > 0
        close_journal(journal)
        if created and not recorded:  # a ledger with recorded bars stays: the failed run's record
            for path in _ledger_files(out_dir):
                path.unlink(missing_ok=True)
            with contextlib.suppress(OSError):
                out_dir.rmdir()  # only if still empty
        raise
    finally:
        _close(strategy)
    close_journal(journal)
    ledger_file = save_ledger(journal, run_id, out_dir)

    metrics = compute_metrics(result, bars)
    baseline_metrics: dict[str, dict[str, Any]] = {}
    baseline_equity: dict[str, pd.Series] = {}
    if request.baselines:
        for name in baseline_names(tickers, settings):
            if name == request.strategy:
                continue
            other = run_baseline(name, request, settings, bars, config, start, end)
            baseline_metrics[name] = compute_metrics(other, bars)
            baseline_equity[name] = other.equity["equity"]

    benchmark = add_cost_metrics(
        metrics, result.decisions or [], baseline_metrics, portfolio=is_portfolio(tickers, settings)
    )
    meta = {
        "run_id": run_id,
        "strategy": request.strategy,
        "params": strategy_params(request, settings, llm),
        "tickers": tickers,
        "data_file": str(request.data_file) if request.data_file else None,
        "source": request.source,
        "window": {"start": start.isoformat(), "end": end.isoformat(), "bars": n_bars},
        "cash": settings.broker.cash,
        "commission": settings.broker.commission,
        "slippage_bps": settings.broker.slippage_bps,
        "max_position_pct": settings.risk.max_position_pct,
        "risk_caps": caps_in_force(settings.risk),
        "models": (llm or {}).get("models", {}),
        "seed": _seed(request, settings, llm),
        "llm": llm,
        "lookahead_warnings": warnings,
        "benchmark": benchmark,
        "portfolio_mode": settings.portfolio.mode if request.strategy == "agents" else None,
        "risk_events": len(getattr(result, "risk_events", None) or []),
        "resumed_steps": getattr(result, "resumed_steps", 0),
        "elapsed_s": round(time.monotonic() - began, 3),
        "versions": package_versions(),
        "config": settings.public_dict(),
    }
    paths = write_results(
        out_dir,
        result,
        metrics,
        baselines=baseline_metrics,
        meta=meta,
        bars=bars,
        baseline_equity=baseline_equity,
    )
    paths["ledger"] = ledger_file
    summary = {"metrics": metrics, "baselines": baseline_metrics, "meta": meta, "out_dir": str(out_dir)}
    summary["track_record"] = track_record_summary(result)  # agents: hit rate per action
    log.info(
        "backtest %s done: return %.2f%%, %s trades; results in %s",
        request.strategy,
        metrics.get("return_pct") or 0.0,
        metrics.get("num_trades"),
        out_dir,
    )
    return BacktestOutcome(
        out_dir=Path(out_dir), paths=paths, summary=summary, result=result, warnings=warnings
    )


def is_portfolio(tickers: list[str], settings: Settings) -> bool:
    """A universe or a portfolio mode: measured against equal-weight buy-and-hold."""
    return len(tickers) > 1 or settings.portfolio.mode != "off"


def baseline_names(tickers: list[str], settings: Settings) -> tuple[str, ...]:
    """The baselines run beside a backtest: the rule-based ones, and for a universe or a
    portfolio mode equal-weight buy-and-hold and 1/N rebalanced monthly."""
    return BASELINES + (PORTFOLIO_BASELINES if is_portfolio(tickers, settings) else ())


def add_cost_metrics(
    metrics: dict[str, Any],
    decisions: list[Mapping[str, Any]],
    baselines: Mapping[str, Mapping[str, Any]],
    *,
    portfolio: bool,
) -> str:
    """Add ``llm_cost_usd`` (stored with the decisions), ``return_net_pct`` (net of it),
    ``excess_return_pct`` and ``excess_return_net_pct`` to ``metrics``.

    The benchmark is equal-weight buy-and-hold for a universe or portfolio mode (its
    baseline's return, when it ran), else the bars' buy-and-hold return; returns its name.
    """
    from trading_agents.agents.costs import decisions_cost_usd

    cost = decisions_cost_usd(decisions)
    start = float(metrics.get("equity_start") or 0.0)
    final = metrics.get("equity_final")
    metrics["llm_cost_usd"] = cost
    net = (float(final) - cost - start) / start * 100 if final is not None and start > 0 else None
    metrics["return_net_pct"] = net
    bench = metrics.get("buy_hold_return_pct")
    name = "buy-hold"
    if portfolio and "equal-weight" in baselines:
        bench = baselines["equal-weight"].get("return_pct")
        name = "equal-weight"
    gross = metrics.get("return_pct")
    metrics["excess_return_pct"] = gross - bench if gross is not None and bench is not None else None
    metrics["excess_return_net_pct"] = net - bench if net is not None and bench is not None else None
    return name


def ensure_writable(out_dir: Path) -> bool:
    """Create ``out_dir`` if needed and prove a file can be written there.

    Returns whether the folder was created. Raises
    :class:`~trading_agents.errors.ResourceError` in one line otherwise.
    """
    from trading_agents.errors import ResourceError

    out_dir = Path(out_dir)
    created = not out_dir.exists()
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=out_dir, prefix=".write-test-"):
            pass
        for stale in out_dir.glob(".*.tmp*"):  # left by a run killed mid-write; we hold the lock
            stale.unlink(missing_ok=True)
    except OSError as exc:
        raise ResourceError(
            f"cannot write results to {out_dir}: {exc.strerror or exc}; pass a writable --out folder"
        ) from None
    return created


def open_journal(strategy: str, out_dir: Path) -> Any:
    """Where the run is journalled: ``agents`` step by step into ``<out_dir>/ledger.sqlite``,
    so the dashboard shows a long LLM backtest while it runs (each bar is one transaction);
    the rule-based strategies into a ``MemoryJournal`` (their speed), exported at the end.

    A ledger left in ``out_dir`` by an earlier run is replaced (a results folder holds one
    run), unless a backtest still writes it: then :class:`~trading_agents.errors.LockBusyError`.
    """
    from trading_agents.fsutil import exclusive_lock
    from trading_agents.journal import LEDGER_FILENAME, Ledger, MemoryJournal

    if strategy != "agents":
        return MemoryJournal()
    path = Path(out_dir) / LEDGER_FILENAME
    with exclusive_lock(Path(f"{path}.lock"), f"another backtest writing {out_dir}"):
        for old in _ledger_files(out_dir):
            old.unlink(missing_ok=True)
    return Ledger.open(path)


def _ledger_files(out_dir: Path) -> list[Path]:
    """A results folder's ledger and the files SQLite keeps beside it."""
    from trading_agents.journal import LEDGER_FILENAME

    path = Path(out_dir) / LEDGER_FILENAME
    return [path, *(path.with_name(path.name + tail) for tail in ("-wal", "-shm", "-journal"))]


def close_journal(journal: Any) -> None:
    """Close the run's journal; a results folder's ledger is settled into one file and its
    engine lock file removed, so the folder holds what an exported ledger leaves."""
    path = getattr(journal, "path", None)
    if path is not None:
        journal.settle()
    journal.close()
    if path is not None:
        Path(f"{path}.lock").unlink(missing_ok=True)


def save_ledger(journal: Any, run_id: str, out_dir: Path) -> Path:
    """``<out_dir>/ledger.sqlite`` with every order, fill, step and decision of the run, for
    audits with SQL: a ``MemoryJournal`` is written there now (atomically); a ledger journal
    already is that file."""
    from trading_agents.journal import LEDGER_FILENAME, MemoryJournal, export_run

    path = Path(out_dir) / LEDGER_FILENAME
    if isinstance(journal, MemoryJournal):
        return export_run(journal, run_id, path)
    return path


def load_request_bars(request: BacktestRequest) -> dict[str, pd.DataFrame]:
    """All bars the request names (the whole history: the window is applied by the engine)."""
    from trading_agents.market import load_bars

    if request.data_file is not None:
        return load_bars(data_file=request.data_file, source=request.source)
    return load_bars(tickers=request.tickers or [DEFAULT_TICKER], source=request.source)


def choose_window(
    bars: Mapping[str, pd.DataFrame],
    strategy: str,
    start: dt.date | None,
    end: dt.date | None,
    *,
    names: tuple[str, str] = ("--start", "--end"),
) -> tuple[dt.date, dt.date, int]:
    """The ``(start, end, number of bars)`` to trade; see the module docstring for defaults.

    Raises :class:`UserInputError` naming the available range when no bar falls inside.
    """
    frames = [f for f in bars.values() if len(f)]
    if not frames:
        raise UserInputError("the data has no bars; check the tickers or the data file")
    dates = pd.DatetimeIndex(sorted(set().union(*(f.index for f in frames))))
    if start and end and start > end:
        raise UserInputError(f"--start {start} is after --end {end}; swap the dates")
    lo = pd.Timestamp(start) if start else None
    hi = pd.Timestamp(end) if end else None
    mask = np.ones(len(dates), dtype=bool)
    if lo is not None:
        mask &= dates >= lo
    if hi is not None:
        mask &= dates <= hi
    inside = dates[mask]
    if lo is None and hi is None and strategy == "agents":
        inside = dates[-AGENT_DEFAULT_BARS:]
    elif lo is None and strategy == "agents":
        inside = inside[-AGENT_DEFAULT_BARS:]
    if not len(inside):
        raise UserInputError(no_bars_message(start, end, dates[0].date(), dates[-1].date(), names=names))
    return inside[0].date(), inside[-1].date(), len(inside)


def no_bars_message(
    start: dt.date | None,
    end: dt.date | None,
    first: dt.date,
    last: dt.date,
    *,
    names: tuple[str, str] = ("--start", "--end"),
) -> str:
    """Why a start/end window holds no bar, and which dates would.

    ``first``/``last`` are the data's first and last bar; ``names`` what the user wrote the
    two dates as (the flags, or a grid spec's ``start``/``end`` keys).
    """
    s, e = names
    covers = f"the data covers {first}..{last}"
    if start is not None and start > last:
        return f"{s} {start} is after the last bar ({last}); {covers}: give a {s} on or before {last}"
    if end is not None and end < first:
        return f"{e} {end} is before the first bar ({first}); {covers}: give an {e} on or after {first}"
    if start is not None and end is not None:
        return f"no bars from {s} {start} to {e} {end} (no trading days); {covers}: widen the window"
    return f"no bars in the window; {covers}: choose dates inside it"


def lookahead_warnings(
    settings: Settings, start: dt.date, *, blind: bool, served: Collection[str] | None = None
) -> list[str]:
    """One line per serving model whose training cutoff is after ``start``.

    Such a model may have read about the prices it is asked to predict, so its backtest
    is optimistic; ``--blind`` hides tickers and dates from the agents. Before a run
    (``served`` is ``None``) the model expected to serve is the resolved primary (the
    substitute when the configured file is missing); after it, ``served`` names the models
    that answered calls, so a fallback that served is warned about and one that did not is not.
    """
    from trading_agents.model_files.registry import resolve_llm_pair

    primary, fallback, _notes = resolve_llm_pair(settings)
    if served is None:
        candidates = [primary]
    else:
        candidates = [m for m in (primary, fallback) if m is not None and m.name in served]
    lines = []
    for model in candidates:
        cutoff = model.entry.training_cutoff if model.entry is not None else None
        if cutoff is None or start >= cutoff:
            continue
        advice = (
            "--blind is on, so tickers and dates are hidden from it"
            if blind
            else "results may be optimistic; rerun with --blind to hide tickers and dates"
        )
        lines.append(
            f"window starts {start} before {model.name}'s training cutoff {cutoff}: "
            f"the model may have seen these prices; {advice}"
        )
    return lines


def _open_news(request: BacktestRequest, settings: Settings) -> Any:
    if request.strategy != "agents":
        return None
    from trading_agents.market.news import open_news

    return open_news(settings.data.news, home=settings.paths.home)


def build_strategy(name: str, request: BacktestRequest, settings: Settings, *, news: Any = None) -> Any:
    """The strategy object ``name`` stands for, with the request's parameters (``news``: the
    agents' news source)."""
    if name == "agents":
        try:
            from trading_agents.agents.desk_strategy import build_agent_strategy
        except ImportError as exc:
            raise UserInputError(f"the agents strategy is not available in this install: {exc}") from None
        return build_agent_strategy(
            settings,
            use_cache=request.use_cache,
            blind=request.blind,
            cache_path=request.response_cache,
            news=news,
        )
    from trading_agents.backtest.baselines import make_baseline

    return make_baseline(name, **_baseline_params(name, request, settings))


def run_baseline(
    name: str,
    request: BacktestRequest,
    settings: Settings,
    bars: Mapping[str, pd.DataFrame],
    config: Any,
    start: dt.date,
    end: dt.date,
) -> Any:
    """Run baseline ``name`` on the same bars, window and costs in a throw-away journal."""
    from trading_agents.core import run_engine
    from trading_agents.journal import MemoryJournal

    return run_engine(
        dict(bars),
        build_strategy(name, request, settings),
        config,
        MemoryJournal(),
        make_run_id(name, list(bars), start, end),
        kind="backtest",
        start=start,
        end=end,
    )


def strategy_params(
    request: BacktestRequest, settings: Settings, llm: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The parameters that shaped the strategy's decisions (recorded in summary.json).

    For the agents, ``primary`` and ``fallback`` are the models that were loaded (the
    embedded model when a configured file is missing; the configured names then go under
    ``configured``), and ``served_by`` lists the models that answered calls, from ``llm``.
    """
    if request.strategy == "agents":
        primary, fallback = _loaded_pair(settings)
        params: dict[str, Any] = {
            "blind": request.blind,
            "use_cache": request.use_cache,
            "primary": primary,
            "fallback": fallback,
        }
        configured = {"primary": settings.llm.primary, "fallback": settings.llm.fallback}
        if configured != {"primary": primary, "fallback": fallback}:
            params["configured"] = configured
        params["served_by"] = list((llm or {}).get("served") or [])
        params.update(
            {
                "temperature": settings.llm.temperature,
                "seed": settings.llm.seed,
                "news": settings.data.news,
                "memory": settings.memory.model_dump(),
                "portfolio": settings.portfolio.model_dump(),
                "costs": settings.costs.model_dump(),
            }
        )
        return params
    params = _baseline_params(request.strategy, request, settings)
    if isinstance(params.get("risk"), BaseModel):
        params["risk"] = params["risk"].model_dump(mode="json")
    return params


def _loaded_pair(settings: Settings) -> tuple[str, str | None]:
    if settings.llm.server_url:
        return settings.llm.primary, settings.llm.fallback  # the server resolves its own models
    from trading_agents.model_files.registry import resolve_llm_pair

    try:
        primary, fallback, _notes = resolve_llm_pair(settings)
    except Exception:
        return settings.llm.primary, settings.llm.fallback
    return primary.name, fallback.name if fallback else None


def _baseline_params(name: str, request: BacktestRequest, settings: Settings) -> dict[str, Any]:
    if name in PORTFOLIO_BASELINES:
        return {
            "risk": settings.risk,
            "commission": settings.broker.commission,
            "slippage_bps": settings.broker.slippage_bps,
        }
    if name == "sma-cross":
        return {"fast": request.fast, "slow": request.slow}
    if name == "random":
        return {"seed": request.seed if request.seed is not None else settings.llm.seed}
    return {}


def make_run_id(strategy: str, tickers: list[str], start: dt.date, end: dt.date) -> str:
    """Unique, readable id: ``bt-<strategy>-<tickers>-<start>-<end>-<time>-<hash>``."""
    now = dt.datetime.now(dt.UTC)
    tag = hashlib.sha256(f"{now.isoformat()}{time.perf_counter_ns()}".encode()).hexdigest()[:6]
    return f"bt-{strategy}-{'_'.join(tickers)}-{start}-{end}-{now:%Y%m%dT%H%M%S}-{tag}"


def default_out_dir(strategy: str, tickers: list[str], root: Path | None = None) -> Path:
    """``results/<strategy>-<tickers>-<UTC timestamp>`` (under the current directory)."""
    stamp = dt.datetime.now(dt.UTC).strftime("%Y%m%d-%H%M%S")
    names = "_".join(tickers)[:60] or "data"
    base = (root or Path("results")) / f"{strategy}-{names}-{stamp}"
    out, n = base, 1
    while out.exists():
        n += 1
        out = base.with_name(f"{base.name}-{n}")
    return out


def default_lock_file(settings: Settings) -> Path:
    """``<TRADING_AGENTS_HOME>/backtest.lock``: scheduled backtests never overlap."""
    return Path(settings.paths.home).expanduser() / LOCK_NAME


def market_closed_message(today: dt.date | None = None, exchange: str = DEFAULT_EXCHANGE) -> str | None:
    """``"market closed on D; nothing to do"`` when ``today`` (default: the exchange's today)
    is not a trading day, else ``None``."""
    day = today or exchange_today(exchange)
    if is_trading_day(day, exchange):
        return None
    return f"market closed on {day}; nothing to do"


@contextmanager
def log_to(log_file: Path | None, *, stderr: bool = True) -> Iterator[None]:
    """Append ``trading_agents`` log records to ``log_file`` (and mirror them on stderr).

    Handlers are removed again on exit, so repeated in-process runs do not pile them up.
    Without a file nothing is attached: warnings reach the user through the CLI.
    """
    if log_file is None:
        yield
        return
    from trading_agents.errors import ResourceError

    logger = logging.getLogger("trading_agents")
    path = Path(log_file).expanduser()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        file_handler: logging.Handler = logging.FileHandler(path, mode="a", encoding="utf-8")
    except OSError as exc:
        raise ResourceError(
            f"cannot open log file {path}: {exc.strerror or exc}; choose a writable path"
        ) from None
    file_handler.setFormatter(
        logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(process)d] %(message)s")
    )
    handlers = [file_handler]
    if stderr:
        echo = logging.StreamHandler(sys.stderr)
        echo.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        handlers.append(echo)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    for handler in handlers:
        logger.addHandler(handler)
    try:
        yield
    finally:
        for handler in handlers:
            logger.removeHandler(handler)
            handler.close()
        logger.setLevel(old_level)


def _seed(request: BacktestRequest, settings: Settings, llm: Mapping[str, Any] | None) -> int | None:
    if llm and llm.get("seed") is not None:
        return int(llm["seed"])
    if request.strategy == "agents":
        return settings.llm.seed
    if request.strategy == "random":
        return int(_baseline_params("random", request, settings)["seed"])
    return None


def _llm_stats(strategy: Any) -> dict[str, Any] | None:
    stats = getattr(strategy, "llm_stats", None)
    return dict(stats()) if callable(stats) else None


def _close(obj: Any) -> None:
    close = getattr(obj, "close", None)
    if callable(close):
        close()
