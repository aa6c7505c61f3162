"""``trading-agents bench selector``: decision latency under a load ramp, selector on and off.

Concurrent decision loops (threads; 1, 2 and 3 of them) each make a series of structured calls
with a per-call deadline. Every ramp step runs twice in the same process: ``off`` (every call
on the primary, answers that arrive after the deadline are misses) and ``on`` (the
:class:`~utils.llm_integration.model_selector.ModelSelectorClient` with the configured selector
settings). Per step and mode: p50/p95 call latency, deadline misses, errors, the primary's share
of the answers, and the routes taken.

The deadline is derived from the primary's own latency, measured here on an idle queue (the
median of three calls after two warm-ups): ``DEADLINE_FACTOR`` (1.5) times it. One loop alone
makes it; two or three loops share the primary, whose calls run one at a time, so a call
waits for another's and the primary alone misses (``loads_the_primary``: at least
``MIN_OFF_MISS_SHARE`` of the calls at 2 and 3 loops, or the bench proves nothing). Targets
with the selector on: no misses, and the primary's share at one loop at least
``MIN_PRIMARY_SHARE_ONE_LOOP``. Each step says what the fallback served (calls, reasons, p50).
The pressure limit is raised above the load other processes put on the machine at the start
(``pressure_limit_per_core``), so that on a shared machine the ramp, not the neighbours, is measured.

Models: the configured primary and fallback when both files are downloaded; otherwise the
embedded SmolLM2-135M as primary and a generated random-weight tiny llama as fallback (valid
structured replies of no meaning: this measures routing and latency, not answer quality).
Both then run on one thread each so the two models do not fight over the cores.
"""

from __future__ import annotations

import asyncio
import statistics
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any, Literal

from autogen_core.models import ChatCompletionClient, UserMessage
from pydantic import BaseModel, Field

from trading_agents.config.settings import Settings, load_settings


class BenchDecision(BaseModel):
    """A short structured reply, like the desk's verdicts."""

    action: Literal["BUY", "SELL", "HOLD"]
    conviction: float = Field(ge=0.0, le=1.0)


RAMP = (1, 2, 3)
DEADLINE_FACTOR = 1.5  # x the primary's idle latency: met alone, missed behind another call
MIN_OFF_MISS_SHARE = 0.2  # the primary alone must miss this share at 2 and 3 loops
MIN_PRIMARY_SHARE_ONE_LOOP = 0.95


def run(out_dir: Path, quick: bool = False) -> dict[str, Any]:
    """Run the ramp; return JSON-safe results (the CLI writes them to selector.json)."""
    from utils.llm_integration.model_selector import default_probe

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    settings = load_settings()
    pair = _models(settings, out_dir)
    if "skipped" in pair:
        return pair
    calls = 4 if quick else 8
    primary_s = _calibrate(pair)
    deadline_s = DEADLINE_FACTOR * primary_s
    at_start = default_probe().sample()
    pressure = _pressure_limit(settings.selector.max_load_per_core, at_start.load_per_core_now)
    settings.selector.max_load_per_core = pressure
    results: dict[str, Any] = {
        "models": pair["describe"],
        "selector": settings.selector.model_dump(exclude={"fallback_roles", "enabled"}),
        "machine_at_start": at_start.__dict__,
        "pressure_limit_per_core": pressure,
        "primary_latency_s": round(primary_s, 3),
        "deadline_factor": DEADLINE_FACTOR,
        "deadline_s": round(deadline_s, 3),
        "calls_per_loop": calls,
        "steps": [],
    }
    for loops in RAMP:
        step: dict[str, Any] = {"concurrent_loops": loops}
        for mode in ("off", "on"):
            step[mode] = _step(pair, settings, mode, loops, calls, deadline_s)
        results["steps"].append(step)
    results["summary"] = _summary(results["steps"])
    return results


