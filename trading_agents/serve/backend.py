"""What serves a request: the models of the registry, the selector, the grammar for ``response_format``.

This is the only module of the server that imports the LLM layer (``utils.llm_integration``).
Each model file is loaded once per process (the layer's per-process registry) and shared by
every request; calls on one model queue in arrival order. A request names a model of
:meth:`Backend.model_ids`: the primary, the fallback, another registry model whose file is
present, or ``selector`` (primary with fallback, routed per call as the desk routes in-process).

Structured output: ``json_object`` is any JSON object, ``json_object`` with ``schema`` and
``json_schema`` follow their schema; both become a llama.cpp grammar through the layer's own
grammar code, so the reply always parses. That grammar writes widely bounded numbers as digit
strings (it cannot bound a JSON number); :func:`restore_numbers` turns them back into numbers
before the reply leaves, so the client gets JSON of its own schema. Such replies are sent in one
piece at the end of a stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import hashlib
import json
import os
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from autogen_core import CancellationToken
from autogen_core.models import AssistantMessage, CreateResult, LLMMessage, SystemMessage, UserMessage
from pydantic import BaseModel, ConfigDict

from trading_agents.agents.clients import local_client_config
from trading_agents.config.settings import Settings
from trading_agents.model_files.registry import (
    ResolvedModel,
    load_registry,
    models_dir,
    resolve_llm_pair,
    resolve_model,
)
from trading_agents.serve.errors import ApiError
from trading_agents.serve.openai_schema import ChatCompletionRequest
from utils.llm_integration.autogen_client import LocalLlamaChatCompletionClient
from utils.llm_integration.errors import (
    DeadlineExceededError,
    GenerationCancelledError,
    LLMError,
    ModelLoadError,
    OutputTruncatedError,
)
from utils.llm_integration.files import file_sha256
from utils.llm_integration.grammar import grammar_schema, json_schema_grammar
from utils.llm_integration.loaded_model import get_local_llm
from utils.llm_integration.model_selector import (
    ContextOverflowError,
    ModelSelectorClient,
    SelectorConfig,
    ram_needed_mb,
)

SELECTOR = "selector"
_SCHEMA_MODELS: dict[str, type[BaseModel]] = {}
_SCHEMA_MODELS_MAX = 256


@dataclass
class ServedModel:
    """One model this server can load: its resolved file, its client config, its file's sha256."""

    name: str
    resolved: ResolvedModel
    config: dict[str, Any]
    role: str  # primary, fallback or registry
    sha256: str | None = None
    spec: Any = None  # the LLM layer's spec, once built

    @property
    def n_ctx(self) -> int:
        return self.resolved.n_ctx


@dataclass
class Route:
    model: str
    reason: str
    detail: str = ""


@dataclass
class Outcome:
    """What a finished call gives back, with the usage OpenAI clients expect."""

    text: str
    finish_reason: str
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    route: Route
    sha256: str
    prompt: str = ""


@dataclass
class Call:
    """A checked request, ready to run."""

    target: str  # a model name or SELECTOR
    chat: list[dict[str, str]]
    json_output: bool | type[BaseModel] | None
    restore_schema: dict[str, Any] | None
    extra: dict[str, Any]
    stops: list[str] = field(default_factory=list)
    stream_pieces: bool = True
    pieces: int = 0  # tokens received so far (what a cancelled call generated)
    cap_param: str | None = None  # the request field that set max_tokens; None: the server's default


