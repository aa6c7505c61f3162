"""Orders, the paper broker and the SQLite ledger."""

from trading_agents.broker.ledger import AccountState, Ledger, RunInfo, StepRecord, default_ledger_path
from trading_agents.broker.orders import Fill, Order, Position, client_order_id
from trading_agents.broker.paper import BarPrices, PaperBroker

__all__ = [
    "AccountState",
    "BarPrices",
    "Fill",
    "Ledger",
    "Order",
    "PaperBroker",
    "Position",
    "RunInfo",
    "StepRecord",
    "client_order_id",
    "default_ledger_path",
]
