"""Exact replay: a model client that answers repeated calls from a SQLite store.

:class:`ResponseCacheClient` wraps any AutoGen ``ChatCompletionClient`` (in the manner of
autogen-ext's ``ChatCompletionCache``) and is itself a declarative component::

    client = ResponseCacheClient(LocalLlamaChatCompletionClient(model_path="m.gguf"), "cache.sqlite")

The key is the sha256 of everything that shapes the reply. A client that knows better than its
config what that is (the local model client: model sha256, the rendered prompt, the resolved
sampling parameters and seed, the schema; the selector: both models, its limits, the messages)
says so through ``replay_key(messages, json_output=..., extra_create_args=...)``; for any other
client the key covers its component config, the messages, tools, output schema and extra args.

A hit returns the stored reply without calling the wrapped client, and ``last_metrics``,
``last_prompt`` and ``last_route`` then say what the recorded call said (with
``from_response_cache`` set and zero latency). Other attributes are the wrapped client's.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import threading
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, Protocol, Self, runtime_checkable

from autogen_core import CancellationToken, Component, ComponentModel
from autogen_core.models import (
    ChatCompletionClient,
    CreateResult,
    LLMMessage,
    ModelCapabilities,  # type: ignore[attr-defined]
    ModelInfo,
    RequestUsage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel, ConfigDict, Field

from utils.llm_integration.client_base import BaseChatClient, Route, key_of
from utils.llm_integration.components import CACHE_PROVIDER, load_llm_config
from utils.llm_integration.loaded_model import CallMetrics


class ResponseStore:
    """SQLite store of replies by key. Safe for several threads and processes (WAL, one short
    transaction per write)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, timeout=30)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, model_sha256 TEXT NOT NULL,"
            " text TEXT NOT NULL, metrics TEXT NOT NULL, created_at REAL NOT NULL)"
        )
        self._db.commit()
        self.hits = 0
        self.misses = 0

    def get(self, key: str) -> tuple[str, dict[str, Any]] | None:
        """``(text, record)`` stored under ``key``, or None."""
        with self._lock:
            row = self._db.execute("SELECT text, metrics FROM responses WHERE key = ?", (key,)).fetchone()
        if row is None:
            self.misses += 1
            return None
        self.hits += 1
        return row[0], json.loads(row[1])

    def put(self, key: str, model_sha256: str, text: str, record: Mapping[str, Any]) -> None:
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?)",
                (key, model_sha256, text, json.dumps(dict(record)), time.time()),
            )
            self._db.commit()

    def close(self) -> None:
        with self._lock:
            self._db.close()


@runtime_checkable
class Replayable(Protocol):
    """A client that states what shapes its reply (a JSON-serialisable mapping)."""

    def replay_key(
        self,
        messages: Sequence[LLMMessage],
        *,
        json_output: bool | type[BaseModel] | None,
        extra_create_args: Mapping[str, Any],
    ) -> Mapping[str, Any]: ...


def replay_key(
    client: ChatCompletionClient,
    messages: Sequence[LLMMessage],
    *,
    tools: Sequence[Tool | ToolSchema] = (),
    json_output: bool | type[BaseModel] | None = None,
    extra_create_args: Mapping[str, Any] = {},
) -> str:
    """The cache key of one call to ``client`` (blocking: a local client may load its model)."""
    if isinstance(client, Replayable) and not tools:
        blob: Mapping[str, Any] = client.replay_key(
            messages, json_output=json_output, extra_create_args=extra_create_args
        )
    else:
        schema: Any = json_output
        if isinstance(json_output, type) and issubclass(json_output, BaseModel):
            schema = json_output.model_json_schema()
        blob = {
            "client": _identity(client),
            "messages": [m.model_dump(mode="json") for m in messages],
            "tools": [t.schema if isinstance(t, Tool) else t for t in tools],
            "json_output": schema,
            "extra_create_args": dict(extra_create_args),
        }
    return key_of(blob)


def _identity(client: ChatCompletionClient) -> Any:
    """The client's component config, or its class for a client that is not a component."""
    try:
        return client.dump_component().model_dump(mode="json")
    except (AttributeError, TypeError, NotImplementedError):
        return f"{type(client).__module__}.{type(client).__qualname__}"


