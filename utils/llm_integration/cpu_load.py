"""How many CPU cores other processes are using right now, for choosing a prompt batch's threads.

Two threads evaluate a long prompt about 1.9x faster than one on an idle 2-core machine, but
two sessions doing so at once put four threads on two cores: each batch then waits on a
descheduled thread. :class:`OtherLoad` reads the machine's busy time (``/proc/stat``) and this
process's own CPU time (``os.times``) and reports the difference over the time since it last
looked: the cores other processes kept busy. :func:`batch_threads` gives a long batch the
measured prompt thread count only while enough cores are free.

Linux only; elsewhere (no ``/proc/stat``) the load reads as unknown and nothing changes.
Standard library only.
"""

from __future__ import annotations

import os
import time
from collections import deque
from collections.abc import Callable
from pathlib import Path

PROC_STAT = Path("/proc/stat")
MIN_INTERVAL_S = 0.05  # shorter intervals are mostly scheduler noise: the last reading stands


def _machine_busy_s(stat: Path = PROC_STAT) -> float | None:
    """Seconds of CPU time all processes have used since boot (all cores), or None."""
    try:
        first = stat.read_text().split("\n", 1)[0].split()
    except OSError:
        return None
    if not first or first[0] != "cpu":
        return None
    ticks = [int(x) for x in first[1:9]]  # user nice system idle iowait irq softirq steal
    busy = sum(ticks) - ticks[3] - ticks[4]
    return busy / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    t = os.times()
    return t.user + t.system


class OtherLoad:
    """Cores kept busy by other processes over the last second or so (see the module docstring).

    :meth:`note` records a reading (cheap: one read of ``/proc/stat``; call it often, say per
    forward pass); :meth:`cores` reports the other processes' load since the oldest reading
    within ``window_s``.
    """

    def __init__(
        self,
        machine_busy: Callable[[], float | None] = _machine_busy_s,
        own_cpu: Callable[[], float] = _own_cpu_s,
        clock: Callable[[], float] = time.monotonic,
        window_s: float = 1.0,
    ) -> None:
        self._machine_busy = machine_busy
        self._own_cpu = own_cpu
        self._clock = clock
        self.window_s = window_s
        self._readings: deque[tuple[float, float, float]] = deque(maxlen=64)

    def _read(self) -> tuple[float, float, float] | None:
        busy = self._machine_busy()
        return None if busy is None else (self._clock(), busy, self._own_cpu())

    def note(self) -> None:
        if self._readings and self._clock() - self._readings[-1][0] < MIN_INTERVAL_S:
            return
        reading = self._read()
        if reading is not None:
            self._readings.append(reading)

    def cores(self) -> float | None:
        """Other processes' cores since the oldest reading of the window (None without one
        old enough, or off Linux)."""
        now = self._read()
        if now is None:
            return None
        t = now[0]
        usable = [r for r in self._readings if t - r[0] >= MIN_INTERVAL_S]
        self._readings.append(now)
        if not usable:
            return None
        recent = [r for r in usable if t - r[0] <= self.window_s]
        then, busy, own = recent[0] if recent else usable[-1]
        return max(0.0, ((now[1] - busy) - (now[2] - own)) / (t - then))


def usable_cores() -> int:
    """The cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def batch_threads(n_threads: int, n_threads_batch: int, other_cores: float | None, cores: int) -> int:
    """Threads for a long prompt batch: the measured ``n_threads_batch`` while the cores left by
    other processes hold them, fewer when they do not, never fewer than ``n_threads``."""
    if other_cores is None or n_threads_batch <= n_threads:
        return n_threads_batch
    free = int(cores - other_cores + 0.5)
    return max(n_threads, min(n_threads_batch, free))
