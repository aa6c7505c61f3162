"""Replies that parse but do not read as text.

*Degenerate* (:func:`degenerate_reasons`): runs of one character or of a short unit
(``.0.0.0.0``), the same word again and again, an empty signal or reason list.

*Malformed* (:func:`malformed_reasons`): words run together or cut. A lower-case letter followed
by a capital or a digit inside a word (``butEMA12``, ``iswithin1.6``), a mark or number run into
a lower-case word (``26.uggests``), a word cut where the
grammar's longest run of lower-case letters ends, a field ending in a colon (a bare label such
as ``action:``), a hyphen or an apostrophe.

The grammar guarantees a reply's shape, not its sense; ``bench session`` and ``bench quality``
report the share of replies each flags (``degenerate_reply_share``, ``malformed_text_share``,
targets 0).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from trading_agents.agents.schemas import WORD_LOWER

_CHAR_RUN = re.compile(r"(.)\1{5,}")  # one character six times or more
_UNIT_RUN = re.compile(r"(.{2,4}?)\1{3,}")  # a 2-4 character unit four times or more
_WORD_RUN = re.compile(r"\b(\w+)\b(?:\W+\1\b){2,}", re.IGNORECASE)  # a word three times in a row
LIST_FIELDS = ("key_signals", "reasons")
# a lower-case letter then a capital or digit, or a closing mark then a lower-case letter
_GLUED = re.compile(r"\S*(?:[a-z][A-Z0-9]|[%.,;:)][a-z]{2})\S*")
# the grammar's longest lower-case run: a word that long was most likely stopped, not finished
_CUT = re.compile(rf"[a-z]{{{WORD_LOWER + 1},}}")
_BAD_END = (":", "-", "'")
TEXT_FIELDS = ("key_signals", "rationale", "reasons")


def degenerate_reasons(output: Mapping[str, Any] | None) -> list[str]:
    """Why ``output`` (a parsed reply as a dict) is degenerate; [] when it reads as text."""
    if not output:
        return []
    found: list[str] = []
    for key in LIST_FIELDS:
        if key in output and not output[key]:
            found.append(f"empty {key}")
    for key, value in output.items():
        texts = value if isinstance(value, list) else [value]
        for text in texts:
            if not isinstance(text, str):
                continue
            if match := _CHAR_RUN.search(text) or _UNIT_RUN.search(text):
                found.append(f"{key} repeats {match.group(1)!r}")
            elif match := _WORD_RUN.search(text):
                found.append(f"{key} repeats the word {match.group(1)!r}")
    return found


def _texts(output: Mapping[str, Any]) -> list[tuple[str, str]]:
    found = []
    for key, value in output.items():
        for text in value if isinstance(value, list) else [value]:
            if isinstance(text, str):
                found.append((key, text))
    return found


def malformed_reasons(output: Mapping[str, Any] | None) -> list[str]:
    """Why the free text of ``output`` (a parsed reply as a dict) does not read as words; []
    when it does. Only the free-text fields count (key_signals, rationale, reasons): enum
    values such as ``BUY`` are not text."""
    if not output:
        return []
    found: list[str] = []
    for key, text in _texts({k: v for k, v in output.items() if k in TEXT_FIELDS}):
        if match := _GLUED.search(text):
            found.append(f"{key} runs words together: {match.group(0)!r}")
        if match := _CUT.search(text):
            found.append(f"{key} has a cut word: {match.group(0)!r}")
        if text.rstrip().endswith(_BAD_END):
            found.append(f"{key} ends in {text.rstrip()[-1]!r}: {text!r}")
    return found


def malformed_text_share(outputs: list[Mapping[str, Any] | None]) -> float | None:
    """The share of replies (parsed, as dicts) with malformed text; ``None`` without replies."""
    replies = [o for o in outputs if o is not None]
    if not replies:
        return None
    return round(sum(1 for o in replies if malformed_reasons(o)) / len(replies), 4)
