"""Server-sent events for ``stream: true``: chunks, the final usage chunk, ``data: [DONE]``.

The first piece of a reply is produced before the response starts (see ``app.py``), so a
request that fails before generating anything gets a real HTTP error status; a failure after
that arrives as one ``data: {"error": ...}`` event before ``[DONE]``.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator, Callable
from typing import Any

from trading_agents.serve.backend import Outcome
from trading_agents.serve.errors import ApiError
from trading_agents.serve.openai_schema import (
    ChatCompletionChunk,
    ChunkChoice,
    Delta,
    Extension,
    PromptTokensDetails,
    RouteInfo,
    Usage,
)


def sse(data: Any) -> str:
    payload = data if isinstance(data, str) else json.dumps(data, ensure_ascii=False)
    return f"data: {payload}\n\n"


def usage_of(outcome: Outcome) -> Usage:
    return Usage(
        prompt_tokens=outcome.prompt_tokens,
        completion_tokens=outcome.completion_tokens,
        total_tokens=outcome.prompt_tokens + outcome.completion_tokens,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=outcome.cached_tokens),
    )


def extension_of(outcome: Outcome, include_prompt: bool) -> Extension:
    route = outcome.route
    return Extension(
        route=RouteInfo(model=route.model, reason=route.reason, detail=route.detail),
        model_sha256=outcome.sha256,
        prompt=outcome.prompt if include_prompt else None,
    )


async def event_stream(
    first: str | Outcome,
    rest: AsyncIterator[str | Outcome],
    *,
    completion_id: str,
    created: int,
    requested_model: str,
    include_usage: bool,
    include_prompt: bool,
    stop: Callable[[], None],
    on_done: Callable[[Outcome | None, int], None],
) -> AsyncIterator[str]:
    """The SSE body. However it ends, ``on_done(outcome, status)`` is called once; when the
    client went away (status 499) ``stop()`` first stops the generation."""

    def chunk(delta: Delta, **fields: Any) -> str:
        body = ChatCompletionChunk(
            id=completion_id,
            created=created,
            model=fields.pop("model", requested_model),
            choices=fields.pop("choices", [ChunkChoice(delta=delta)]),
            **fields,
        )
        return sse(body.model_dump(exclude_none=True) | ({"usage": None} if include_usage else {}))

    outcome: Outcome | None = None
    status = 499
    try:
        yield chunk(Delta(role="assistant", content=""))
        item: str | Outcome | None = first
        while item is not None:
            if isinstance(item, Outcome):
                outcome = item
                break
            yield chunk(Delta(content=item))
            item = await anext(rest, None)
        if outcome is None:  # pragma: no cover - the backend always ends with an outcome
            raise ApiError(503, "the model stopped without a result", code="model_unavailable")
        final = ChunkChoice(delta=Delta(), finish_reason=outcome.finish_reason)  # type: ignore[arg-type]
        yield chunk(
            Delta(),
            model=outcome.route.model,
            choices=[final],
            trading_agents=extension_of(outcome, include_prompt),
        )
        if include_usage:
            usage = ChatCompletionChunk(
                id=completion_id,
                created=created,
                model=outcome.route.model,
                choices=[],
                usage=usage_of(outcome),
            )
            yield sse(usage.model_dump(exclude_none=True))
        yield sse("[DONE]")
        status = 200
    except ApiError as exc:
        status = exc.status
        yield sse(exc.body())
        yield sse("[DONE]")
    finally:
        if status != 200:
            stop()
        on_done(outcome, status)
        with contextlib.suppress(Exception):
            await rest.aclose()  # type: ignore[attr-defined]
