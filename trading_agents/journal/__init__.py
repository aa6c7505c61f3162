"""Where runs are recorded: the :class:`Journal` protocol and its two stores.

``MemoryJournal`` keeps a run in this process (rule-based backtests, baselines, benchmarks,
grids); ``Ledger`` is the SQLite file of paper sessions and of an agents backtest's results
folder (durable, shared, with migrations, readable while it is written);
:func:`export_run` writes a finished in-memory run to a ledger file.
"""

from trading_agents.core.records import AccountState, Journal, LedgerIntegrityError, RunInfo, StepRecord
from trading_agents.journal.export import export_run
from trading_agents.journal.memory import MemoryJournal
from trading_agents.journal.sqlite import LEDGER_FILENAME, Ledger, RiskStateChange, default_ledger_path

__all__ = [
    "LEDGER_FILENAME",
    "AccountState",
    "Journal",
    "Ledger",
    "LedgerIntegrityError",
    "MemoryJournal",
    "RiskStateChange",
    "RunInfo",
    "StepRecord",
    "default_ledger_path",
    "export_run",
]
