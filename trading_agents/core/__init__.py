"""The trading core: the strategy contract, orders and the paper broker, the risk engine,
the aligned market, the step engine and its results. It imports only ``config`` and ``errors``.

>>> from trading_agents.core import EngineConfig, run_engine
>>> from trading_agents.journal import MemoryJournal
>>> # run_engine({"GOOG": frame}, strategy, EngineConfig(), MemoryJournal(), "bt-1")
"""

from trading_agents.core.broker import BarPrices, PaperBroker
from trading_agents.core.decision import (
    DecisionContext,
    OrderIntent,
    PortfolioView,
    Strategy,
    StrategyDecision,
)
from trading_agents.core.engine import Engine, EngineConfig, StepEvent, run_engine
from trading_agents.core.market import AlignedMarket, SlicedBars
from trading_agents.core.orders import Fill, Order, Position, client_order_id, grows_position, iso_date
from trading_agents.core.records import (
    RISK_STATES,
    AccountState,
    Journal,
    LedgerIntegrityError,
    RunInfo,
    StepRecord,
)
from trading_agents.core.results import EngineResult, build_result, round_trips
from trading_agents.core.risk import RiskCheck, RiskEngine, RiskEvent, RiskState, position_room

__all__ = [
    "RISK_STATES",
    "AccountState",
    "AlignedMarket",
    "BarPrices",
    "DecisionContext",
    "Engine",
    "EngineConfig",
    "EngineResult",
    "Fill",
    "Journal",
    "LedgerIntegrityError",
    "Order",
    "OrderIntent",
    "PaperBroker",
    "PortfolioView",
    "Position",
    "RiskCheck",
    "RiskEngine",
    "RiskEvent",
    "RiskState",
    "RunInfo",
    "SlicedBars",
    "StepEvent",
    "StepRecord",
    "Strategy",
    "StrategyDecision",
    "build_result",
    "client_order_id",
    "grows_position",
    "iso_date",
    "position_room",
    "round_trips",
    "run_engine",
]
