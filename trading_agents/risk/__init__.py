"""Hard risk limits and the kill switch."""

from trading_agents.risk.limits import RiskCheck, RiskEngine, RiskEvent, RiskState

__all__ = ["RiskCheck", "RiskEngine", "RiskEvent", "RiskState"]
