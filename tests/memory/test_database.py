"""Migrations from empty, schema checks, and clear errors for broken databases."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from memory import Database, SchemaOutOfDate, StoreCorrupt, StoreUnavailable

TABLES = {
    "stories",
    "story_nodes",
    "bible_entries",
    "namespaces",
    "documents",
    "episodes",
    "episode_versions",
    "jobs",
    "trajectories",
    "subgoals",
    "subgoal_steps",
    "store_items",
    "tenants",
    "api_keys",
    "deployment_secrets",
    "alembic_version",
}


def test_migration_from_empty_creates_every_table(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'fresh.db'}")
    assert database.current_revision() is None
    with pytest.raises(SchemaOutOfDate, match="mneme db upgrade"):
        database.check_schema()
    assert database.upgrade() == database.head_revision()
    assert database.upgrade() == database.head_revision()  # idempotent
    lexical = {"episodes_fts", *(f"episodes_fts_{s}" for s in ("data", "idx", "docsize", "config"))}
    assert set(inspect(database.engine).get_table_names()) == TABLES | lexical  # FTS5 and shadows
    database.check_schema()


def test_postgres_migrates_from_empty(database: Database) -> None:
    assert set(inspect(database.engine).get_table_names()) >= TABLES
    assert database.current_revision() == database.head_revision()


def test_corrupt_sqlite_file_is_named_with_the_fix(tmp_path: Path) -> None:
    path = tmp_path / "mneme.db"
    path.write_bytes(b"this is not a database, just some bytes" * 200)
    database = Database(f"sqlite:///{path}")
    with pytest.raises(StoreCorrupt, match="move it aside") as caught:
        database.ping()
    assert str(path) in str(caught.value)
    with pytest.raises(StoreCorrupt):
        database.upgrade()
    assert path.read_bytes().startswith(b"this is not a database")  # nothing overwritten


def test_missing_folder_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(StoreUnavailable, match="does not exist"):
        Database(f"sqlite:///{tmp_path / 'no' / 'such' / 'mneme.db'}")


def test_unreachable_postgres_is_unavailable_and_hides_the_password() -> None:
    database = Database("postgresql+psycopg://user:secret@127.0.0.1:1/db?connect_timeout=2")
    with pytest.raises(StoreUnavailable, match="check that it is running") as caught:
        database.ping()
    assert "secret" not in str(caught.value)
