"""Results of a run, built from its journal: the equity curve, fills, orders, round trips."""

from __future__ import annotations

from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from trading_agents.core.orders import Fill, Order
from trading_agents.core.records import Journal
from trading_agents.errors import UserInputError


@dataclass
class EngineResult:
    """Everything a report needs; built from the journal (the single source of truth).

    ``equity``: index Date; columns equity, cash, exposure (gross position value / equity),
    drawdown (<= 0 fraction) and ``pos_<TICKER>`` share counts. ``trades``: FIFO round trips
    (see :func:`round_trips`); positions still open at the end are not trades. ``decisions``:
    ``{bar_date (ISO string), strategy, ticker, record}`` for every decision with a record.
    ``risk_events``: ``{bar_date, ticker, kind, rule, detail, created_at}``.
    """

    run_id: str
    strategy: str
    start: pd.Timestamp
    end: pd.Timestamp
    starting_cash: float
    equity: pd.DataFrame
    trades: pd.DataFrame
    fills: pd.DataFrame
    orders: pd.DataFrame
    decisions: list[dict[str, Any]]
    risk_events: list[dict[str, Any]]
    commissions: float
    resumed_steps: int
    journal_path: Path | None = None  # the file, for a journal that has one

    @property
    def final_equity(self) -> float:
        return float(self.equity["equity"].iloc[-1]) if len(self.equity) else self.starting_cash


def build_result(
    journal: Journal, run_id: str, tickers: Sequence[str] = (), *, resumed_steps: int = 0
) -> EngineResult:
    """Assemble an :class:`EngineResult` for ``run_id`` from what the journal holds."""
    run = journal.get_run(run_id)
    if run is None:
        raise UserInputError(f"no run {run_id!r} in the ledger")
    steps = journal.step_table(run_id)
    index = _date_index(steps["bar_date"])
    values = np.array(steps["equity"], dtype=float)
    columns: dict[str, Any] = {
        "equity": values,
        "cash": np.array(steps["cash"], dtype=float),
        "exposure": np.array(steps["exposure"], dtype=float),
    }
    if len(values) and not np.isnan(values).any():
        columns["drawdown"] = values / np.maximum.accumulate(values) - 1.0  # what Series.cummax gives
    else:
        columns["drawdown"] = (pd.Series(values) / pd.Series(values).cummax() - 1.0).to_numpy()
    holdings = steps["positions"]
    distinct = {id(p): p for p in holdings}  # a run has few distinct holdings, shared by its steps
    held = sorted(set(tickers).union(*(p.keys() for p in distinct.values())))
    for t in held:
        quantity = {key: int(p.get(t, 0)) for key, p in distinct.items()}
        columns[f"pos_{t}"] = np.array([quantity[id(p)] for p in holdings], dtype=np.int64)
    equity = pd.DataFrame(columns, index=index)
    fills = journal.fills(run_id)
    # Rows as tuples: the frame pandas builds from them is the one it builds from the
    # as_dict() of each fill and order, without a dict per row.
    fills_df = pd.DataFrame(
        [f.row() for f in fills],
        columns=FILL_COLUMNS,
    )
    fills_df["filled_at"] = _to_datetime(fills_df["filled_at"])
    order_cols = list(Order.__dataclass_fields__)
    keys, rows = journal.order_rows(run_id)
    if list(keys) != order_cols:
        rows = [tuple(dict(zip(keys, row, strict=True))[c] for c in order_cols) for row in rows]
    orders_df = pd.DataFrame(rows, columns=order_cols)
    for col in ("created_at", "updated_at"):
        orders_df[col] = _to_datetime(orders_df[col])
    return EngineResult(
        run_id=run_id,
        strategy=run.strategy,
        start=index[0] if len(index) else pd.NaT,
        end=index[-1] if len(index) else pd.NaT,
        starting_cash=run.starting_cash,
        equity=equity,
        trades=round_trips(fills, index),
        fills=fills_df,
        orders=orders_df,
        decisions=[
            {
                "bar_date": d["bar_date"],
                "strategy": d["strategy"],
                "ticker": d["ticker"],
                "record": d["record"],
            }
            for d in journal.decisions(run_id)
        ],
        risk_events=journal.risk_events(run_id),
        commissions=float(sum(f.commission for f in fills)),
        resumed_steps=resumed_steps,
        journal_path=journal.path,
    )


