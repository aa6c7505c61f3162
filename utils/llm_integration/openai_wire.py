"""The OpenAI chat-completions wire protocol, shared by the HTTP model clients.

:class:`OpenAIWireClient` is the part of ``server_client`` and ``endpoint_client`` that is the
same: one ``httpx2.AsyncClient`` per event loop, a streamed ``POST /v1/chat/completions``
(its body: :func:`chat_body`) read as server-sent events, the reply's text, finish reason and
usage gathered into a :class:`WireReply`, a token estimate where the server's tokenizer is out
of reach, the preflight ``GET`` (:func:`server_get`), and an HTTP error turned into this layer's
error (``LLMError``: exit 3).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncGenerator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from autogen_core import CancellationToken
from autogen_core.models import LLMMessage
from autogen_core.tools import Tool, ToolSchema
from pydantic import BaseModel, SecretStr

from utils.llm_integration.client_base import BaseChatClient, to_chat_messages
from utils.llm_integration.errors import (
    DeadlineExceededError,
    GenerationCancelledError,
    LLMError,
    OutputTruncatedError,
)
from utils.llm_integration.loaded_model import CallMetrics
from utils.llm_integration.spec import SamplingParams


def server_root(base_url: str) -> str:
    """``http://h:8000/v1/`` -> ``http://h:8000``."""
    url = base_url.rstrip("/")
    return url[: -len("/v1")] if url.endswith("/v1") else url


def auth_headers(api_key: SecretStr | str | None) -> dict[str, str]:
    """The bearer header for ``api_key`` (none without a key)."""
    if api_key is None:
        return {}
    key = api_key.get_secret_value() if isinstance(api_key, SecretStr) else api_key
    return {"authorization": f"Bearer {key}"} if key else {}


def http_error(status: int, body: bytes | Mapping[str, Any], where: str, key_setting: str) -> LLMError:
    """This layer's error for a server's error answer (``key_setting`` names the API key's setting)."""
    try:
        data = body if isinstance(body, Mapping) else json.loads(body)
        err = data.get("error", {}) if isinstance(data, Mapping) else {}
        if isinstance(err, str):
            err = {"message": err}
    except ValueError:
        err = {}
    message = str(err.get("message") or f"HTTP {status}")
    code = err.get("code")
    if status == 401 or status == 403:
        return LLMError(f"the model server at {where} refused the API key (HTTP {status}); set {key_setting}")
    if code == "output_truncated":
        return OutputTruncatedError(message)
    if code in ("deadline_exceeded", "timeout") or status == 504:
        return DeadlineExceededError(f"model server at {where}: {message}")
    return LLMError(f"model server at {where}: HTTP {status}: {message}")


def server_get(
    root: str,
    path: str,
    api_key: SecretStr | str | None,
    timeout_s: float,
    *,
    key_setting: str,
    what: str,
    todo: str,
) -> Any:
    """``GET root + path`` with the key: the response when it answers 200, else one ``LLMError``
    (``what`` the server is and what to ``todo`` when it cannot be reached; ``key_setting``
    when it refuses the key)."""
    import httpx2

    try:
        resp = httpx2.get(root + path, headers=auth_headers(api_key), timeout=timeout_s)
    except httpx2.HTTPError as exc:
        raise LLMError(f"cannot reach the {what} at {root} ({type(exc).__name__}); {todo}") from None
    if resp.status_code != 200:
        raise http_error(resp.status_code, resp.content, root, key_setting)
    return resp


def chat_body(
    model: str,
    chat: list[dict[str, str]],
    sampling: SamplingParams,
    schema: type[BaseModel] | None,
    schema_json: Mapping[str, Any] | None,
    *,
    json_schema: bool = True,
) -> dict[str, Any]:
    """The streamed ``POST /v1/chat/completions`` body of one call.

    A structured reply asks for ``response_format: json_schema`` (``json_schema=False``: for
    ``json_object``, the schema then checked on this side only); JSON mode for ``json_object``.
    """
    body: dict[str, Any] = {
        "model": model,
        "messages": chat,
        "stream": True,
        "stream_options": {"include_usage": True},
        "max_tokens": sampling.max_tokens,
        "temperature": sampling.temperature,
        "top_p": sampling.top_p,
        "seed": sampling.seed,
    }
    if schema is not None and json_schema:
        body["response_format"] = {
            "type": "json_schema",
            "json_schema": {"name": schema.__name__[:64], "schema": schema_json, "strict": True},
        }
    elif schema_json is not None:
        body["response_format"] = {"type": "json_object"}
    return body


@dataclass
class WireReply:
    """One streamed reply as it came over the wire."""

    text: str = ""
    finish_reason: str = "stop"
    usage: dict[str, Any] = field(default_factory=dict)
    extension: dict[str, Any] = field(default_factory=dict)  # a ``serve`` server's ``trading_agents``
    ttft_s: float = 0.0
    latency_s: float = 0.0
    pieces: int = 0

    def metrics(self, model: str, model_sha256: str, grammar: bool) -> CallMetrics:
        """The :class:`CallMetrics` an in-process call would record, from what the server said."""
        details = self.usage.get("prompt_tokens_details") or {}
        completion_tokens = int(self.usage.get("completion_tokens") or self.pieces)
        gen_s = self.latency_s - self.ttft_s
        return CallMetrics(
            model=model,
            model_sha256=model_sha256,
            prompt_tokens=int(self.usage.get("prompt_tokens") or 0),
            cached_prompt_tokens=int(details.get("cached_tokens") or 0),
            completion_tokens=completion_tokens,
            ttft_s=round(self.ttft_s or self.latency_s, 4),
            latency_s=round(self.latency_s, 4),
            prompt_tokens_per_s=0.0,
            gen_tokens_per_s=round(completion_tokens / gen_s, 1) if gen_s > 0 and self.ttft_s > 0 else 0.0,
            finish_reason=self.finish_reason,
            grammar=grammar,
        )


