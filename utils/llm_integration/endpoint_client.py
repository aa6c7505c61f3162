"""An AutoGen ``ChatCompletionClient`` for any OpenAI-compatible server, over HTTP.

llama.cpp's ``llama-server`` (parallel slots, continuous batching), vLLM, Ollama or a hosted
API. Structured output is asked for in one of three ways (``structured``):

``json_schema``  ``response_format: {"type": "json_schema", ...}`` (llama-server, vLLM, OpenAI):
                 the server constrains decoding to the pydantic model's JSON schema.
``json_object``  ``response_format: {"type": "json_object"}``: any JSON; the schema is only
                 checked here.
``ollama``       Ollama's native ``POST /api/chat`` with ``format: <schema>``.

Whatever the server returns is validated against the pydantic model here, exactly as
in-process: a reply that does not validate raises ``InvalidOutputError`` and the desk fails
closed (no order). Fixed-text decoding (the schema's keys evaluated in batches) exists only
in-process; a server decodes the whole reply itself.

``check_endpoint`` is the preflight: the server answers, accepts the key, and lists the model
(``GET /v1/models``, or ``/api/tags`` for Ollama); otherwise one :class:`LLMError` (exit 3)
before any work starts. ``max_in_flight`` bounds the requests open at once per process and
server, whatever the number of clients and event loops.

Replay: :meth:`EndpointChatCompletionClient.replay_key` is the one key rule
(:func:`~utils.llm_integration.client_base.replay_blob`) with ``endpoint:<model>@<revision>``
as the model's identity; wrap the client in
:class:`~utils.llm_integration.response_cache.ResponseCacheClient` to record and replay.

Example::

    check_endpoint("http://127.0.0.1:8080", "smollm2")
    client = EndpointChatCompletionClient(base_url="http://127.0.0.1:8080", model="smollm2")
    result = await client.create(messages, json_output=MyReport)
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from typing import Any, Literal, Self

from autogen_core import CancellationToken, Component
from autogen_core.models import CreateResult, LLMMessage
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel, ConfigDict, Field, SecretStr

from utils.llm_integration.client_base import (
    call_sampling,
    endpoint_identity,
    output_schema,
    replay_blob,
    to_chat_messages,
    validate_reply,
)
from utils.llm_integration.components import ENDPOINT_PROVIDER
from utils.llm_integration.errors import LLMError
from utils.llm_integration.openai_wire import (
    OpenAIWireClient,
    WireReply,
    chat_body,
    server_get,
    server_root,
)
from utils.llm_integration.spec import SamplingParams

StructuredMode = Literal["json_schema", "json_object", "ollama"]
_EXTRA_ARGS = {"max_tokens", "temperature", "top_p", "top_k", "repeat_penalty", "seed", "deadline_s"}
_KEY_SETTING = "llm.endpoint.api_key"


class EndpointClientConfig(BaseModel):
    """Declarative config of :class:`EndpointChatCompletionClient` (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="http://host:port, with or without a trailing /v1.")
    model: str = Field(min_length=1, description="A model the server lists.")
    api_key: SecretStr | None = None
    structured: StructuredMode = "json_schema"
    revision: str = Field("", description="Names the model build; part of the replay key.")
    max_in_flight: int = Field(4, ge=1, description="Requests open at once per process and server.")
    timeout_s: float = Field(300.0, gt=0.0, description="Longest wait for one reply.")
    max_tokens: int = Field(SamplingParams.max_tokens, ge=1)
    temperature: float = Field(SamplingParams.temperature, ge=0.0, le=2.0)
    top_p: float = Field(SamplingParams.top_p, gt=0.0, le=1.0)
    top_k: int = Field(SamplingParams.top_k, ge=0)
    repeat_penalty: float = Field(SamplingParams.repeat_penalty, ge=1.0, le=2.0)
    seed: int = Field(SamplingParams.seed, ge=0)
    family: str = "unknown"


def check_endpoint(
    base_url: str,
    model: str,
    api_key: SecretStr | str | None = None,
    *,
    structured: StructuredMode = "json_schema",
    timeout_s: float = 10.0,
) -> list[str]:
    """The models the server lists, after checking it answers, takes the key and lists ``model``.

    Raises :class:`LLMError` (exit 3) naming what is wrong and what to do.
    """
    root = server_root(base_url)
    path = "/api/tags" if structured == "ollama" else "/v1/models"
    resp = server_get(
        root,
        path,
        api_key,
        timeout_s,
        key_setting=_KEY_SETTING,
        what="model endpoint",
        todo="start the server or fix llm.endpoint.base_url / --endpoint",
    )
    try:
        data = resp.json()
        entries = data.get("models") if structured == "ollama" else data.get("data")
        listed = [str(m.get("name") or m.get("id") or m.get("model")) for m in entries or []]
    except (ValueError, AttributeError):
        raise LLMError(
            f"{root}{path} did not answer a model list; is it an OpenAI-compatible server?"
        ) from None
    if model not in listed:
        raise LLMError(
            f"the model endpoint at {root} does not list model {model!r}"
            f" (it lists: {', '.join(listed) or 'none'}); fix llm.endpoint.model / --endpoint-model"
        )
    return listed


