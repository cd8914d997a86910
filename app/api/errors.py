"""One error shape for every failure: ``{"error": {"type", "message", "detail"}}``.

Statuses come from :func:`app.errors.http_status` (the one mapping of errors to statuses);
FastAPI's own errors (validation, malformed JSON, unknown routes) are reshaped here. Anything
unexpected is logged with its traceback and answered 500 without internals.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException
from starlette.routing import Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.api.schemas import ErrorBody, finish_openapi
from app.errors import KNOWN_ERRORS, Overloaded, http_status

log = logging.getLogger("mneme.api")

_HTTP_TYPES = {
    400: "invalid_request",
    401: "authentication_error",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
}

ERROR_RESPONSES: dict[int | str, dict[str, Any]] = {
    status: {"model": ErrorBody, "description": description}
    for status, description in (
        (400, "Malformed request (bad JSON, invalid UTF-8)."),
        (401, "Missing, unknown or revoked API key."),
        (404, "No such record for this tenant."),
        (409, "The record is not ready for this (e.g. still being ingested)."),
        (413, "Request or document larger than the limit."),
        (415, "Unsupported content type."),
        (422, "A field is invalid; detail names each one."),
        (503, "A store or the model is unavailable; retry later."),
    )
}
"""Responses every /v1 route may give, for the OpenAPI schema."""

MODEL_RESPONSES: dict[int | str, dict[str, Any]] = {
    429: {
        "model": ErrorBody,
        "description": "Too much model work is queued; retry after Retry-After seconds.",
        "headers": {
            "Retry-After": {"description": "Seconds to wait.", "schema": {"type": "integer"}}
        },
    },
    504: {"model": ErrorBody, "description": "The work did not finish within its deadline."},
}
"""Further responses of the routes that run the model (ask, summarise, upload, story steps)."""


def error_response(
    status: int, kind: str, message: str, detail: Any = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    body = {"error": {"type": kind, "message": message, "detail": detail}}
    return JSONResponse(body, status_code=status, headers=headers)


def _jsonable(value: Any) -> Any:
    """Validation error details made JSON-safe (pydantic puts exceptions and bytes in them)."""
    return json.loads(json.dumps(value, default=lambda v: repr(v)[:200]))


def _validation(_: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, RequestValidationError)
    errors = err.errors()
    if any(e.get("type") == "json_invalid" for e in errors):
        return error_response(400, "invalid_request", "the body is not valid JSON; send JSON")
    problems = []
    detail = []
    for error in errors:
        where = ".".join(str(p) for p in error.get("loc", ()) if p != "body") or "body"
        problems.append(f"{where}: {error.get('msg', 'invalid')}")
        detail.append({"field": where, "problem": str(error.get("msg", "invalid"))[:500]})
    message = "invalid request: " + "; ".join(problems[:5])
    if len(problems) > 5:
        message += f"; and {len(problems) - 5} more"
    return error_response(422, "invalid_request", message[:2000], _jsonable(detail[:50]))


def _allowed(request: Request) -> str:
    """Every method some route serves at the request's path (Starlette names only one)."""
    methods: set[str] = set()
    for route in request.app.router.routes:
        match, _ = route.matches(request.scope)
        if match != Match.NONE:
            methods |= set(getattr(route, "methods", None) or ())
    return ", ".join(sorted(methods))


def _http(request: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, HTTPException)
    message = str(err.detail)
    headers = dict(err.headers or {})
    if err.status_code == 405:
        headers["Allow"] = _allowed(request)
        message = f"{request.method} is not allowed here; use {headers['Allow']}"
    if err.status_code == 400 and "parsing the body" in message:
        message = "the body could not be read: send UTF-8 JSON (or multipart/form-data uploads)"
    if err.status_code == 404 and message == "Not Found":
        message = "no such route; see /docs for the routes"
    kind = _HTTP_TYPES.get(err.status_code, "http_error")
    return error_response(err.status_code, kind, message, headers=headers or None)


def _known(_: Request, err: Exception) -> JSONResponse:
    status, kind = http_status(err)
    if status >= 500:
        log.error("request failed: %s", err, exc_info=err)
    headers = None
    if status == 401:
        headers = {"WWW-Authenticate": "Bearer"}
    elif isinstance(err, Overloaded):
        headers = {"Retry-After": str(err.retry_after_s)}
    return error_response(status, kind, str(err), headers=headers)


def _unexpected(_: Request, err: Exception) -> JSONResponse:
    log.error("unexpected error", exc_info=err)
    return error_response(500, "internal_error", "an unexpected error happened; it was logged")


def install(app: FastAPI) -> None:
    """Route every error through the one shape, and make the OpenAPI schema state exactly what
    validation refuses with 422 (:func:`~app.api.schemas.finish_openapi`; issue 17)."""
    app.add_exception_handler(RequestValidationError, _validation)
    app.add_exception_handler(HTTPException, _http)
    for kind in KNOWN_ERRORS:
        app.add_exception_handler(kind, _known)
    app.add_exception_handler(Exception, _unexpected)
    generate = app.openapi  # FastAPI's, cached on the app: finishing it again changes nothing

    def openapi() -> dict[str, Any]:
        return finish_openapi(generate())

    app.openapi = openapi  # type: ignore[method-assign]


class BodyLimit:
    """ASGI middleware: refuse a body larger than its route's limit with 413, without reading
    it all (by ``Content-Length`` first, then by counting what arrives)."""

    def __init__(self, app: ASGIApp, limit_for: Callable[[Scope], int]) -> None:
        self.app = app
        self.limit_for = limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope)
        too_large = f"the request body is over the limit of {limit} bytes; send less"
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = 0
                if length > limit:
                    await error_response(413, "payload_too_large", too_large)(scope, receive, send)
                    return
        seen = 0

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise HTTPException(413, too_large)
            return message

        await self.app(scope, counted, send)
