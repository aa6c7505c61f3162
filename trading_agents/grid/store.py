"""``DIR/cells.sqlite``: the grid's state, written only by the process that runs the grid.

Tables: ``meta`` (the spec, its hash, the config the cells ran with) and ``cells`` (key,
spec hash, status, metrics, timings, LLM calls and tokens, error, attempts, results folder).
Each result is committed in its own transaction, so an interrupted grid leaves every finished
cell recorded and nothing half-written; cells that were running count as pending again.

A rerun on the same DIR resumes: ``done`` cells are skipped, ``failed`` and unfinished ones
run again. A spec that changes what existing cells mean (costs, risk, seed, a strategy's
parameters, the config) is refused naming the changed keys; adding tickers, files, windows
or strategies extends the grid.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trading_agents.errors import ConfigError, ResourceError, UserInputError
from trading_agents.grid.cells import Cell

STORE_NAME = "cells.sqlite"
SCHEMA_VERSION = 1
STATUSES = ("pending", "running", "done", "failed")
# Keys a grid may grow along without changing the cells it already has.
_EXTENSIBLE = ("data.tickers", "data.files", "windows")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS cells (
    key TEXT PRIMARY KEY,
    position INTEGER NOT NULL,
    cell TEXT NOT NULL,
    spec_hash TEXT NOT NULL,
    label TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed')),
    metrics TEXT,
    llm TEXT,
    timings TEXT,
    error TEXT,
    attempts INTEGER NOT NULL DEFAULT 0,
    out_dir TEXT,
    updated_at REAL NOT NULL
);
"""


@dataclass(frozen=True)
class CellRow:
    """One stored cell, decoded."""

    cell: Cell
    status: str
    spec_hash: str
    metrics: dict[str, Any] | None
    llm: dict[str, Any] | None
    timings: dict[str, Any] | None
    error: str | None
    attempts: int
    out_dir: str | None


def spec_hash(canonical: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(canonical, sort_keys=True, default=str).encode()).hexdigest()[:16]


