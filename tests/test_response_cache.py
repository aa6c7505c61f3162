"""Exact replay as a wrapper client: around the real local client, the real selector, any client."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from autogen_core.models import ChatCompletionClient, UserMessage

from tests.scripted_client import ScriptedClient
from trading_agents.agents.schemas import AnalystReport
from utils.llm_integration.autogen_client import AutoGenLLMConfig, LocalLlamaChatCompletionClient
from utils.llm_integration.components import load_llm_config
from utils.llm_integration.model_selector import ModelSelectorClient
from utils.llm_integration.response_cache import ResponseCacheClient

ASK = [UserMessage(content="GOOG rose 2% on volume; RSI 61. Buy, sell or hold?", source="desk")]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def stream(client: ChatCompletionClient, **kwargs: Any) -> list[Any]:
    async def collect() -> list[Any]:
        return [item async for item in client.create_stream(ASK, **kwargs)]

    return run(collect())


def test_any_client_is_replayed_and_its_arguments_are_part_of_the_key(tmp_path: Path) -> None:
    inner = ScriptedClient(["first reply", "second reply"])
    client = ResponseCacheClient(inner, tmp_path / "cache.sqlite")
    first = run(client.create(ASK))
    again = run(client.create(ASK))
    assert (first.content, again.content) == ("first reply", "first reply")
    assert again.cached and not first.cached and inner.calls == 1
    other = run(client.create(ASK, json_output=True))  # another output format: another call
    assert other.content == "second reply" and inner.calls == 2
    items = stream(client)  # a replay streams the stored text, then the result
    assert items[0] == "first reply" and items[-1].cached and inner.calls == 2
    run(client.close())


def test_local_client_replay_keeps_metrics_and_loads_as_a_component(
    embedded_model: Path, tmp_path: Path
) -> None:
    cfg = AutoGenLLMConfig.local(embedded_model, model_name="smol", n_ctx=1024, n_threads=1, max_tokens=400)
    local = LocalLlamaChatCompletionClient.load_component(cfg)
    wrapper = ResponseCacheClient(local, tmp_path / "cache.sqlite")
    client = load_llm_config(
        wrapper.dump_component().model_dump()
    )  # provider allowlisted, config round-trips
    assert isinstance(client, ResponseCacheClient)
    first = run(client.create(ASK, json_output=AnalystReport))
    recorded = client.last_metrics
    calls = client.llm.calls  # attributes of the wrapped client come through
    again = run(client.create(ASK, json_output=AnalystReport))
    assert again.content == first.content and client.llm.calls == calls
    assert recorded is not None and client.last_metrics is not None
    assert client.last_metrics.from_response_cache and not recorded.from_response_cache
    assert client.last_metrics.completion_tokens == recorded.completion_tokens
    assert again.usage.completion_tokens == first.usage.completion_tokens
    run(client.close())
    run(wrapper.close())
    with sqlite3.connect(tmp_path / "cache.sqlite") as db:
        assert db.execute("SELECT COUNT(*), MIN(model_sha256) FROM responses").fetchone() == (
            1,
            recorded.model_sha256,
        )


@pytest.mark.usefixtures("fresh_selector_state")
def test_a_replay_through_the_selector_returns_the_recorded_route_without_calling_a_model(
    embedded_model: Path, tiny_llama: Path, tmp_path: Path
) -> None:
    def selector() -> ModelSelectorClient:
        return ModelSelectorClient(
            primary=AutoGenLLMConfig.local(
                embedded_model, model_name="smol-primary", n_ctx=1024, n_threads=1
            ),
            fallback=AutoGenLLMConfig.local(tiny_llama, model_name="tiny-fallback", n_ctx=2048, n_threads=1),
            max_load_per_core=1000.0,
            min_available_mb=0,
        )

    first = ResponseCacheClient(selector(), tmp_path / "cache.sqlite")
    recorded = run(first.create(ASK, json_output=AnalystReport, extra_create_args={"max_tokens": 400}))
    route = first.last_route
    assert route is not None and route.model == "smol-primary" and route.reason == "primary"
    run(first.close())
    inner = selector()
    calls = (inner.primary.llm.calls, inner.fallback.llm.calls if inner.fallback else 0)
    replay = ResponseCacheClient(inner, tmp_path / "cache.sqlite")
    again = run(replay.create(ASK, json_output=AnalystReport, extra_create_args={"max_tokens": 400}))
    assert again.content == recorded.content and again.cached
    assert replay.last_route == route and replay.last_prompt == first.last_prompt
    assert (inner.primary.llm.calls, inner.fallback.llm.calls if inner.fallback else 0) == calls
    assert inner.route_counts()["primary"] == 0  # the selector did not even plan
    other = run(
        replay.create(ASK, json_output=AnalystReport, extra_create_args={"max_tokens": 400, "seed": 7})
    )
    assert not other.cached  # the call's arguments are part of the key
    run(replay.close())