def _models(settings: Settings, out_dir: Path) -> dict[str, Any]:
    """Component configs of the primary and fallback the bench runs on."""
    from trading_agents.agents.clients import local_client_config
    from trading_agents.errors import TradingAgentsError
    from trading_agents.model_files.registry import embedded_model_path, resolve_model
    from utils.llm_integration.autogen_client import AutoGenLLMConfig

    try:
        primary = resolve_model(settings.llm.primary, settings)
        fallback = resolve_model(settings.llm.fallback, settings) if settings.llm.fallback else None
        if not primary.embedded and fallback is not None and not fallback.embedded:
            return {
                "primary": local_client_config(primary, settings),
                "fallback": local_client_config(fallback, settings),
                "describe": {"primary": primary.name, "fallback": fallback.name, "synthetic_fallback": False},
            }
    except TradingAgentsError:
        pass  # not downloaded: the embedded pair below
    try:
        make_tiny_llama = _checkout_gguf_factory().make_tiny_llama
    except (ImportError, FileNotFoundError, AttributeError):
        reason = "configured models are not downloaded and tests/gguf_factory.py is not in this checkout"
        return {"skipped": reason}
    tiny = make_tiny_llama(out_dir / "bench-fallback.Q8_0.gguf")
    embedded = embedded_model_path()
    return {
        "primary": AutoGenLLMConfig.local(
            embedded, model_name="smollm2-135m-instruct", n_ctx=2048, n_threads=1, max_tokens=64
        ),
        "fallback": AutoGenLLMConfig.local(
            tiny, model_name="tiny-random-llama", n_ctx=2048, n_threads=1, max_tokens=256
        ),
        "describe": {
            "primary": "smollm2-135m-instruct (embedded, 1 thread)",
            "fallback": "tiny-random-llama (generated, 1 thread)",
            "synthetic_fallback": True,
        },
    }


def _pressure_limit(configured: float, others_now: float) -> float:
    """The selector's load limit for the bench: the configured one, raised above what other
    processes already load the machine with (twice that, plus one runnable task per core).

    The load the bench is about is its own loops' queue on the primary; the probe does not count
    this process's threads, so on a shared machine the others' load alone would route every
    call away for ``pressure`` and hide what the ramp does."""
    return round(max(configured, 2 * others_now + 1.0), 2)


def _ask(loop: int, i: int) -> list[UserMessage]:
    price = 100 + 7 * loop + i
    return [
        UserMessage(
            content=f"You are a trading desk analyst. GOOG closed at {price}.{i}, RSI {40 + 3 * i}, "
            f"volume {1 + loop}.{i}M. Buy, sell or hold? Reply with JSON.",
            source="desk",
        )
    ]


def _calibrate(pair: dict[str, Any]) -> float:
    """The primary's latency for one call on an idle queue: the median of three (after two
    warm-up calls, which load the model and fill llama.cpp's caches)."""
    from utils.llm_integration.autogen_client import LocalLlamaChatCompletionClient

    client = LocalLlamaChatCompletionClient.load_component(pair["primary"])
    for i in (0, 1):  # load, and fill llama.cpp's caches: first calls are slower
        asyncio.run(client.create(_ask(8, i), json_output=BenchDecision))
    timings = []
    for i in (1, 2, 3):
        started = time.monotonic()
        asyncio.run(client.create(_ask(9, i), json_output=BenchDecision))
        timings.append(time.monotonic() - started)
    return statistics.median(timings)


def _client(pair: dict[str, Any], settings: Settings, mode: str) -> ChatCompletionClient:
    from utils.llm_integration.autogen_client import LocalLlamaChatCompletionClient
    from utils.llm_integration.model_selector import ModelSelectorClient, SelectorConfig

    if mode == "off":
        return LocalLlamaChatCompletionClient.load_component(pair["primary"])
    cfg = SelectorConfig(
        primary=pair["primary"],
        fallback=pair["fallback"],
        role="analyst",
        **settings.selector.model_dump(exclude={"enabled", "fallback_roles", "deadline_s"}),
    )
    return ModelSelectorClient(cfg)


