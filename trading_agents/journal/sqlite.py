"""The SQLite ledger: the journal of paper sessions, durable and shared between processes.

One file holds every run (``runs.kind`` is ``session`` or ``backtest``). The database runs in
WAL mode with foreign keys on; the schema evolves through the named migrations of
:mod:`trading_agents.journal.migrations`.

Crash safety: :meth:`Ledger.commit_step` writes everything one bar step produced (fills,
order updates, new orders, positions, cash, the step row, the decision record, risk events)
in ONE ``BEGIN IMMEDIATE`` transaction, so a SIGKILL at any point leaves the previous
consistent state. Client order ids are UNIQUE: re-deciding a committed bar cannot insert the
same order twice.

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
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import pandas as pd

from trading_agents.core.orders import Fill, Order, Position, grows_position, iso_date
from trading_agents.core.records import (
    RISK_STATES,
    AccountState,
    LedgerIntegrityError,
    RunInfo,
    StepRecord,
)
from trading_agents.errors import LockBusyError, ResourceError, UserInputError
from trading_agents.fsutil import exclusive_lock
from trading_agents.journal.migrations import MIGRATIONS, applied, apply_migrations
from trading_agents.journal.rows import (
    FILL_KEYS,
    ORDER_KEYS,
    compact_json,
    fill_from_row,
    now_text,
    order_from_row,
    order_row,
    order_update,
    positions_json,
)

if TYPE_CHECKING:
    from types import TracebackType

LEDGER_FILENAME = "ledger.sqlite"
_SESSION_STATE_KEY = "session_risk_state"
_SESSION_REASON_KEY = "session_halt_reason"
_ORDER_COLUMNS = ", ".join(ORDER_KEYS)
_FILL_COLUMNS = ", ".join(FILL_KEYS)


def default_ledger_path(home: Path) -> Path:
    """The paper-session ledger: ``<paths.home>/ledger.sqlite``."""
    return Path(home) / LEDGER_FILENAME


@dataclass(frozen=True)
class RiskStateChange:
    run_id: str | None  # None: the default for session runs not created yet
    old: str
    new: str
    reason: str
    cancelled_orders: int = 0


def _ts(value: str | None) -> pd.Timestamp | None:
    return None if value is None else pd.Timestamp(value)


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
            apply_migrations(db, ledger.transaction)
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

    @classmethod
    def open_reader(cls, path: Path | str) -> Ledger:
        """Open an existing ledger read-only, for viewers (the dashboard): nothing is created or
        migrated, and in WAL mode a reader never holds a lock the writing engine waits on.

        Raises :class:`~trading_agents.errors.UserInputError` with what to do when the file is
        missing, not a ledger, or written by a newer trading-agents (unknown migrations).
        """
        file_path = Path(path).expanduser()
        if not file_path.is_file():
            raise UserInputError(f"no ledger at {file_path}; run `trading-agents run` to start one")
        db = sqlite3.connect(f"{file_path.resolve().as_uri()}?mode=ro", uri=True, isolation_level=None)
        db.row_factory = sqlite3.Row
        try:
            names = [r[0] for r in db.execute("SELECT name FROM schema_version ORDER BY rowid")]
        except sqlite3.Error as exc:
            db.close()
            raise UserInputError(
                f"{file_path} is not a readable trading-agents ledger ({exc}); move it away or restore it"
            ) from None
        known = [fn.__name__ for fn in MIGRATIONS]
        newer = [n for n in names if n not in known]
        if newer:
            db.close()
            raise UserInputError(
                f"{file_path} was written by a newer trading-agents (schema {', '.join(newer)});"
                " upgrade trading-agents to read it"
            )
        if names != known[: len(names)] or not names:
            db.close()
            raise UserInputError(
                f"{file_path} has an older or partial schema; open it once with `trading-agents ledger`"
            )
        return cls(db, file_path)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> Ledger:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def exclusive(self) -> AbstractContextManager[None]:
        """An engine's hold on the file for its run (``<ledger>.lock``); a second engine on the
        same file gets :class:`~trading_agents.errors.LockBusyError`. ``trading-agents halt``
        does not need it: it writes through :meth:`set_risk_state`."""
        if self.path is None:
            return nullcontext()
        return exclusive_lock(Path(f"{self.path}.lock"), "another engine run")

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT`` (``ROLLBACK`` on any exception, then re-raise)."""
        db = self._db
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

    def settle(self) -> None:
        """Fold the write-ahead log into the file and leave WAL mode, so the file alone holds
        the whole ledger (as an exported one does) and no ``-wal``/``-shm`` files stay behind.
        Called when a writer is done; if a reader holds the file at that moment it stays in
        WAL mode, which loses nothing."""
        if self.path is not None:
            with suppress(sqlite3.OperationalError):
                self._db.execute("PRAGMA journal_mode=DELETE")

    def migrations_applied(self) -> list[str]:
        return list(applied(self._db))

    def serialize(self) -> bytes:
        """The whole database as the bytes of a ledger file (see :mod:`trading_agents.journal.export`)."""
        return self._db.serialize()

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
        now = now_text()
        cash = float(starting_cash)
        try:
            with self.transaction() as db:
                db.execute(
                    "INSERT INTO runs (run_id, kind, strategy, created_at, config_json, starting_cash,"
                    " status)"
                    " VALUES (?, ?, ?, ?, ?, ?, 'created')",
                    (run_id, kind, strategy, now, compact_json(dict(config or {})), cash),
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

    def position_rows(self, run_id: str, prices: Mapping[str, float]) -> list[dict[str, Any]]:
        """The run's positions as plain rows, valued at ``prices`` (none for a ticker without one):
        what the dashboard's account page and ``ledger show`` list."""
        return [
            {
                "ticker": t,
                "quantity": p.quantity,
                "avg_price": p.avg_price,
                "last_price": prices.get(t),
                "market_value": p.quantity * prices[t] if t in prices else None,
                "stop_loss": p.stop_loss,
            }
            for t, p in self.positions(run_id).items()
        ]

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
        return [order_from_row(r) for r in self._rows(sql, args)]

    def order_rows(self, run_id: str) -> tuple[tuple[str, ...], list[tuple[Any, ...]]]:
        """Every order of the run as :data:`~trading_agents.journal.rows.ORDER_KEYS` rows, in id order."""
        at = ORDER_KEYS.index("created_at")
        rows = self._rows(f"SELECT {_ORDER_COLUMNS} FROM orders WHERE run_id = ? ORDER BY id", (run_id,))
        return ORDER_KEYS, [row if row[at] else (*row[:at], None, *row[at + 1 :]) for row in rows]

    def fills(self, run_id: str) -> list[Fill]:
        sql = f"SELECT {_FILL_COLUMNS} FROM fills WHERE run_id = ? ORDER BY id"
        return [fill_from_row(r) for r in self._rows(sql, (run_id,))]

    def step_table(self, run_id: str) -> dict[str, list[Any]]:
        """Committed steps in bar order as columns (see :meth:`Journal.step_table`)."""
        rows = self._rows(
            "SELECT bar_date, equity, cash, exposure, positions_json FROM steps"
            " WHERE run_id = ? ORDER BY bar_date",
            (run_id,),
        )
        parsed: dict[str, dict[str, int]] = {}  # a run has few distinct holdings: one dict each
        columns: dict[str, list[Any]] = {
            k: [] for k in ("bar_date", "equity", "cash", "exposure", "positions")
        }
        for bar, equity, cash, exposure, held in rows:
            columns["bar_date"].append(bar)
            columns["equity"].append(equity)
            columns["cash"].append(cash)
            columns["exposure"].append(exposure)
            p = parsed.get(held)
            if p is None:
                p = parsed[held] = json.loads(held)
            columns["positions"].append(p)
        return columns

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
        row = self._db.execute(
            "SELECT state_version FROM account_state WHERE run_id = ?", (run_id,)
        ).fetchone()
        return None if row is None else row[0]

    def last_closes(self, run_id: str, tickers: Sequence[str]) -> dict[str, tuple[float, str]]:
        """See :meth:`Journal.last_closes`; reads steps newest first and stops when all are found."""
        found: dict[str, tuple[float, str]] = {}
        if not tickers:
            return found
        rows = self._db.execute(
            "SELECT bar_date, prices_json FROM steps WHERE run_id = ? ORDER BY bar_date DESC", (run_id,)
        )
        for bar, prices_json in rows:
            prices = json.loads(prices_json)
            for t in tickers:
                if t not in found and prices.get(t) is not None:
                    found[t] = (float(prices[t]), bar)
            if len(found) == len(tickers):
                break
        return found

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
        loads = json.loads
        return [
            {
                "bar_date": bar,
                "ticker": ticker,
                "strategy": strategy,
                "record": loads(record),
                "created_at": at,
            }
            for bar, ticker, strategy, record, at in self._rows(sql, args)
        ]

    def decision_count(self, run_id: str) -> int:
        return self._db.execute("SELECT COUNT(*) FROM decisions WHERE run_id = ?", (run_id,)).fetchone()[0]

    def decision_page(
        self, run_id: str, *, limit: int, offset: int = 0, after_id: int = 0
    ) -> list[dict[str, Any]]:
        """One page of decision records, newest first, each with its row ``id`` (only those
        with an id above ``after_id``: what a live view has not shown yet)."""
        rows = self._rows(
            "SELECT id, bar_date, ticker, strategy, record_json, created_at FROM decisions"
            " WHERE run_id = ? AND id > ? ORDER BY id DESC LIMIT ? OFFSET ?",
            (run_id, int(after_id), int(limit), int(offset)),
        )
        return [
            {
                "id": i,
                "bar_date": bar,
                "ticker": ticker,
                "strategy": strategy,
                "record": json.loads(record),
                "created_at": at,
            }
            for i, bar, ticker, strategy, record, at in rows
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

    def _rows(self, sql: str, args: Any) -> list[tuple[Any, ...]]:
        """Plain tuples, without building ``sqlite3.Row`` objects."""
        cur = self._db.cursor()
        cur.row_factory = None
        return cur.execute(sql, args).fetchall()

    # -- the step transaction --------------------------------------------------------------------

    def commit_step(self, rec: StepRecord) -> None:
        """Write one bar step in one transaction (see :class:`~trading_agents.core.records.StepRecord`)."""
        try:
            with self.transaction() as db:
                write_step(db, rec, now_text())
        except sqlite3.IntegrityError as exc:
            raise LedgerIntegrityError(
                f"ledger refused step {rec.bar} of run {rec.run_id!r} ({exc}); the step was not written"
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
        now = now_text()
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
            if grows_position(o.side, o.quantity, held.get(o.ticker, 0))
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


# -- writing rows --------------------------------------------------------------------------------

INSERT_ORDER = (
    f"INSERT INTO orders (run_id, {_ORDER_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
)
_UPDATE_ORDER = (
    "UPDATE orders SET status = ?, filled_quantity = ?, reason = ?, updated_at = ?"
    " WHERE client_order_id = ? AND run_id = ?"
)
INSERT_FILL = f"INSERT INTO fills (run_id, {_FILL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
INSERT_POSITION = (
    "INSERT INTO positions (run_id, ticker, quantity, avg_price, stop_loss) VALUES (?, ?, ?, ?, ?)"
)
INSERT_STEP = (
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
INSERT_DECISION = (
    "INSERT INTO decisions (run_id, bar_date, ticker, strategy, record_json, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?)"
)
INSERT_EVENT = (
    "INSERT INTO risk_events (run_id, bar_date, ticker, kind, rule, detail, created_at)"
    " VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def stored_order_row(run_id: str, o: Order) -> tuple[Any, ...]:
    """``(run_id, *order_row(o))`` as the orders table takes it (no creation date: empty text)."""
    row = order_row(o)
    at = ORDER_KEYS.index("created_at")
    return (run_id, *row[:at], row[at] or "", *row[at + 1 :])


def position_rows(run_id: str, positions: Mapping[str, Position]) -> list[tuple[Any, ...]]:
    return [
        (run_id, t, p.quantity, p.avg_price, None if p.stop_loss is None else float(p.stop_loss))
        for t, p in sorted(positions.items())
        if p.quantity
    ]


def decision_row(run_id: str, bar: str, strategy: str, record: Mapping[str, Any], at: str) -> tuple[Any, ...]:
    ticker = record.get("ticker")
    return (
        run_id,
        bar,
        ticker if isinstance(ticker, str) else None,
        strategy,
        compact_json(dict(record)),
        at,
    )


def write_step(db: sqlite3.Connection, rec: StepRecord, now: str) -> None:
    """The rows of one step, inside the caller's transaction."""
    run_id, bar = rec.run_id, rec.bar
    if rec.new_orders:
        db.executemany(INSERT_ORDER, [stored_order_row(run_id, o) for o in rec.new_orders])
    if rec.updated_orders:
        db.executemany(
            _UPDATE_ORDER, [(*order_update(o, bar), o.client_order_id, run_id) for o in rec.updated_orders]
        )
    if rec.fills:
        db.executemany(INSERT_FILL, [(run_id, *f.row()) for f in rec.fills])
        db.execute("DELETE FROM positions WHERE run_id = ?", (run_id,))
        db.executemany(INSERT_POSITION, position_rows(run_id, rec.positions))
    db.execute(
        INSERT_STEP,
        (
            run_id,
            rec.step_index,
            bar,
            rec.equity,
            rec.cash,
            rec.exposure,
            positions_json(rec.positions),
            compact_json(dict(rec.prices)),
        ),
    )
    db.execute(_UPDATE_ACCOUNT, (rec.cash, rec.equity, bar, now, run_id))
    db.execute(
        _UPDATE_RISK,
        (rec.risk_state, rec.halt_reason, rec.peak_equity, rec.day_start_equity, run_id, rec.state_version),
    )
    if rec.decision_record is not None:
        db.execute(INSERT_DECISION, decision_row(run_id, bar, rec.strategy, rec.decision_record, now))
    if rec.risk_events:
        db.executemany(
            INSERT_EVENT, [(run_id, bar, e.ticker, e.kind, e.rule, e.detail, now) for e in rec.risk_events]
        )
