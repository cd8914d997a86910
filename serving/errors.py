"""Errors raised by the serving package. Messages name the bad value and the fix."""

from __future__ import annotations


class ServingError(Exception):
    """Root of every serving error."""


class ModelNotAvailable(ServingError):
    """A model (LLM, embedder, tokenizer) cannot be loaded from the name or folder given."""


class TokenizerUnavailable(ServingError):
    """No tokenizer can be built for a model; callers fall back to another counter."""


class LLMError(ServingError):
    """Root of errors from an LLM backend."""


class LLMUnavailable(LLMError):
    """The backend cannot be reached or keeps failing (connection refused, timeouts, 5xx, 429)
    after the bounded retries; the message names the URL."""


class LLMRequestError(LLMError):
    """The backend refused the request as malformed (4xx other than 429); retrying will not help."""


class LogprobsUnsupported(LLMError):
    """The backend cannot return log-probabilities of a given text; callers fall back (e.g. to
    embedding novelty for segmentation)."""


class StructuredOutputError(LLMError):
    """The model's output did not validate against the schema within the repair budget."""


class RequestRejected(ServingError):
    """A generation request the engine cannot serve as asked (prompt longer than the context,
    empty prompt, unknown model); the message names the limit."""


class EngineFailed(ServingError):
    """The engine hit an internal error while serving a request; the request was abandoned."""
