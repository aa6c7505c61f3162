"""What each agent must answer: pydantic models that become llama.cpp grammars.

Bounded fields are what make the reply both complete and checkable: every string has a
maximum length (so ``max_tokens`` always suffices), numbers have ranges (validated after
decoding; the grammar itself restricts them to fixed steps, see
:func:`utils.llm_integration.grammar.grammar_schema`).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

# A word is a run of capitals, digits and marks, a lower-case run, or both, with optionally a
# joiner and a second lower-case run ("20-day", "it's", "low-vol") and up to two closing marks
# ("up,", "(up)"). Only a capital, digit, "(", "-", "'" or "/" may come before a lower-case
# letter, so a word never runs a lower-case letter into a capital or digit ("butEMA12",
# "iswithin1.6") or a lower-case word after a number and a full stop ("26.uggests"). A full
# stop may end a word only at the end of the field: a field is one sentence, so a model that
# has finished its sentence closes the field instead of gluing words past the word cap
# ("The position isaligned").
_UPPER = "[A-Z0-9%.,;+/'()$-]"
_BEFORE_LOWER = "[A-Z0-9('/-]"
_LOWER = "[a-z]"
_JOINER = "[-'/]"
_UPPER_END = "[A-Z0-9%,;+/'()$-]"  # a run of capitals, digits and marks ends in no full stop
_CLOSE = "[%,;)]"
WORD_HEAD, WORD_LOWER, WORD_TAIL, WORD_CLOSE = 7, 13, 7, 2
WORD_CHARS = WORD_HEAD + WORD_LOWER + 1 + WORD_TAIL + WORD_CLOSE  # the longest word: 30


def _word(first: bool) -> str:
    lower = f"{_LOWER}{{1,{WORD_LOWER}}}"
    if first:  # starts with a letter
        stem = (
            f"[A-Z]({_UPPER}{{0,{WORD_HEAD}}}{_UPPER_END})?"
            f"|[A-Z]({_UPPER}{{0,{WORD_HEAD - 2}}}{_BEFORE_LOWER})?{lower}"
            f"|{_LOWER}{{1,{WORD_LOWER + 1}}}"
        )
    else:
        stem = (
            f"{_UPPER}{{0,{WORD_HEAD + 1}}}{_UPPER_END}"
            f"|{_UPPER}{{0,{WORD_HEAD - 1}}}{_BEFORE_LOWER}{lower}"
            f"|{_LOWER}{{1,{WORD_LOWER + 1}}}"
        )
    return f"({stem})({_JOINER}{_LOWER}{{1,{WORD_TAIL}}})?{_CLOSE}{{0,{WORD_CLOSE}}}"


def words_pattern(words: int) -> str:
    """Text of 1 to ``words`` words separated by one space (or ``": "``), the first starting with
    a letter, and at most one full stop, at the end: so the grammar itself stops a run like
    ".0.0.0.0...", never glues a lower-case letter to a capital or digit, ends the field where
    the sentence ends, and no field ends in a bare label (``action:``). The cap on
    words is set above what the prompt asks for, so a model never has to glue words to go on;
    the longest match, :func:`words_max_length`, is the field's max_length (the grammar follows
    the pattern, not max_length)."""
    return rf"^{_word(True)}(:? {_word(False)}){{0,{words - 1}}}[.]?$"


def words_max_length(words: int) -> int:
    """The longest text :func:`words_pattern` allows for ``words`` words."""
    return words * (WORD_CHARS + 2) - 1


SIGNAL_WORDS, RATIONALE_WORDS, REASON_WORDS = 8, 30, 16
RATIONALE_PATTERN = words_pattern(RATIONALE_WORDS)
SIGNAL_PATTERN = words_pattern(SIGNAL_WORDS)
REASON_PATTERN = words_pattern(REASON_WORDS)

Signal = Annotated[
    str, StringConstraints(min_length=2, max_length=words_max_length(SIGNAL_WORDS), pattern=SIGNAL_PATTERN)
]
Reason = Annotated[
    str, StringConstraints(min_length=2, max_length=words_max_length(REASON_WORDS), pattern=REASON_PATTERN)
]


class _Reply(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AnalystReport(_Reply):
    """The analyst's read of one instrument at one bar's close.

    Signals and rationale come before the action: the reply states what it sees, then
    decides, instead of justifying an action it picked first.
    """

    key_signals: list[Signal] = Field(min_length=1, max_length=2)
    rationale: str = Field(max_length=words_max_length(RATIONALE_WORDS), pattern=RATIONALE_PATTERN)
    action: Literal["BUY", "SELL", "HOLD"]
    conviction: float = Field(ge=0.0, le=1.0, description="0 = none, 1 = certain")
    horizon_days: int = Field(ge=1, le=20, description="expected holding period in trading days")


class RiskVerdict(_Reply):
    """The risk manager's review of the analyst's report against portfolio and limits."""

    decision: Literal["approve", "reduce", "reject"]
    max_position_pct: float = Field(ge=0.0, le=1.0, description="largest position, fraction of equity")
    stop_loss_pct: float = Field(ge=0.0, le=0.5, description="stop distance below entry, fraction")
    # one reason: each is ~15 sampled tokens on a 1.5B model, the longest part of the risk turn
    reasons: list[Reason] = Field(min_length=1, max_length=1)


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
