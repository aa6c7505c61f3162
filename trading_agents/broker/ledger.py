"""The SQLite ledger: runs, account state, steps, orders, fills, positions, decisions, risk events.

One file holds every run (``runs.kind`` is ``session`` or ``backtest``). The database runs in
WAL mode with foreign keys on; the schema evolves through named migrations recorded in
``schema_version`` (each applied once, in order, in its own transaction).

Crash safety: :meth:`Ledger.commit_step` writes everything one bar step produced (fills,
order updates, new orders, positions, cash, the step row, the decision record, risk events)
in ONE transaction, so a SIGKILL at any point leaves the previous consistent state. Client
order ids are UNIQUE: re-deciding a committed bar cannot insert the same order twice.

The risk state (``ACTIVE``/``REDUCING``/``HALTED``) lives in ``account_state`` and survives
restarts. :meth:`Ledger.set_risk_state` (``trading-agents halt``/``resume``) bumps
``state_version``; a running engine adopts the change at its next bar and never overwrites
it, because it only writes risk fields while the version is the one it last read.

Secrets are never stored: callers pass ``Settings.public_dict()``-style config (masked).
"""

from __future__ import annotations

import json
import math
import sqlite3
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from trading_agents.broker.orders import Fill, Order, Position, iso_date
from trading_agents.errors import LockBusyError, ResourceError, TradingAgentsError, UserInputError

if TYPE_CHECKING:
    from types import TracebackType

    from trading_agents.risk.limits import RiskEvent

LEDGER_FILENAME = "ledger.sqlite"
RISK_STATES = ("ACTIVE", "REDUCING", "HALTED")
_SESSION_STATE_KEY = "session_risk_state"
_SESSION_REASON_KEY = "session_halt_reason"


def default_ledger_path(home: Path) -> Path:
    """The paper-session ledger: ``<paths.home>/ledger.sqlite``."""
    return Path(home) / LEDGER_FILENAME


class LedgerIntegrityError(TradingAgentsError):
    """The ledger refused a write that would break its invariants (for example a duplicate order id)."""


# -- migrations ----------------------------------------------------------------------------------

MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = []


def migration(fn: Callable[[sqlite3.Connection], None]) -> Callable[[sqlite3.Connection], None]:
    """Register a schema migration; its function name is recorded in ``schema_version``."""
    MIGRATIONS.append(fn)
    return fn


