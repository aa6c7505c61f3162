"""What the engine writes and reads back: run and account records, the step record, and the
:class:`Journal` protocol that both stores implement.

The engine depends on this protocol only; :mod:`trading_agents.journal` provides the stores:
``MemoryJournal`` (backtests, baselines, benchmarks, grids) and the SQLite ``Ledger`` (paper
sessions, durable and shared between processes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

import pandas as pd

from trading_agents.core.orders import iso_date
from trading_agents.errors import TradingAgentsError

if TYPE_CHECKING:
    from trading_agents.core.orders import Fill, Order, Position
    from trading_agents.core.risk import RiskEvent

RunKind = Literal["session", "backtest"]
RISK_STATES = ("ACTIVE", "REDUCING", "HALTED")


class LedgerIntegrityError(TradingAgentsError):
    """The journal refused a write that would break its invariants (for example a duplicate order id)."""


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    kind: RunKind
    strategy: str
    created_at: str
    config: dict[str, Any]
    starting_cash: float
    status: str


@dataclass(frozen=True)
class AccountState:
    """Cash and risk state of one run after its last committed step."""

    run_id: str
    risk_state: str
    halt_reason: str
    state_version: int
    cash: float
    peak_equity: float
    day_start_equity: float
    last_equity: float
    last_step_date: pd.Timestamp | None
    updated_at: str


@dataclass(slots=True)
class StepRecord:
    """Everything one bar step produced; :meth:`Journal.commit_step` writes it atomically.

    ``new_orders`` are inserted (a known client order id is an error), ``updated_orders``
    must already exist. Risk fields are written only if ``state_version`` still matches the
    stored one (a halt or resume written meanwhile wins). ``positions`` is the account's
    positions after the step; a journal copies what it keeps. ``bar_iso``, when given, is
    ``iso_date(bar_date)`` (the engine computes it once per run).
    """

    run_id: str
    bar_date: pd.Timestamp
    step_index: int
    equity: float
    cash: float
    exposure: float
    positions: Mapping[str, Position]
    prices: Mapping[str, float]
    risk_state: str
    halt_reason: str
    state_version: int
    peak_equity: float
    day_start_equity: float
    new_orders: Sequence[Order] = ()
    updated_orders: Sequence[Order] = ()
    fills: Sequence[Fill] = ()
    risk_events: Sequence[RiskEvent] = ()
    strategy: str = ""
    decision_record: dict[str, Any] | None = None
    bar_iso: str | None = None

    @property
    def bar(self) -> str:
        """``bar_iso``, or ``iso_date(bar_date)`` when the caller did not give it."""
        return self.bar_iso if self.bar_iso is not None else iso_date(self.bar_date)


class Journal(Protocol):
    """Where runs are recorded. The engine creates a run, reads its account back to resume,
    commits one :class:`StepRecord` per bar, and builds results from the reads below."""

    #: The file behind the journal, ``None`` when it lives in memory.
    path: Path | None

    def exclusive(self) -> AbstractContextManager[None]:
        """Held by an engine for its whole run: a second engine on a shared journal fails fast."""
        ...

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
    ) -> RunInfo: ...

    def get_run(self, run_id: str) -> RunInfo | None: ...

    def set_run_status(self, run_id: str, status: str) -> None: ...

    def session_default_state(self) -> tuple[str, str]:
        """Risk state (and reason) that new session runs start in."""
        ...

    def account(self, run_id: str) -> AccountState | None: ...

    def positions(self, run_id: str) -> dict[str, Position]: ...

    def orders(self, run_id: str, *, status: str | None = None) -> list[Order]: ...

    def state_version(self, run_id: str) -> int | None:
        """Bumped by every outside change of the risk state; polled once per bar."""
        ...

    def commit_step(self, rec: StepRecord) -> None: ...

    def last_closes(self, run_id: str, tickers: Sequence[str]) -> dict[str, tuple[float, str]]:
        """The latest price each of ``tickers`` was marked at in a committed step, with that
        step's ISO bar date; a ticker never marked is left out."""
        ...

    def step_table(self, run_id: str) -> dict[str, list[Any]]:
        """Committed steps in bar order as columns: ``bar_date`` (ISO text), ``equity``,
        ``cash``, ``exposure`` and ``positions`` (``{ticker: quantity}`` of the non-zero
        positions; steps with the same holdings may share one dict: read, never change)."""
        ...

    def fills(self, run_id: str) -> list[Fill]: ...

    def order_rows(self, run_id: str) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        """Every order of the run as its keys and one tuple of values per order, in the
        order they were created (``Order``'s fields, dates as ISO text)."""
        ...

    def decisions(self, run_id: str, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Decision records in bar order: ``{bar_date, ticker, strategy, record, created_at}``."""
        ...

    def risk_events(self, run_id: str, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Risk events in order: ``{bar_date, ticker, kind, rule, detail, created_at}``."""
        ...
