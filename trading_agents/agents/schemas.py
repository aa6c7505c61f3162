"""What each agent must answer: pydantic models that become llama.cpp grammars.

Bounded fields are what make the reply both complete and checkable: every string has a
maximum length (so ``max_tokens`` always suffices), numbers have ranges (validated after
decoding; the grammar itself restricts them to fixed steps, see
:func:`utils.llm_integration.grammar.grammar_schema`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

Signal = Annotated[str, StringConstraints(max_length=40)]
Reason = Annotated[str, StringConstraints(max_length=60)]

# A rationale is words: it starts with a letter and no "word" is longer than 14 characters, so
# the grammar itself stops a run like ".0.0.0.0..." from filling the field (at most 8 words,
# 119 characters: within max_length)
_WORD = "[A-Za-z0-9%.,:;+/'()$-]"
RATIONALE_PATTERN = rf"^[A-Za-z]{_WORD}{{0,13}}( {_WORD}{{1,14}}){{0,7}}$"


class _Reply(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AnalystReport(_Reply):
    """The analyst's read of one instrument at one bar's close."""

    action: Literal["BUY", "SELL", "HOLD"]
    conviction: float = Field(ge=0.0, le=1.0, description="0 = none, 1 = certain")
    horizon_days: int = Field(ge=1, le=20, description="expected holding period in trading days")
    key_signals: list[Signal] = Field(min_length=1, max_length=3)
    rationale: str = Field(max_length=120, pattern=RATIONALE_PATTERN)


class RiskVerdict(_Reply):
    """The risk manager's review of the analyst's report against portfolio and limits."""

    decision: Literal["approve", "reduce", "reject"]
    max_position_pct: float = Field(ge=0.0, le=1.0, description="largest position, fraction of equity")
    stop_loss_pct: float = Field(ge=0.0, le=0.5, description="stop distance below entry, fraction")
    reasons: list[Reason] = Field(min_length=1, max_length=3)


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
