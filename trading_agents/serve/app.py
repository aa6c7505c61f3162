"""The FastAPI application: ``/v1/models``, ``/v1/chat/completions``, ``/health``, ``/metrics``.

Build it with :func:`create_app` and run it on uvicorn (``trading-agents serve`` does both).
Every route needs ``Authorization: Bearer <key>`` when the server has a key; bodies above
``serve.max_body_kb`` get 413 before they are parsed; a request running past
``serve.request_timeout_s`` is stopped and answered 504. A client that disconnects stops its
generation: a stream's send fails and cancels it, a plain request is watched for the
disconnect while it waits and generates.

Request headers: ``x-trading-agents-deadline`` (seconds; the selector's per-call deadline,
default ``selector.deadline_s``) and ``x-trading-agents-prompt: include`` (the prompt as the
model saw it comes back in the ``trading_agents`` extension). Response header
``x-trading-agents-route``: the selector's reason (``primary``, ``queue``, ``deadline``, ...),
with ``x-trading-agents-model`` the model that served; a stream carries both in the
extension of its last chunk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from autogen_core import CancellationToken
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from trading_agents.config.settings import Settings
from trading_agents.serve.access import authorization_matches
from trading_agents.serve.backend import SELECTOR, Backend, GenerationCancelledError, Outcome
from trading_agents.serve.errors import ApiError, error_body, install_handlers
from trading_agents.serve.metrics import CONTENT_TYPE, ServeMetrics
from trading_agents.serve.openai_schema import (
    AssistantReply,
    ChatCompletion,
    ChatCompletionRequest,
    Choice,
    ModelCard,
    ModelList,
)
from trading_agents.serve.streaming import event_stream, extension_of, usage_of

log = logging.getLogger("trading_agents.serve")
ENDPOINTS = ("/v1/chat/completions", "/v1/models", "/health", "/metrics")
# generation threads wait on the model's queue; the default pool (cores + 4) would make the
# selector's routing wait behind them
WORKER_THREADS = 64


def create_app(settings: Settings, backend: Backend | None = None) -> FastAPI:
    """The server for ``settings`` (models from ``llm:``, routing from ``selector:``, limits from
    ``serve:``). The models load at startup, before the first request is accepted."""
    backend = backend or Backend(settings)
    metrics = ServeMetrics(backend.queue_depth, backend.in_flight)
    serve = settings.serve

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        pool = ThreadPoolExecutor(WORKER_THREADS, thread_name_prefix="serve")
        loop.set_default_executor(pool)
        await asyncio.to_thread(backend.startup)
        log.info("serving %s", ", ".join(backend.model_ids()))
        yield
        pool.shutdown(wait=False, cancel_futures=True)

    app = FastAPI(
        title="trading-agents serve",
        description="OpenAI-compatible chat completions on local GGUF models and the model selector.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    install_handlers(app)
    app.state.backend = backend
    app.state.metrics = metrics

    @app.get("/v1/models")
    async def list_models() -> dict[str, Any]:
        cards = [ModelCard(id=name, description=backend.describe(name)) for name in backend.model_ids()]
        return ModelList(data=cards).model_dump()

    @app.get("/v1/models/{model_id}")
    async def get_model(model_id: str) -> dict[str, Any]:
        name = backend.lookup(model_id)
        return ModelCard(id=name, description=backend.describe(name)).model_dump()

    @app.get("/health")
    async def health() -> dict[str, Any]:
        return await asyncio.to_thread(backend.health)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    @app.post("/v1/chat/completions")
    async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
        started = time.monotonic()
        call = backend.prepare(body, request.headers.get("x-trading-agents-deadline"))
        include_prompt = request.headers.get("x-trading-agents-prompt", "").lower() == "include"
        token = CancellationToken()
        timed_out = False

        def on_timeout() -> None:
            nonlocal timed_out
            timed_out = True
            token.cancel()

        timer = asyncio.get_running_loop().call_later(serve.request_timeout_s, on_timeout)
        completion_id = f"chatcmpl-{uuid.uuid4().hex[:24]}"
        created = int(time.time())
        pieces = backend.run(call, token)

        def done(outcome: Outcome | None, status: int) -> None:
            timer.cancel()
            if status in (499, 504):
                metrics.cancelled.labels("timeout" if timed_out else "client_closed").inc()
                metrics.cancelled_tokens.inc(call.pieces)
            if outcome is not None and status == 200:
                metrics.completed(
                    outcome.route.model,
                    outcome.route.reason,
                    outcome.prompt_tokens,
                    outcome.cached_tokens,
                    outcome.completion_tokens,
                    time.monotonic() - started,
                )

        async def next_piece() -> str | Outcome:
            """The next item, watching for a disconnect meanwhile; ApiError for every failure."""
            watcher = asyncio.create_task(_watch_disconnect(request, token))
            try:
                return await anext(pieces)
            except GenerationCancelledError:
                if timed_out:
                    raise ApiError(
                        504, f"the request ran past {serve.request_timeout_s:g}s", code="timeout"
                    ) from None
                raise ApiError(499, "the client closed the request", code="client_closed") from None
            finally:
                watcher.cancel()

        try:
            first = await next_piece()
        except BaseException as exc:
            token.cancel()
            with contextlib.suppress(Exception):
                await pieces.aclose()
            done(None, exc.status if isinstance(exc, ApiError) else 499)
            raise

        if body.stream:
            stream = event_stream(
                first,
                _translated(pieces, lambda: timed_out, serve.request_timeout_s),
                completion_id=completion_id,
                created=created,
                requested_model=body.model,
                include_usage=bool(body.stream_options and body.stream_options.include_usage),
                include_prompt=include_prompt,
                stop=token.cancel,
                on_done=done,
            )
            return StreamingResponse(
                stream,
                media_type="text/event-stream",
                headers={"cache-control": "no-cache", "x-accel-buffering": "no"},
            )

        item = first
        try:
            while not isinstance(item, Outcome):
                item = await next_piece()
        except BaseException as exc:
            token.cancel()
            done(None, exc.status if isinstance(exc, ApiError) else 499)
            raise
        outcome = item
        done(outcome, 200)
        reply = ChatCompletion(
            id=completion_id,
            created=created,
            model=outcome.route.model,
            choices=[
                Choice(
                    message=AssistantReply(content=outcome.text),
                    finish_reason=outcome.finish_reason,  # type: ignore[arg-type]
                )
            ],
            usage=usage_of(outcome),
            trading_agents=extension_of(outcome, include_prompt),
        )
        headers = {
            "x-trading-agents-route": _header(outcome.route.reason),
            "x-trading-agents-model": _header(outcome.route.model),
        }
        return JSONResponse(reply.model_dump(), headers=headers)

    key = serve.api_key.get_secret_value() if serve.api_key else None
    guarded = _Guard(app, api_key=key, max_body=serve.max_body_kb * 1024, metrics=metrics)
    app.state.guarded = guarded
    return app


async def _translated(
    pieces: AsyncIterator[str | Outcome], timed_out: Any, timeout_s: float
) -> AsyncIterator[str | Outcome]:
    """The rest of a stream, with a timeout's cancellation turned into a 504."""
    try:
        async for item in pieces:
            yield item
    except GenerationCancelledError:
        if timed_out():
            raise ApiError(504, f"the request ran past {timeout_s:g}s", code="timeout") from None
        raise ApiError(499, "the client closed the request", code="client_closed") from None


