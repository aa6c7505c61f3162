"""The step engine shared by backtests and paper sessions, and the strategy interface."""

from trading_agents.backtest.engine import (
    EngineConfig,
    EngineResult,
    StepEvent,
    build_result,
    round_trips,
    run_engine,
    write_decisions_jsonl,
)
from trading_agents.backtest.strategy import (
    DecisionContext,
    OrderIntent,
    PortfolioView,
    Strategy,
    StrategyDecision,
)

__all__ = [
    "DecisionContext",
    "EngineConfig",
    "EngineResult",
    "OrderIntent",
    "PortfolioView",
    "StepEvent",
    "Strategy",
    "StrategyDecision",
    "build_result",
    "round_trips",
    "run_engine",
    "write_decisions_jsonl",
]
