"""The strategy interface shared by baselines, the LLM agents, backtests and paper sessions.

A strategy sees a :class:`DecisionContext` at the close of one bar and returns order
intents. The engine slices every frame in ``ctx.bars`` to rows dated ``<= ctx.as_of``
before the call, so a strategy cannot look ahead; its intents then pass the risk engine
and fill, at the earliest, on the next bar.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol, runtime_checkable

import pandas as pd


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class PortfolioView:
    """The account at the decision bar's close. ``prices`` are the last closes."""

    cash: float
    equity: float
    positions: Mapping[str, int]
    prices: Mapping[str, float]
    peak_equity: float
    day_start_equity: float
    risk_state: str  # ACTIVE | REDUCING | HALTED


@dataclass(frozen=True)
class DecisionContext:
    """Input of one decision.

    ``bars`` maps each ticker that has data to its frame sliced to ``index <= as_of`` (columns
    Open, High, Low, Close, Volume). ``step`` is the 0-based bar index within the run.
    """

    as_of: pd.Timestamp
    bars: Mapping[str, pd.DataFrame]
    portfolio: PortfolioView
    step: int


@dataclass
class StrategyDecision:
    """Intents plus an optional JSON-safe ``record`` stored in the ledger's decisions table."""

    intents: list[OrderIntent] = field(default_factory=list)
    record: dict[str, Any] | None = None


@runtime_checkable
class Strategy(Protocol):
    """Anything with a ``name`` and a ``decide`` method."""

    name: str

    def decide(self, ctx: DecisionContext) -> StrategyDecision: ...