async def _watch_disconnect(request: Request, token: CancellationToken, every_s: float = 0.1) -> None:
    while not token.is_cancelled():
        if await request.is_disconnected():
            token.cancel()
            return
        await asyncio.sleep(every_s)


def _header(value: str) -> str:
    return value.encode("ascii", "replace").decode("ascii")


class _Guard:
    """ASGI middleware in front of everything: API key, body-size limit, request counts.

    The key is compared in constant time and never logged or echoed. A body is read up to the
    limit and replayed to the app; one byte more is answered 413 without parsing anything.
    """

    def __init__(self, app: ASGIApp, *, api_key: str | None, max_body: int, metrics: ServeMetrics) -> None:
        self.app = app
        self._key = api_key.encode() if api_key else None
        self.max_body = max_body
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        endpoint = next((e for e in ENDPOINTS if path == e or path.startswith(e + "/")), "other")
        status_seen: list[int] = []

        async def counting_send(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_seen.append(int(message["status"]))
            await send(message)

        try:
            if self._key is not None and not self._authorized(scope):
                await _send_error(
                    counting_send, 401, "missing or wrong API key: send Authorization: Bearer <key>"
                )
                return
            body, too_big = await self._read_body(scope, receive)
            if too_big:
                await _send_error(
                    counting_send, 413, f"request body over {self.max_body // 1024} KB", code="body_too_large"
                )
                return
            await self.app(scope, _replay(body, receive), counting_send)
        finally:
            self.metrics.requests.labels(endpoint, str(status_seen[0] if status_seen else 499)).inc()

    def _authorized(self, scope: Scope) -> bool:
        assert self._key is not None
        for name, value in scope.get("headers", []):
            if name == b"authorization":
                return authorization_matches(value, self._key)
        return False

    async def _read_body(self, scope: Scope, receive: Receive) -> tuple[bytes, bool]:
        if scope.get("method") in ("GET", "HEAD", "OPTIONS"):
            return b"", False
        for name, value in scope.get("headers", []):
            if name == b"content-length" and value.isdigit() and int(value) > self.max_body:
                return b"", True
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_body:
                return b"", True
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        return b"".join(chunks), False


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


async def _send_error(send: Send, status: int, message: str, code: str | None = None) -> None:
    import json

    body = json.dumps(error_body(status, message, code=code)).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def asgi_app(settings: Settings, backend: Backend | None = None) -> ASGIApp:
    """What uvicorn runs: the app behind its guard (key, body limit, counts)."""
    return create_app(settings, backend).state.guarded


__all__ = ["SELECTOR", "asgi_app", "create_app"]
