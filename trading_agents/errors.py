"""Typed exceptions. Their class decides the exit code and whether a caller may retry.

Every error that reaches the CLI is printed as one line (``error: <message>``) and
ends the process with ``exit_code``; no traceback is shown for these.

Exit codes (documented in the README and in ``trading-agents --help``):

====  =====================================================================
0     success
1     unexpected internal error (a bug: the traceback is printed)
2     user input: bad flag, config, data file or model file
3     model: cannot load or run a model, or its output was unusable
      (also every ``utils.llm_integration.errors.LLMError``)
4     data: market data unavailable (network down, unknown ticker, stale)
5     risk: the account is HALTED or the session was refused by risk rules
6     busy: another run holds the lock (cron overlap); nothing was done
7     resource: not enough memory or disk, or a path is not writable
      (also: a Ray cluster that cannot be reached or has no node that fits)
8     partial: some cells of a grid failed; the others are stored
====  =====================================================================
"""

from __future__ import annotations


class TradingAgentsError(Exception):
    """Base class. ``retryable`` tells schedulers whether running again may help."""

    exit_code: int = 1
    retryable: bool = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class UserInputError(TradingAgentsError):
    """Something the user gave us is wrong; the message says what and how to fix it."""

    exit_code = 2


class ConfigError(UserInputError):
    """A config file, env var or flag is invalid (names the key and the source)."""


class DataValidationError(UserInputError):
    """A market data file is malformed (names the rows by date)."""


class ModelFileError(UserInputError):
    """A model file is missing, empty, truncated, not GGUF or of the wrong shape."""


class ModelError(TradingAgentsError):
    """A model could not be loaded or run."""

    exit_code = 3
    retryable = True


class DataUnavailableError(TradingAgentsError):
    """Market data cannot be fetched (network, unknown ticker) and no usable cache exists."""

    exit_code = 4
    retryable = True


class RiskHaltedError(TradingAgentsError):
    """The account is HALTED; only reducing orders are allowed until `trading-agents resume`."""

    exit_code = 5


class LockBusyError(TradingAgentsError):
    """Another run holds the lock (for example an overlapping cron job)."""

    exit_code = 6
    retryable = True


class ResourceError(TradingAgentsError):
    """Not enough memory or disk, or a path is not writable."""

    exit_code = 7


class PartialFailureError(TradingAgentsError):
    """Some cells of a grid failed; the rest finished and are stored (``outcome``)."""

    exit_code = 8

    def __init__(self, message: str, outcome: object = None) -> None:
        super().__init__(message)
        self.outcome = outcome
