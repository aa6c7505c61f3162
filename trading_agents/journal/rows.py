"""How records become rows and back: the one encoding that both journals and the export use.

A row here is what the SQLite ledger stores in a table and what its reads give back, so the
in-memory journal, read through the same functions, answers exactly as the ledger would.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

import pandas as pd

from trading_agents.core.orders import Fill, Order, Position, iso_date

_ENCODER = json.JSONEncoder(default=str, separators=(",", ":"), allow_nan=True)

#: The columns of an order row, in the order :meth:`Journal.order_rows` gives them.
ORDER_KEYS = (
    "client_order_id",
    "ticker",
    "side",
    "quantity",
    "order_type",
    "limit_price",
    "time_in_force",
    "stop_loss",
    "created_at",
    "status",
    "reason",
    "requested_quantity",
    "filled_quantity",
    "updated_at",
)
#: The columns of a fill row (:meth:`Fill.row`), after ``run_id`` (which stores put second).
FILL_KEYS = (
    "client_order_id",
    "ticker",
    "side",
    "quantity",
    "price",
    "commission",
    "slippage_cost",
    "filled_at",
    "reason",
)


def compact_json(obj: Any) -> str:
    """Compact JSON; the same text as ``json.dumps(obj, default=str, separators=(",", ":"))``."""
    return _ENCODER.encode(obj)


def stored_record(record: Mapping[str, Any]) -> dict[str, Any]:
    """A decision record as a journal gives it back: through its JSON text."""
    return json.loads(compact_json(dict(record)))


def now_text() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@lru_cache(maxsize=64)
def stamp_text(second: int) -> str:
    """:func:`now_text`'s format for a Unix time in whole seconds."""
    return datetime.fromtimestamp(second, UTC).isoformat(timespec="seconds")


def positions_json(positions: Mapping[str, Position]) -> str:
    """How a step row stores positions: the non-zero quantities, sorted by ticker."""
    return compact_json(holdings(positions)) if positions else "{}"


def holdings(positions: Mapping[str, Position]) -> dict[str, int]:
    """``{ticker: quantity}`` of the non-zero positions, sorted by ticker."""
    return {t: p.quantity for t, p in sorted(positions.items()) if p.quantity}


def _opt_float(value: float | None) -> float | None:
    return None if value is None else float(value)


def order_row(o: Order) -> tuple[Any, ...]:
    """An order as an :data:`ORDER_KEYS` row (dates as ISO text)."""
    return (
        o.client_order_id,
        o.ticker,
        o.side,
        int(o.quantity),
        o.order_type,
        _opt_float(o.limit_price),
        o.time_in_force,
        _opt_float(o.stop_loss),
        iso_date(o.created_at) if o.created_at is not None else None,
        o.status,
        o.reason,
        o.requested_quantity,
        int(o.filled_quantity),
        iso_date(o.updated_at) if o.updated_at is not None else None,
    )


def order_update(o: Order, bar: str) -> tuple[Any, Any, Any, Any]:
    """What an update of a known order changes: status, filled quantity, reason, updated at
    (the step's bar when the order carries no date)."""
    return (
        o.status,
        int(o.filled_quantity),
        o.reason,
        iso_date(o.updated_at) if o.updated_at is not None else bar,
    )


def order_from_row(row: Sequence[Any]) -> Order:
    r = dict(zip(ORDER_KEYS, row, strict=True))
    return Order(
        client_order_id=r["client_order_id"],
        ticker=r["ticker"],
        side=r["side"],
        quantity=r["quantity"],
        order_type=r["order_type"],
        limit_price=r["limit_price"],
        time_in_force=r["time_in_force"],
        stop_loss=r["stop_loss"],
        created_at=_ts(r["created_at"]),
        status=r["status"],
        reason=r["reason"],
        requested_quantity=r["requested_quantity"],
        filled_quantity=r["filled_quantity"],
        updated_at=_ts(r["updated_at"]),
    )


def fill_from_row(row: Sequence[Any]) -> Fill:
    order_id, ticker, side, quantity, price, commission, slippage_cost, filled_at, reason = row
    return Fill(
        order_id=order_id,
        ticker=ticker,
        side=side,
        quantity=quantity,
        price=price,
        commission=commission,
        slippage_cost=slippage_cost,
        filled_at=timestamp(filled_at),
        reason=reason,
    )


@lru_cache(maxsize=4096)
def timestamp(value: str) -> pd.Timestamp:
    """``pd.Timestamp(value)`` for a stored date (a run has few distinct ones; Timestamps are
    immutable, so sharing one is safe)."""
    return pd.Timestamp(value)


def _ts(value: str | None) -> pd.Timestamp | None:
    return None if not value else pd.Timestamp(value)