def _step(
    pair: dict[str, Any], settings: Settings, mode: str, loops: int, calls: int, deadline_s: float
) -> dict[str, Any]:
    """``loops`` threads, each making ``calls`` decisions in a row; one client per loop (like roles).

    The selector's shared state is reset once, before the clients are built: all loops' clients
    then share one view of the primary's queue and history, as a desk's roles do.
    """
    from utils.llm_integration.model_selector import reset_selector_state

    records: list[dict[str, Any]] = []
    lock = threading.Lock()
    reset_selector_state()
    clients = [_client(pair, settings, mode) for _ in range(loops)]

    def loop(n: int) -> None:
        client = clients[n]

        async def decide() -> None:
            for i in range(calls):
                args = {"deadline_s": deadline_s} if mode == "on" else {}
                started = time.monotonic()
                rec: dict[str, Any] = {"loop": n}
                try:
                    await client.create(_ask(n, i), json_output=BenchDecision, extra_create_args=args)
                    route = getattr(client, "last_route", None)
                    rec["reason"] = route.reason if route is not None else "primary"
                    rec["primary"] = route is None or route.model == client.primary.spec.display_name  # type: ignore[attr-defined]
                except Exception as exc:  # a failed decision is a miss
                    rec["error"] = f"{type(exc).__name__}: {exc}"
                rec["latency_s"] = time.monotonic() - started
                with lock:
                    records.append(rec)

        asyncio.run(decide())

    threads = [threading.Thread(target=loop, args=(n,)) for n in range(loops)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.monotonic() - started
    latencies = sorted(r["latency_s"] for r in records)
    answered = [r for r in records if "error" not in r]
    misses = sum(1 for r in records if "error" in r or r["latency_s"] > deadline_s)
    by_fallback = [r for r in answered if not r["primary"]]
    return {
        "calls": len(records),
        "p50_s": round(statistics.median(latencies), 3),
        "p95_s": round(_quantile(latencies, 0.95), 3),
        "max_s": round(latencies[-1], 3),
        "deadline_misses": misses,
        "miss_share": round(misses / max(1, len(records)), 3),
        "errors": len(records) - len(answered),
        "primary_share": round(sum(1 for r in answered if r["primary"]) / max(1, len(records)), 3),
        "routes": dict(Counter(r.get("reason", "failed") for r in records)),
        "fallback_served": {
            "calls": len(by_fallback),
            "reasons": dict(Counter(r["reason"] for r in by_fallback)),
            "p50_s": round(statistics.median([r["latency_s"] for r in by_fallback]), 3)
            if by_fallback
            else None,
            "misses": sum(1 for r in by_fallback if r["latency_s"] > deadline_s),
        },
        "wall_s": round(wall, 2),
    }


def _quantile(sorted_values: list[float], q: float) -> float:
    if len(sorted_values) == 1:
        return sorted_values[0]
    pos = q * (len(sorted_values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def _summary(steps: list[dict[str, Any]]) -> dict[str, Any]:
    """Misses off and on, the primary's share per load, and the targets (see the module doc)."""
    off_misses = sum(s["off"]["deadline_misses"] for s in steps)
    on_misses = sum(s["on"]["deadline_misses"] for s in steps)
    by_loops = {s["concurrent_loops"]: s for s in steps}
    loaded = [by_loops[n]["off"]["miss_share"] for n in (2, 3) if n in by_loops]
    loads_primary = bool(loaded) and min(loaded) >= MIN_OFF_MISS_SHARE
    one_loop = by_loops[1]["on"]["primary_share"] if 1 in by_loops else None
    share_ok = one_loop is not None and one_loop >= MIN_PRIMARY_SHARE_ONE_LOOP
    return {
        "off_deadline_misses": off_misses,
        "on_deadline_misses": on_misses,
        "off_miss_share_by_step": [s["off"]["miss_share"] for s in steps],
        "on_primary_share_by_step": [s["on"]["primary_share"] for s in steps],
        "fallback_calls_by_step": [s["on"]["fallback_served"]["calls"] for s in steps],
        "loads_the_primary": loads_primary,
        "primary_share_one_loop_ok": share_ok,
        "target_met": loads_primary and on_misses == 0 and share_ok,
    }


def _checkout_gguf_factory() -> Any:
    """``tests/gguf_factory.py`` of this checkout, loaded by path (the console script's
    ``sys.path`` does not hold the checkout root, and ``tests`` is not an installed package)."""
    import importlib.util

    from trading_agents.config.settings import project_root

    path = project_root() / "tests" / "gguf_factory.py"
    spec = importlib.util.spec_from_file_location("trading_agents_bench_gguf_factory", path)
    if spec is None or spec.loader is None or not path.is_file():
        raise FileNotFoundError(path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[spec.name]
        raise
    return module
