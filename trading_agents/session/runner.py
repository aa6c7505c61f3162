"""One paper trading session: what ``trading-agents run``, the soak, ``bench session`` and the
tests all call.

:func:`run_session` builds the agent desk from the settings (unless handed a strategy), loads
its models before any bar is recorded, runs the engine as a paper session (the last bar is
decided too and its order waits in the journal for the next session; positions stay open),
and reads back the account. The session ledger continues across runs: running the same
window again resumes after the last recorded bar and duplicates nothing.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from contextlib import ExitStack
from dataclasses import dataclass, field
from typing import Any

import pandas as pd

from trading_agents.config.settings import Settings
from trading_agents.core import (
    AccountState,
    EngineConfig,
    EngineResult,
    Journal,
    Position,
    StepEvent,
    Strategy,
    run_engine,
)
from trading_agents.errors import RiskHaltedError
from trading_agents.journal import Ledger, default_ledger_path

DEFAULT_ACCOUNT = "paper"


@dataclass
class SessionOutcome:
    """What a session leaves: the run as the journal holds it and the account after it."""

    result: EngineResult
    account: AccountState | None
    positions: dict[str, Position]
    strategy: Any
    problems: list[str] = field(default_factory=list)  # ledger reconciliation; [] when consistent

    @property
    def halted(self) -> bool:
        return self.account is not None and self.account.risk_state == "HALTED"

    def raise_if_halted(self) -> None:
        """:class:`RiskHaltedError` (exit code 5) when the account ended HALTED."""
        if self.halted:
            reason = self.account.halt_reason if self.account is not None else ""
            raise RiskHaltedError(
                f"account is HALTED{f' ({reason})' if reason else ''}: only reducing orders are allowed;"
                " `trading-agents resume` to trade again"
            )


def run_session(
    settings: Settings,
    bars: Mapping[str, pd.DataFrame],
    start: pd.Timestamp | str,
    end: pd.Timestamp | str,
    *,
    account: str = DEFAULT_ACCOUNT,
    journal: Journal | None = None,
    strategy: Strategy | None = None,
    news: Any = None,
    on_step: Callable[[StepEvent], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    prepare: Callable[[Any], None] | None = None,
    stream: bool = True,
) -> SessionOutcome:
    """Trade ``bars`` from ``start`` to ``end`` on paper account ``account``.

    ``journal`` defaults to the session ledger, ``<paths.home>/ledger.sqlite``; ``strategy``
    to the agent desk of ``settings`` (without the response cache: a live session decides
    afresh), reading ``news`` (a :class:`~trading_agents.market.news.NewsSource`) when given.
    A strategy with a track record (``remember``) is handed the run's earlier decisions from
    the journal first, so a resumed session remembers what it decided before. A strategy
    built here is closed at the end; ``prepare(strategy)`` runs after its models loaded and
    before the first bar (for example to hook a live view). ``on_note`` receives the desk's
    notes (a fallback model in use, a missing file) and the engine's (a held ticker valued at
    its last recorded close because ``bars`` do not price it).
    """
    with ExitStack() as stack:
        if strategy is None:
            from trading_agents.agents.desk_strategy import build_agent_strategy

            built = build_agent_strategy(settings, use_cache=False, stream=stream, news=news)
            stack.callback(built.close)
            built.desk.preload()  # a model that cannot load stops the run before any bar is recorded
            strategy = built
        desk = getattr(strategy, "desk", None)
        for note in getattr(desk, "notes", ()):
            if on_note is not None:
                on_note(note)
        if prepare is not None:
            prepare(strategy)
        if journal is None:
            journal = stack.enter_context(Ledger.open(default_ledger_path(settings.paths.home)))
        remember = getattr(strategy, "remember", None)
        if callable(remember) and journal.get_run(account) is not None:
            remember(journal.decisions(account))  # the track record continues across sessions
        result = run_engine(
            bars,
            strategy,
            EngineConfig.for_session(settings),
            journal,
            account,
            kind="session",
            start=pd.Timestamp(start),
            end=pd.Timestamp(end),
            on_step=on_step,
            record_config=settings.public_dict(),
            on_note=on_note,
        )
        reconcile = getattr(journal, "reconcile", None)
        return SessionOutcome(
            result=result,
            account=journal.account(account),
            positions=journal.positions(account),
            strategy=strategy,
            problems=reconcile(account) if callable(reconcile) else [],
        )
