"""Orders, fills and positions: what the paper broker produces and the journal stores.

Client order ids are deterministic (:func:`client_order_id`): re-deciding the same bar
after a crash yields the same id, and the ledger's UNIQUE constraint refuses a duplicate.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, fields
from functools import lru_cache
from typing import Any, Literal

import pandas as pd

Side = Literal["buy", "sell"]
OrderType = Literal["market", "limit", "stop"]
TimeInForce = Literal["day", "gtc"]
OrderStatus = Literal["pending", "filled", "cancelled", "expired", "rejected"]

#: Nanoseconds in a day: a tz-naive ``Timestamp.value`` divided by it is the day number.
DAY_NS = 86_400_000_000_000


def grows_position(side: str, quantity: int, held: int) -> bool:
    """Whether an order of ``quantity`` shares on ``side`` grows the position of ``held`` shares
    (negative: short) instead of only shrinking it towards flat.

    The one rule behind "only reducing orders pass" for the broker (cancelling on a halt),
    the risk engine (HALTED/REDUCING) and the journal (``trading-agents halt``).
    """
    return not ((side == "sell" and 0 < quantity <= held) or (side == "buy" and 0 < quantity <= -held))


@lru_cache(maxsize=8192)
def iso_date(ts: pd.Timestamp | str) -> str:
    """``2024-01-02`` for a midnight timestamp, full ISO 8601 otherwise (intraday bars)."""
    if type(ts) is pd.Timestamp and ts.tzinfo is None and ts.value % DAY_NS == 0:
        return f"{ts.year:04d}-{ts.month:02d}-{ts.day:02d}"  # midnight, without re-parsing
    ts = pd.Timestamp(ts)
    midnight = not (ts.hour or ts.minute or ts.second or ts.microsecond or ts.nanosecond)
    return f"{ts.year:04d}-{ts.month:02d}-{ts.day:02d}" if midnight else ts.isoformat()


def client_order_id(
    run_id: str, decision_date: pd.Timestamp | str, ticker: str, side: str, seq: int | str
) -> str:
    """``sha256(run_id | decision date | ticker | side | seq)[:20]``: stable across restarts."""
    key = f"{run_id}|{iso_date(decision_date)}|{ticker}|{side}|{seq}"
    return hashlib.sha256(key.encode("utf-8")).hexdigest()[:20]


@dataclass
class Order:
    """An order decided at the close of ``created_at``; it can fill from the next bar on.

    ``quantity`` is the whole-share amount the risk engine approved; ``requested_quantity``
    is what the strategy asked for (``None``: as many as cash allows / the whole position).
    ``filled_quantity`` may be smaller than ``quantity`` when cash ran short at the fill.
    """

    client_order_id: str
    ticker: str
    side: Side
    quantity: int
    order_type: OrderType = "market"
    limit_price: float | None = None
    time_in_force: TimeInForce = "day"
    stop_loss: float | None = None
    created_at: pd.Timestamp | None = None
    status: OrderStatus = "pending"
    reason: str = ""
    requested_quantity: int | None = None
    filled_quantity: int = 0
    updated_at: pd.Timestamp | None = None

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe dict (dates as ISO strings), keys in field order."""
        out = {name: getattr(self, name) for name in _ORDER_FIELDS}
        for key in ("created_at", "updated_at"):
            out[key] = iso_date(out[key]) if out[key] is not None else None
        return out


@dataclass(frozen=True, init=False)
class Fill:
    """One execution. ``price`` already includes slippage; ``commission`` is charged on top."""

    order_id: str
    ticker: str
    side: Side
    quantity: int
    price: float
    commission: float
    slippage_cost: float
    filled_at: pd.Timestamp
    reason: str = ""

    def __init__(
        self,
        order_id: str,
        ticker: str,
        side: Side,
        quantity: int,
        price: float,
        commission: float,
        slippage_cost: float,
        filled_at: pd.Timestamp,
        reason: str = "",
    ) -> None:
        # The generated __init__ of a frozen dataclass sets each field through
        # object.__setattr__; one update of the instance dict does the same, faster.
        self.__dict__.update(
            order_id=order_id,
            ticker=ticker,
            side=side,
            quantity=quantity,
            price=price,
            commission=commission,
            slippage_cost=slippage_cost,
            filled_at=filled_at,
            reason=reason,
        )

    @property
    def client_order_id(self) -> str:
        return self.order_id

    def row(self) -> tuple[Any, ...]:
        """The fill as one plain tuple (``filled_at`` as an ISO date), in field order: what the
        journals store and the results frame is built from."""
        return (
            self.order_id,
            self.ticker,
            self.side,
            self.quantity,
            self.price,
            self.commission,
            self.slippage_cost,
            iso_date(self.filled_at),
            self.reason,
        )

    @property
    def value(self) -> float:
        """Traded value before commission."""
        return self.quantity * self.price

    @property
    def cash_delta(self) -> float:
        """Change in cash: buys pay value plus commission, sells receive value minus it."""
        return -self.value - self.commission if self.side == "buy" else self.value - self.commission

    def as_dict(self) -> dict[str, Any]:
        """JSON-safe dict (``filled_at`` as an ISO string), keys in field order."""
        out = {name: getattr(self, name) for name in _FILL_FIELDS}
        out["filled_at"] = iso_date(self.filled_at)
        return out


_ORDER_FIELDS = tuple(f.name for f in fields(Order))
_FILL_FIELDS = tuple(f.name for f in fields(Fill))


@dataclass
class Position:
    """Shares held in one ticker (negative when short), average entry price, protective stop."""

    quantity: int = 0
    avg_price: float = 0.0
    stop_loss: float | None = None

    def apply(self, signed_quantity: int, price: float) -> None:
        """Fold a fill of ``signed_quantity`` shares (+buy, -sell) at ``price`` into the position."""
        if signed_quantity == 0:
            return
        old = self.quantity
        new = old + signed_quantity
        if old == 0 or (old > 0) == (signed_quantity > 0):
            self.avg_price = (abs(old) * self.avg_price + abs(signed_quantity) * price) / abs(new)
        elif new == 0:
            self.avg_price, self.stop_loss = 0.0, None
        elif (new > 0) != (old > 0):  # flipped through flat: the remainder is a fresh position
            self.avg_price, self.stop_loss = price, None
        self.quantity = new
        if self.quantity <= 0:
            self.stop_loss = None
