"""Application errors and the one place that maps every error to a CLI exit code and an HTTP
status.

Library errors (``memory``, ``serving``) become user-facing messages only here, at the edge.
"""

from __future__ import annotations

from agents.errors import (
    AgentConfigError,
    AgentError,
    StepFailed,
    ToolDefinitionError,
    TrajectoryNotResumable,
)
from memory.errors import (
    InvalidQuery,
    InvalidRecord,
    NotFound,
    SchemaOutOfDate,
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
)
from serving.errors import (
    LLMUnavailable,
    ModelNotAvailable,
    RequestRejected,
    ServingError,
)
from serving.kernels.errors import AttentionSettingsError


class MnemeError(Exception):
    """Root of the application's own errors."""


class SettingsError(MnemeError):
    """A configuration value is invalid; the message names the variable and what is valid."""


class HomeNotWritable(MnemeError):
    """``MNEME_HOME`` cannot be created or written."""


class UnreadableDocument(MnemeError):
    """A file cannot be turned into text; the message names the file, the problem and the fix."""


class Unauthenticated(MnemeError):
    """No API key was sent, or the key is unknown or revoked."""


class PayloadTooLarge(MnemeError):
    """A request or an upload is larger than the configured limit; the message names both."""


class DocumentTooLarge(UnreadableDocument, PayloadTooLarge):
    """A document is larger than a limit, or would unpack or extract to more (a decompression
    bomb); unreadable, and answered 413 like any payload too large. The message names the limit."""


class Conflict(MnemeError):
    """The record is not in a state that allows the request (a document still being read)."""


class Overloaded(MnemeError):
    """Too much model work is queued to take more now; retry after ``retry_after_s`` seconds."""

    def __init__(self, message: str, *, retry_after_s: int) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class DeadlineExceeded(MnemeError):
    """A request's work did not finish within its deadline; it was stopped, nothing kept."""


# Exit codes: 1 = something is broken (doctor), 2 = usage / configuration, 3 = store, 4 = model.
EXIT_BROKEN = 1
EXIT_USAGE = 2
EXIT_STORE = 3
EXIT_MODEL = 4

_EXIT_CODES: tuple[tuple[type[Exception], int], ...] = (
    (SettingsError, EXIT_USAGE),
    (HomeNotWritable, EXIT_USAGE),
    (UnreadableDocument, EXIT_USAGE),
    (Unauthenticated, EXIT_USAGE),
    (PayloadTooLarge, EXIT_USAGE),
    (Conflict, EXIT_USAGE),
    (Overloaded, EXIT_MODEL),
    (DeadlineExceeded, EXIT_MODEL),
    (InvalidRecord, EXIT_USAGE),
    (InvalidQuery, EXIT_USAGE),
    (NotFound, EXIT_USAGE),
    (SchemaOutOfDate, EXIT_STORE),
    (StoreCorrupt, EXIT_STORE),
    (StoreUnavailable, EXIT_STORE),
    (StoreError, EXIT_STORE),
    (ModelNotAvailable, EXIT_MODEL),
    (AttentionSettingsError, EXIT_USAGE),
    (ServingError, EXIT_MODEL),
    (StepFailed, EXIT_MODEL),
    (AgentConfigError, EXIT_USAGE),
    (ToolDefinitionError, EXIT_USAGE),
    (TrajectoryNotResumable, EXIT_USAGE),
)

KNOWN_ERRORS = (MnemeError, StoreError, ServingError, AgentError)


def exit_code(error: Exception) -> int:
    """The CLI exit code for an error Mneme knows; ``EXIT_BROKEN`` for anything else."""
    for kind, code in _EXIT_CODES:
        if isinstance(error, kind):
            return code
    return EXIT_BROKEN


# HTTP: (status, error type) of the REST API's error body {"error": {"type", "message", "detail"}}.
_HTTP_STATUSES: tuple[tuple[type[Exception], int, str], ...] = (
    (Unauthenticated, 401, "authentication_error"),
    (NotFound, 404, "not_found"),
    (Conflict, 409, "conflict"),
    (DocumentTooLarge, 413, "payload_too_large"),  # ahead of UnreadableDocument, its base
    (PayloadTooLarge, 413, "payload_too_large"),
    (Overloaded, 429, "overloaded"),
    (DeadlineExceeded, 504, "timeout"),
    (UnreadableDocument, 422, "unreadable_document"),
    (InvalidRecord, 422, "invalid_request"),
    (InvalidQuery, 422, "invalid_request"),
    (RequestRejected, 422, "invalid_request"),
    (SettingsError, 500, "configuration_error"),
    (HomeNotWritable, 500, "configuration_error"),
    (StoreUnavailable, 503, "store_unavailable"),
    (SchemaOutOfDate, 503, "store_unavailable"),
    (StoreCorrupt, 500, "store_error"),
    (StoreError, 500, "store_error"),
    (ModelNotAvailable, 503, "model_unavailable"),
    (LLMUnavailable, 503, "model_unavailable"),
    (AttentionSettingsError, 500, "configuration_error"),
    (ServingError, 502, "model_error"),
    (StepFailed, 502, "model_error"),
    (TrajectoryNotResumable, 409, "conflict"),
    (AgentConfigError, 500, "configuration_error"),
    (ToolDefinitionError, 500, "configuration_error"),
)


def http_status(error: Exception) -> tuple[int, str]:
    """The HTTP status and error type for an error Mneme knows; (500, "internal_error") else."""
    for kind, status, name in _HTTP_STATUSES:
        if isinstance(error, kind):
            return status, name
    return 500, "internal_error"