_SLOTS: dict[str, threading.BoundedSemaphore] = {}
_SLOTS_LOCK = threading.Lock()


def _slots(root: str, size: int) -> threading.BoundedSemaphore:
    """The per-process bound on open requests to one server (shared across event loops)."""
    with _SLOTS_LOCK:
        sem = _SLOTS.get(root)
        if sem is None:
            sem = _SLOTS[root] = threading.BoundedSemaphore(size)
        return sem


class EndpointChatCompletionClient(OpenAIWireClient, Component[EndpointClientConfig]):
    """AutoGen model client over an OpenAI-compatible server (see the module docstring).

    ``extra_create_args``: ``max_tokens``, ``temperature``, ``top_p``, ``top_k``,
    ``repeat_penalty``, ``seed``, and ``deadline_s`` (seconds from now; the call is cut there and
    raises ``DeadlineExceededError``). A cancellation token closes the connection, which stops
    the server's generation.
    """

    component_type = "model"
    component_config_schema = EndpointClientConfig
    component_provider_override = ENDPOINT_PROVIDER
    key_setting = _KEY_SETTING
    unreachable_hint = "is the endpoint's server running?"
    context_tokens = 4096

    def __init__(self, config: EndpointClientConfig | None = None, /, **kwargs: Any) -> None:
        self._config = config if config is not None else EndpointClientConfig(**kwargs)
        cfg = self._config
        self._root = server_root(cfg.base_url)
        self._timeout_s = cfg.timeout_s
        self._api_key = cfg.api_key
        self.family = cfg.family
        self.identity = endpoint_identity(cfg.model, cfg.revision)

    def _to_config(self) -> EndpointClientConfig:
        return self._config.model_copy()

    @classmethod
    def _from_config(cls, config: EndpointClientConfig) -> Self:
        return cls(config)

    @property
    def config(self) -> EndpointClientConfig:
        return self._config

    def _sampling(self, extra: Mapping[str, Any]) -> SamplingParams:
        return call_sampling(self._config, extra, _EXTRA_ARGS)

    def replay_key(
        self,
        messages: Sequence[LLMMessage],
        *,
        json_output: bool | type[BaseModel] | None,
        extra_create_args: Mapping[str, Any],
    ) -> dict[str, Any]:
        """The one key rule with ``endpoint:<model>@<revision>`` as the model's identity."""
        _, schema_json = output_schema(json_output)
        return replay_blob(
            self.identity, to_chat_messages(messages), self._sampling(extra_create_args), schema_json
        )

    def request(
        self, chat: list[dict[str, str]], sampling: SamplingParams, json_output: bool | type[BaseModel] | None
    ) -> tuple[str, dict[str, Any]]:
        """The path and JSON body of one call, in the shape the ``structured`` mode asks for."""
        cfg = self._config
        schema, schema_json = output_schema(json_output)
        if cfg.structured == "ollama":
            body: dict[str, Any] = {
                "model": cfg.model,
                "messages": chat,
                "stream": True,
                "options": {
                    "num_predict": sampling.max_tokens,
                    "temperature": sampling.temperature,
                    "top_p": sampling.top_p,
                    "top_k": sampling.top_k,
                    "repeat_penalty": sampling.repeat_penalty,
                    "seed": sampling.seed,
                },
            }
            if schema_json is not None:
                body["format"] = schema_json if schema is not None else "json"
            return "/api/chat", body
        json_schema = cfg.structured == "json_schema"
        return "/v1/chat/completions", chat_body(
            cfg.model, chat, sampling, schema, schema_json, json_schema=json_schema
        )

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
            raise ValueError("the endpoint client has no function calling; use structured output instead")
        sampling = self._sampling(extra_create_args)
        schema, schema_json = output_schema(json_output)
        chat = to_chat_messages(messages)
        self._begin()
        path, body = self.request(chat, sampling, json_output)
        deadline_s = extra_create_args.get("deadline_s")
        deadline = time.monotonic() + float(deadline_s) if deadline_s is not None else None
        slots = _slots(self._root, self._config.max_in_flight)
        await asyncio.to_thread(slots.acquire)
        reply = WireReply()
        try:
            async for piece in self._stream_chat(
                path,
                body,
                {},
                reply,
                cancellation_token,
                ndjson=self._config.structured == "ollama",
                deadline=deadline,
            ):
                yield piece
        finally:
            slots.release()
        metrics = reply.metrics(self._config.model, self.identity, grammar=schema_json is not None)
        validate_reply(reply.text, schema, metrics)
        yield self._finish(reply.text, metrics)

    async def close(self) -> None:
        await self._close_http()
