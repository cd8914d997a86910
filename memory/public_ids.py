"""The key of the REST API's public ids (issue 17), kept in the database.

Migration 0007 makes it once (256 random bits) in ``deployment_secrets``; every API process on
the same database reads the same key, so they all show a record under the same public id. The
permutation it keys lives at the API's edge (``app/api/ids.py``); this module only stores it.
"""

from __future__ import annotations

from memory.database import Database, describe_url
from memory.errors import SchemaOutOfDate, StoreUnavailable
from memory.tables import DeploymentSecretRow

PUBLIC_IDS = "public_ids"
"""Name of the public-id key in ``deployment_secrets``."""
KEY_BYTES = 32
"""Length of the key migration 0007 makes, in bytes."""


class SqlPublicIdKey:
    """Reads the public-id key of a database."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def get(self) -> bytes:
        """The key; :class:`SchemaOutOfDate` if the database has none. None is made here: a
        new key would change every public id that clients hold."""
        try:
            with self.database.session() as session:
                row = session.get(DeploymentSecretRow, PUBLIC_IDS)
                value = None if row is None else bytes(row.value)
        except StoreUnavailable:
            self.database.check_schema()  # no table: name the migration missing, and the fix
            raise
        if value is None or len(value) < KEY_BYTES:
            raise SchemaOutOfDate(
                f"the database {describe_url(self.database.url)} holds no key for public "
                "ids: run `mneme db upgrade` (migration 0007 makes it); if it is already "
                f"upgraded, restore the {PUBLIC_IDS!r} row of deployment_secrets from a "
                "backup (a new key changes every id the API has shown)"
            )
        return value
