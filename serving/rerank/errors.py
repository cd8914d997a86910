"""Errors of the rerank package. Missing scorer weights raise serving's ``ModelNotAvailable``."""

from __future__ import annotations

from serving.errors import ServingError


class RerankError(ServingError):
    """Root of reranking errors."""


class UnknownScorer(RerankError):
    """A scorer name this process does not offer; the message lists the ones it does."""


class RerankUnsupported(RerankError):
    """The generator cannot do what the rerank method needs (beam search over a chat endpoint)."""