@migration
def m001_initial(db: sqlite3.Connection) -> None:
    for sql in (
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)",
        """CREATE TABLE runs (
            run_id TEXT PRIMARY KEY,
            kind TEXT NOT NULL CHECK (kind IN ('session', 'backtest')),
            strategy TEXT NOT NULL,
            created_at TEXT NOT NULL,
            config_json TEXT NOT NULL DEFAULT '{}',
            starting_cash REAL NOT NULL,
            status TEXT NOT NULL DEFAULT 'created'
        )""",
        """CREATE TABLE account_state (
            run_id TEXT PRIMARY KEY REFERENCES runs(run_id) ON DELETE CASCADE,
            risk_state TEXT NOT NULL CHECK (risk_state IN ('ACTIVE', 'REDUCING', 'HALTED')),
            halt_reason TEXT NOT NULL DEFAULT '',
            state_version INTEGER NOT NULL DEFAULT 0,
            cash REAL NOT NULL,
            peak_equity REAL NOT NULL,
            day_start_equity REAL NOT NULL,
            last_equity REAL NOT NULL,
            last_step_date TEXT,
            updated_at TEXT NOT NULL
        )""",
        """CREATE TABLE steps (
            run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
            step_index INTEGER NOT NULL,
            bar_date TEXT NOT NULL,
            equity REAL NOT NULL,
            cash REAL NOT NULL,
            exposure REAL NOT NULL,
            positions_json TEXT NOT NULL,
            prices_json TEXT NOT NULL,
            UNIQUE (run_id, bar_date)
        )""",
        """CREATE TABLE orders (
            id INTEGER PRIMARY KEY,
            client_order_id TEXT NOT NULL UNIQUE,
            run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
            ticker TEXT NOT NULL,
            side TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
            quantity INTEGER NOT NULL CHECK (quantity >= 0),
            requested_quantity INTEGER,
            filled_quantity INTEGER NOT NULL DEFAULT 0,
            order_type TEXT NOT NULL CHECK (order_type IN ('market', 'limit', 'stop')),
            limit_price REAL,
            time_in_force TEXT NOT NULL CHECK (time_in_force IN ('day', 'gtc')),
            stop_loss REAL,
            created_at TEXT NOT NULL,
            updated_at TEXT,
            status TEXT NOT NULL
                CHECK (status IN ('pending', 'filled', 'cancelled', 'expired', 'rejected')),
            reason TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX orders_run_status ON orders (run_id, status)",
        """CREATE TABLE fills (
            id INTEGER PRIMARY KEY,
            client_order_id TEXT NOT NULL REFERENCES orders(client_order_id),
            run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
            ticker TEXT NOT NULL,
            side TEXT NOT NULL CHECK (side IN ('buy', 'sell')),
            quantity INTEGER NOT NULL CHECK (quantity > 0),
            price REAL NOT NULL,
            commission REAL NOT NULL,
            slippage_cost REAL NOT NULL,
            filled_at TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT ''
        )""",
        "CREATE INDEX fills_run ON fills (run_id)",
        "CREATE INDEX fills_order ON fills (client_order_id)",
        """CREATE TABLE positions (
            run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
            ticker TEXT NOT NULL,
            quantity INTEGER NOT NULL,
            avg_price REAL NOT NULL,
            stop_loss REAL,
            PRIMARY KEY (run_id, ticker)
        )""",
        """CREATE TABLE decisions (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
            bar_date TEXT NOT NULL,
            ticker TEXT,
            strategy TEXT NOT NULL,
            record_json TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX decisions_run ON decisions (run_id, bar_date)",
        """CREATE TABLE risk_events (
            id INTEGER PRIMARY KEY,
            run_id TEXT NOT NULL REFERENCES runs(run_id) ON DELETE CASCADE,
            bar_date TEXT,
            ticker TEXT,
            kind TEXT NOT NULL CHECK (kind IN ('clip', 'veto', 'halt', 'resume')),
            rule TEXT NOT NULL,
            detail TEXT NOT NULL,
            created_at TEXT NOT NULL
        )""",
        "CREATE INDEX risk_events_run ON risk_events (run_id)",
    ):
        db.execute(sql)


# -- records -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunInfo:
    run_id: str
    kind: Literal["session", "backtest"]
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


@dataclass(frozen=True)
class RiskStateChange:
    run_id: str | None  # None: the default for session runs not created yet
    old: str
    new: str
    reason: str
    cancelled_orders: int = 0


