"""An AutoGen ``ChatCompletionClient`` for a ``trading-agents serve`` server, over HTTP.

It speaks the server's OpenAI chat-completions API (streaming, ``response_format: json_schema``
for structured output) and reads what only that server tells: which model served and the
selector's reason (``last_route``), the model file's sha256 and the prompt as the model saw it
(``last_prompt``). ``last_metrics`` holds the same :class:`CallMetrics` an in-process client
records, so agents and their records do not see the difference.

Replay: with ``response_cache`` set, a reply is stored under the one key rule
(:func:`~utils.llm_integration.client_base.replay_blob`) with the sha256 of the model that
served it (from the server's ``/health``); a later call with the same inputs is answered from
the cache, without a request, if any of the models that may serve it (the selector's primary,
then its fallback) has it. The key is the in-process client's, so a cache filled through a
server replays in-process on the same model file, and the other way round. ``top_k`` and
``repeat_penalty`` are not sent (the server applies its own ``llm:`` settings); they are part
of the key as this side's settings state them, which match when both sides share a config.

Example::

    health = fetch_health("http://127.0.0.1:8000")
    client = ServerChatCompletionClient(
        base_url="http://127.0.0.1:8000", model="selector",
        model_sha256={m["id"]: m["sha256"] for m in health["models"]},
        candidates=[health["primary"], health["fallback"]],
    )
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal, Self

from autogen_core import CancellationToken, Component
from autogen_core.models import CreateResult, LLMMessage
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from utils.llm_integration.client_base import (
    Route,
    call_sampling,
    key_of,
    output_schema,
    replay_blob,
    to_chat_messages,
    validate_reply,
)
from utils.llm_integration.components import SERVER_PROVIDER
from utils.llm_integration.loaded_model import CallMetrics
from utils.llm_integration.openai_wire import (
    OpenAIWireClient,
    WireReply,
    chat_body,
    server_get,
    server_root,
)
from utils.llm_integration.response_cache import ResponseStore
from utils.llm_integration.spec import SamplingParams

_EXTRA_ARGS = {"max_tokens", "temperature", "top_p", "seed", "deadline_s"}


class ServerClientConfig(BaseModel):
    """Declarative config of :class:`ServerChatCompletionClient` (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="The server, http://host:port (a trailing /v1 is fine).")
    model: str = Field(description="A model id of the server's /v1/models, or `selector`.")
    api_key: SecretStr | None = None
    model_sha256: dict[str, str] = Field(default_factory=dict, description="Served model -> file sha256.")
    candidates: list[str] = Field(default_factory=list, description="Models that may serve; cache lookups.")
    max_tokens: int = Field(SamplingParams.max_tokens, ge=1)
    temperature: float = Field(SamplingParams.temperature, ge=0.0, le=2.0)
    top_p: float = Field(SamplingParams.top_p, gt=0.0, le=1.0)
    top_k: int = Field(SamplingParams.top_k, ge=0, description="The server's own; part of the replay key.")
    repeat_penalty: float = Field(
        SamplingParams.repeat_penalty, ge=1.0, le=2.0, description="The server's own; part of the replay key."
    )
    seed: int = Field(SamplingParams.seed, ge=0)
    deadline_s: float | None = Field(None, gt=0.0, description="Sent as x-trading-agents-deadline.")
    timeout_s: float = Field(900.0, gt=0.0, description="Longest wait for a reply.")
    response_cache: str | None = Field(None, description="SQLite file for exact replay; null: off.")
    family: str = "unknown"


def fetch_health(
    base_url: str, api_key: SecretStr | str | None = None, timeout_s: float = 10.0
) -> dict[str, Any]:
    """The server's ``/health`` (models with their sha256, primary, fallback, selector).

    Raises :class:`LLMError` when the server cannot be reached or refuses the key.
    """
    root = server_root(base_url)
    return server_get(
        root,
        "/health",
        api_key,
        timeout_s,
        key_setting="llm.server_api_key",
        what="model server",
        todo="start it with `trading-agents serve` or unset llm.server_url",
    ).json()


