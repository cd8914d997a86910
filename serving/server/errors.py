"""The server's client errors, all answered as OpenAI-style error bodies (:func:`install`)."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from serving.server.schemas import error_body, validation_message


class ApiError(Exception):
    """A client error, answered as an OpenAI-style error body."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind


async def _api_error(_: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, ApiError)
    return JSONResponse(error_body(err.status, err.message, err.kind), status_code=err.status)


async def _invalid(_: Request, err: Exception) -> JSONResponse:
    """A body that does not validate is a 400, as OpenAI and vLLM answer (not FastAPI's 422)."""
    assert isinstance(err, RequestValidationError)
    message = validation_message(err.errors())
    return JSONResponse(error_body(400, message, "invalid_request_error"), 400)


async def _http(_: Request, err: Exception) -> JSONResponse:
    assert isinstance(err, HTTPException)
    return JSONResponse(
        error_body(err.status_code, str(err.detail), "invalid_request_error"),
        status_code=err.status_code,
    )


def install(app: FastAPI) -> None:
    """Answer :class:`ApiError`, invalid bodies and Starlette's HTTP errors in OpenAI's shape."""
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(HTTPException, _http)
