"""Errors raised by the memory package. Messages name the bad value and the fix."""

from __future__ import annotations


class StoreError(Exception):
    """Root of every memory error."""


class StoreUnavailable(StoreError):
    """A store cannot be reached right now (server down, file locked); retrying may succeed."""


class StoreCorrupt(StoreError):
    """A store's files are damaged or not what Mneme expects; needs a person to act."""


class SchemaOutOfDate(StoreError):
    """The database schema is older than this version of Mneme; run ``mneme db upgrade``."""


class NotFound(StoreError):
    """A record does not exist in the namespace it was asked for."""


class InvalidRecord(StoreError):
    """A record to write is malformed (empty text, bad offsets, wrong embedding size)."""


class InvalidQuery(StoreError):
    """A search or a memory operation was asked with bad arguments (empty query, no budget)."""
