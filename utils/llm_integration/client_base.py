"""The one base of this project's AutoGen model clients, and the one replay key rule.

Each provider has its own module, as autogen-ext groups its providers:

``autogen_client``   a local GGUF model in this process (llama.cpp)
``server_client``    a ``trading-agents serve`` server (its ``/health`` names each model's sha256)
``endpoint_client``  any OpenAI-compatible server: llama.cpp's ``llama-server``, vLLM, Ollama,
                     a hosted API

They share :class:`BaseChatClient`: ``create`` is ``create_stream`` collected, usage is kept
as AutoGen asks, ``model_info`` states text-only structured output, a structured reply is
validated against its pydantic model (:func:`validate_reply`: an invalid reply raises and never
becomes a default), and every call leaves ``last_metrics`` (a
:class:`~utils.llm_integration.loaded_model.CallMetrics`), ``last_prompt`` and ``last_route``
behind, so agents and their records do not see which provider served.

Replay: :func:`replay_blob` is the one key rule for every path. A reply is keyed by

- the model's identity: the GGUF file's sha256 where it is known (in-process, or a ``serve``
  server's ``/health``), else ``endpoint:<model>@<revision>`` for an external endpoint;
- the messages as sent (role and text);
- the sampling parameters (max_tokens, temperature, top_p, top_k, repeat_penalty, seed);
- the output schema (a pydantic model's JSON schema, ``{"type": "object"}`` for JSON mode).

How a reply is decoded (fixed-text decoding in-process, a server's grammar) is not part of the
key: it does not change what a model at temperature 0 is asked. So a cache filled through one
path replays through the others wherever the identity matches (a ``serve`` server and this
process on the same model file).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncGenerator, Collection, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal, Protocol

from autogen_core import CancellationToken
from autogen_core.models import (
    AssistantMessage,
    ChatCompletionClient,
    CreateResult,
    FunctionExecutionResultMessage,
    LLMMessage,
    ModelCapabilities,  # type: ignore[attr-defined]
    ModelInfo,
    RequestUsage,
    SystemMessage,
    UserMessage,
)
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel, ValidationError

from utils.llm_integration.errors import InvalidOutputError, OutputTruncatedError
from utils.llm_integration.loaded_model import CallMetrics
from utils.llm_integration.spec import SamplingParams

#: The sampling parameters that are part of a replay key (``fixed_text`` is how, not what).
KEY_SAMPLING = ("max_tokens", "temperature", "top_p", "top_k", "repeat_penalty", "seed")


@dataclass(frozen=True)
class Route:
    """Which model served a call and why (``reason``: one of the selector's ``REASONS``)."""

    model: str
    reason: str
    detail: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


def to_chat_messages(messages: Sequence[LLMMessage]) -> list[dict[str, str]]:
    """AutoGen messages -> ``[{"role", "content"}]`` (text only: no images, no tool results)."""
    out: list[dict[str, str]] = []
    for msg in messages:
        if isinstance(msg, SystemMessage):
            out.append({"role": "system", "content": msg.content})
        elif isinstance(msg, UserMessage):
            if not isinstance(msg.content, str):
                if not all(isinstance(part, str) for part in msg.content):
                    raise ValueError("this model client has no vision: send text only")
                content = "\n".join(msg.content)  # type: ignore[arg-type]
            else:
                content = msg.content
            out.append({"role": "user", "content": content})
        elif isinstance(msg, AssistantMessage):
            if not isinstance(msg.content, str):
                raise ValueError(
                    "this model client has no function calling: assistant tool calls cannot be replayed"
                )
            out.append({"role": "assistant", "content": msg.content})
        elif isinstance(msg, FunctionExecutionResultMessage):
            raise ValueError("this model client has no function calling: tool results cannot be sent")
        else:  # pragma: no cover - future message types
            raise ValueError(f"unsupported message type {type(msg).__name__}")
    return out


class SamplingDefaults(Protocol):
    """A client config's sampling settings: what a call's ``extra_create_args`` override."""

    max_tokens: int
    temperature: float
    top_p: float
    seed: int
    top_k: int
    repeat_penalty: float


def call_sampling(
    defaults: SamplingDefaults, extra: Mapping[str, Any], allowed: Collection[str], **fixed: Any
) -> SamplingParams:
    """One call's sampling: ``extra`` over ``defaults``; an arg outside ``allowed`` raises.

    ``fixed``: further :class:`SamplingParams` fields a call cannot change (``fixed_text``).
    """
    unknown = set(extra) - set(allowed)
    if unknown:
        raise ValueError(f"unknown extra_create_args {sorted(unknown)}; allowed: {sorted(allowed)}")
    return SamplingParams(
        max_tokens=int(extra.get("max_tokens", defaults.max_tokens)),
        temperature=float(extra.get("temperature", defaults.temperature)),
        top_p=float(extra.get("top_p", defaults.top_p)),
        seed=int(extra.get("seed", defaults.seed)),
        top_k=int(extra.get("top_k", defaults.top_k)),
        repeat_penalty=float(extra.get("repeat_penalty", defaults.repeat_penalty)),
        **fixed,
    )


def output_schema(
    json_output: bool | type[BaseModel] | None,
) -> tuple[type[BaseModel] | None, dict[str, Any] | None]:
    """``json_output`` -> (the pydantic model or None, the JSON schema the reply must follow or None)."""
    if isinstance(json_output, type) and issubclass(json_output, BaseModel):
        return json_output, json_output.model_json_schema()
    return None, ({"type": "object"} if json_output is True else None)


def replay_blob(
    identity: str,
    chat: Sequence[Mapping[str, str]],
    sampling: SamplingParams,
    schema: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """What shapes a reply, for every path (see the module docstring): the one key rule."""
    return {
        "model": identity,
        "messages": [{"role": m["role"], "content": m["content"]} for m in chat],
        "sampling": {k: getattr(sampling, k) for k in KEY_SAMPLING},
        "schema": dict(schema) if schema is not None else None,
    }


def key_of(blob: Mapping[str, Any]) -> str:
    """The response store's key for what shapes a reply: the sha256 of its canonical JSON."""
    return hashlib.sha256(json.dumps(blob, sort_keys=True, default=str).encode()).hexdigest()


def endpoint_identity(model: str, revision: str) -> str:
    """The identity of a model behind an external endpoint, where no file sha256 is known."""
    return f"endpoint:{model}@{revision}"


def validate_reply(text: str, schema: type[BaseModel] | None, metrics: CallMetrics) -> None:
    """Check a structured reply against its pydantic model; raise, never default (fail closed)."""
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


class BaseChatClient(ChatCompletionClient):
    """A model client whose ``create`` is its ``create_stream`` collected: one code path.

    It keeps the usage AutoGen asks for (the last call's and the running total) and what the
    last call recorded (``last_metrics``, ``last_prompt``, ``last_route``). Subclasses
    implement ``create_stream`` and finish each call with :meth:`_finish`.
    """

    _actual = RequestUsage(prompt_tokens=0, completion_tokens=0)  # replaced, never mutated
    _total = RequestUsage(prompt_tokens=0, completion_tokens=0)
    family = "unknown"
    last_metrics: CallMetrics | None = None
    last_prompt = ""
    last_route: Route | None = None

    def actual_usage(self) -> RequestUsage:
        return self._actual

    def total_usage(self) -> RequestUsage:
        return self._total

    def _add_usage(self, usage: RequestUsage) -> None:
        self._actual = usage
        self._total = RequestUsage(
            prompt_tokens=self._total.prompt_tokens + usage.prompt_tokens,
            completion_tokens=self._total.completion_tokens + usage.completion_tokens,
        )

    @property
    def model_info(self) -> ModelInfo:
        """Text only, no function calling, JSON and structured output (schema-bound replies)."""
        return ModelInfo(
            vision=False,
            function_calling=False,
            json_output=True,
            structured_output=True,
            family=self.family,
            multiple_system_messages=False,
        )

    @property
    def capabilities(self) -> ModelCapabilities:  # type: ignore[override]
        return ModelCapabilities(vision=False, function_calling=False, json_output=True)  # type: ignore[typeddict-item]

    def _begin(self) -> None:
        """A call that fails must not leave the previous call's prompt and metrics behind."""
        self.last_metrics, self.last_prompt, self.last_route = None, "", None

    def _finish(
        self, text: str, metrics: CallMetrics, route: Route | None = None, prompt: str = ""
    ) -> CreateResult:
        """Record a finished call and build its :class:`CreateResult`."""
        usage = RequestUsage(prompt_tokens=metrics.prompt_tokens, completion_tokens=metrics.completion_tokens)
        self._add_usage(usage)
        self.last_metrics, self.last_route, self.last_prompt = metrics, route, prompt
        finish: Literal["stop", "length"] = "length" if metrics.finish_reason == "length" else "stop"
        return CreateResult(
            finish_reason=finish, content=text, usage=usage, cached=metrics.from_response_cache
        )

    async def create(
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = (),
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> CreateResult:
        """Run :meth:`create_stream` and return its final :class:`CreateResult`."""
        result: CreateResult | None = None
        async for item in self.create_stream(
            messages,
            tools=tools,
            tool_choice=tool_choice,
            json_output=json_output,
            extra_create_args=extra_create_args,
            cancellation_token=cancellation_token,
        ):
            if isinstance(item, CreateResult):
                result = item
        assert result is not None
        return result

    def create_stream(  # pragma: no cover - every provider implements it
        self,
        messages: Sequence[LLMMessage],
        *,
        tools: Sequence[Tool | ToolSchema] = (),
        tool_choice: Tool | Literal["auto", "required", "none"] = "auto",
        json_output: bool | type[BaseModel] | None = None,
        extra_create_args: Mapping[str, Any] = {},
        cancellation_token: CancellationToken | None = None,
    ) -> AsyncGenerator[str | CreateResult, None]:
        raise NotImplementedError