FILL_COLUMNS = [
    "order_id",
    "ticker",
    "side",
    "quantity",
    "price",
    "commission",
    "slippage_cost",
    "filled_at",
    "reason",
]
TRADE_COLUMNS = [
    "ticker",
    "size",
    "entry_time",
    "exit_time",
    "entry_price",
    "exit_price",
    "pnl",
    "return_pct",
    "commission",
    "bars_held",
]


@lru_cache(maxsize=1)
def _plain_dates_dtype() -> np.dtype:
    """The dtype :func:`pandas.to_datetime` gives a column of ``YYYY-MM-DD`` strings."""
    return pd.to_datetime(pd.Series(["2000-01-03", "2000-01-04"])).dtype


def _to_datetime(column: pd.Series) -> pd.Series:
    """``pd.to_datetime(column)``, vectorized when every value is a plain ISO date."""
    values = column.tolist()
    if values and all(type(v) is str and len(v) == 10 for v in values):
        parsed = np.array(values, dtype="datetime64[D]").astype(_plain_dates_dtype())
        return pd.Series(parsed, index=column.index, name=column.name)
    return pd.to_datetime(column)


def _date_index(iso: Sequence[str]) -> pd.DatetimeIndex:
    """``DatetimeIndex([pd.Timestamp(s) for s in iso], name="Date")``, vectorized for plain dates."""
    if iso and all(len(s) == 10 for s in iso):
        unit = pd.Timestamp(iso[0]).unit  # what the one-by-one parse gives every plain date
        return pd.DatetimeIndex(
            np.array(iso, dtype="datetime64[D]").astype(f"datetime64[{unit}]"), name="Date"
        )
    return pd.DatetimeIndex([pd.Timestamp(s) for s in iso], name="Date")


def round_trips(fills: Sequence[Fill], dates: pd.DatetimeIndex) -> pd.DataFrame:
    """Match fills FIFO into round trips, one row per (entry lot, exit fill) pair.

    ``size`` is signed (negative for shorts); ``pnl`` is after the pro-rata entry and exit
    commissions; ``return_pct`` is ``100 * pnl / (entry_price * |size|)``, a percent like every ``_pct``;
    ``bars_held`` counts bars of ``dates`` between entry and exit.
    """
    books: dict[str, deque[list[Any]]] = {}
    rows: list[dict[str, Any]] = []
    where = dates.searchsorted(pd.DatetimeIndex([f.filled_at for f in fills])).tolist() if fills else []
    for f, at in zip(fills, where, strict=True):
        remaining = f.quantity if f.side == "buy" else -f.quantity
        per_share = f.commission / f.quantity
        book = books.setdefault(f.ticker, deque())
        while remaining and book and (book[0][0] > 0) != (remaining > 0):
            lot = book[0]  # [signed qty left, price, time, commission per share, bar position]
            direction = 1 if lot[0] > 0 else -1
            matched = min(abs(lot[0]), abs(remaining))
            commission = matched * (lot[3] + per_share)
            pnl = (f.price - lot[1]) * matched * direction - commission
            rows.append(
                {
                    "ticker": f.ticker,
                    "size": matched * direction,
                    "entry_time": lot[2],
                    "exit_time": f.filled_at,
                    "entry_price": lot[1],
                    "exit_price": f.price,
                    "pnl": pnl,
                    "return_pct": 100.0 * pnl / (lot[1] * matched),
                    "commission": commission,
                    "bars_held": at - lot[4],
                }
            )
            lot[0] -= matched * direction
            remaining += matched * direction
            if lot[0] == 0:
                book.popleft()
        if remaining:
            book.append([remaining, f.price, f.filled_at, per_share, at])
    return pd.DataFrame(rows, columns=TRADE_COLUMNS)