class Backend:
    """The models behind the server, built from the settings the desk would use."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        primary, fallback, notes = resolve_llm_pair(settings)
        self.notes = notes
        self.models: dict[str, ServedModel] = {}
        for role, model in (("primary", primary), ("fallback", fallback)):
            if model is not None and model.name not in self.models:
                self.models[model.name] = ServedModel(
                    model.name, model, local_client_config(model, settings), role
                )
        registry = load_registry(settings)
        for entry in registry.entries():
            if entry.name in self.models or entry.embedded:
                continue
            if (models_dir(settings) / entry.filename).is_file():
                model = resolve_model(entry.name, settings)
                self.models[model.name] = ServedModel(
                    model.name, model, local_client_config(model, settings), "registry"
                )
        self._registry = registry
        self.primary = self.models[primary.name]
        self.fallback = self.models[fallback.name] if fallback is not None else None
        # ``selector`` is served on every install, so a client written against it works anywhere:
        # with no fallback (or selector.enabled false) it is the primary, routed as ``primary``.
        routed = self.fallback is not None and settings.selector.enabled
        self.selector_config: dict[str, Any] = SelectorConfig(
            primary=self.primary.config,
            fallback=self.fallback.config if routed and self.fallback is not None else None,
            role="server",
            may_fall_back=True,
            **settings.selector.model_dump(exclude={"enabled", "fallback_roles"}),
        ).model_dump()
        self.started = time.monotonic()
        self._ready = False

    # -- lifecycle ---------------------------------------------------------------------------

    def startup(self) -> None:
        """Hash the primary's and fallback's files and load the primary, before the first request.

        Raises ``ModelLoadError`` when the primary cannot load and nothing could stand in for it.
        """
        if self._ready:
            return
        for model in (self.primary, self.fallback):
            if model is not None:
                model.sha256 = file_sha256(model.resolved.path, self.settings.paths.home)
        try:
            _ = self._llm(self.primary).llama
        except LLMError:
            if self.fallback is None:
                raise
        self._ready = True

    def model_ids(self) -> list[str]:
        return [*self.models, SELECTOR]

    def describe(self, name: str) -> str:
        if name == SELECTOR:
            if self.selector_config["fallback"] is None:
                return f"{self.primary.name} (no fallback configured: every call is routed to the primary)"
            fallback = self.fallback.name if self.fallback else "?"
            return f"{self.primary.name} with fallback {fallback}, routed per call"
        model = self.models[name]
        return f"{model.role} model, context {model.n_ctx}, file {model.resolved.path.name}"

    def lookup(self, name: str) -> str:
        """The served model called ``name`` (a registry alias works too); 404 otherwise."""
        if name == SELECTOR:
            return SELECTOR
        if name in self.models:
            return name
        entry = self._registry.find(name)
        if entry is not None and entry.name in self.models:
            return entry.name
        why = ""
        if entry is not None:
            folder = models_dir(self.settings)
            why = f" (its file is not in {folder}: `trading-agents models download {entry.name}`)"
        raise ApiError(
            404,
            f"model {name!r} is not served here{why}; available: {', '.join(self.model_ids())}",
            param="model",
            code="model_not_found",
        )

    def _llm(self, model: ServedModel) -> Any:
        if model.spec is None:
            model.spec = LocalLlamaChatCompletionClient.load_component(model.config).spec
        return get_local_llm(model.spec)

    def queue_depth(self) -> int:
        return sum(self._llm(m).waiting for m in self.models.values())

    def in_flight(self) -> int:
        return sum(self._llm(m).in_flight for m in self.models.values())

    def health(self) -> dict[str, Any]:
        import llama_cpp
        import psutil

        models = []
        for model in self.models.values():
            llm = self._llm(model)
            if llm.loaded and model.sha256 is None:
                model.sha256 = file_sha256(model.resolved.path, self.settings.paths.home)
            models.append(
                {
                    "id": model.name,
                    "role": model.role,
                    "loaded": llm.loaded,
                    "file": model.resolved.path.name,
                    "sha256": model.sha256,
                    "n_ctx": model.n_ctx,
                    "in_flight": llm.in_flight,
                    "waiting": llm.waiting,
                }
            )
        loaded = [m for m in models if m["loaded"]]
        return {
            "status": "ok" if loaded else "degraded",
            "models": models,
            "primary": self.primary.name,
            "fallback": self.fallback.name if self.fallback else None,
            "selector": SELECTOR,
            "rss_mb": round(psutil.Process(os.getpid()).memory_info().rss / 2**20, 1),
            "available_mb": round(psutil.virtual_memory().available / 2**20, 1),
            "llama_cpp_version": llama_cpp.__version__,
            "queue_depth": sum(m["waiting"] for m in models),
            "in_flight": sum(m["in_flight"] for m in models),
            "uptime_s": round(time.monotonic() - self.started, 1),
            "notes": self.notes,
        }

    # -- requests ----------------------------------------------------------------------------

    def prepare(self, req: ChatCompletionRequest, deadline_header: str | None) -> Call:
        """Check a request against the models and turn it into a :class:`Call` (4xx otherwise)."""
        req.check_supported()
        target = self.lookup(req.model)
        if target == SELECTOR:  # the selector routes a prompt too long for the primary to the fallback
            n_ctx = max(m.n_ctx for m in (self.primary, self.fallback) if m is not None)
        else:
            n_ctx = self.models[target].n_ctx
        llm = self.settings.llm
        max_tokens = req.reply_cap or min(llm.max_tokens, n_ctx)
        if max_tokens >= n_ctx:
            raise ApiError(
                400,
                f"max_tokens {max_tokens} does not fit {req.model}'s context of {n_ctx} tokens",
                param="max_tokens" if req.max_tokens else "max_completion_tokens",
                code="context_length_exceeded",
            )
        extra: dict[str, Any] = {
            "max_tokens": max_tokens,
            "temperature": llm.temperature if req.temperature is None else req.temperature,
            "top_p": llm.top_p if req.top_p is None else req.top_p,
            "seed": llm.seed if req.seed is None else req.seed,
        }
        if deadline_header is not None:
            try:
                deadline_s = float(deadline_header)
            except ValueError:
                deadline_s = -1.0
            if not 0 < deadline_s < 86400:
                raise ApiError(
                    400,
                    "header x-trading-agents-deadline must be seconds, a number above 0",
                    param="x-trading-agents-deadline",
                )
            extra["deadline_s"] = deadline_s
        schema = req.schema()
        json_output: bool | type[BaseModel] | None = None
        restore: dict[str, Any] | None = None
        if schema == {"type": "object"}:
            json_output = True
        elif schema is not None:
            json_output = schema_model(schema, req.schema_name())
            restore = schema if _rewrites_numbers(schema) else None
        return Call(
            target=target,
            chat=req.chat(),
            json_output=json_output,
            restore_schema=restore,
            extra=extra,
            stops=req.stops,
            stream_pieces=restore is None,
            cap_param=(
                "max_completion_tokens"
                if req.max_completion_tokens is not None
                else ("max_tokens" if req.max_tokens is not None else None)
            ),
        )

    def _client(self, target: str) -> Any:
        if target == SELECTOR:
            return ModelSelectorClient(SelectorConfig(**self.selector_config))
        model = self.models[target]
        need = ram_needed_mb(self._llm(model).spec)
        if model.role == "registry" and not self._llm(model).loaded and need is not None:
            import psutil

            available = psutil.virtual_memory().available / 2**20
            if need + self.settings.selector.min_available_mb > available:
                raise ApiError(
                    503,
                    f"{model.name} needs {need:.0f} MB, {available:.0f} MB are available; it cannot load now",
                    code="model_unavailable",
                )
        return LocalLlamaChatCompletionClient.load_component(model.config)

    async def run(self, call: Call, token: CancellationToken) -> AsyncIterator[str | Outcome]:
        """Text pieces as they are generated, then one :class:`Outcome`.

        Cancelling ``token`` stops generation within a token (or takes the call out of the
        queue); the iterator then raises ``GenerationCancelledError``. LLM-layer failures come
        out as :class:`ApiError` (400 for what the request asked, 503/504 otherwise).
        """
        client = self._client(call.target)
        if call.target != SELECTOR:  # the selector checks the context itself
            await asyncio.to_thread(self._fits, client, call.chat)
        messages = _to_messages(call.chat)
        stopper = StopMatcher(call.stops)
        result: CreateResult | None = None
        stopped = False
        stream = client.create_stream(
            messages, json_output=call.json_output, extra_create_args=call.extra, cancellation_token=token
        )
        try:
            async with contextlib.aclosing(stream):
                async for item in stream:
                    if isinstance(item, CreateResult):
                        result = item
                        continue
                    call.pieces += 1
                    if not call.stream_pieces:
                        continue
                    out, hit = stopper.feed(item)
                    if out:
                        yield out
                    if hit:
                        stopped = True
                        token.cancel()
                        break
        except GenerationCancelledError:
            if not stopped:
                raise
        except (ContextOverflowError, OutputTruncatedError, DeadlineExceededError, ModelLoadError) as exc:
            raise _api_error(exc, call) from None
        except LLMError as exc:
            raise _api_error(exc, call) from None
        except MemoryError:
            raise ApiError(503, "the model ran out of memory", code="model_unavailable") from None
        finally:
            await _close_quietly(client)
        if stopped or result is None:
            tail = "" if stopped else stopper.flush()
            if tail:
                yield tail
            yield await self._cut_outcome(client, call, stopper)
            return
        outcome = self._outcome(client, call, result)
        tail = stopper.flush() if call.stream_pieces else outcome.text  # restored JSON: one piece
        if tail:
            yield tail
        yield outcome

    def _fits(self, client: Any, chat: list[dict[str, str]]) -> None:
        """A prompt that leaves no room for a reply is the request's fault: 400."""
        llm = client.llm
        try:
            tokens = llm.count_tokens(chat)
        except ValueError as exc:
            raise ApiError(400, str(exc), param="messages") from None
        if tokens >= llm.n_ctx:
            raise ApiError(
                400,
                f"the prompt is {tokens} tokens; {llm.display}'s context is {llm.n_ctx}",
                param="messages",
                code="context_length_exceeded",
            )

    def _outcome(self, client: Any, call: Call, result: CreateResult) -> Outcome:
        m = client.last_metrics
        route = getattr(client, "last_route", None)
        text = result.content if isinstance(result.content, str) else ""
        if call.restore_schema is not None:
            text = json.dumps(
                restore_numbers(json.loads(text, strict=False), call.restore_schema), ensure_ascii=False
            )
        served = route.model if route is not None else m.model
        return Outcome(
            text=text,
            finish_reason="length" if m.finish_reason == "length" else "stop",
            prompt_tokens=m.prompt_tokens,
            cached_tokens=m.cached_prompt_tokens,
            completion_tokens=m.completion_tokens,
            route=Route(served, route.reason if route else "primary", route.detail if route else ""),
            sha256=m.model_sha256,
            prompt=client.last_prompt,
        )

    async def _cut_outcome(self, client: Any, call: Call, stopper: StopMatcher) -> Outcome:
        """Usage of a reply cut at a stop string: prompt tokens recounted, cached ones unknown (0)."""
        route = getattr(client, "last_route", None)
        name = route.model if route is not None else call.target
        model = self.models.get(name, self.primary)
        llm = self._llm(model)
        prompt, _ = await asyncio.to_thread(llm.render, call.chat)
        tokens = await asyncio.to_thread(llm.tokenize, prompt)
        return Outcome(
            text=stopper.text,
            finish_reason="stop",
            prompt_tokens=len(tokens),
            cached_tokens=0,
            completion_tokens=stopper.pieces,
            route=Route(model.name, route.reason if route else "primary", route.detail if route else ""),
            sha256=model.sha256 or llm.sha256,
            prompt=prompt,
        )