class ServerChatCompletionClient(OpenAIWireClient, Component[ServerClientConfig]):
    """AutoGen model client over a ``trading-agents serve`` server (see the module docstring).

    ``extra_create_args``: ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``deadline_s``.
    A cancellation token closes the connection, which stops the server's generation.
    """

    component_type = "model"
    component_config_schema = ServerClientConfig
    component_provider_override = SERVER_PROVIDER
    key_setting = "llm.server_api_key"
    unreachable_hint = "is `trading-agents serve` running?"

    def __init__(self, config: ServerClientConfig | None = None, /, **kwargs: Any) -> None:
        self._config = config if config is not None else ServerClientConfig(**kwargs)
        cfg = self._config
        self._root = server_root(cfg.base_url)
        self._timeout_s = cfg.timeout_s
        self._api_key = cfg.api_key
        self.family = cfg.family
        self._cache = ResponseStore(Path(cfg.response_cache)) if cfg.response_cache else None

    def _to_config(self) -> ServerClientConfig:
        return self._config.model_copy()

    @classmethod
    def _from_config(cls, config: ServerClientConfig) -> Self:
        return cls(config)

    @property
    def response_cache(self) -> ResponseStore | None:
        return self._cache

    # -- calls ------------------------------------------------------------------------------------

    def _sampling(self, extra: Mapping[str, Any]) -> tuple[SamplingParams, float | None]:
        sampling = call_sampling(self._config, extra, _EXTRA_ARGS)  # top_k, repeat_penalty: the config's
        deadline = extra.get("deadline_s", self._config.deadline_s)
        return sampling, float(deadline) if deadline is not None else None

    def _cache_keys(
        self, chat: list[dict[str, str]], sampling: SamplingParams, schema: Mapping[str, Any] | None
    ) -> list[str]:
        names = self._config.candidates or [self._config.model]
        shas = [self._config.model_sha256[n] for n in names if n in self._config.model_sha256]
        return [key_of(replay_blob(sha, chat, sampling, schema)) for sha in shas]

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
        """Yield text pieces as the server streams them, then one :class:`CreateResult`."""
        if tools:
            raise ValueError("the model server has no function calling; use structured output instead")
        sampling, deadline_s = self._sampling(extra_create_args)
        schema, schema_json = output_schema(json_output)
        chat = to_chat_messages(messages)
        self._begin()
        for key in self._cache_keys(chat, sampling, schema_json) if self._cache else []:
            assert self._cache is not None
            hit = self._cache.get(key)
            if hit is not None:
                text, stored = hit
                if "metrics" in stored:  # written by the in-process response cache
                    stored = {**(stored["metrics"] or {}), "route": stored.get("route")}
                route = stored.pop("route", None)
                metrics = CallMetrics(
                    **{**stored, "from_response_cache": True, "ttft_s": 0.0, "latency_s": 0.0}
                )
                validate_reply(text, schema, metrics)
                yield text
                yield self._finish(text, metrics, Route(**route) if route else None, "")
                return

        body = chat_body(self._config.model, chat, sampling, schema, schema_json)
        headers = {"x-trading-agents-prompt": "include"}
        if deadline_s is not None:
            headers["x-trading-agents-deadline"] = f"{deadline_s:.3f}"

        reply = WireReply()
        async for piece in self._stream_chat(
            "/v1/chat/completions", body, headers, reply, cancellation_token
        ):
            yield piece
        ext = reply.extension
        route_data = ext.get("route") or {"model": self._config.model, "reason": "primary"}
        route = Route(route_data["model"], route_data.get("reason", "primary"), route_data.get("detail", ""))
        sha = ext.get("model_sha256") or self._config.model_sha256.get(route.model, "")
        metrics = reply.metrics(route.model, sha, grammar=schema_json is not None)
        validate_reply(reply.text, schema, metrics)
        if self._cache is not None and sha:
            key = key_of(replay_blob(sha, chat, sampling, schema_json))
            self._cache.put(key, sha, reply.text, {**metrics.to_dict(), "route": route.to_dict()})
        yield self._finish(reply.text, metrics, route, ext.get("prompt") or "")

    async def close(self) -> None:
        await self._close_http()
        if self._cache is not None:
            self._cache.close()
            self._cache = None