@dataclass
class StepRecord:
    """Everything one bar step produced; :meth:`Ledger.commit_step` writes it atomically.

    ``new_orders`` are inserted (a known client order id is an error), ``updated_orders``
    must already exist. Risk fields are written only if ``state_version`` still matches.
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
    extra: dict[str, Any] = field(default_factory=dict)


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _opt_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def _ts(value: str | None) -> pd.Timestamp | None:
    return None if value is None else pd.Timestamp(value)


def _json(obj: Any) -> str:
    return json.dumps(obj, default=str, separators=(",", ":"), allow_nan=True)


_ORDER_COLUMNS = (
    "client_order_id, ticker, side, quantity, order_type, limit_price, time_in_force, stop_loss, "
    "created_at, status, reason, requested_quantity, filled_quantity, updated_at"
)


def _order_row(run_id: str, o: Order) -> tuple[Any, ...]:
    return (
        o.client_order_id,
        run_id,
        o.ticker,
        o.side,
        int(o.quantity),
        o.requested_quantity,
        int(o.filled_quantity),
        o.order_type,
        _opt_float(o.limit_price),
        o.time_in_force,
        _opt_float(o.stop_loss),
        iso_date(o.created_at) if o.created_at is not None else "",
        iso_date(o.updated_at) if o.updated_at is not None else None,
        o.status,
        o.reason,
    )


def _order_from_row(r: sqlite3.Row) -> Order:
    return Order(
        client_order_id=r["client_order_id"],
        ticker=r["ticker"],
        side=r["side"],
        quantity=r["quantity"],
        order_type=r["order_type"],
        limit_price=r["limit_price"],
        time_in_force=r["time_in_force"],
        stop_loss=r["stop_loss"],
        created_at=_ts(r["created_at"] or None),
        status=r["status"],
        reason=r["reason"],
        requested_quantity=r["requested_quantity"],
        filled_quantity=r["filled_quantity"],
        updated_at=_ts(r["updated_at"]),
    )


# -- the ledger ----------------------------------------------------------------------------------


class Ledger:
    """An open ledger database. Use :meth:`open`; close it (or use ``with``) when done."""

    def __init__(self, db: sqlite3.Connection, path: Path | None) -> None:
        self._db = db
        self.path = path  # None for ":memory:"

    # -- lifecycle -------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: Path | str, *, synchronous: Literal["OFF", "NORMAL", "FULL"] = "NORMAL") -> Ledger:
        """Open (creating and migrating as needed) the ledger at ``path``; ``":memory:"`` works.

        ``synchronous=NORMAL`` in WAL mode never corrupts the file and keeps every commit
        through a process crash (SIGKILL); ``FULL`` also survives power loss, more slowly.
        """
        memory = str(path) == ":memory:"
        file_path = None if memory else Path(path).expanduser()
        if file_path is not None:
            if file_path.is_dir():
                raise UserInputError(f"ledger path {file_path} is a directory; pass a file path")
            try:
                file_path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise ResourceError(f"cannot create {file_path.parent}: {exc.strerror or exc}") from None
        try:
            db = sqlite3.connect(":memory:" if memory else str(file_path), isolation_level=None, timeout=10.0)
        except sqlite3.Error as exc:
            raise ResourceError(
                f"cannot open ledger {file_path}: {exc}; check the path is writable"
            ) from None
        db.row_factory = sqlite3.Row
        ledger = cls(db, file_path)
        try:
            if not memory:
                db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={synchronous}")
            db.execute("PRAGMA foreign_keys=ON")
            ledger._migrate()
        except sqlite3.DatabaseError as exc:
            db.close()
            if "locked" in str(exc) or "busy" in str(exc):
                raise LockBusyError(f"ledger {file_path} is locked by another process; retry later") from None
            if "readonly" in str(exc) or "unable to open" in str(exc):
                raise ResourceError(
                    f"cannot write ledger {file_path}: {exc}; choose a writable folder"
                ) from None
            raise UserInputError(
                f"{file_path} is not a usable trading-agents ledger ({exc}); "
                "move it away or pass another path"
            ) from None
        return ledger

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any exception, then re-raise)."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise LockBusyError(f"ledger {self.path} is busy ({exc}); retry later") from None
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _migrate(self) -> None:
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        done = {r[0] for r in self._db.execute("SELECT name FROM schema_version")}
        for fn in MIGRATIONS:
            if fn.__name__ in done:
                continue
            with self.transaction() as db:
                if db.execute("SELECT 1 FROM schema_version WHERE name = ?", (fn.__name__,)).fetchone():
                    continue  # another process migrated meanwhile
                fn(db)
                db.execute(
                    "INSERT INTO schema_version (name, applied_at) VALUES (?, ?)", (fn.__name__, _now())
                )

    def migrations_applied(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT name FROM schema_version ORDER BY rowid")]

    def backup(self, path: Path) -> None:
        """Copy the whole database to ``path`` (for example an in-memory backtest ledger to a file)."""
        target = sqlite3.connect(str(path))
        try:
            self._db.backup(target)
        finally:
            target.close()

    # -- runs ------------------------------------------------------------------------------------

    def create_run(
        self,
        run_id: str,
        *,
        kind: Literal["session", "backtest"],
        strategy: str,
        starting_cash: float,
        config: Mapping[str, Any] | None = None,
        risk_state: str = "ACTIVE",
        halt_reason: str = "",
    ) -> RunInfo:
        """Create a run and its account state (cash = ``starting_cash``, peak = cash)."""
        now = _now()
        cash = float(starting_cash)
        try:
            with self.transaction() as db:
                db.execute(
                    "INSERT INTO runs (run_id, kind, strategy, created_at, config_json, starting_cash,"
                    " status)"
                    " VALUES (?, ?, ?, ?, ?, ?, 'created')",
                    (run_id, kind, strategy, now, _json(dict(config or {})), cash),
                )
                db.execute(
                    "INSERT INTO account_state (run_id, risk_state, halt_reason, cash, peak_equity,"
                    " day_start_equity, last_equity, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (run_id, risk_state, halt_reason, cash, cash, cash, cash, now),
                )
        except sqlite3.IntegrityError:
            raise UserInputError(
                f"run {run_id!r} already exists in the ledger; choose another run id"
            ) from None
        run = self.get_run(run_id)
        assert run is not None
        return run

    def get_run(self, run_id: str) -> RunInfo | None:
        r = self._db.execute("SELECT * FROM runs WHERE run_id = ?", (run_id,)).fetchone()
        return None if r is None else self._run_from_row(r)

    def runs(self, kind: str | None = None) -> list[RunInfo]:
        """All runs, newest first."""
        sql = (
            "SELECT * FROM runs"
            + (" WHERE kind = ?" if kind else "")
            + " ORDER BY created_at DESC, rowid DESC"
        )
        return [self._run_from_row(r) for r in self._db.execute(sql, (kind,) if kind else ())]

    @staticmethod
    def _run_from_row(r: sqlite3.Row) -> RunInfo:
        return RunInfo(
            run_id=r["run_id"],
            kind=r["kind"],
            strategy=r["strategy"],
            created_at=r["created_at"],
            config=json.loads(r["config_json"]),
            starting_cash=r["starting_cash"],
            status=r["status"],
        )

    def set_run_status(self, run_id: str, status: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE runs SET status = ? WHERE run_id = ?", (status, run_id))

    # -- reads -----------------------------------------------------------------------------------

    def account(self, run_id: str) -> AccountState | None:
        r = self._db.execute("SELECT * FROM account_state WHERE run_id = ?", (run_id,)).fetchone()
        if r is None:
            return None
        return AccountState(
            run_id=r["run_id"],
            risk_state=r["risk_state"],
            halt_reason=r["halt_reason"],
            state_version=r["state_version"],
            cash=r["cash"],
            peak_equity=r["peak_equity"],
            day_start_equity=r["day_start_equity"],
            last_equity=r["last_equity"],
            last_step_date=_ts(r["last_step_date"]),
            updated_at=r["updated_at"],
        )

    def positions(self, run_id: str) -> dict[str, Position]:
        rows = self._db.execute(
            "SELECT ticker, quantity, avg_price, stop_loss FROM positions WHERE run_id = ? ORDER BY ticker",
            (run_id,),
        )
        return {r["ticker"]: Position(r["quantity"], r["avg_price"], r["stop_loss"]) for r in rows}

    def orders(
        self, run_id: str, *, status: str | None = None, limit: int | None = None, newest_first: bool = False
    ) -> list[Order]:
        sql = f"SELECT {_ORDER_COLUMNS} FROM orders WHERE run_id = ?"
        args: list[Any] = [run_id]
        if status:
            sql += " AND status = ?"
            args.append(status)
        sql += " ORDER BY id DESC" if newest_first else " ORDER BY id"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(int(limit))
        return [_order_from_row(r) for r in self._db.execute(sql, args)]

    def fills(self, run_id: str) -> list[Fill]:
        rows = self._db.execute("SELECT * FROM fills WHERE run_id = ? ORDER BY id", (run_id,))
        return [
            Fill(
                order_id=r["client_order_id"],
                ticker=r["ticker"],
                side=r["side"],
                quantity=r["quantity"],
                price=r["price"],
                commission=r["commission"],
                slippage_cost=r["slippage_cost"],
                filled_at=pd.Timestamp(r["filled_at"]),
                reason=r["reason"],
            )
            for r in rows
        ]

    def steps(self, run_id: str) -> list[dict[str, Any]]:
        """Committed steps in bar order: bar_date, step_index, equity, cash, exposure, positions, prices."""
        rows = self._db.execute(
            "SELECT step_index, bar_date, equity, cash, exposure, positions_json, prices_json FROM steps"
            " WHERE run_id = ? ORDER BY bar_date",
            (run_id,),
        )
        return [
            {
                "bar_date": pd.Timestamp(r["bar_date"]),
                "step_index": r["step_index"],
                "equity": r["equity"],
                "cash": r["cash"],
                "exposure": r["exposure"],
                "positions": json.loads(r["positions_json"]),
                "prices": json.loads(r["prices_json"]),
            }
            for r in rows
        ]

    def state_version(self, run_id: str) -> int | None:
        """Bumped by every :meth:`set_risk_state`; cheap to poll once per bar."""
        sql = "SELECT state_version FROM account_state WHERE run_id = ?"
        row = self._db.execute(sql, (run_id,)).fetchone()
        return None if row is None else row[0]

    def step_count(self, run_id: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM steps WHERE run_id = ?", (run_id,)).fetchone()[0]

    def decisions(self, run_id: str, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Decision records in bar order (the newest ``limit`` when given)."""
        sql = "SELECT bar_date, ticker, strategy, record_json, created_at FROM decisions WHERE run_id = ?"
        args: list[Any] = [run_id]
        if limit is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT ?) ORDER BY bar_date"
            args.append(int(limit))
        else:
            sql += " ORDER BY id"
        return [
            {
                "bar_date": r["bar_date"],
                "ticker": r["ticker"],
                "strategy": r["strategy"],
                "record": json.loads(r["record_json"]),
                "created_at": r["created_at"],
            }
            for r in self._db.execute(sql, args)
        ]

    def risk_events(self, run_id: str, *, limit: int | None = None) -> list[dict[str, Any]]:
        """Risk events in order (the newest ``limit`` when given)."""
        sql = "SELECT id, bar_date, ticker, kind, rule, detail, created_at FROM risk_events WHERE run_id = ?"
        args: list[Any] = [run_id]
        if limit is not None:
            sql = f"SELECT * FROM ({sql} ORDER BY id DESC LIMIT ?) ORDER BY id"
            args.append(int(limit))
        else:
            sql += " ORDER BY id"
        return [
            {k: r[k] for k in ("bar_date", "ticker", "kind", "rule", "detail", "created_at")}
            for r in self._db.execute(sql, args)
        ]

    # -- the step transaction --------------------------------------------------------------------

    def commit_step(self, rec: StepRecord) -> None:
        """Write one bar step atomically (see :class:`StepRecord`)."""
        bar = iso_date(rec.bar_date)
        now = _now()
        try:
            with self.transaction() as db:
                if rec.new_orders:
                    db.executemany(
                        "INSERT INTO orders (client_order_id, run_id, ticker, side, quantity,"
                        " requested_quantity,"
                        " filled_quantity, order_type, limit_price, time_in_force, stop_loss, created_at,"
                        " updated_at, status, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [_order_row(rec.run_id, o) for o in rec.new_orders],
                    )
                if rec.updated_orders:
                    db.executemany(
                        "UPDATE orders SET status = ?, filled_quantity = ?, reason = ?, updated_at = ?"
                        " WHERE client_order_id = ? AND run_id = ?",
                        [
                            (
                                o.status,
                                o.filled_quantity,
                                o.reason,
                                iso_date(o.updated_at) if o.updated_at is not None else bar,
                                o.client_order_id,
                                rec.run_id,
                            )
                            for o in rec.updated_orders
                        ],
                    )
                if rec.fills:
                    db.executemany(
                        "INSERT INTO fills (client_order_id, run_id, ticker, side, quantity, price,"
                        " commission,"
                        " slippage_cost, filled_at, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        [
                            (
                                f.order_id,
                                rec.run_id,
                                f.ticker,
                                f.side,
                                f.quantity,
                                f.price,
                                f.commission,
                                f.slippage_cost,
                                iso_date(f.filled_at),
                                f.reason,
                            )
                            for f in rec.fills
                        ],
                    )
                if rec.fills:
                    db.execute("DELETE FROM positions WHERE run_id = ?", (rec.run_id,))
                    db.executemany(
                        "INSERT INTO positions (run_id, ticker, quantity, avg_price, stop_loss)"
                        " VALUES (?, ?, ?, ?, ?)",
                        [
                            (rec.run_id, t, p.quantity, p.avg_price, _opt_float(p.stop_loss))
                            for t, p in sorted(rec.positions.items())
                            if p.quantity
                        ],
                    )
                db.execute(
                    "INSERT INTO steps (run_id, step_index, bar_date, equity, cash, exposure, positions_json,"
                    " prices_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        rec.run_id,
                        rec.step_index,
                        bar,
                        rec.equity,
                        rec.cash,
                        rec.exposure,
                        _json({t: p.quantity for t, p in sorted(rec.positions.items()) if p.quantity}),
                        _json(dict(rec.prices)),
                    ),
                )
                db.execute(
                    "UPDATE account_state SET cash = ?, last_equity = ?, last_step_date = ?, updated_at = ?"
                    " WHERE run_id = ?",
                    (rec.cash, rec.equity, bar, now, rec.run_id),
                )
                db.execute(
                    "UPDATE account_state SET risk_state = ?, halt_reason = ?, peak_equity = ?,"
                    " day_start_equity = ? WHERE run_id = ? AND state_version = ?",
                    (
                        rec.risk_state,
                        rec.halt_reason,
                        rec.peak_equity,
                        rec.day_start_equity,
                        rec.run_id,
                        rec.state_version,
                    ),
                )
                if rec.decision_record is not None:
                    ticker = rec.decision_record.get("ticker")
                    db.execute(
                        "INSERT INTO decisions (run_id, bar_date, ticker, strategy, record_json, created_at)"
                        " VALUES (?, ?, ?, ?, ?, ?)",
                        (
                            rec.run_id,
                            bar,
                            ticker if isinstance(ticker, str) else None,
                            rec.strategy,
                            _json(rec.decision_record),
                            now,
                        ),
                    )
                if rec.risk_events:
                    db.executemany(
                        "INSERT INTO risk_events (run_id, bar_date, ticker, kind, rule, detail, created_at)"
                        " VALUES (?, ?, ?, ?, ?, ?, ?)",
                        [(rec.run_id, bar, e.ticker, e.kind, e.rule, e.detail, now) for e in rec.risk_events],
                    )
        except sqlite3.IntegrityError as exc:
            raise LedgerIntegrityError(
                f"ledger refused step {bar} of run {rec.run_id!r} ({exc}); the step was not written"
            ) from None

    # -- risk state ------------------------------------------------------------------------------

    def session_default_state(self) -> tuple[str, str]:
        """Risk state (and reason) that new session runs start in; set by halt/resume."""
        rows = dict(
            self._db.execute(
                "SELECT key, value FROM meta WHERE key IN (?, ?)", (_SESSION_STATE_KEY, _SESSION_REASON_KEY)
            ).fetchall()
        )
        return rows.get(_SESSION_STATE_KEY, "ACTIVE"), rows.get(_SESSION_REASON_KEY, "")

    def set_risk_state(self, state: str, reason: str, run_id: str | None = None) -> list[RiskStateChange]:
        """Set ``state`` for one run, or (``run_id=None``) for every session run and future ones.

        HALTED/REDUCING cancel pending orders that would grow a position. Resuming to ACTIVE
        resets peak and day-start equity to the last equity, so the drawdown that tripped the
        kill switch does not trip it again at once. Each change is logged as a risk event.
        """
        if state not in RISK_STATES:
            raise UserInputError(f"unknown risk state {state!r}; use one of {', '.join(RISK_STATES)}")
        changes: list[RiskStateChange] = []
        now = _now()
        with self.transaction() as db:
            if run_id is None:
                old, _ = self.session_default_state()
                db.executemany(
                    "INSERT INTO meta (key, value) VALUES (?, ?)"
                    " ON CONFLICT(key) DO UPDATE SET value = excluded.value",
                    [(_SESSION_STATE_KEY, state), (_SESSION_REASON_KEY, reason if state != "ACTIVE" else "")],
                )
                targets = [
                    r[0] for r in db.execute("SELECT run_id FROM runs WHERE kind = 'session' ORDER BY rowid")
                ]
                changes.append(RiskStateChange(None, old, state, reason))
            else:
                if db.execute("SELECT 1 FROM runs WHERE run_id = ?", (run_id,)).fetchone() is None:
                    raise UserInputError(
                        f"no run {run_id!r} in the ledger; `trading-agents ledger` lists runs"
                    )
                targets = [run_id]
            for rid in targets:
                acct = self.account(rid)
                if acct is None:
                    continue
                db.execute(
                    "UPDATE account_state SET risk_state = ?, halt_reason = ?,"
                    " state_version = state_version + 1,"
                    " updated_at = ? WHERE run_id = ?",
                    (state, reason if state != "ACTIVE" else "", now, rid),
                )
                if state == "ACTIVE":
                    db.execute(
                        "UPDATE account_state SET peak_equity = last_equity, day_start_equity = last_equity"
                        " WHERE run_id = ?",
                        (rid,),
                    )
                cancelled = (
                    0 if state == "ACTIVE" else self._cancel_increasing(db, rid, f"cancelled: {state}")
                )
                kind = "resume" if state == "ACTIVE" else "halt"
                bar = iso_date(acct.last_step_date) if acct.last_step_date is not None else None
                db.execute(
                    "INSERT INTO risk_events (run_id, bar_date, ticker, kind, rule, detail, created_at)"
                    " VALUES (?, ?, NULL, ?, 'manual', ?, ?)",
                    (rid, bar, kind, f"{acct.risk_state} -> {state}: {reason}", now),
                )
                changes.append(RiskStateChange(rid, acct.risk_state, state, reason, cancelled))
        return changes

    def _cancel_increasing(self, db: sqlite3.Connection, run_id: str, note: str) -> int:
        held = {t: p.quantity for t, p in self.positions(run_id).items()}
        ids = [
            o.client_order_id
            for o in self.orders(run_id, status="pending")
            if not (
                (o.side == "sell" and 0 < o.quantity <= held.get(o.ticker, 0))
                or (o.side == "buy" and 0 < o.quantity <= -held.get(o.ticker, 0))
            )
        ]
        db.executemany(
            "UPDATE orders SET status = 'cancelled',"
            " reason = CASE WHEN reason = '' THEN ? ELSE reason || '; ' || ? END"
            " WHERE client_order_id = ?",
            [(note, note, i) for i in ids],
        )
        return len(ids)

    # -- consistency -----------------------------------------------------------------------------

    def reconcile(self, run_id: str) -> list[str]:
        """Check that cash, positions, orders and steps agree with the fills; [] when consistent."""
        problems: list[str] = []
        run = self.get_run(run_id)
        acct = self.account(run_id)
        if run is None or acct is None:
            return [f"run {run_id!r} or its account state is missing"]
        cash = run.starting_cash
        held: dict[str, int] = {}
        for f in self.fills(run_id):
            cash += f.cash_delta
            held[f.ticker] = held.get(f.ticker, 0) + (f.quantity if f.side == "buy" else -f.quantity)
        if not math.isclose(cash, acct.cash, rel_tol=1e-9, abs_tol=1e-6):
            problems.append(f"cash {acct.cash:.6f} but fills imply {cash:.6f}")
        stored = {t: p.quantity for t, p in self.positions(run_id).items()}
        implied = {t: q for t, q in held.items() if q}
        for ticker in sorted(set(stored) | set(implied)):
            if stored.get(ticker, 0) != implied.get(ticker, 0):
                problems.append(
                    f"{ticker}: position {stored.get(ticker, 0)} but fills imply {implied.get(ticker, 0)}"
                )
        for r in self._db.execute(
            "SELECT o.client_order_id, o.status, o.filled_quantity, COALESCE(SUM(f.quantity), 0) AS filled"
            " FROM orders o LEFT JOIN fills f ON f.client_order_id = o.client_order_id"
            " WHERE o.run_id = ? GROUP BY o.client_order_id",
            (run_id,),
        ):
            if r["filled"] != r["filled_quantity"]:
                problems.append(
                    f"order {r['client_order_id']}: filled_quantity {r['filled_quantity']},"
                    f" fills {r['filled']}"
                )
            if r["filled"] and r["status"] != "filled":
                problems.append(f"order {r['client_order_id']} has fills but status {r['status']}")
        last = self._db.execute(
            "SELECT bar_date, cash, positions_json FROM steps WHERE run_id = ?"
            " ORDER BY bar_date DESC LIMIT 1",
            (run_id,),
        ).fetchone()
        if last is not None:
            if iso_date(last["bar_date"]) != (iso_date(acct.last_step_date) if acct.last_step_date else None):
                problems.append(f"last step {last['bar_date']} but account says {acct.last_step_date}")
            if not math.isclose(last["cash"], acct.cash, rel_tol=1e-9, abs_tol=1e-6):
                problems.append(f"last step cash {last['cash']:.6f} but account cash {acct.cash:.6f}")
            if json.loads(last["positions_json"]) != stored:
                problems.append("last step positions differ from the positions table")
        return problems
