"""The strategy interface shared by baselines, the LLM agents, backtests and paper sessions.

A strategy sees a :class:`DecisionContext` at the close of one bar and returns order
intents. The engine slices every frame in ``ctx.bars`` to rows dated ``<= ctx.as_of``
before the call, so a strategy cannot look ahead; its intents then pass the risk engine
and fill, at the earliest, on the next bar.

Strategies that only need a column of numbers should read :meth:`DecisionContext.column`:
the same data as ``ctx.bars``, also cut at ``as_of``, but a read-only NumPy view instead of
a freshly sliced DataFrame, which matters when a backtest runs thousands of bars.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import numpy as np
import pandas as pd


@dataclass(frozen=True, init=False)
class OrderIntent:
    """What a strategy wants; the risk engine decides what it gets.

    ``quantity=None``: a buy takes as many whole shares as cash allows after commission
    (and the risk limits); a sell closes the whole position. ``stop_loss`` sets a
    protective stop for the resulting long position.
    """

    ticker: str
    side: Literal["buy", "sell"]
    quantity: int | None = None
    order_type: Literal["market", "limit"] = "market"
    limit_price: float | None = None
    time_in_force: Literal["day", "gtc"] = "day"
    stop_loss: float | None = None
    reason: str = ""

    def __init__(  # the generated __init__, filling the instance dict at once (see below)
        self,
        ticker: str,
        side: Literal["buy", "sell"],
        quantity: int | None = None,
        order_type: Literal["market", "limit"] = "market",
        limit_price: float | None = None,
        time_in_force: Literal["day", "gtc"] = "day",
        stop_loss: float | None = None,
        reason: str = "",
    ) -> None:
        self.__dict__.update(
            ticker=ticker,
            side=side,
            quantity=quantity,
            order_type=order_type,
            limit_price=limit_price,
            time_in_force=time_in_force,
            stop_loss=stop_loss,
            reason=reason,
        )


# PortfolioView and DecisionContext are built at every bar of every run (and OrderIntent for
# every order). Their __init__ fills the instance dict in one update: a frozen dataclass's
# generated __init__ goes through object.__setattr__ once per field, which costs more than the
# rest of a quiet bar step.


@dataclass(frozen=True, init=False)
class PortfolioView:
    """The account at the decision bar's close. ``prices`` are the last closes."""

    cash: float
    equity: float
    positions: Mapping[str, int]
    prices: Mapping[str, float]
    peak_equity: float
    day_start_equity: float
    risk_state: str  # ACTIVE | REDUCING | HALTED

    def __init__(
        self,
        cash: float,
        equity: float,
        positions: Mapping[str, int],
        prices: Mapping[str, float],
        peak_equity: float,
        day_start_equity: float,
        risk_state: str,
    ) -> None:
        self.__dict__.update(
            cash=cash,
            equity=equity,
            positions=positions,
            prices=prices,
            peak_equity=peak_equity,
            day_start_equity=day_start_equity,
            risk_state=risk_state,
        )


@dataclass(frozen=True, init=False)
class DecisionContext:
    """Input of one decision.

    ``bars`` maps each ticker that has data to its frame sliced to ``index <= as_of`` (columns
    Open, High, Low, Close, Volume). ``step`` is the 0-based bar index within the run.
    """

    as_of: pd.Timestamp
    bars: Mapping[str, pd.DataFrame]
    portfolio: PortfolioView
    step: int

    def __init__(
        self, as_of: pd.Timestamp, bars: Mapping[str, pd.DataFrame], portfolio: PortfolioView, step: int
    ) -> None:
        self.__dict__.update(as_of=as_of, bars=bars, portfolio=portfolio, step=step)

    def column(self, ticker: str, name: str = "Close") -> np.ndarray:
        """``ctx.bars[ticker][name]`` as a read-only float64 array (rows dated ``<= as_of``).

        Inside the engine this is a view of an array built once per run, so no DataFrame is
        sliced: the views of one ticker and column share their ``.base``, an array that does
        not change during the run, and each starts at its first row, so a view with the same
        base and more rows extends an earlier one (strategies may cache on that). Elsewhere
        (``bars`` without a ``column`` method) it is a copy taken from ``bars``, with no base.
        An unknown ticker raises ``KeyError``, as ``ctx.bars[ticker]`` does.

        Example: ``closes = ctx.column("GOOG"); sma20 = closes[-20:].mean()``.
        """
        fast = getattr(self.bars, "column", None)
        if callable(fast):
            return fast(ticker, name)
        values = np.array(self.bars[ticker][name].to_numpy(dtype=float), dtype=float)
        values.flags.writeable = False
        return values


@dataclass
class StrategyDecision:
    """Intents plus an optional JSON-safe ``record`` stored with the run's decisions in the journal."""

    intents: list[OrderIntent] = field(default_factory=list)
    record: dict[str, Any] | None = None


@runtime_checkable
class Strategy(Protocol):
    """Anything with a ``name`` and a ``decide`` method."""

    name: str

    def decide(self, ctx: DecisionContext) -> StrategyDecision: ...
