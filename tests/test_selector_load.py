"""The selector under real load: concurrent callers on threads, and CPU-burning processes.

The machine may be shared, so the pressure threshold is set from the load measured just before
the burners start; the assertions are on routes, never on wall times.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import pytest
from autogen_core.models import UserMessage
from pydantic import BaseModel, Field

from utils.llm_integration.autogen_client import AutoGenLLMConfig
from utils.llm_integration.model_selector import LoadProbe, ModelSelectorClient

BURNERS = 4  # on 2 CPUs: +2 runnable tasks per core
BURN_LIMIT_S = 20.0  # a burner ends itself even if this process dies


class Decision(BaseModel):
    action: Literal["BUY", "SELL", "HOLD"]
    conviction: float = Field(ge=0.0, le=1.0)


ASK = [UserMessage(content="GOOG rose 2% on volume; RSI 61. Buy, sell or hold?", source="desk")]


pytestmark = pytest.mark.usefixtures("fresh_selector_state")


def make_client(embedded_model: Path, tiny_llama: Path, **options: Any) -> ModelSelectorClient:
    return ModelSelectorClient(
        primary=AutoGenLLMConfig.local(
            embedded_model, model_name="smol-load", n_ctx=1024, n_threads=1, max_tokens=64
        ),
        fallback=AutoGenLLMConfig.local(
            tiny_llama, model_name="tiny-load", n_ctx=2048, n_threads=1, max_tokens=256
        ),
        **options,
    )


def wait_for(condition: Callable[[], bool], limit_s: float, step_s: float = 0.2) -> bool:
    end = time.monotonic() + limit_s
    while time.monotonic() < end:
        if condition():
            return True
        time.sleep(step_s)
    return condition()


def test_concurrent_callers_beyond_the_queue_go_to_the_fallback(
    embedded_model: Path, tiny_llama: Path
) -> None:
    client = make_client(embedded_model, tiny_llama, max_in_flight=1, max_queue=1, max_load_per_core=1000.0)
    asyncio.run(client.create(ASK, json_output=Decision))  # load before the race
    errors: list[BaseException] = []
    start = threading.Barrier(4)

    def caller() -> None:
        try:
            start.wait()
            asyncio.run(client.create(ASK, json_output=Decision))
            assert client.last_route is not None
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    counts = client.route_counts()
    assert counts["primary"] + counts["queue"] == 5
    assert counts["queue"] >= 2  # at most one in flight + one queued on the primary
    assert client.health.active == 0
    asyncio.run(client.create(ASK, json_output=Decision))  # the queue drained: back to the primary
    assert client.last_route is not None and client.last_route.reason == "primary"


def test_cpu_burn_switches_to_the_fallback_and_back(embedded_model: Path, tiny_llama: Path) -> None:
    probe = LoadProbe(tau_s=0.5)
    baseline = 0.0
    for _ in range(5):
        baseline = max(baseline, probe.sample().load_per_core_now)
        time.sleep(0.1)
    limit = baseline + 1.0
    client = make_client(
        embedded_model, tiny_llama, max_load_per_core=limit, hysteresis=0.2, min_available_mb=0, probe=probe
    )
    assert client.plan_now().reason == "primary"
    burn = f"import time\nend = time.monotonic() + {BURN_LIMIT_S}\nwhile time.monotonic() < end: pass"
    burners = [subprocess.Popen([sys.executable, "-c", burn]) for _ in range(BURNERS)]
    try:
        assert wait_for(lambda: client.plan_now().reason == "pressure", 8.0), probe.sample()
        asyncio.run(client.create(ASK, json_output=Decision))
        assert client.last_route is not None and client.last_route.reason == "pressure"
        assert client.last_route.model == "tiny-load"
    finally:
        for p in burners:
            p.kill()
        for p in burners:
            p.wait(timeout=10)
    assert wait_for(lambda: client.plan_now().reason == "primary", 15.0), probe.sample()
    asyncio.run(client.create(ASK, json_output=Decision))
    assert client.last_route is not None and client.last_route.reason == "primary"
    assert client.last_route.model == "smol-load"
