"""The OpenAI chat-completions request and response shapes this server speaks.

Requests forbid unknown fields: a field the server does not know, or one it knows but does not
support (tools, ``n`` > 1, logprobs), is refused with a 400 that names it, never ignored.
``tools`` is refused even as an empty list (as OpenAI's API does): a client that sends it
expects function calling, which this server does not have. A message other than the
assistant's with ``content: null`` is refused (400), and so is a number that is NaN or
infinite (422, "not a finite number").
Responses carry one extension, ``trading_agents``: the selector's route and, when the request
header ``x-trading-agents-prompt: include`` asks for it, the prompt as the model saw it.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from trading_agents.serve.errors import ApiError


class _Strict(BaseModel):
    # NaN and infinities (which Python's JSON parser accepts) are refused as "not a finite number"
    model_config = ConfigDict(extra="forbid", populate_by_name=True, allow_inf_nan=False)


class ContentPart(_Strict):
    type: str
    text: str | None = None
    image_url: Any = None


class ChatMessage(_Strict):
    role: str
    content: str | list[ContentPart] | None = None
    name: str | None = None


class JsonSchemaFormat(_Strict):
    name: str = Field(min_length=1, max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")


class StreamOptions(_Strict):
    include_usage: bool = False


class ChatCompletionRequest(_Strict):
    """``POST /v1/chat/completions``. Fields after ``user`` exist only to be refused by name."""

    model: str = Field(min_length=1)
    messages: list[ChatMessage] = Field(min_length=1)
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    seed: int | None = Field(None, ge=0, le=2**32 - 1)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    response_format: ResponseFormat | None = None
    user: str | None = None
    n: int | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    functions: list[Any] | None = None
    function_call: Any = None
    parallel_tool_calls: bool | None = None
    logit_bias: dict[str, Any] | None = None
    frequency_penalty: float | None = None
    presence_penalty: float | None = None

    def check_supported(self) -> None:
        """Raise a 400 :class:`ApiError` naming the first field this server cannot honour."""
        refused: list[tuple[str, bool, str]] = [
            ("n", self.n not in (None, 1), "only n=1 is supported"),
            ("logprobs", bool(self.logprobs), "logprobs are not supported"),
            ("top_logprobs", self.top_logprobs is not None, "logprobs are not supported"),
            (
                "tools",
                self.tools is not None,
                "this server has no function calling; leave tools out (an empty list too) "
                "and use response_format for structured replies",
            ),
            ("tool_choice", self.tool_choice not in (None, "none"), "this server has no function calling"),
            ("functions", bool(self.functions), "this server has no function calling"),
            (
                "function_call",
                self.function_call not in (None, "none"),
                "this server has no function calling",
            ),
            ("logit_bias", bool(self.logit_bias), "logit_bias is not supported"),
            ("frequency_penalty", bool(self.frequency_penalty), "frequency_penalty is not supported"),
            ("presence_penalty", bool(self.presence_penalty), "presence_penalty is not supported"),
            ("stream_options", self.stream_options is not None and not self.stream, "needs stream: true"),
        ]
        for name, bad, why in refused:
            if bad:
                raise ApiError(
                    400, f"unsupported parameter {name}: {why}", param=name, code="unsupported_parameter"
                )
        if (
            self.max_tokens is not None
            and self.max_completion_tokens is not None
            and self.max_tokens != self.max_completion_tokens
        ):
            raise ApiError(400, "max_tokens and max_completion_tokens differ; send one", param="max_tokens")
        stops = [self.stop] if isinstance(self.stop, str) else (self.stop or [])
        if len(stops) > 4 or any(not s for s in stops):
            raise ApiError(400, "stop takes at most 4 non-empty strings", param="stop")
        for i, msg in enumerate(self.messages):
            if msg.role not in ("system", "developer", "user", "assistant"):
                raise ApiError(
                    400,
                    f"unsupported role {msg.role!r}: use system, user or assistant (no function calling)",
                    param=f"messages[{i}].role",
                )
            if msg.content is None and msg.role != "assistant":
                raise ApiError(
                    400,
                    f"messages[{i}].content is null: a {msg.role} message needs content, "
                    "a string or a list of text parts",
                    param=f"messages[{i}].content",
                    code="missing_content",
                )
            for j, part in enumerate(msg.content if isinstance(msg.content, list) else []):
                if part.type != "text" or part.text is None:
                    raise ApiError(
                        400,
                        f"unsupported content part {part.type!r}: this server takes text only",
                        param=f"messages[{i}].content[{j}]",
                    )
        fmt = self.response_format
        if fmt is not None:
            if fmt.type == "json_schema" and (fmt.json_schema is None or fmt.json_schema.schema_ is None):
                raise ApiError(
                    400, "response_format json_schema needs json_schema.schema", param="response_format"
                )
            if fmt.type != "json_schema" and fmt.json_schema is not None:
                raise ApiError(
                    400, "json_schema is only valid with type json_schema", param="response_format"
                )
            if fmt.type != "json_object" and fmt.schema_ is not None:
                raise ApiError(400, "schema is only valid with type json_object", param="response_format")

    @property
    def reply_cap(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens

    @property
    def stops(self) -> list[str]:
        return [self.stop] if isinstance(self.stop, str) else list(self.stop or [])

    def chat(self) -> list[dict[str, str]]:
        """The messages as ``{"role", "content"}`` with ``developer`` read as ``system``."""
        out = []
        for msg in self.messages:
            content = msg.content
            if isinstance(content, list):
                content = "\n".join(p.text or "" for p in content)
            out.append({"role": "system" if msg.role == "developer" else msg.role, "content": content or ""})
        return out

    def schema(self) -> dict[str, Any] | None:
        """The JSON schema the reply must follow: ``{"type": "object"}`` for plain json_object."""
        fmt = self.response_format
        if fmt is None or fmt.type == "text":
            return None
        if fmt.type == "json_schema":
            assert fmt.json_schema is not None
            return fmt.json_schema.schema_
        return fmt.schema_ or {"type": "object"}

    def schema_name(self) -> str:
        fmt = self.response_format
        return fmt.json_schema.name if fmt is not None and fmt.json_schema is not None else "json_object"


# --------------------------------------------------------------------------- responses


class PromptTokensDetails(BaseModel):
    cached_tokens: int = 0


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails = Field(default_factory=PromptTokensDetails)


class RouteInfo(BaseModel):
    model: str
    reason: str
    detail: str = ""


class Extension(BaseModel):
    """What only this server tells: who served and why, the model file's sha256, the prompt."""

    route: RouteInfo
    model_sha256: str = ""
    prompt: str | None = None


class AssistantReply(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class Choice(BaseModel):
    index: int = 0
    message: AssistantReply
    finish_reason: Literal["stop", "length"]
    logprobs: None = None


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[Choice]
    usage: Usage
    system_fingerprint: str | None = None
    trading_agents: Extension


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChunkChoice(BaseModel):
    index: int = 0
    delta: Delta
    finish_reason: Literal["stop", "length"] | None = None
    logprobs: None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None
    trading_agents: Extension | None = None


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = 0
    owned_by: str = "trading-agents"
    description: str = ""


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
