"""Errors raised by the serving package. Messages name the bad value and the fix."""

from __future__ import annotations


class ServingError(Exception):
    """Root of every serving error."""


class ModelNotAvailable(ServingError):
    """A model (LLM, embedder, tokenizer) cannot be loaded from the name or folder given."""


class TokenizerUnavailable(ServingError):
    """No tokenizer can be built for a model; callers fall back to another counter."""
