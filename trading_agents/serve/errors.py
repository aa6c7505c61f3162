"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}``.

Every way a request can go wrong ends here as JSON with a 4xx (the client's mistake) or a
503/504 (no model can serve, or it ran out of time). A 500 means a bug in this server; its
body says only that, and the traceback goes to the server's log, never to the client.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger("trading_agents.serve")

_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    404: "not_found_error",
    405: "invalid_request_error",
    413: "invalid_request_error",
    422: "invalid_request_error",
    499: "cancelled",
    503: "service_unavailable",
    504: "timeout",
}


class ApiError(Exception):
    """An error answered to the client as it is."""

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.code = code

    def body(self) -> dict[str, Any]:
        return error_body(self.status, self.message, self.param, self.code)

    def response(self) -> JSONResponse:
        return JSONResponse(self.body(), status_code=self.status)


def error_body(
    status: int, message: str, param: str | None = None, code: str | None = None
) -> dict[str, Any]:
    kind = _TYPES.get(status, "server_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _param(loc: tuple[Any, ...]) -> str | None:
    """``("body", "messages", 0, "content")`` -> ``messages[0].content``."""
    out = ""
    for part in loc[1:] if loc and loc[0] == "body" else loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or None


def validation_error(exc: RequestValidationError) -> ApiError:
    """The first problem of a body that failed validation: unknown field -> 400, bad value -> 422."""
    errors = exc.errors()
    first = errors[0] if errors else {"type": "", "loc": (), "msg": "invalid request"}
    param = _param(tuple(first.get("loc", ())))
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        return ApiError(
            400,
            f"unsupported parameter {param}: not part of this API",
            param=param,
            code="unsupported_parameter",
        )
    if kind == "json_invalid" or param is None:
        return ApiError(400, "the request body is not a JSON object", code="invalid_json")
    if kind == "missing":
        return ApiError(422, f"{param} is required", param=param, code="missing_parameter")
    if kind == "finite_number":
        value = first.get("input")
        shown = (
            "NaN"
            if value != value
            else ("Infinity" if str(value).lstrip("+") in ("inf", "Infinity") else str(value))
        )
        shown = "-Infinity" if str(value).startswith("-") else shown
        return ApiError(
            422,
            f"{param} is {shown}: it must be a finite number (no NaN or Infinity)",
            param=param,
            code="invalid_value",
        )
    return ApiError(422, f"{param}: {first.get('msg', 'invalid value')}", param=param, code="invalid_value")


def install_handlers(app: FastAPI) -> None:
    """Answer every failure OpenAI-style; nothing a client sends produces a traceback for it."""

    @app.exception_handler(ApiError)
    async def _api(_: Request, exc: ApiError) -> JSONResponse:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        if exc.status_code == 404:
            message = (
                f"no route {request.method} {request.url.path}; see GET /v1/models, POST /v1/chat/completions"
            )
        elif exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        else:
            message = str(exc.detail)
        return JSONResponse(error_body(exc.status_code, message), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        log.exception("internal error on %s %s", request.method, request.url.path)
        return JSONResponse(error_body(500, "internal server error (logged by the server)"), status_code=500)
