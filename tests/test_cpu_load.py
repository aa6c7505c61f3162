"""Choosing a long prompt batch's threads from what other processes use (pure logic, with the
machine's counters scripted; plus one reading of the real ``/proc/stat``)."""

from __future__ import annotations

import os
import sys
import time

import pytest

from utils.llm_integration.cpu_load import OtherLoad, batch_threads, usable_cores


class Counters:
    def __init__(self) -> None:
        self.t = 0.0
        self.machine = 0.0  # seconds of CPU, all processes
        self.own = 0.0

    def run(self, seconds: float, own_cores: float, other_cores: float) -> None:
        self.t += seconds
        self.own += own_cores * seconds
        self.machine += (own_cores + other_cores) * seconds


def load_of(c: Counters) -> OtherLoad:
    return OtherLoad(machine_busy=lambda: c.machine, own_cpu=lambda: c.own, clock=lambda: c.t)


def test_other_processes_load_is_the_machine_s_less_this_process_s() -> None:
    c = Counters()
    load = load_of(c)
    assert load.cores() is None  # nothing to compare with yet
    for _ in range(10):  # decoding on one core beside another session's core
        c.run(0.1, own_cores=1.0, other_cores=1.0)
        load.note()
    assert load.cores() == pytest.approx(1.0)
    for _ in range(20):  # the other session ended: only the last second counts
        c.run(0.1, own_cores=1.0, other_cores=0.0)
        load.note()
    assert load.cores() == pytest.approx(0.0)


def test_a_long_batch_gets_the_prompt_threads_only_on_free_cores() -> None:
    assert batch_threads(1, 2, other_cores=0.1, cores=2) == 2
    assert batch_threads(1, 2, other_cores=0.9, cores=2) == 1
    assert batch_threads(1, 2, other_cores=1.8, cores=2) == 1  # never under the decode count
    assert batch_threads(2, 8, other_cores=3.0, cores=8) == 5
    assert batch_threads(1, 2, other_cores=None, cores=2) == 2  # unknown load: as measured


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/stat")
def test_the_real_counters_see_a_busy_child_process() -> None:
    import subprocess

    load = OtherLoad()
    load.note()
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.6)
        busy = load.cores()
    finally:
        spin.kill()
        spin.wait()
    assert busy is not None and busy >= 0.5
    assert 1 <= usable_cores() <= (os.cpu_count() or 1)