async def _close_quietly(client: Any) -> None:
    with contextlib.suppress(Exception):
        await client.close()


def _api_error(exc: LLMError, call: Call | None = None) -> ApiError:
    """LLM-layer failures as the client should see them, naming the client's own fields."""
    if isinstance(exc, ContextOverflowError):
        return ApiError(400, exc.message, param="messages", code="context_length_exceeded")
    if isinstance(exc, OutputTruncatedError):
        return ApiError(
            400,
            truncated_message(call),
            param=(call and call.cap_param) or "max_tokens",
            code="output_truncated",
        )
    if isinstance(exc, DeadlineExceededError):
        return ApiError(504, exc.message, code="deadline_exceeded")
    if "rejected the grammar" in exc.message:
        return ApiError(400, exc.message, param="response_format", code="invalid_schema")
    return ApiError(503, exc.message, code="model_unavailable")


def truncated_message(call: Call | None) -> str:
    """A structured reply cut off by the token cap: which cap, and the request field to raise.

    The cap is the request's ``max_tokens``/``max_completion_tokens``, or the server's default
    when the request sets neither; either way the fix is in the request, not the server config.
    """
    cap = call.extra.get("max_tokens") if call is not None else None
    where = f" at {cap} tokens" if cap else ""
    if call is not None and call.cap_param:
        return (
            f"the JSON reply was cut off{where}, before it was complete; "
            f"raise {call.cap_param} in the request"
        )
    return (
        f"the JSON reply was cut off{where} (the server's default, the request set no max_tokens) "
        "before it was complete; send a larger max_tokens in the request"
    )


