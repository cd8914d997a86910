"""A summary of what Mneme holds, for the web app's home page."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import func, select

from app.errors import KNOWN_ERRORS
from app.runtime import open_database
from app.settings import load_settings
from memory.database import describe_url
from memory.tables import DocumentRow, EpisodeRow, NamespaceRow


@dataclass(frozen=True, slots=True)
class Overview:
    database: str = ""
    revision: str | None = None
    namespaces: int = 0
    episodes: int = 0
    documents: int = 0
    error: str | None = None  # set instead of the counts when something is broken


def overview() -> Overview:
    """Counts of namespaces, episodes and documents; the error message if the stores fail."""
    try:
        database = open_database(load_settings())
    except KNOWN_ERRORS as err:
        return Overview(error=str(err))
    try:
        with database.session() as session:
            counts = [
                session.scalar(select(func.count()).select_from(t)) or 0
                for t in (NamespaceRow, EpisodeRow, DocumentRow)
            ]
        namespaces, episodes, documents = counts
        return Overview(
            database=describe_url(database.url),
            revision=database.current_revision(),
            namespaces=namespaces,
            episodes=episodes,
            documents=documents,
        )
    except KNOWN_ERRORS as err:
        return Overview(error=str(err))
    finally:
        database.close()
