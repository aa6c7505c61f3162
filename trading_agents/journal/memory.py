"""The in-memory journal: backtests, baselines, benchmarks and grid cells.

It answers every read exactly as the SQLite ledger would for the same steps (rows go
through the encoders of :mod:`trading_agents.journal.rows`), but keeps them in Python lists,
appended column by column, so a quiet bar costs a few appends. Nothing else can write it, so
it needs no lock and its risk state changes only through the engine. A finished run can be
written to a ledger file with :func:`trading_agents.journal.export.export_run`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from trading_agents.core.orders import Fill, Order, Position
from trading_agents.core.records import AccountState, LedgerIntegrityError, RunInfo, RunKind, StepRecord
from trading_agents.errors import UserInputError
from trading_agents.journal.rows import (
    ORDER_KEYS,
    holdings,
    now_text,
    order_from_row,
    order_row,
    order_update,
    stamp_text,
    stored_record,
)

_STATUS = ORDER_KEYS.index("status")
_UPDATED = ORDER_KEYS.index("status"), ORDER_KEYS.index("filled_quantity"), ORDER_KEYS.index("reason")
_UPDATED_AT = ORDER_KEYS.index("updated_at")


@dataclass
class MemoryRun:
    """One run's records. Steps are columns; orders are rows keyed by client order id."""

    info: RunInfo
    risk_state: str
    halt_reason: str
    cash: float
    peak_equity: float
    day_start_equity: float
    last_equity: float
    last_bar: str | None = None
    last_step_date: pd.Timestamp | None = None
    updated: float = field(default_factory=time.time)
    bar_date: list[str] = field(default_factory=list)
    step_index: list[int] = field(default_factory=list)
    equity: list[float] = field(default_factory=list)
    cash_column: list[float] = field(default_factory=list)
    exposure: list[float] = field(default_factory=list)
    holdings: list[dict[str, int]] = field(default_factory=list)  # steps share a dict until a fill
    prices: list[Mapping[str, float]] = field(default_factory=list)
    orders: dict[str, list[Any]] = field(default_factory=dict)
    fills: list[Fill] = field(default_factory=list)
    positions: dict[str, Position] = field(default_factory=dict)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    risk_events: list[dict[str, Any]] = field(default_factory=list)
    current: dict[str, int] = field(default_factory=dict)