def _to_messages(chat: list[dict[str, str]]) -> list[LLMMessage]:
    out: list[LLMMessage] = []
    for msg in chat:
        if msg["role"] == "system":
            out.append(SystemMessage(content=msg["content"]))
        elif msg["role"] == "user":
            out.append(UserMessage(content=msg["content"], source="user"))
        else:
            out.append(AssistantMessage(content=msg["content"], source="assistant"))
    return out


# --------------------------------------------------------------------------- structured output


def schema_model(schema: Mapping[str, Any], name: str) -> type[BaseModel]:
    """A pydantic model class that stands for a request's JSON schema in the LLM layer.

    Its ``model_json_schema()`` is the request's schema (so the layer builds its grammar from it)
    and validation accepts what that grammar produced. One class per distinct schema, so the
    selector keeps reply lengths per schema. 400 when llama.cpp's converter cannot take it.
    """
    blob = json.dumps(schema, sort_keys=True)
    digest = hashlib.sha256(blob.encode()).hexdigest()[:16]
    cached = _SCHEMA_MODELS.get(digest)
    if cached is not None:
        return cached
    if schema.get("type", "object") != "object":
        raise ApiError(400, "the response schema must describe a JSON object", param="response_format")
    try:
        json_schema_grammar(schema)
    except Exception as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ApiError(
            400,
            f"the response schema cannot become a grammar: {first}",
            param="response_format",
            code="invalid_schema",
        ) from None
    frozen = copy.deepcopy(dict(schema))

    class RequestSchema(BaseModel):
        model_config = ConfigDict(extra="allow")

        @classmethod
        def model_json_schema(cls, *args: Any, **kwargs: Any) -> dict[str, Any]:
            return copy.deepcopy(frozen)

    safe = "".join(c if c.isalnum() else "_" for c in name)[:64]
    RequestSchema.__name__ = RequestSchema.__qualname__ = f"{safe}_{digest}"
    RequestSchema.__module__ = "request"
    if len(_SCHEMA_MODELS) >= _SCHEMA_MODELS_MAX:
        _SCHEMA_MODELS.pop(next(iter(_SCHEMA_MODELS)))
    _SCHEMA_MODELS[digest] = RequestSchema
    return RequestSchema


