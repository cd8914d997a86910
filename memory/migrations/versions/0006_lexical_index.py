"""A lexical (full-text) index over episode text, beside the vectors (issue 19).

SQLite: an FTS5 table ``episodes_fts`` holding the episodes' text as external content (porter
stemming over unicode61 words), kept equal to ``episodes`` by three triggers, so it is written
in the transaction that writes the episode and loses its rows with it (cascades included).
PostgreSQL: a stored generated column ``search_vector`` (``to_tsvector('english', text)``)
with a GIN index; the database keeps it equal to the text, nothing can drift.

Both are backfilled here for episodes that already exist. The objects are not in
``memory.tables`` (they are dialect-specific); ``memory.lexical.is_lexical_name`` tells
Alembic's comparison to leave them alone.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Kept literal (not imported from memory.lexical): a migration must not change when the code does.
_SQLITE_UP = (
    "CREATE VIRTUAL TABLE episodes_fts USING fts5("
    "text, content='episodes', content_rowid='id', tokenize='porter unicode61')",
    "CREATE TRIGGER episodes_fts_insert AFTER INSERT ON episodes BEGIN "
    "INSERT INTO episodes_fts(rowid, text) VALUES (new.id, new.text); END",
    "CREATE TRIGGER episodes_fts_delete AFTER DELETE ON episodes BEGIN "
    "INSERT INTO episodes_fts(episodes_fts, rowid, text) VALUES ('delete', old.id, old.text); "
    "END",
    "CREATE TRIGGER episodes_fts_update AFTER UPDATE OF text ON episodes BEGIN "
    "INSERT INTO episodes_fts(episodes_fts, rowid, text) VALUES ('delete', old.id, old.text); "
    "INSERT INTO episodes_fts(rowid, text) VALUES (new.id, new.text); END",
    "INSERT INTO episodes_fts(episodes_fts) VALUES ('rebuild')",  # the backfill
)
_SQLITE_DOWN = (
    "DROP TRIGGER IF EXISTS episodes_fts_update",
    "DROP TRIGGER IF EXISTS episodes_fts_delete",
    "DROP TRIGGER IF EXISTS episodes_fts_insert",
    "DROP TABLE IF EXISTS episodes_fts",
)
_POSTGRES_UP = (
    # Adding a stored generated column computes it for every existing row: the backfill.
    "ALTER TABLE episodes ADD COLUMN search_vector tsvector "
    "GENERATED ALWAYS AS (to_tsvector('english', text)) STORED",
    "CREATE INDEX ix_episodes_search_vector ON episodes USING gin (search_vector)",
)
_POSTGRES_DOWN = (
    "DROP INDEX IF EXISTS ix_episodes_search_vector",
    "ALTER TABLE episodes DROP COLUMN IF EXISTS search_vector",
)


def _run(statements: Sequence[str]) -> None:
    for statement in statements:
        op.execute(statement)


def upgrade() -> None:
    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        _run(_SQLITE_UP)
    elif dialect == "postgresql":
        _run(_POSTGRES_UP)
    else:
        # Settings accept only these two; a Database opened on another URL stops here, clearly.
        raise ValueError(
            f"the {dialect} database is not supported: Mneme's lexical index needs SQLite "
            "(FTS5) or PostgreSQL (full-text search); use one of them"
        )


def downgrade() -> None:
    dialect = op.get_bind().dialect.name
    _run(_SQLITE_DOWN if dialect == "sqlite" else _POSTGRES_DOWN)
