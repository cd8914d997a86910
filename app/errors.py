"""Application errors and the one place that maps every error to a CLI exit code.

Library errors (``memory``, ``serving``) become user-facing messages only here, at the edge.
"""

from __future__ import annotations

from memory.errors import (
    InvalidQuery,
    InvalidRecord,
    NotFound,
    SchemaOutOfDate,
    StoreCorrupt,
    StoreError,
    StoreUnavailable,
)
from serving.errors import ModelNotAvailable, ServingError


class MnemeError(Exception):
    """Root of the application's own errors."""


class SettingsError(MnemeError):
    """A configuration value is invalid; the message names the variable and what is valid."""


class HomeNotWritable(MnemeError):
    """``MNEME_HOME`` cannot be created or written."""


class UnreadableDocument(MnemeError):
    """A file cannot be turned into text; the message names the file, the problem and the fix."""


# Exit codes: 1 = something is broken (doctor), 2 = usage / configuration, 3 = store, 4 = model.
EXIT_BROKEN = 1
EXIT_USAGE = 2
EXIT_STORE = 3
EXIT_MODEL = 4

_EXIT_CODES: tuple[tuple[type[Exception], int], ...] = (
    (SettingsError, EXIT_USAGE),
    (HomeNotWritable, EXIT_USAGE),
    (UnreadableDocument, EXIT_USAGE),
    (InvalidRecord, EXIT_USAGE),
    (InvalidQuery, EXIT_USAGE),
    (NotFound, EXIT_USAGE),
    (SchemaOutOfDate, EXIT_STORE),
    (StoreCorrupt, EXIT_STORE),
    (StoreUnavailable, EXIT_STORE),
    (StoreError, EXIT_STORE),
    (ModelNotAvailable, EXIT_MODEL),
    (ServingError, EXIT_MODEL),
)

KNOWN_ERRORS = (MnemeError, StoreError, ServingError)


def exit_code(error: Exception) -> int:
    """The CLI exit code for an error Mneme knows; ``EXIT_BROKEN`` for anything else."""
    for kind, code in _EXIT_CODES:
        if isinstance(error, kind):
            return code
    return EXIT_BROKEN
