"""The SQLite ledger: runs, account state, steps, orders, fills, positions, decisions, risk events.

One file holds every run (``runs.kind`` is ``session`` or ``backtest``). The database runs in
WAL mode with foreign keys on; the schema evolves through named migrations recorded in
``schema_version`` (each applied once, in order, in its own transaction).

Crash safety: :meth:`Ledger.commit_step` writes everything one bar step produced (fills,
order updates, new orders, positions, cash, the step row, the decision record, risk events)
in ONE transaction, so a SIGKILL at any point leaves the previous consistent state. Client
order ids are UNIQUE: re-deciding a committed bar cannot insert the same order twice.

Inside :meth:`Ledger.deferred_steps` (what the engine uses for ``":memory:"`` ledgers, where
a crash loses everything anyway) steps are queued and written many per transaction: before
any other use of the ledger, when the queue is full and when the block ends. Every read
through the ledger therefore sees every step committed before it.

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
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
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


@dataclass(slots=True)
class StepRecord:
    """Everything one bar step produced; :meth:`Ledger.commit_step` writes it atomically.

    ``new_orders`` are inserted (a known client order id is an error), ``updated_orders``
    must already exist. Risk fields are written only if ``state_version`` still matches.

    ``bar_iso``, ``positions_json`` and ``prices_json`` are optional pre-encoded forms of
    ``bar_date``, ``positions`` and ``prices`` (the engine encodes a whole run at once); when
    given they must equal what the ledger computes: ``iso_date(bar_date)``, the compact JSON
    of the non-zero quantities sorted by ticker, and the compact JSON of ``prices``.
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
    bar_iso: str | None = None
    positions_json: str | None = None
    prices_json: str | None = None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@lru_cache(maxsize=64)
def _stamp_text(second: int) -> str:
    """:func:`_now`'s format for a Unix time in whole seconds."""
    return datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds")


def _as_read(values: Sequence[float]) -> list[float]:
    """Numbers as SQLite gives them back from a REAL column: Python floats, ``-0.0`` as ``0.0``
    (SQLite stores integral reals as integers)."""
    return (np.array(values, dtype=float) + 0.0).tolist()


def _opt_float(value: float | None) -> float | None:
    return None if value is None else float(value)


@lru_cache(maxsize=4096)
def _timestamp(value: str) -> pd.Timestamp:
    """``pd.Timestamp(value)`` for a stored date (a run has few distinct ones; Timestamps are
    immutable, so sharing one is safe)."""
    return pd.Timestamp(value)


def _ts(value: str | None) -> pd.Timestamp | None:
    return None if value is None else pd.Timestamp(value)


_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"), allow_nan=True)


def _json(obj: Any) -> str:
    """Compact JSON; the same text as ``json.dumps(obj, default=str, separators=(",", ":"))``."""
    return _ENCODER.encode(obj)


def positions_json(positions: Mapping[str, Position]) -> str:
    """How a step row stores positions: the non-zero quantities, sorted by ticker."""
    if not positions:
        return "{}"
    return _json({t: p.quantity for t, p in sorted(positions.items()) if p.quantity})


_ORDER_COLUMNS = (
    "client_order_id, ticker, side, quantity, order_type, limit_price, time_in_force, stop_loss, "
    "created_at, status, reason, requested_quantity, filled_quantity, updated_at"
)


