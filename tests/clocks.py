"""Clocks a test controls, so that a deadline or a cooldown is decided by the test, never by
how fast the shared machine happens to be."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any


class TickClock:
    """Runs ``step_s`` seconds ahead at every read: a deadline ``d`` seconds away is passed after
    about ``d / step_s`` reads (the model reads its clock once per generated token)."""

    def __init__(self, step_s: float) -> None:
        self.step_s, self.reads = step_s, 0

    def __call__(self) -> float:
        self.reads += 1
        return time.monotonic() + self.reads * self.step_s


def never_late() -> float:
    """A clock no deadline ever comes for: the model it is given to always finishes its reply."""
    return -math.inf


class ManualClock:
    """Stands still until the test moves ``now``."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@contextmanager
def model_clock(llm: Any, clock: Callable[[], float]) -> Iterator[None]:
    """``llm`` (a shared ``LocalLLM``) reads ``clock`` for its deadlines inside the block."""
    llm.clock = clock
    try:
        yield
    finally:
        llm.clock = time.monotonic