def _rewrites_numbers(schema: Mapping[str, Any]) -> bool:
    """Whether the grammar writes some of this schema's numbers as digit strings."""
    before = json.dumps(schema).count('"pattern"')
    return json.dumps(grammar_schema(schema)).count('"pattern"') > before


def restore_numbers(value: Any, schema: Mapping[str, Any], root: Mapping[str, Any] | None = None) -> Any:
    """``value`` with the digit strings that the grammar wrote for ``schema``'s numbers made numbers.

    The inverse of the layer's ``grammar_schema`` for numbers (``$ref`` into ``$defs`` followed,
    ``anyOf``/``oneOf`` tried in order); everything else is returned as it is.
    """
    root = root if root is not None else schema
    node: Mapping[str, Any] = schema
    ref = node.get("$ref")
    if isinstance(ref, str) and ref.startswith("#/"):
        target: Any = root
        for part in ref[2:].split("/"):
            target = target.get(part, {}) if isinstance(target, Mapping) else {}
        node = target
    for key in ("anyOf", "oneOf"):
        for alt in node.get(key, []) or []:
            restored = restore_numbers(value, alt, root)
            if restored is not value or not isinstance(value, str):
                return restored
    kind = node.get("type")
    if isinstance(value, str) and kind in ("integer", "number"):
        try:
            number = float(value)
        except ValueError:
            return value
        return int(number) if kind == "integer" or ("." not in value and number.is_integer()) else number
    if isinstance(value, dict):
        props = node.get("properties", {}) or {}
        extra = node.get("additionalProperties")
        return {
            k: restore_numbers(v, props.get(k, extra if isinstance(extra, Mapping) else {}), root)
            for k, v in value.items()
        }
    if isinstance(value, list):
        items = node.get("items", {})
        return [restore_numbers(v, items if isinstance(items, Mapping) else {}, root) for v in value]
    return value


# --------------------------------------------------------------------------- stop strings


class StopMatcher:
    """Cuts streamed text at the first of the request's stop strings, across piece boundaries.

    Text that could still be the start of a stop string is held back until it cannot.
    """

    def __init__(self, stops: list[str]) -> None:
        self.stops = [s for s in stops if s]
        self._hold = max((len(s) for s in self.stops), default=1) - 1
        self._buffer = ""
        self.text = ""  # what has been released
        self.pieces = 0

    def feed(self, piece: str) -> tuple[str, bool]:
        """Add a piece; return the text safe to send and whether a stop string was reached."""
        self.pieces += 1
        if not self.stops:
            self.text += piece
            return piece, False
        self._buffer += piece
        hits = [i for i in (self._buffer.find(s) for s in self.stops) if i >= 0]
        if hits:
            out = self._buffer[: min(hits)]
            self._buffer = ""
            self.text += out
            return out, True
        keep = self._hold
        out = self._buffer[:-keep] if keep and len(self._buffer) > keep else ("" if keep else self._buffer)
        self._buffer = self._buffer[len(out) :]
        self.text += out
        return out, False

    def flush(self) -> str:
        out, self._buffer = self._buffer, ""
        self.text += out
        return out
