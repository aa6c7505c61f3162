"""Writing a finished in-memory run to a results folder's ``ledger.sqlite``.

:func:`export_run` builds the ledger in memory in ONE transaction, through the same row
writers as the live ledger, and writes the file with the atomic writer: a reader sees no
file or a whole one, never a half-written database.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from trading_agents.fsutil import atomic_write_bytes
from trading_agents.journal.memory import MemoryJournal
from trading_agents.journal.rows import compact_json, stamp_text
from trading_agents.journal.sqlite import (
    INSERT_DECISION,
    INSERT_EVENT,
    INSERT_FILL,
    INSERT_ORDER,
    INSERT_POSITION,
    INSERT_STEP,
    Ledger,
    position_rows,
)


def export_run(journal: MemoryJournal, run_id: str, path: Path) -> Path:
    """Write run ``run_id`` of ``journal`` to a new ledger file at ``path`` (replacing it)."""
    run = journal.run(run_id)
    info = run.info
    with Ledger.open(":memory:") as ledger:
        with ledger.transaction() as db:
            db.execute(
                "INSERT INTO runs (run_id, kind, strategy, created_at, config_json, starting_cash, status)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    info.kind,
                    info.strategy,
                    info.created_at,
                    compact_json(info.config),
                    info.starting_cash,
                    info.status,
                ),
            )
            db.execute(
                "INSERT INTO account_state (run_id, risk_state, halt_reason, cash, peak_equity,"
                " day_start_equity, last_equity, last_step_date, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    run_id,
                    run.risk_state,
                    run.halt_reason,
                    run.cash,
                    run.peak_equity,
                    run.day_start_equity,
                    run.last_equity,
                    run.last_bar,
                    stamp_text(int(run.updated)),
                ),
            )
            at = 8  # created_at in an orders row after run_id: stored as text, empty when absent
            db.executemany(
                INSERT_ORDER,
                [(run_id, *r[:at], r[at] or "", *r[at + 1 :]) for r in run.orders.values()],
            )
            db.executemany(INSERT_FILL, [(run_id, *f.row()) for f in run.fills])
            db.executemany(INSERT_POSITION, position_rows(run_id, run.positions))
            encoded: dict[int, str] = {}
            db.executemany(
                INSERT_STEP,
                [
                    (
                        run_id,
                        index,
                        bar,
                        equity,
                        cash,
                        exposure,
                        _encoded(encoded, held),
                        compact_json(dict(prices)),
                    )
                    for index, bar, equity, cash, exposure, held, prices in zip(
                        run.step_index,
                        run.bar_date,
                        run.equity,
                        run.cash_column,
                        run.exposure,
                        run.holdings,
                        run.prices,
                        strict=True,
                    )
                ],
            )
            db.executemany(
                INSERT_DECISION,
                [
                    (
                        run_id,
                        d["bar_date"],
                        d["ticker"],
                        d["strategy"],
                        compact_json(d["record"]),
                        d["created_at"],
                    )
                    for d in run.decisions
                ],
            )
            db.executemany(
                INSERT_EVENT,
                [
                    (run_id, e["bar_date"], e["ticker"], e["kind"], e["rule"], e["detail"], e["created_at"])
                    for e in run.risk_events
                ],
            )
        data = ledger.serialize()
    atomic_write_bytes(Path(path), data)
    return Path(path)


def _encoded(cache: dict[int, str], held: Mapping[str, int]) -> str:
    """The step row's positions text; steps share a holdings dict, so each is encoded once."""
    text = cache.get(id(held))
    if text is None:
        text = cache[id(held)] = compact_json(dict(held)) if held else "{}"
    return text
