"""An AutoGen ``ChatCompletionClient`` for a ``trading-agents serve`` server, over HTTP.

It speaks the server's OpenAI chat-completions API (streaming, ``response_format: json_schema``
for structured output) and reads what only that server tells: which model served and the
selector's reason (``last_route``), the model file's sha256 and the prompt as the model saw it
(``last_prompt``). ``last_metrics`` holds the same :class:`CallMetrics` an in-process client
records, so agents and their records do not see the difference.

Replay: with ``response_cache`` set, a reply is stored under the sha256 of the model that
served it (from the server's ``/health``), the messages, the sampling parameters and the
schema; a later call with the same inputs is answered from the cache, without a request, if
any of the models that may serve it (the selector's primary, then its fallback) has it.
Those keys are not the in-process client's (which keys the rendered prompt): a cache filled
through a server replays through a server.

Example::

    health = fetch_health("http://127.0.0.1:8000")
    client = ServerChatCompletionClient(
        base_url="http://127.0.0.1:8000", model="selector",
        model_sha256={m["id"]: m["sha256"] for m in health["models"]},
        candidates=[health["primary"], health["fallback"]],
    )
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any, Literal, Self

from autogen_core import CancellationToken, Component
from autogen_core.models import (
    CreateResult,
    LLMMessage,
    ModelCapabilities,  # type: ignore[attr-defined]
    ModelInfo,
    RequestUsage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError

from utils.llm_integration.autogen_client import StreamingChatCompletionClient, to_chat_messages
from utils.llm_integration.errors import (
    DeadlineExceededError,
    GenerationCancelledError,
    InvalidOutputError,
    LLMError,
    OutputTruncatedError,
)
from utils.llm_integration.loaded_model import CallMetrics
from utils.llm_integration.model_selector import Route
from utils.llm_integration.response_cache import ResponseStore, key_of
from utils.llm_integration.spec import SamplingParams

SERVER_PROVIDER = "utils.llm_integration.server_client.ServerChatCompletionClient"
_EXTRA_ARGS = {"max_tokens", "temperature", "top_p", "seed", "deadline_s"}


class ServerClientConfig(BaseModel):
    """Declarative config of :class:`ServerChatCompletionClient` (unknown keys are errors)."""

    model_config = ConfigDict(extra="forbid")

    base_url: str = Field(description="The server, http://host:port (a trailing /v1 is fine).")
    model: str = Field(description="A model id of the server's /v1/models, or `selector`.")
    api_key: SecretStr | None = None
    model_sha256: dict[str, str] = Field(default_factory=dict, description="Served model -> file sha256.")
    candidates: list[str] = Field(default_factory=list, description="Models that may serve; cache lookups.")
    max_tokens: int = Field(512, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    seed: int = Field(42, ge=0)
    deadline_s: float | None = Field(None, gt=0.0, description="Sent as x-trading-agents-deadline.")
    timeout_s: float = Field(900.0, gt=0.0, description="Longest wait for a reply.")
    response_cache: str | None = Field(None, description="SQLite file for exact replay; null: off.")
    family: str = "unknown"


def server_root(base_url: str) -> str:
    """``http://h:8000/v1/`` -> ``http://h:8000``."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def _auth(api_key: SecretStr | str | None) -> dict[str, str]:
    if api_key is None:
        return {}
    key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
    return {"authorization": f"Bearer {key}"}


def fetch_health(
    base_url: str, api_key: SecretStr | str | None = None, timeout_s: float = 10.0
) -> dict[str, Any]:
    """The server's ``/health`` (models with their sha256, primary, fallback, selector).

    Raises :class:`LLMError` when the server cannot be reached or refuses the key.
    """
    import httpx2

    url = server_root(base_url) + "/health"
    try:
        resp = httpx2.get(url, headers=_auth(api_key), timeout=timeout_s)
    except httpx2.HTTPError as exc:
        raise LLMError(
            f"cannot reach the model server at {server_root(base_url)} ({type(exc).__name__});"
            " start it with `trading-agents serve` or unset llm.server_url"
        ) from None
    if resp.status_code != 200:
        raise _http_error(resp.status_code, resp.content, server_root(base_url))
    return resp.json()


def _http_error(status: int, body: bytes | Mapping[str, Any], where: str) -> LLMError:
    """The layer's error for a server's error answer."""
    try:
        data = body if isinstance(body, Mapping) else json.loads(body)
        err = data.get("error", {}) if isinstance(data, Mapping) else {}
    except ValueError:
        err = {}
    message = str(err.get("message") or f"HTTP {status}")
    code = err.get("code")
    if status == 401:
        return LLMError(f"the model server at {where} refused the API key; set llm.server_api_key")
    if code == "output_truncated":
        return OutputTruncatedError(message)
    if code in ("deadline_exceeded", "timeout"):
        return DeadlineExceededError(message)
    return LLMError(f"model server at {where}: {message}")