_ORDER_KEYS = tuple(c.strip() for c in _ORDER_COLUMNS.split(","))


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
        self._conn = db
        self.path = path  # None for ":memory:"
        self._queue: _Batch | None = None  # None: each step is written at once
        self._queue_limit = 4096
        self._versions: dict[str, int] = {}  # state versions read from a ":memory:" ledger
        # The step rows of the runs this object created in a ":memory:" ledger, in bar order:
        # nothing else can write such a ledger, so step_table serves them without a query.
        # A run leaves this cache when its rows may differ (raw transaction, unordered bars).
        self._step_rows: dict[str, dict[str, list[Any]]] = {}

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection, after writing any queued steps: every use of it sees them."""
        if self._queue:
            self._flush()
        return self._conn

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
        try:
            self._flush()
        finally:
            self._conn.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any exception, then re-raise)."""
        self._step_rows.clear()  # the caller may write steps
        with self._own_transaction() as db:
            yield db

    @contextmanager
    def _own_transaction(self) -> Iterator[sqlite3.Connection]:
        """:meth:`transaction` for this class's own statements, which never touch step rows."""
        self._flush()
        self._versions.clear()  # the transaction may change them
        with self._raw_transaction() as db:
            yield db

    @contextmanager
    def _raw_transaction(self) -> Iterator[sqlite3.Connection]:
        db = self._conn
        try:
            db.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError as exc:
            raise LockBusyError(f"ledger {self.path} is busy ({exc}); retry later") from None
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def _migrate(self) -> None:
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS schema_version (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)"
        )
        done = {r[0] for r in self._db.execute("SELECT name FROM schema_version")}
        for fn in MIGRATIONS:
            if fn.__name__ in done:
                continue
            with self._own_transaction() as db:
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
            with self._own_transaction() as db:
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
        if self.path is None:  # a new run: every step row will pass through here
            self._step_rows[run_id] = {k: [] for k in _STEP_TABLE_KEYS}
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
        with self._own_transaction() as db:
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

    def order_dicts(self, run_id: str) -> list[dict[str, Any]]:
        """``[o.as_dict() for o in self.orders(run_id)]`` without building the orders."""
        keys, rows = self.order_rows(run_id)
        return [dict(zip(keys, row, strict=True)) for row in rows]

    def order_rows(self, run_id: str) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        """:meth:`order_dicts` as its keys and one tuple of values per order (in id order)."""
        cur = self._db.cursor()
        cur.row_factory = None
        rows = cur.execute(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE run_id = ? ORDER BY id", (run_id,))
        at = _ORDER_KEYS.index("created_at")
        return _ORDER_KEYS, [
            (*row[:at], row[at] or None, *row[at + 1 :]) if not row[at] else row  # as orders() reads it
            for row in rows
        ]

    def fills(self, run_id: str) -> list[Fill]:
        cur = self._db.cursor()
        cur.row_factory = None
        rows = cur.execute(
            "SELECT client_order_id, ticker, side, quantity, price, commission, slippage_cost, filled_at,"
            " reason FROM fills WHERE run_id = ? ORDER BY id",
            (run_id,),
        )
        return [
            Fill(
                order_id=order_id,
                ticker=ticker,
                side=side,
                quantity=quantity,
                price=price,
                commission=commission,
                slippage_cost=slippage_cost,
                filled_at=_timestamp(filled_at),
                reason=reason,
            )
            for order_id, ticker, side, quantity, price, commission, slippage_cost, filled_at, reason in rows
        ]

    def step_table(self, run_id: str) -> dict[str, list[Any]]:
        """Committed steps in bar order as columns, without a dict or Timestamp per row.

        Keys: ``bar_date`` (ISO text), ``equity``, ``cash``, ``exposure`` and
        ``positions_json`` (``{ticker: quantity}`` as JSON text): what a result needs of
        :meth:`steps`, read fast enough for runs of thousands of bars.
        """
        db = self._db
        keys = _STEP_TABLE_KEYS
        cached = self._step_rows.get(run_id)
        if cached is not None:
            return {k: _as_read(v) if k in _REAL_KEYS else list(v) for k, v in cached.items()}
        cur = db.cursor()
        cur.row_factory = None
        rows = cur.execute(
            "SELECT bar_date, equity, cash, exposure, positions_json FROM steps"
            " WHERE run_id = ? ORDER BY bar_date",
            (run_id,),
        ).fetchall()
        if not rows:
            return {k: [] for k in keys}
        return {k: list(col) for k, col in zip(keys, zip(*rows, strict=True), strict=True)}

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
        """Bumped by every :meth:`set_risk_state`; cheap to poll once per bar.

        Nothing but this object can write a ``":memory:"`` ledger, so there the version is
        read once and kept until the next write transaction.
        """
        if self.path is None and run_id in self._versions:
            return self._versions[run_id]
        sql = "SELECT state_version FROM account_state WHERE run_id = ?"
        row = self._db.execute(sql, (run_id,)).fetchone()
        if row is None:
            return None
        if self.path is None:
            self._versions[run_id] = row[0]
        return row[0]

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
        cur = self._db.cursor()
        cur.row_factory = None
        loads = json.loads
        return [
            {
                "bar_date": bar,
                "ticker": ticker,
                "strategy": strategy,
                "record": loads(record),
                "created_at": at,
            }
            for bar, ticker, strategy, record, at in cur.execute(sql, args)
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
        """Write one bar step atomically (see :class:`StepRecord`); queue it inside
        :meth:`deferred_steps`."""
        self._commit(*_step_parts(rec))

    def commit_quiet_step(
        self,
        run_id: str,
        step_index: int,
        bar_iso: str,
        equity: float,
        cash: float,
        exposure: float,
        positions_json: str,
        prices_json: str,
        risk_state: str,
        halt_reason: str,
        state_version: int,
        peak_equity: float,
        day_start_equity: float,
    ) -> None:
        """:meth:`commit_step` for a step with no orders, fills, risk events or decision record,
        its bar date, positions and prices given pre-encoded (see :class:`StepRecord`).

        Most bars of a backtest are like that; this skips building a record per bar.
        """
        step = (run_id, step_index, bar_iso, equity, cash, exposure, positions_json, prices_json)
        risk = (risk_state, halt_reason, peak_equity, day_start_equity, state_version, time.time())
        queue = self._queue
        if queue is not None and len(queue.risk) < self._queue_limit * _RISK_WIDTH - _RISK_WIDTH:
            queue.steps += step  # the common case of _commit, inlined
            queue.risk += risk
        else:
            self._commit(step, risk, None)

    def _commit(self, step: Sequence[Any], risk: Sequence[Any], extras: _Extras | None) -> None:
        queue = self._queue
        if queue is None:
            queue = _Batch()
            queue.add(step, risk, extras)
            self._write_steps(queue)
            return
        queue.add(step, risk, extras)
        if len(queue) >= self._queue_limit:
            self._flush()

    @contextmanager
    def deferred_steps(self, limit: int = 4096) -> Iterator[None]:
        """Queue :meth:`commit_step` writes and write them ``limit`` per transaction.

        The queue is written before any other use of this ledger object, when it holds
        ``limit`` steps and when the block ends (also through an exception), so readers never
        miss a step. What is lost is per-step durability: a process killed inside the block
        loses the queued steps. Use it where that costs nothing, as the engine does for
        ``":memory:"`` ledgers. A refused step (:class:`LedgerIntegrityError`) surfaces at the
        write: the steps queued before it are written, the ones after it dropped.

        Example::

            with ledger.deferred_steps():
                for rec in records:
                    ledger.commit_step(rec)
        """
        if self._queue is not None:  # already deferring: the outer block writes
            yield
            return
        self._queue, self._queue_limit = _Batch(), max(int(limit), 1)
        try:
            yield
        finally:
            try:
                self._flush()
            finally:
                self._queue = None

    def _flush(self) -> None:
        queued = self._queue
        if queued:
            self._queue = _Batch()
            self._write_steps(queued)

    def _write_steps(self, batch: _Batch) -> None:
        try:
            with self._raw_transaction() as db:
                _write_batch(db, batch)
            if self._step_rows:
                self._remember(batch)
        except sqlite3.IntegrityError as exc:
            if len(batch) == 1:
                run_id, bar = batch.steps[0], batch.steps[2]
                raise LedgerIntegrityError(
                    f"ledger refused step {bar} of run {run_id!r} ({exc}); the step was not written"
                ) from None
            for k in range(len(batch)):  # find the refused step; the ones before it are kept
                self._write_steps(batch.one(k))

    def _remember(self, batch: _Batch) -> None:
        """Add written step rows to :attr:`_step_rows`; drop a run whose rows would not be
        what ``ORDER BY bar_date`` reads (a bar not after the last one, or non-text columns)."""
        cache, steps = self._step_rows, batch.steps
        runs = set(steps[0::_STEP_WIDTH])
        if len(runs) > 1:  # rows of several runs: one run at a time
            for k in range(len(batch)):
                self._remember(batch.one(k))
            return
        run_id = next(iter(runs))
        columns = cache.get(run_id)
        if columns is None:
            return
        bars, held = steps[2::_STEP_WIDTH], steps[6::_STEP_WIDTH]
        dates = columns["bar_date"][-1:] + bars
        if (
            set(map(type, bars)) != {str}
            or set(map(type, held)) != {str}
            or not all(map(str.__lt__, dates[:-1], dates[1:]))
        ):
            del cache[run_id]
            return
        for offset, key in enumerate(("bar_date", "equity", "cash", "exposure", "positions_json"), 2):
            columns[key] += steps[offset::_STEP_WIDTH]

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
        with self._own_transaction() as db:
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


# -- writing steps -------------------------------------------------------------------------------

_INSERT_ORDER = (
    "INSERT INTO orders (client_order_id, run_id, ticker, side, quantity, requested_quantity,"
    " filled_quantity, order_type, limit_price, time_in_force, stop_loss, created_at, updated_at,"
    " status, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE_ORDER = (
    "UPDATE orders SET status = ?, filled_quantity = ?, reason = ?, updated_at = ?"
    " WHERE client_order_id = ? AND run_id = ?"
)
_INSERT_FILL = (
    "INSERT INTO fills (client_order_id, run_id, ticker, side, quantity, price, commission,"
    " slippage_cost, filled_at, reason) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_INSERT_POSITION = (
    "INSERT INTO positions (run_id, ticker, quantity, avg_price, stop_loss) VALUES (?, ?, ?, ?, ?)"
)
_INSERT_STEP = (
    "INSERT INTO steps (run_id, step_index, bar_date, equity, cash, exposure, positions_json,"
    " prices_json) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE_ACCOUNT = (
    "UPDATE account_state SET cash = ?, last_equity = ?, last_step_date = ?, updated_at = ? WHERE run_id = ?"
)
_UPDATE_RISK = (
    "UPDATE account_state SET risk_state = ?, halt_reason = ?, peak_equity = ?,"
    " day_start_equity = ? WHERE run_id = ? AND state_version = ?"
)
_INSERT_DECISION = (
    "INSERT INTO decisions (run_id, bar_date, ticker, strategy, record_json, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
_INSERT_EVENT = (
    "INSERT INTO risk_events (run_id, bar_date, ticker, kind, rule, detail, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


_STEPS_PER_INSERT = 256


@lru_cache(maxsize=8)
def _insert_steps(rows: int) -> str:
    """:data:`_INSERT_STEP` for ``rows`` rows."""
    head, values = _INSERT_STEP.split(" VALUES ")
    return f"{head} VALUES {','.join([values] * rows)}"


class _Extras:
    """The rows of a step besides its step row and account update, taken at commit time: the
    orders and positions they come from are live objects that keep changing while a step
    waits in a queue."""

    __slots__ = ("decision", "events", "fills", "new_orders", "positions", "updated_orders")

    def __init__(self, rec: StepRecord, bar: str) -> None:
        run_id = rec.run_id
        self.new_orders = [_order_row(run_id, o) for o in rec.new_orders]
        self.updated_orders = [
            (
                o.status,
                o.filled_quantity,
                o.reason,
                iso_date(o.updated_at) if o.updated_at is not None else bar,
                o.client_order_id,
                run_id,
            )
            for o in rec.updated_orders
        ]
        self.fills = [
            (
                f.order_id,
                run_id,
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
        ]
        self.positions = (
            [
                (run_id, t, p.quantity, p.avg_price, _opt_float(p.stop_loss))
                for t, p in sorted(rec.positions.items())
                if p.quantity
            ]
            if rec.fills
            else None
        )
        self.decision = None
        if rec.decision_record is not None:
            ticker = rec.decision_record.get("ticker")
            self.decision = (
                run_id,
                bar,
                ticker if isinstance(ticker, str) else None,
                rec.strategy,
                _json(rec.decision_record),
            )
        self.events = [(run_id, bar, e.ticker, e.kind, e.rule, e.detail) for e in rec.risk_events]


_STEP_WIDTH = 8  # values of a step row, in _INSERT_STEP order
_RISK_WIDTH = 6  # risk state, halt reason, peak equity, day-start equity, state version, Unix time
_STEP_TABLE_KEYS = ("bar_date", "equity", "cash", "exposure", "positions_json")
_REAL_KEYS = frozenset({"equity", "cash", "exposure"})


class _Batch:
    """Committed steps waiting to be written, in commit order, stored flat: ``steps`` holds
    :data:`_STEP_WIDTH` values per step, ``risk`` :data:`_RISK_WIDTH`, and ``extras`` the
    other rows of the few steps that have any, with the step's position.

    A backtest queues thousands of quiet steps; a tuple or two per step kept alive until the
    write would cost the garbage collector more than the write itself.
    """

    __slots__ = ("extras", "risk", "steps")

    def __init__(self) -> None:
        self.steps: list[Any] = []
        self.risk: list[Any] = []
        self.extras: list[tuple[int, _Extras]] = []

    def __len__(self) -> int:
        return len(self.risk) // _RISK_WIDTH

    def add(self, step: Sequence[Any], risk: Sequence[Any], extras: _Extras | None) -> None:
        if extras is not None:
            self.extras.append((len(self), extras))
        self.steps += step
        self.risk += risk

    def one(self, k: int) -> _Batch:
        """The ``k``-th step alone."""
        out = _Batch()
        extras = next((x for at, x in self.extras if at == k), None)
        out.add(
            self.steps[k * _STEP_WIDTH : (k + 1) * _STEP_WIDTH],
            self.risk[k * _RISK_WIDTH : (k + 1) * _RISK_WIDTH],
            extras,
        )
        return out


def _step_parts(rec: StepRecord) -> tuple[tuple[Any, ...], tuple[Any, ...], _Extras | None]:
    """The step row, risk values and other rows of ``rec`` (see :class:`_Batch`)."""
    bar = rec.bar_iso if rec.bar_iso is not None else iso_date(rec.bar_date)
    quiet = not (
        rec.new_orders
        or rec.updated_orders
        or rec.fills
        or rec.risk_events
        or rec.decision_record is not None
    )
    return (
        (
            rec.run_id,
            rec.step_index,
            bar,
            rec.equity,
            rec.cash,
            rec.exposure,
            rec.positions_json if rec.positions_json is not None else positions_json(rec.positions),
            rec.prices_json if rec.prices_json is not None else _json(dict(rec.prices)),
        ),
        (
            rec.risk_state,
            rec.halt_reason,
            rec.peak_equity,
            rec.day_start_equity,
            rec.state_version,
            time.time(),
        ),
        None if quiet else _Extras(rec, bar),
    )


def _merge_updates(
    orders: list[tuple[Any, ...]], updates: list[tuple[Any, ...]]
) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
    """Fold each update of an order inserted in the same batch into its insert row: the
    transaction leaves the same row (and row id) without one UPDATE per order."""
    position = {row[0]: k for k, row in enumerate(orders)}
    rest: list[tuple[Any, ...]] = []
    for update in updates:  # (status, filled_quantity, reason, updated_at, client_order_id, run_id)
        k = position.get(update[4])
        if k is None or orders[k][1] != update[5]:
            rest.append(update)
            continue
        row = orders[k]
        orders[k] = (*row[:6], update[1], *row[7:12], update[3], update[0], update[2])
    return orders, rest


def _write_batch(db: sqlite3.Connection, batch: _Batch) -> None:
    """Write steps in order, one statement per table: the same rows (and row ids) as writing
    them one step at a time."""
    steps, risk = batch.steps, batch.risk
    extras = [(x, risk[at * _RISK_WIDTH + 5]) for at, x in batch.extras]
    orders = [row for x, _ in extras for row in x.new_orders]
    updates = [row for x, _ in extras for row in x.updated_orders]
    if orders and updates:
        orders, updates = _merge_updates(orders, updates)
    if orders:
        db.executemany(_INSERT_ORDER, orders)
    if updates:
        db.executemany(_UPDATE_ORDER, updates)
    fills = [row for x, _ in extras for row in x.fills]
    if fills:
        db.executemany(_INSERT_FILL, fills)
    held: dict[str, list[tuple[Any, ...]]] = {}  # the positions after each run's last fill
    for x, _ in extras:
        if x.positions is not None:
            held[x.fills[0][1]] = x.positions
    for run_id, rows in held.items():
        db.execute("DELETE FROM positions WHERE run_id = ?", (run_id,))
        if rows:
            db.executemany(_INSERT_POSITION, rows)
    n = len(batch)
    if n == 1:
        db.execute(_INSERT_STEP, steps)
    else:  # many rows per statement: binding is what costs here, not the statement
        for lo in range(0, n, _STEPS_PER_INSERT):
            hi = min(lo + _STEPS_PER_INSERT, n)
            db.execute(_insert_steps(hi - lo), steps[lo * _STEP_WIDTH : hi * _STEP_WIDTH])
    runs, versions = steps[0::_STEP_WIDTH], risk[4::_RISK_WIDTH]
    last: dict[str, int] = {}  # run -> its last step
    last_of_version: dict[tuple[str, int], int] = {}
    if len(set(runs)) == 1 and len(set(versions)) == 1:
        last[runs[0]] = last_of_version[(runs[0], versions[0])] = n - 1
    else:
        for k, (run_id, version) in enumerate(zip(runs, versions, strict=True)):
            last[run_id] = last_of_version[(run_id, version)] = k
    for run_id, k in last.items():
        step = steps[k * _STEP_WIDTH : (k + 1) * _STEP_WIDTH]
        stamp = risk[k * _RISK_WIDTH + 5]
        db.execute(_UPDATE_ACCOUNT, (step[4], step[3], step[2], _stamp_text(int(stamp)), run_id))
    # Only steps taken under the stored state version may write risk fields, and the
    # version cannot change within a batch: of each version's last step, one at most applies.
    for (run_id, version), k in last_of_version.items():
        state, reason, peak, day_start = risk[k * _RISK_WIDTH : k * _RISK_WIDTH + 4]
        db.execute(_UPDATE_RISK, (state, reason, peak, day_start, run_id, version))
    decisions = [(*x.decision, _stamp_text(int(t))) for x, t in extras if x.decision is not None]
    if decisions:
        db.executemany(_INSERT_DECISION, decisions)
    events = [(*row, _stamp_text(int(t))) for x, t in extras for row in x.events]
    if events:
        db.executemany(_INSERT_EVENT, events)
