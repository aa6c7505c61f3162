"""Replies that parse but do not read as text: runs of one character or of a short unit
(``.0.0.0.0``), the same word again and again, an empty signal or reason list.

The grammar guarantees a reply's shape, not its sense; ``bench session`` reports the share
of replies this flags (``degenerate_reply_share``, target 0).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

_CHAR_RUN = re.compile(r"(.)\1{5,}")  # one character six times or more
_UNIT_RUN = re.compile(r"(.{2,4}?)\1{3,}")  # a 2-4 character unit four times or more
_WORD_RUN = re.compile(r"\b(\w+)\b(?:\W+\1\b){2,}", re.IGNORECASE)  # a word three times in a row
LIST_FIELDS = ("key_signals", "reasons")


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