class MemoryJournal:
    """A :class:`~trading_agents.core.records.Journal` that lives in this process only."""

    path: Path | None = None

    def __init__(self) -> None:
        self._runs: dict[str, MemoryRun] = {}

    def exclusive(self) -> AbstractContextManager[None]:
        return nullcontext()  # nothing else can reach it

    def close(self) -> None:
        """Nothing to release; present so a journal can always be closed."""

    # -- runs ------------------------------------------------------------------------------------

    def create_run(
        self,
        run_id: str,
        *,
        kind: RunKind,
        strategy: str,
        starting_cash: float,
        config: Mapping[str, Any] | None = None,
        risk_state: str = "ACTIVE",
        halt_reason: str = "",
    ) -> RunInfo:
        if run_id in self._runs:
            raise UserInputError(f"run {run_id!r} already exists in the ledger; choose another run id")
        cash = float(starting_cash)
        info = RunInfo(
            run_id=run_id,
            kind=kind,
            strategy=strategy,
            created_at=now_text(),
            config=stored_record(config or {}),
            starting_cash=cash,
            status="created",
        )
        self._runs[run_id] = MemoryRun(info, risk_state, halt_reason, cash, cash, cash, cash)
        return info

    def get_run(self, run_id: str) -> RunInfo | None:
        run = self._runs.get(run_id)
        return None if run is None else run.info

    def runs(self) -> list[RunInfo]:
        """All runs, newest first."""
        return [run.info for run in reversed(self._runs.values())]

    def run(self, run_id: str) -> MemoryRun:
        """The records of ``run_id`` (for the export)."""
        try:
            return self._runs[run_id]
        except KeyError:
            raise UserInputError(f"no run {run_id!r} in the journal") from None

    def set_run_status(self, run_id: str, status: str) -> None:
        run = self.run(run_id)
        run.info = RunInfo(**{**run.info.__dict__, "status": status})

    def session_default_state(self) -> tuple[str, str]:
        return "ACTIVE", ""

    # -- reads -----------------------------------------------------------------------------------

    def account(self, run_id: str) -> AccountState | None:
        run = self._runs.get(run_id)
        if run is None:
            return None
        return AccountState(
            run_id=run_id,
            risk_state=run.risk_state,
            halt_reason=run.halt_reason,
            state_version=0,
            cash=run.cash,
            peak_equity=run.peak_equity,
            day_start_equity=run.day_start_equity,
            last_equity=run.last_equity,
            last_step_date=run.last_step_date,
            updated_at=stamp_text(int(run.updated)),
        )

    def positions(self, run_id: str) -> dict[str, Position]:
        run = self.run(run_id)
        return {t: Position(p.quantity, p.avg_price, p.stop_loss) for t, p in sorted(run.positions.items())}

    def orders(self, run_id: str, *, status: str | None = None) -> list[Order]:
        rows = self.run(run_id).orders.values()
        return [order_from_row(r) for r in rows if status is None or r[_STATUS] == status]

    def order_rows(self, run_id: str) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        return ORDER_KEYS, [tuple(r) for r in self.run(run_id).orders.values()]

    def fills(self, run_id: str) -> list[Fill]:
        return list(self.run(run_id).fills)

    def state_version(self, run_id: str) -> int | None:
        return 0 if run_id in self._runs else None

    def step_table(self, run_id: str) -> dict[str, list[Any]]:
        run = self.run(run_id)
        return {
            "bar_date": list(run.bar_date),
            "equity": list(run.equity),
            "cash": list(run.cash_column),
            "exposure": list(run.exposure),
            "positions": list(run.holdings),
        }

    def step_count(self, run_id: str) -> int:
        return len(self.run(run_id).bar_date)

    def decisions(self, run_id: str, *, limit: int | None = None) -> list[dict[str, Any]]:
        rows = self.run(run_id).decisions
        return [dict(d) for d in (rows if limit is None else rows[-int(limit) :] if limit > 0 else [])]

    def risk_events(self, run_id: str, *, limit: int | None = None) -> list[dict[str, Any]]:
        rows = self.run(run_id).risk_events
        return [dict(e) for e in (rows if limit is None else rows[-int(limit) :] if limit > 0 else [])]

    def last_closes(self, run_id: str, tickers: Sequence[str]) -> dict[str, tuple[float, str]]:
        run = self.run(run_id)
        found: dict[str, tuple[float, str]] = {}
        for bar, prices in zip(reversed(run.bar_date), reversed(run.prices), strict=True):
            for t in tickers:
                if t not in found and t in prices:
                    found[t] = (float(prices[t]), bar)
            if len(found) == len(tickers):
                break
        return found

    # -- the step --------------------------------------------------------------------------------

    def commit_step(self, rec: StepRecord) -> None:
        """Record one step; refused whole (:class:`LedgerIntegrityError`) like the ledger's
        transaction would be: a known client order id, an unknown updated order, or a bar
        not after the last one."""
        run = self.run(rec.run_id)
        bar = rec.bar
        if run.last_bar is not None and bar <= run.last_bar:
            raise LedgerIntegrityError(
                f"ledger refused step {bar} of run {rec.run_id!r} (not after {run.last_bar});"
                " the step was not written"
            )
        now = time.time()
        if (
            rec.new_orders
            or rec.updated_orders
            or rec.fills
            or rec.risk_events
            or rec.decision_record is not None
        ):
            self._extras(run, rec, bar, stamp_text(int(now)))
        run.bar_date.append(bar)
        run.step_index.append(rec.step_index)
        run.equity.append(rec.equity)
        run.cash_column.append(rec.cash)
        run.exposure.append(rec.exposure)
        run.holdings.append(run.current)
        run.prices.append(rec.prices)
        run.cash, run.last_equity, run.last_bar, run.updated = rec.cash, rec.equity, bar, now
        run.last_step_date = rec.bar_date
        if rec.state_version == 0:  # nothing outside the engine changes a memory run's risk state
            run.risk_state, run.halt_reason = rec.risk_state, rec.halt_reason
            run.peak_equity, run.day_start_equity = rec.peak_equity, rec.day_start_equity

    def _extras(self, run: MemoryRun, rec: StepRecord, bar: str, at: str) -> None:
        orders = run.orders
        fresh = [order_row(o) for o in rec.new_orders]
        known = {row[0] for row in fresh}
        if len(known) < len(fresh) or any(cid in orders for cid in known):
            raise LedgerIntegrityError(
                f"ledger refused step {bar} of run {rec.run_id!r} (UNIQUE constraint failed:"
                " orders.client_order_id); the step was not written"
            )
        if any(
            o.client_order_id not in orders and o.client_order_id not in known for o in rec.updated_orders
        ):
            raise LedgerIntegrityError(
                f"ledger refused step {bar} of run {rec.run_id!r} (update of an unknown order);"
                " the step was not written"
            )
        decision = stored_record(rec.decision_record) if rec.decision_record is not None else None
        for row in fresh:
            orders[row[0]] = list(row)
        for o in rec.updated_orders:
            row = orders[o.client_order_id]
            status, filled, reason, updated_at = order_update(o, bar)
            row[_UPDATED[0]], row[_UPDATED[1]], row[_UPDATED[2]], row[_UPDATED_AT] = (
                status,
                filled,
                reason,
                updated_at,
            )
        if rec.fills:
            run.fills += rec.fills
            run.positions = {
                t: Position(p.quantity, p.avg_price, None if p.stop_loss is None else float(p.stop_loss))
                for t, p in rec.positions.items()
                if p.quantity
            }
            run.current = holdings(rec.positions)
        if decision is not None:
            ticker = decision.get("ticker")
            run.decisions.append(
                {
                    "bar_date": bar,
                    "ticker": ticker if isinstance(ticker, str) else None,
                    "strategy": rec.strategy,
                    "record": decision,
                    "created_at": at,
                }
            )
        for e in rec.risk_events:
            run.risk_events.append(
                {
                    "bar_date": bar,
                    "ticker": e.ticker,
                    "kind": e.kind,
                    "rule": e.rule,
                    "detail": e.detail,
                    "created_at": at,
                }
            )
