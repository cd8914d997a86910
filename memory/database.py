"""The SQL database: engine, sessions, error translation and Alembic migrations."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine, event, text
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.exc import DatabaseError, OperationalError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import NullPool

from memory.errors import SchemaOutOfDate, StoreCorrupt, StoreError, StoreUnavailable

MIGRATIONS_DIR = Path(__file__).resolve().parent / "migrations"


SYNCHRONOUS = ("off", "normal", "full", "extra")
"""SQLite's ``synchronous`` levels; see :class:`Database`."""


def _sqlite_pragmas(synchronous: str) -> Any:
    def apply(dbapi_connection: Any, _record: Any) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA journal_mode=WAL")  # readers never block the writer
        cursor.execute(f"PRAGMA synchronous={synchronous.upper()}")
        cursor.execute("PRAGMA busy_timeout=10000")  # ms: wait for another writer, do not fail
        cursor.close()

    return apply


def describe_url(url: str) -> str:
    """The URL with its password hidden, for messages."""
    return make_url(url).render_as_string(hide_password=True)


def translate(error: SQLAlchemyError, url: str) -> StoreError:
    """Turn a driver error into a memory error that names the database and the fix."""
    shown = describe_url(url)
    detail = str(getattr(error, "orig", error)).strip().splitlines()[0]
    if "file is not a database" in detail or "malformed" in detail:
        return StoreCorrupt(
            f"the database {shown} is corrupt or not a SQLite file ({detail}); move it aside "
            "(or restore a backup) and run `mneme db upgrade` to create a new one"
        )
    if isinstance(error, OperationalError):
        return StoreUnavailable(
            f"cannot use the database {shown}: {detail}; check that it is running and that "
            "MNEME_DATABASE_URL (or MNEME_HOME for SQLite) points at it"
        )
    if isinstance(error, DatabaseError):
        return StoreError(f"database error on {shown}: {detail}")
    return StoreError(f"database error on {shown}: {error}")


class Database:
    """One SQL database (SQLite or PostgreSQL) with its session factory and migrations."""

    def __init__(self, url: str, *, echo: bool = False, synchronous: str = "full") -> None:
        """``synchronous`` (SQLite only): with WAL, ``full`` syncs the WAL at every commit, so
        a committed row (a revoked key, an accepted job) survives a power cut; ``normal`` syncs
        only at checkpoints — faster, and a crash of Mneme still loses nothing, but a power
        cut may lose the last commits (never consistency)."""
        if synchronous not in SYNCHRONOUS:
            raise ValueError(f"synchronous must be one of {', '.join(SYNCHRONOUS)}")
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite and parsed.database not in (None, "", ":memory:"):
            folder = Path(parsed.database).expanduser().parent
            if not folder.is_dir():
                raise StoreUnavailable(
                    f"the folder {folder} of the SQLite database does not exist; create it or "
                    "point MNEME_HOME / MNEME_DATABASE_URL elsewhere"
                )
        options: dict[str, Any] = {"echo": echo}
        if self.is_sqlite and parsed.database in (None, "", ":memory:"):
            options["poolclass"] = NullPool  # each connection is its own in-memory database
        elif not self.is_sqlite:
            options["pool_pre_ping"] = True
        # A file SQLite database keeps SQLAlchemy's default pool: connections (and SQLite's
        # page cache) are reused across sessions and threads instead of reopened per query.
        self.engine: Engine = create_engine(url, **options)
        if self.is_sqlite:
            event.listen(self.engine, "connect", _sqlite_pragmas(synchronous))
        self._sessions = sessionmaker(self.engine, expire_on_commit=False)

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction: committed on success, rolled back (nothing half-written) on error."""
        session = self._sessions()
        try:
            yield session
            session.commit()
        except SQLAlchemyError as err:
            session.rollback()
            raise translate(err, self.url) from err
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def ping(self) -> None:
        """Raise a :class:`StoreError` unless the database answers a trivial query."""
        try:
            with self.engine.connect() as connection:
                connection.execute(text("SELECT 1"))
                if self.is_sqlite:
                    connection.execute(text("SELECT count(*) FROM sqlite_master"))
        except SQLAlchemyError as err:
            raise translate(err, self.url) from err

    def _alembic(self) -> AlembicConfig:
        config = AlembicConfig()
        config.set_main_option("script_location", str(MIGRATIONS_DIR))
        config.set_main_option("sqlalchemy.url", self.url.replace("%", "%%"))
        return config

    def head_revision(self) -> str:
        """The newest migration this version of Mneme ships."""
        head = ScriptDirectory.from_config(self._alembic()).get_current_head()
        assert head is not None, "no migrations shipped"
        return head

    def current_revision(self) -> str | None:
        """The migration the database is at; None for an empty database."""
        try:
            with self.engine.connect() as connection:
                return MigrationContext.configure(connection).get_current_revision()
        except SQLAlchemyError as err:
            raise translate(err, self.url) from err

    def upgrade(self) -> str:
        """Apply every pending migration in one transaction per migration; return the revision."""
        config = self._alembic()
        try:
            with self.engine.begin() as connection:
                config.attributes["connection"] = connection
                command.upgrade(config, "head")
        except SQLAlchemyError as err:
            raise translate(err, self.url) from err
        return self.head_revision()

    def check_schema(self) -> None:
        """Raise :class:`SchemaOutOfDate` unless the database is at the newest migration."""
        current, head = self.current_revision(), self.head_revision()
        if current != head:
            raise SchemaOutOfDate(
                f"the database {describe_url(self.url)} is at migration {current or 'none'}, "
                f"this Mneme needs {head}; run `mneme db upgrade`"
            )

    def close(self) -> None:
        self.engine.dispose()
