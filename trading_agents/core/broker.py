"""The paper broker: pessimistic, backtesting.py-like fills on daily (or intraday) bars.

Fill model. An order decided on bar *t*'s close fills on bar *t+1*:

* market: at *t+1*'s Open moved against us by ``slippage_bps``;
* limit buy: at Open if Open <= limit, else at the limit if Low <= limit, else no fill
  (``day`` orders expire, ``gtc`` orders wait); limit sells mirror this with High.
  Limit fills get no slippage: the limit bounds the price;
* protective stop of a long: if Open <= stop the position exits at Open, elif Low <= stop it
  exits at the stop; a triggered stop is a market order, so slippage applies;
* commission is ``commission`` x traded value on every fill; whole shares only.

Cash never goes negative: a buy that a gap-up made unaffordable is shrunk at the fill
(the order's reason says so). Without ``allow_short`` a sell never exceeds the long position.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import pandas as pd

from trading_agents.core.orders import Fill, Order, Position, client_order_id, grows_position


@dataclass(frozen=True, init=False)
class BarPrices:
    """One bar of one ticker."""

    open: float
    high: float
    low: float
    close: float

    def __init__(self, open: float, high: float, low: float, close: float) -> None:
        # What the generated __init__ does, in one update instead of a setattr per field.
        self.__dict__.update(open=open, high=high, low=low, close=close)


class PaperBroker:
    """Cash, positions and pending orders of one account; fills orders against bars.

    The broker is pure bookkeeping (no I/O): the engine hands what it returns to the journal.
    """

    def __init__(
        self,
        cash: float,
        *,
        commission: float = 0.001,
        slippage_bps: float = 5.0,
        allow_short: bool = False,
        run_id: str = "",
        positions: Mapping[str, Position] | None = None,
        pending: Iterable[Order] = (),
    ) -> None:
        self.cash = float(cash)
        self.commission = float(commission)
        self.slippage = float(slippage_bps) / 10_000.0
        self.allow_short = allow_short
        self.run_id = run_id
        self.positions: dict[str, Position] = {
            t: Position(p.quantity, p.avg_price, p.stop_loss)
            for t, p in (positions or {}).items()
            if p.quantity
        }
        self.pending: list[Order] = list(pending)

    # -- queries -------------------------------------------------------------------------------

    def quantity(self, ticker: str) -> int:
        pos = self.positions.get(ticker)
        return pos.quantity if pos else 0

    def holdings(self) -> dict[str, int]:
        return {t: p.quantity for t, p in self.positions.items() if p.quantity}

    def equity(self, prices: Mapping[str, float]) -> float:
        """Cash plus positions marked at ``prices``."""
        positions = self.positions
        if len(positions) == 1:  # the common case without building a generator (the same sum)
            for t, p in positions.items():
                return self.cash + (0 + p.quantity * prices[t])
        return self.cash + sum(p.quantity * prices[t] for t, p in positions.items())

    def gross_value(self, prices: Mapping[str, float]) -> float:
        """Sum of absolute position values."""
        positions = self.positions
        if len(positions) == 1:
            for t, p in positions.items():
                return 0 + abs(p.quantity) * prices[t]
        return sum(abs(p.quantity) * prices[t] for t, p in positions.items())

    def idle(self) -> bool:
        """True when :meth:`process_bar` has nothing to do: no pending order, no protective stop."""
        if self.pending:
            return False
        for p in self.positions.values():  # noqa: SIM110 - runs every bar; a loop beats all(<genexpr>)
            if p.stop_loss is not None and p.quantity > 0:
                return False
        return True

    def affordable(self, price: float) -> int:
        """Whole shares that cash buys at ``price`` including commission."""
        unit = price * (1.0 + self.commission)
        if unit <= 0 or self.cash <= 0:
            return 0
        qty = math.floor(self.cash / unit)
        while qty > 0 and qty * price + qty * price * self.commission > self.cash:  # float rounding guard
            qty -= 1
        return qty

    # -- commands ------------------------------------------------------------------------------

    def submit(self, order: Order) -> None:
        """Queue an accepted order; it can fill from the next bar on."""
        if order.status != "pending":
            raise ValueError(f"only pending orders can be submitted, not {order.status}")
        self.pending.append(order)

    def process_bar(
        self, date: pd.Timestamp, bars: Mapping[str, BarPrices]
    ) -> tuple[list[Fill], list[Order]]:
        """Fill pending orders at this bar's prices, then apply protective stops.

        Tickers without a bar today keep their orders waiting. Returns the fills and every
        order whose status changed (including the stop exits created here).
        """
        fills: list[Fill] = []
        changed: list[Order] = []
        waiting: list[Order] = []
        for order in self.pending:
            bar = bars.get(order.ticker)
            if bar is None:
                waiting.append(order)
                continue
            fill = self._try_fill(order, bar, date)
            if fill is not None:
                fills.append(fill)
            if order.status == "pending":
                waiting.append(order)
            else:
                order.updated_at = date
                changed.append(order)
        self.pending = waiting
        for ticker in sorted(self.positions):
            pos = self.positions.get(ticker)
            bar = bars.get(ticker)
            if pos is None or bar is None or pos.quantity <= 0 or pos.stop_loss is None:
                continue
            stop = pos.stop_loss
            trigger = bar.open if bar.open <= stop else (stop if bar.low <= stop else None)
            if trigger is None:
                continue
            order = Order(
                client_order_id=client_order_id(self.run_id, date, ticker, "sell", "stop"),
                ticker=ticker,
                side="sell",
                quantity=pos.quantity,
                order_type="stop",
                limit_price=stop,
                created_at=date,
                reason=f"stop-loss {stop:g} hit",
                requested_quantity=pos.quantity,
            )
            fills.append(self._execute(order, pos.quantity, trigger * (1.0 - self.slippage), trigger, date))
            changed.append(order)
        return fills, changed

    def close_all(
        self, date: pd.Timestamp, prices: Mapping[str, float], reason: str = "end of run"
    ) -> tuple[list[Fill], list[Order]]:
        """Flatten every position at ``prices`` (commission charged, no slippage)."""
        fills: list[Fill] = []
        orders: list[Order] = []
        for ticker in sorted(self.positions):
            qty = self.quantity(ticker)
            if not qty:
                continue
            side = "sell" if qty > 0 else "buy"
            order = Order(
                client_order_id=client_order_id(self.run_id, date, ticker, side, "close"),
                ticker=ticker,
                side=side,
                quantity=abs(qty),
                created_at=date,
                reason=reason,
                requested_quantity=abs(qty),
            )
            fills.append(self._execute(order, abs(qty), prices[ticker], prices[ticker], date))
            orders.append(order)
        return fills, orders

    def cancel_pending(
        self, date: pd.Timestamp, reason: str, *, only_increasing: bool = False
    ) -> list[Order]:
        """Cancel pending orders (all, or only those that would grow a position)."""
        cancelled: list[Order] = []
        keep: list[Order] = []
        for order in self.pending:
            if only_increasing and not grows_position(
                order.side, order.quantity, self.quantity(order.ticker)
            ):
                keep.append(order)
                continue
            order.status, order.reason, order.updated_at = "cancelled", _join(order.reason, reason), date
            cancelled.append(order)
        self.pending = keep
        return cancelled

    # -- internals -----------------------------------------------------------------------------

    def _try_fill(self, order: Order, bar: BarPrices, date: pd.Timestamp) -> Fill | None:
        buy = order.side == "buy"
        if order.order_type == "market":
            ref = bar.open
            price = ref * (1.0 + self.slippage) if buy else ref * (1.0 - self.slippage)
        else:
            limit = float(order.limit_price)  # type: ignore[arg-type]
            if buy:
                price = bar.open if bar.open <= limit else (limit if bar.low <= limit else None)
            else:
                price = bar.open if bar.open >= limit else (limit if bar.high >= limit else None)
            if price is None:
                if order.time_in_force == "day":
                    order.status, order.reason = (
                        "expired",
                        _join(order.reason, f"limit {limit:g} not reached"),
                    )
                return None
            ref = price
        qty = order.quantity
        if not buy and not self.allow_short:
            qty = min(qty, max(self.quantity(order.ticker), 0))
            if qty == 0:
                order.status, order.reason = "cancelled", _join(order.reason, "no long position to sell")
                return None
        if buy:
            can = self.affordable(price)
            if can < qty:
                order.reason = _join(order.reason, f"shrunk from {qty} to {can} shares: cash {self.cash:.2f}")
                qty = can
            if qty == 0:
                order.status = "cancelled"
                return None
        elif qty < order.quantity:
            order.reason = _join(order.reason, f"shrunk from {order.quantity} to {qty} shares: position")
        return self._execute(order, qty, price, ref, date)

    def _execute(self, order: Order, qty: int, price: float, ref: float, date: pd.Timestamp) -> Fill:
        value = qty * price
        fill = Fill(
            order_id=order.client_order_id,
            ticker=order.ticker,
            side=order.side,
            quantity=qty,
            price=price,
            commission=value * self.commission,
            slippage_cost=abs(price - ref) * qty,
            filled_at=date,
            reason=order.reason,
        )
        self.cash += fill.cash_delta
        pos = self.positions.setdefault(order.ticker, Position())
        pos.apply(qty if order.side == "buy" else -qty, price)
        if order.side == "buy" and order.stop_loss is not None and pos.quantity > 0:
            pos.stop_loss = float(order.stop_loss)
        if pos.quantity == 0:
            del self.positions[order.ticker]
        order.status, order.filled_quantity, order.updated_at = "filled", qty, date
        return fill


def _join(reason: str, note: str) -> str:
    return f"{reason}; {note}" if reason else note
