"""Composition root: builds the concrete stores and models from settings.

The only place that wires ``memory`` to ``serving``. Everything is built on demand, so a
command that needs only the database never loads a model, and the memory store's embedder loads
on its first embedding (``mneme doc list`` and ``delete`` never import torch).
"""

from __future__ import annotations

import uuid
from pathlib import Path

from app.errors import HomeNotWritable
from app.settings import Settings
from memory import ChromaVectorIndex, Database, MemoryStore, ReconcileReport
from serving.embeddings import EmbedderConfig, LazyEmbedder, SentenceTransformerEmbedder
from serving.llm import LLM


def prepare_home(settings: Settings) -> Path:
    """Create ``MNEME_HOME`` if needed and prove it writable; raise :class:`HomeNotWritable`."""
    home = settings.home
    probe = home / f".write-test-{uuid.uuid4().hex}"
    try:
        home.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as err:
        raise HomeNotWritable(
            f"MNEME_HOME={home} cannot be used: {err.strerror or err}; point MNEME_HOME at a "
            "folder you can write"
        ) from err
    return home


def open_database(settings: Settings, *, migrate: bool | None = None) -> Database:
    """The database, migrated if it is the embedded SQLite file (or ``migrate`` says so);
    otherwise checked to be at the newest migration."""
    if settings.database_url is None:
        prepare_home(settings)
    database = Database(settings.resolved_database_url, synchronous=settings.sqlite_synchronous)
    database.ping()
    if migrate if migrate is not None else settings.is_embedded_sqlite:
        database.upgrade()
    else:
        database.check_schema()
    return database


def open_vector_index(settings: Settings) -> ChromaVectorIndex:
    if settings.chroma_url:
        return ChromaVectorIndex(url=settings.chroma_url)
    prepare_home(settings)
    return ChromaVectorIndex(path=settings.chroma_path)


def open_embedder(settings: Settings) -> SentenceTransformerEmbedder:
    """The embedding model, loaded now (fails now if it cannot be)."""
    return SentenceTransformerEmbedder(EmbedderConfig(model=settings.embedding_model))


def open_lazy_embedder(settings: Settings) -> LazyEmbedder:
    """The embedding model, loaded on its first embedding."""
    return LazyEmbedder(EmbedderConfig(model=settings.embedding_model))


def open_llm(settings: Settings) -> LLM:
    """The LLM boundary: the configured OpenAI-compatible server, else the built-in engine."""
    if settings.llm_base_url:
        from serving.openai_client import OpenAIClientConfig, OpenAICompatibleLLM

        return OpenAICompatibleLLM(
            OpenAIClientConfig(
                base_url=settings.llm_base_url,
                model=settings.llm_model or "default",
                api_key=settings.llm_api_key,
                timeout_s=settings.llm_timeout_s,
            )
        )
    from serving.engine.config import EngineConfig
    from serving.local import LocalLLM

    return LocalLLM.load(EngineConfig(model=settings.llm_model))


def open_memory(
    settings: Settings, database: Database | None = None
) -> tuple[MemoryStore, ReconcileReport]:
    """The memory store over SQL (``database``, else opened) + Chroma + an embedder loaded on
    first use, with drift repaired."""
    return MemoryStore.open(
        open_database(settings) if database is None else database,
        open_vector_index(settings),
        open_lazy_embedder(settings),
    )