class OpenAIWireClient(BaseChatClient):
    """A :class:`BaseChatClient` that talks to a server over HTTP (see the module docstring)."""

    _root = ""
    _timeout_s = 900.0
    _api_key: SecretStr | None = None
    #: the setting a user changes when the server refuses the key (named in the error)
    key_setting = "the API key"
    #: what to tell a user when the server cannot be reached
    unreachable_hint = "is the server running?"

    #: the context ``remaining_tokens`` counts against (the server's own is not known here)
    context_tokens = 2048

    _http: Any = None
    _http_loop: asyncio.AbstractEventLoop | None = None

    def count_tokens(self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = ()) -> int:
        """An estimate (4 characters a token): the server's tokenizer is not reachable from here."""
        return sum(len(m["content"]) for m in to_chat_messages(messages)) // 4 + 1

    def remaining_tokens(
        self, messages: Sequence[LLMMessage], *, tools: Sequence[Tool | ToolSchema] = ()
    ) -> int:
        return max(0, self.context_tokens - self.count_tokens(messages, tools=tools))

    def _client(self) -> Any:
        import httpx2

        loop = asyncio.get_running_loop()
        if self._http is None or self._http_loop is not loop:
            self._http = httpx2.AsyncClient(
                timeout=httpx2.Timeout(self._timeout_s, connect=10.0), headers=auth_headers(self._api_key)
            )
            self._http_loop = loop
        return self._http

    async def _close_http(self) -> None:
        if self._http is not None:
            with contextlib.suppress(RuntimeError):  # its event loop is gone
                await self._http.aclose()
            self._http = None

    async def _stream_chat(
        self,
        path: str,
        body: Mapping[str, Any],
        headers: Mapping[str, str],
        reply: WireReply,
        cancellation_token: CancellationToken | None,
        *,
        ndjson: bool = False,
        deadline: float | None = None,
    ) -> AsyncGenerator[str, None]:
        """POST ``body`` to ``path`` and yield the reply's text pieces; ``reply`` collects the rest.

        ``ndjson``: the server streams one JSON object a line (Ollama's ``/api/chat``) instead
        of server-sent events. ``deadline`` (``time.monotonic()``): the call is cut there and
        raises ``DeadlineExceededError``; closing the connection stops the server's generation.
        """
        import httpx2

        started = time.monotonic()
        pieces: list[str] = []
        wait_s = self._timeout_s
        if deadline is not None:
            wait_s = max(0.001, min(wait_s, deadline - started))
        try:
            async with self._client().stream(
                "POST",
                self._root + path,
                json=dict(body),
                headers=dict(headers),
                timeout=httpx2.Timeout(wait_s, connect=min(10.0, wait_s)),
            ) as resp:
                if resp.status_code != 200:
                    raise http_error(resp.status_code, await resp.aread(), self._root, self.key_setting)
                async for line in resp.aiter_lines():
                    if cancellation_token is not None and cancellation_token.is_cancelled():
                        raise GenerationCancelledError(f"the call to {self._root} was cancelled")
                    event = _event(line, ndjson)
                    if event is None:
                        continue
                    if event == "done":
                        break
                    if "error" in event:
                        raise http_error(0, event, self._root, self.key_setting)
                    if deadline is not None and time.monotonic() > deadline:
                        raise DeadlineExceededError(f"the call to {self._root} passed its deadline")
                    for piece, finish in _pieces(event, ndjson):
                        if piece:
                            if not pieces:
                                reply.ttft_s = time.monotonic() - started
                            pieces.append(piece)
                            yield piece
                        if finish:
                            reply.finish_reason = finish
                    reply.extension = event.get("trading_agents") or reply.extension
                    reply.usage = _usage(event, ndjson) or reply.usage
        except httpx2.TimeoutException as exc:
            raise DeadlineExceededError(
                f"the model server at {self._root} did not answer within {wait_s:g}s ({type(exc).__name__})"
            ) from None
        except httpx2.HTTPError as exc:
            raise LLMError(
                f"lost the model server at {self._root} ({type(exc).__name__}); {self.unreachable_hint}"
            ) from None
        reply.latency_s = time.monotonic() - started
        reply.text = "".join(pieces)
        reply.pieces = len(pieces)


def _event(line: str, ndjson: bool) -> dict[str, Any] | str | None:
    if ndjson:
        return json.loads(line) if line.strip() else None
    if not line.startswith("data:"):
        return None
    data = line[len("data:") :].strip()
    return "done" if data == "[DONE]" else json.loads(data)


def _pieces(event: Mapping[str, Any], ndjson: bool) -> list[tuple[str, str | None]]:
    if ndjson:  # Ollama: {"message": {"content": ...}, "done": bool, "done_reason": ...}
        finish = None
        if event.get("done"):
            finish = "length" if event.get("done_reason") == "length" else "stop"
        return [((event.get("message") or {}).get("content") or "", finish)]
    return [
        ((choice.get("delta") or {}).get("content") or "", choice.get("finish_reason"))
        for choice in event.get("choices") or []
    ]


def _usage(event: Mapping[str, Any], ndjson: bool) -> dict[str, Any] | None:
    if ndjson:
        if not event.get("done"):
            return None
        return {
            "prompt_tokens": event.get("prompt_eval_count", 0),
            "completion_tokens": event.get("eval_count", 0),
        }
    return event.get("usage") or None