class ServerChatCompletionClient(StreamingChatCompletionClient, Component[ServerClientConfig]):
    """AutoGen model client over a ``trading-agents serve`` server (see the module docstring).

    ``extra_create_args``: ``max_tokens``, ``temperature``, ``top_p``, ``seed``, ``deadline_s``.
    A cancellation token closes the connection, which stops the server's generation.
    """

    component_type = "model"
    component_config_schema = ServerClientConfig
    component_provider_override = SERVER_PROVIDER

    def __init__(self, config: ServerClientConfig | None = None, /, **kwargs: Any) -> None:
        self._config = config if config is not None else ServerClientConfig(**kwargs)
        self._root = server_root(self._config.base_url)
        cfg = self._config
        self._cache = ResponseStore(Path(cfg.response_cache)) if cfg.response_cache else None
        self._http: Any = None
        self._http_loop: asyncio.AbstractEventLoop | None = None
        self.last_metrics: CallMetrics | None = None
        self.last_route: Route | None = None
        self.last_prompt = ""

    def _to_config(self) -> ServerClientConfig:
        return self._config.model_copy()

    @classmethod
    def _from_config(cls, config: ServerClientConfig) -> Self:
        return cls(config)

    @property
    def response_cache(self) -> ResponseStore | None:
        return self._cache

    @property
    def model_info(self) -> ModelInfo:
        return ModelInfo(
            vision=False,
            function_calling=False,
            json_output=True,
            structured_output=True,
            family=self._config.family,
            multiple_system_messages=False,
        )

    @property
    def capabilities(self) -> ModelCapabilities:  # type: ignore[override]
        return ModelCapabilities(vision=False, function_calling=False, json_output=True)  # type: ignore[typeddict-item]

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = ()) -> int:
        """An estimate (4 characters a token): the server's tokenizer is not reachable from here."""
        return sum(len(m["content"]) for m in to_chat_messages(messages)) // 4 + 1

    def remaining_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = ()
    ) -> int:
        return max(0, 2048 - self.count_tokens(messages, tools=tools))

    # -- calls ------------------------------------------------------------------------------------

    def _client(self) -> Any:
        import httpx2

        loop = asyncio.get_running_loop()
        if self._http is None or self._http_loop is not loop:
            self._http = httpx2.AsyncClient(
                timeout=httpx2.Timeout(self._config.timeout_s, connect=10.0),
                headers=_auth(self._config.api_key),
            )
            self._http_loop = loop
        return self._http

    def _sampling(self, extra: Mapping[str, Any]) -> tuple[SamplingParams, float | None]:
        unknown = set(extra) - _EXTRA_ARGS
        if unknown:
            raise ValueError(f"unknown extra_create_args {sorted(unknown)}; allowed: {sorted(_EXTRA_ARGS)}")
        cfg = self._config
        sampling = SamplingParams(
            max_tokens=int(extra.get("max_tokens", cfg.max_tokens)),
            temperature=float(extra.get("temperature", cfg.temperature)),
            top_p=float(extra.get("top_p", cfg.top_p)),
            seed=int(extra.get("seed", cfg.seed)),
        )
        deadline = extra.get("deadline_s", cfg.deadline_s)
        return sampling, float(deadline) if deadline is not None else None

    def _cache_keys(
        self, chat: list[dict[str, str]], sampling: SamplingParams, schema: Mapping[str, Any] | None
    ) -> list[tuple[str, str]]:
        prompt = "messages:" + json.dumps(chat, sort_keys=True, ensure_ascii=False)
        names = self._config.candidates or [self._config.model]
        shas = [self._config.model_sha256[n] for n in names if n in self._config.model_sha256]
        return [(sha, _key(sha, prompt, sampling, schema)) for sha in shas]

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
        schema = json_output if isinstance(json_output, type) and issubclass(json_output, BaseModel) else None
        schema_json = (
            schema.model_json_schema() if schema else ({"type": "object"} if json_output is True else None)
        )
        chat = to_chat_messages(messages)
        # a call that fails must not leave the previous call's prompt and metrics behind
        self.last_metrics, self.last_prompt = None, ""
        keys = self._cache_keys(chat, sampling, schema_json) if self._cache else []
        for _, key in keys:
            assert self._cache is not None
            hit = self._cache.get(key)
            if hit is not None:
                text, stored = hit
                route = stored.pop("route", None)
                metrics = CallMetrics(
                    **{**stored, "from_response_cache": True, "ttft_s": 0.0, "latency_s": 0.0}
                )
                _validate(text, schema, metrics)
                yield text
                yield self._finish(text, metrics, Route(**route) if route else None, "")
                return

        body: dict[str, Any] = {
            "model": self._config.model,
            "messages": chat,
            "stream": True,
            "stream_options": {"include_usage": True},
            "max_tokens": sampling.max_tokens,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "seed": sampling.seed,
        }
        if schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": schema.__name__[:64], "schema": schema_json, "strict": True},
            }
        elif json_output is True:
            body["response_format"] = {"type": "json_object"}
        headers = {"x-trading-agents-prompt": "include"}
        if deadline_s is not None:
            headers["x-trading-agents-deadline"] = f"{deadline_s:.3f}"

        import httpx2

        started = time.monotonic()
        ttft = 0.0
        pieces: list[str] = []
        finish = "stop"
        ext: dict[str, Any] = {}
        usage: dict[str, Any] = {}
        try:
            async with self._client().stream(
                "POST", self._root + "/v1/chat/completions", json=body, headers=headers
            ) as resp:
                if resp.status_code != 200:
                    raise _http_error(resp.status_code, await resp.aread(), self._root)
                async for line in resp.aiter_lines():
                    if cancellation_token is not None and cancellation_token.is_cancelled():
                        raise GenerationCancelledError(f"the call to {self._root} was cancelled")
                    if not line.startswith("data: "):
                        continue
                    data = line[len("data: ") :]
                    if data == "[DONE]":
                        break
                    event = json.loads(data)
                    if "error" in event:
                        raise _http_error(0, event, self._root)
                    for choice in event.get("choices") or []:
                        piece = (choice.get("delta") or {}).get("content")
                        if piece:
                            if not ttft:
                                ttft = time.monotonic() - started
                            pieces.append(piece)
                            yield piece
                        if choice.get("finish_reason"):
                            finish = choice["finish_reason"]
                    ext = event.get("trading_agents") or ext
                    usage = event.get("usage") or usage
        except httpx2.HTTPError as exc:
            raise LLMError(
                f"lost the model server at {self._root} ({type(exc).__name__});"
                " is `trading-agents serve` running?"
            ) from None
        latency = time.monotonic() - started
        text = "".join(pieces)
        route_data = ext.get("route") or {"model": self._config.model, "reason": "primary"}
        route = Route(route_data["model"], route_data.get("reason", "primary"), route_data.get("detail", ""))
        sha = ext.get("model_sha256") or self._config.model_sha256.get(route.model, "")
        details = usage.get("prompt_tokens_details") or {}
        completion_tokens = int(usage.get("completion_tokens", len(pieces)))
        metrics = CallMetrics(
            model=route.model,
            model_sha256=sha,
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            cached_prompt_tokens=int(details.get("cached_tokens", 0)),
            completion_tokens=completion_tokens,
            ttft_s=round(ttft or latency, 4),
            latency_s=round(latency, 4),
            prompt_tokens_per_s=0.0,
            gen_tokens_per_s=round(completion_tokens / (latency - ttft), 1) if latency > ttft > 0 else 0.0,
            finish_reason=finish,
            grammar=schema_json is not None,
        )
        _validate(text, schema, metrics)
        if self._cache is not None and sha:
            prompt = "messages:" + json.dumps(chat, sort_keys=True, ensure_ascii=False)
            key = _key(sha, prompt, sampling, schema_json)
            self._cache.put(key, sha, text, {**metrics.to_dict(), "route": route.to_dict()})
        yield self._finish(text, metrics, route, ext.get("prompt") or "")

    def _finish(self, text: str, metrics: CallMetrics, route: Route | None, prompt: str) -> CreateResult:
        usage = RequestUsage(prompt_tokens=metrics.prompt_tokens, completion_tokens=metrics.completion_tokens)
        self._add_usage(usage)
        self.last_metrics = metrics
        self.last_route = route
        self.last_prompt = prompt
        finish: Literal["stop", "length"] = "length" if metrics.finish_reason == "length" else "stop"
        return CreateResult(
            finish_reason=finish, content=text, usage=usage, cached=metrics.from_response_cache
        )

    async def close(self) -> None:
        if self._http is not None:
            with contextlib.suppress(RuntimeError):  # its event loop is gone
                await self._http.aclose()
            self._http = None
        if self._cache is not None:
            self._cache.close()
            self._cache = None


def _validate(text: str, schema: type[BaseModel] | None, metrics: CallMetrics) -> None:
    """Check a structured reply against its pydantic model, as the in-process client does."""
    if schema is None:
        return
    try:
        schema.model_validate(json.loads(text, strict=False))
    except json.JSONDecodeError as exc:
        if metrics.finish_reason == "length":
            raise OutputTruncatedError(f"{metrics.model} reply was cut at max_tokens: {exc}") from None
        raise InvalidOutputError(f"{metrics.model} reply is not JSON: {exc}") from None
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or schema.__name__
        raise InvalidOutputError(
            f"{metrics.model} reply failed {schema.__name__} validation at {where}: {first['msg']}"
        ) from None


def _key(sha: str, prompt: str, sampling: SamplingParams, schema: Mapping[str, Any] | None) -> str:
    """The replay key of a served reply: the served model's sha256, the messages as sent,
    the resolved sampling and the schema."""
    return key_of({"model": sha, "prompt": prompt, "sampling": asdict(sampling), "schema": schema})
