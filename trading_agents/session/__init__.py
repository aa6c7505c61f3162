"""Paper trading sessions over the core engine and the session ledger."""

from trading_agents.session.runner import DEFAULT_ACCOUNT, SessionOutcome, run_session

__all__ = ["DEFAULT_ACCOUNT", "SessionOutcome", "run_session"]