class ResponseCacheConfig(BaseModel):
    """Declarative config of :class:`ResponseCacheClient` (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    client: ComponentModel = Field(description="The wrapped model client's component config.")
    path: str = Field(description="SQLite file of recorded replies.")


class ResponseCacheClient(BaseChatClient, Component[ResponseCacheConfig]):
    """Any model client, with its replies recorded and replayed (see the module docstring)."""

    component_type = "model"
    component_config_schema = ResponseCacheConfig
    component_provider_override = CACHE_PROVIDER

    def __init__(self, client: ChatCompletionClient, path: str | Path) -> None:
        self.client = client
        self.store = ResponseStore(Path(path))
        self._hit: dict[str, Any] | None = None  # the record replayed by the last call, if it was a hit

    def __getattr__(self, name: str) -> Any:
        # only reached for attributes the wrapper lacks: the wrapped client's (``llm``, ``spec``...)
        if name == "client":
            raise AttributeError(name)
        return getattr(self.client, name)

    # -- what the last call recorded -------------------------------------------------------------

    @property
    def last_metrics(self) -> CallMetrics | None:
        if self._hit is not None:
            return self._hit["metrics"]
        return getattr(self.client, "last_metrics", None)

    @last_metrics.setter
    def last_metrics(self, value: CallMetrics | None) -> None:
        self._hit = None
        if hasattr(self.client, "last_metrics"):
            self.client.last_metrics = value  # type: ignore[attr-defined]

    @property
    def last_prompt(self) -> str:
        if self._hit is not None:
            return self._hit["prompt"]
        return getattr(self.client, "last_prompt", "")

    @property
    def last_recorded_latency_s(self) -> float | None:
        """For a replayed reply, the latency of the call it was recorded from (what it cost to
        make); ``None`` when the last call was not answered from the store."""
        if self._hit is None:
            return None
        return float(self._hit["recorded_latency_s"])

    @property
    def last_route(self) -> Route | None:
        if self._hit is not None:
            return self._hit["route"]
        return getattr(self.client, "last_route", None)

    # -- component -------------------------------------------------------------------------------

    def _to_config(self) -> ResponseCacheConfig:
        return ResponseCacheConfig(client=self.client.dump_component(), path=str(self.store.path))

    @classmethod
    def _from_config(cls, config: ResponseCacheConfig) -> Self:
        return cls(load_llm_config(config.client.model_dump(exclude_none=True)), config.path)

    # -- the wrapped client's view ---------------------------------------------------------------

    @property
    def model_info(self) -> ModelInfo:
        return self.client.model_info

    @property
    def capabilities(self) -> ModelCapabilities:  # type: ignore[override]
        return self.client.capabilities

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = ()) -> int:
        return self.client.count_tokens(messages, tools=tools)

    def remaining_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = ()
    ) -> int:
        return self.client.remaining_tokens(messages, tools=tools)

    # -- calls -------------------------------------------------------------------------------------

    async def create_stream(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = (),
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        """The stored reply as one piece and its result, or the wrapped client's stream (recorded)."""
        self._hit = None
        key = await asyncio.to_thread(
            replay_key,
            self.client,
            messages,
            tools=tools,
            json_output=json_output,
            extra_create_args=extra_create_args,
        )
        stored = self.store.get(key)
        if stored is not None:
            text, record = stored
            self._hit = hit = _replayed(record)
            result = CreateResult(
                finish_reason=hit["finish_reason"], content=text, usage=hit["usage"], cached=True
            )
            if text:
                yield text
            self._add_usage(result.usage)
            yield result
            return
        async for item in self.client.create_stream(
            messages,
            tools=tools,
            tool_choice=tool_choice,
            json_output=json_output,
            extra_create_args=extra_create_args,
            cancellation_token=cancellation_token,
        ):
            if isinstance(item, CreateResult):
                self._add_usage(item.usage)
                if isinstance(item.content, str) and not item.cached:
                    self._record(key, item)
            yield item

    def _record(self, key: str, result: CreateResult) -> None:
        metrics = getattr(self.client, "last_metrics", None)
        route = getattr(self.client, "last_route", None)
        record = {
            "metrics": metrics.to_dict() if isinstance(metrics, CallMetrics) else None,
            "prompt": getattr(self.client, "last_prompt", "") or "",
            "route": asdict(route) if isinstance(route, Route) else None,
            "finish_reason": result.finish_reason,
            "usage": asdict(result.usage),
        }
        sha = metrics.model_sha256 if isinstance(metrics, CallMetrics) else ""
        assert isinstance(result.content, str)
        self.store.put(key, sha, result.content, record)

    async def close(self) -> None:
        await self.client.close()
        self.store.close()


def _replayed(record: Mapping[str, Any]) -> dict[str, Any]:
    """What a stored record says about its call: metrics (marked as replayed), prompt, route,
    finish reason and usage. Rows written before the cache became a wrapper hold metrics alone.
    """
    if "model_sha256" in record:  # metrics alone, or a server client's record (metrics and route)
        raw = dict(record)
        record = {"route": raw.pop("route", None), "metrics": raw}
    raw = record.get("metrics")
    metrics = None
    recorded_latency = float((raw or {}).get("latency_s") or 0.0)
    if raw is not None:
        spent = dict.fromkeys(
            ("ttft_s", "latency_s", "prompt_eval_s", "generation_s", "sampling_s", "cache_state_s"), 0.0
        )
        metrics = CallMetrics(**{**raw, "from_response_cache": True, **spent})
        usage = RequestUsage(prompt_tokens=metrics.prompt_tokens, completion_tokens=metrics.completion_tokens)
        finish = "length" if metrics.finish_reason == "length" else "stop"
    else:
        usage = RequestUsage(**record["usage"])
        finish = record["finish_reason"]
    return {
        "metrics": metrics,
        "prompt": record.get("prompt", ""),
        "route": Route(**record["route"]) if record.get("route") else None,
        "finish_reason": finish,
        "usage": usage,
        "recorded_latency_s": recorded_latency,
    }
