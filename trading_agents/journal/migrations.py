"""The SQLite ledger's schema, as named migrations applied once each, in order.

Each migration is a function registered with :func:`migration`; its name is recorded in
``schema_version`` when it has run. A new schema change is a new function at the end: an
existing one is never edited, so every ledger file reaches the same schema.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from datetime import UTC, datetime

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


def apply_migrations(
    db: sqlite3.Connection, transaction: Callable[[], AbstractContextManager[sqlite3.Connection]]
) -> None:
    """Run every migration not yet recorded in ``schema_version``, each in its own
    ``transaction()``; a migration another process applied meanwhile is skipped."""
    db.execute("CREATE TABLE IF NOT EXISTS schema_version (name TEXT PRIMARY KEY, applied_at TEXT NOT NULL)")
    done = {r[0] for r in db.execute("SELECT name FROM schema_version")}
    for fn in MIGRATIONS:
        if fn.__name__ in done:
            continue
        with transaction() as tx:
            if tx.execute("SELECT 1 FROM schema_version WHERE name = ?", (fn.__name__,)).fetchone():
                continue
            fn(tx)
            tx.execute(
                "INSERT INTO schema_version (name, applied_at) VALUES (?, ?)",
                (fn.__name__, datetime.now(UTC).isoformat(timespec="seconds")),
            )


def applied(db: sqlite3.Connection) -> Iterator[str]:
    """Names of the applied migrations, in the order they ran."""
    for row in db.execute("SELECT name FROM schema_version ORDER BY rowid"):
        yield row[0]
