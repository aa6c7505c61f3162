"""What each agent must answer: pydantic models that become llama.cpp grammars.

Bounded fields are what make the reply both complete and checkable: every string has a
maximum length (so ``max_tokens`` always suffices), numbers have ranges (validated after
decoding; the grammar itself restricts them to fixed steps, see
:func:`utils.llm_integration.grammar.grammar_schema`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

_WORD = "[A-Za-z0-9%.,:;+/'()$-]"


def words_pattern(words: int, longest: int) -> str:
    """Text of 1 to ``words`` words of at most ``longest`` characters, the first starting with
    a letter and at least 2 long: so the grammar itself stops a run like ".0.0.0.0..." or a
    string of random capitals, and the longest match, ``words * (longest + 1) - 1`` characters,
    is within the field's max_length (the grammar follows the pattern, not max_length)."""
    return rf"^[A-Za-z]{_WORD}{{1,{longest - 1}}}( {_WORD}{{1,{longest}}}){{0,{words - 1}}}$"


RATIONALE_PATTERN = words_pattern(8, 14)  # at most 119 characters
SIGNAL_PATTERN = words_pattern(4, 9)  # at most 39
REASON_PATTERN = words_pattern(5, 11)  # at most 59

Signal = Annotated[str, StringConstraints(min_length=2, max_length=40, pattern=SIGNAL_PATTERN)]
Reason = Annotated[str, StringConstraints(min_length=2, max_length=60, pattern=REASON_PATTERN)]


class _Reply(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AnalystReport(_Reply):
    """The analyst's read of one instrument at one bar's close.

    Signals and rationale come before the action: the reply states what it sees, then
    decides, instead of justifying an action it picked first.
    """

    key_signals: list[Signal] = Field(min_length=1, max_length=2)
    rationale: str = Field(max_length=120, pattern=RATIONALE_PATTERN)
    action: Literal["BUY", "SELL", "HOLD"]
    conviction: float = Field(ge=0.0, le=1.0, description="0 = none, 1 = certain")
    horizon_days: int = Field(ge=1, le=20, description="expected holding period in trading days")


class RiskVerdict(_Reply):
    """The risk manager's review of the analyst's report against portfolio and limits."""

    decision: Literal["approve", "reduce", "reject"]
    max_position_pct: float = Field(ge=0.0, le=1.0, description="largest position, fraction of equity")
    stop_loss_pct: float = Field(ge=0.0, le=0.5, description="stop distance below entry, fraction")
    reasons: list[Reason] = Field(min_length=1, max_length=2)


class OrderProposal(_Reply):
    """The executor's concrete order, or side ``none``."""

    side: Literal["buy", "sell", "none"]
    quantity: int = Field(ge=0, le=10_000_000)
    order_type: Literal["market", "limit"]
    limit_price: float | None = Field(default=None, gt=0.0, le=1_000_000.0, allow_inf_nan=False)
    time_in_force: Literal["day", "gtc"]


ROLE_SCHEMAS: dict[str, type[_Reply]] = {
    "analyst": AnalystReport,
    "risk": RiskVerdict,
    "executor": OrderProposal,
}