class GridStore:
    """The SQLite store of one grid folder."""

    def __init__(self, db: sqlite3.Connection, path: Path) -> None:
        self._db = db
        self.path = path

    @classmethod
    def open(cls, grid_dir: Path, *, create: bool = True) -> GridStore:
        """Open ``grid_dir/cells.sqlite`` (WAL); ``create=False`` requires an existing grid."""
        grid_dir = Path(grid_dir)
        path = grid_dir / STORE_NAME
        if not create and not path.is_file():
            raise UserInputError(
                f"{grid_dir} holds no grid ({STORE_NAME} missing); run `trading-agents grid run`"
            )
        try:
            grid_dir.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, timeout=30, isolation_level=None)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(_SCHEMA)
        except (OSError, sqlite3.Error) as exc:
            raise ResourceError(f"cannot open {path}: {exc}; choose a writable --out folder") from None
        return cls(db, path)

    def close(self) -> None:
        self._db.close()

    def __enter__(self) -> GridStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- meta ----------------------------------------------------------------------------------

    def meta(self, key: str) -> Any:
        row = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def check_compatible(self, spec: Mapping[str, Any], config: Mapping[str, Any]) -> None:
        """Refuse (:class:`ConfigError`, exit 2) a spec or config that changes existing cells."""
        old_spec, old_config = self.meta("spec"), self.meta("config")
        if old_spec is None:
            return
        changed = changed_keys(old_spec, dict(spec))
        changed += [f"config {k}" for k in _diff(_flatten(old_config or {}), _flatten(dict(config)))]
        if changed:
            raise ConfigError(
                f"{self.path.parent} holds a grid made with another spec; changed: {', '.join(changed)}; "
                "restore those keys or run the new spec with another --out folder"
            )

    def prepare(
        self, spec: Mapping[str, Any], config: Mapping[str, Any], cells: Iterable[tuple[Cell, str]]
    ) -> None:
        """Record the spec and add the grid's cells; failed and interrupted cells become pending."""
        self.check_compatible(spec, config)
        now = time.time()
        with self._tx() as db:
            for key, value in (("spec", spec), ("config", config), ("version", SCHEMA_VERSION)):
                db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value, default=str)))
            db.execute("INSERT OR REPLACE INTO meta VALUES ('spec_hash', ?)", (json.dumps(spec_hash(spec)),))
            for position, (cell, digest) in enumerate(cells):
                db.execute(
                    "INSERT INTO cells (key, position, cell, spec_hash, label, status, updated_at)"
                    " VALUES (?, ?, ?, ?, ?, 'pending', ?) ON CONFLICT(key) DO UPDATE SET position ="
                    " excluded.position",
                    (cell.key, position, json.dumps(cell.as_dict()), digest, cell.label, now),
                )
            db.execute(
                "UPDATE cells SET status = 'pending', updated_at = ? WHERE status IN ('running', 'failed')",
                (now,),
            )

    # -- cells ---------------------------------------------------------------------------------

    def pending(self, keys: Iterable[str]) -> list[Cell]:
        """The cells among ``keys`` that still have to run, in grid order."""
        wanted = set(keys)
        rows = self._db.execute("SELECT key, cell FROM cells WHERE status = 'pending' ORDER BY position")
        return [Cell(**json.loads(cell)) for key, cell in rows if key in wanted]

    def mark_running(self, key: str) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE cells SET status = 'running', attempts = attempts + 1, updated_at = ? WHERE key = ?",
                (time.time(), key),
            )

    def requeue_running(self) -> int:
        """Running cells back to pending (after an interrupt); returns how many."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE cells SET status = 'pending', updated_at = ? WHERE status = 'running'", (time.time(),)
            )
            return cur.rowcount

    def record(self, result: Mapping[str, Any]) -> None:
        """Store one cell's result (a dict from :func:`trading_agents.grid.execute.run_cell`)."""
        status = "done" if result.get("status") == "done" else "failed"
        with self._tx() as db:
            db.execute(
                "UPDATE cells SET status = ?, metrics = ?, llm = ?, timings = ?, error = ?, out_dir = ?,"
                " updated_at = ? WHERE key = ?",
                (
                    status,
                    _dumps(result.get("metrics")),
                    _dumps(result.get("llm")),
                    _dumps(result.get("timings")),
                    result.get("error"),
                    result.get("out_dir"),
                    time.time(),
                    result["key"],
                ),
            )

    def rows(self, keys: Iterable[str] | None = None) -> list[CellRow]:
        """Stored cells in grid order (only ``keys`` when given)."""
        wanted = set(keys) if keys is not None else None
        out = []
        for row in self._db.execute(
            "SELECT key, cell, status, spec_hash, metrics, llm, timings, error, attempts, out_dir"
            " FROM cells ORDER BY position"
        ):
            if wanted is not None and row[0] not in wanted:
                continue
            out.append(
                CellRow(
                    cell=Cell(**json.loads(row[1])),
                    status=row[2],
                    spec_hash=row[3],
                    metrics=_loads(row[4]),
                    llm=_loads(row[5]),
                    timings=_loads(row[6]),
                    error=row[7],
                    attempts=row[8],
                    out_dir=row[9],
                )
            )
        return out

    @staticmethod
    def counts_of(rows: Iterable[CellRow]) -> dict[str, int]:
        """Cells per status, and ``total``."""
        counts = dict.fromkeys(STATUSES, 0)
        for row in rows:
            counts[row.status] += 1
        counts["total"] = sum(counts[s] for s in STATUSES)
        return counts


def changed_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Key paths whose values differ, except lists that only grew (tickers, files, windows, strategies)."""
    a, b = _flatten_spec(old), _flatten_spec(new)
    out = []
    for key in _diff(a, b):
        old_list, new_list = a.get(key), b.get(key)
        lists = isinstance(old_list, list) and isinstance(new_list, list)
        grew = lists and all(x in new_list for x in old_list)  # type: ignore[union-attr]
        if key in _EXTENSIBLE and grew:
            continue
        if key.startswith("strategies[") and key not in a:
            continue  # a new strategy
        out.append(key)
    return out


def _flatten_spec(spec: Mapping[str, Any]) -> dict[str, Any]:
    spec = dict(spec)
    out = _flatten({k: v for k, v in spec.items() if k not in ("strategies", "windows", "data")})
    data = spec.get("data") or {}
    out["data.tickers"] = list(data.get("tickers") or [])
    out["data.files"] = list(data.get("files") or [])
    windows = spec.get("windows")
    if isinstance(windows, list):
        out["windows"] = windows
    else:
        out.update(_flatten({"windows": windows}))
    for strategy in spec.get("strategies") or []:
        label = strategy.get("label") or _label(strategy)
        out[f"strategies[{label}]"] = strategy
    return out


def _label(strategy: Mapping[str, Any]) -> str:
    from trading_agents.grid.spec import StrategySpec

    return StrategySpec.model_validate(strategy).default_label()


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(_flatten(value, path + "."))
        else:
            out[path] = value
    return out


def _diff(a: Mapping[str, Any], b: Mapping[str, Any]) -> list[str]:
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def _dumps(value: Any) -> str | None:
    return None if value is None else json.dumps(value, default=str)


def _loads(text: str | None) -> Any:
    return None if text is None else json.loads(text)
