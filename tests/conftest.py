"""Shared fixtures: temporary databases (SQLite and PostgreSQL), real Chroma, fake embedder."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text

from memory import ChromaVectorIndex, Database, MemoryStore
from tests.fakes import HashEmbedder
from tests.postgres import postgres_server


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    import torch

    if not torch.cuda.is_available():
        skip = pytest.mark.skip(reason="needs CUDA (run on a GPU machine)")
        for item in items:
            if "gpu" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    with postgres_server() as (url, reason):
        if url is None:
            pytest.skip(reason)
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def database(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Database]:
    """A migrated, empty database: SQLite in a temp file, and a fresh PostgreSQL database."""
    if request.param == "sqlite":
        db = Database(f"sqlite:///{tmp_path / 'mneme.db'}")
    else:
        server = request.getfixturevalue("postgres_url")
        name = f"t_{uuid.uuid4().hex[:12]}"
        admin = create_engine(server, isolation_level="AUTOCOMMIT")
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        db = Database(server.rsplit("/", 1)[0] + f"/{name}")
    db.upgrade()
    yield db
    db.close()
    if request.param == "postgresql":
        with admin.connect() as connection:
            connection.execute(text(f'DROP DATABASE "{name}" WITH (FORCE)'))
        admin.dispose()


@pytest.fixture
def sqlite_database(tmp_path: Path) -> Iterator[Database]:
    db = Database(f"sqlite:///{tmp_path / 'mneme.db'}")
    db.upgrade()
    yield db
    db.close()


@pytest.fixture
def embedder() -> HashEmbedder:
    return HashEmbedder()


@pytest.fixture
def chroma(tmp_path: Path) -> ChromaVectorIndex:
    return ChromaVectorIndex(path=tmp_path / "chroma")


@pytest.fixture
def store(database: Database, chroma: ChromaVectorIndex, embedder: HashEmbedder) -> MemoryStore:
    return MemoryStore(database, chroma, embedder)


@pytest.fixture(scope="session")
def test_model() -> Path:
    """The tiny pretrained model (stories260K) named by MNEME_TEST_MODEL; skip when absent."""
    location = os.environ.get("MNEME_TEST_MODEL")
    if not location or not Path(location).is_dir():
        pytest.skip("MNEME_TEST_MODEL does not name the tiny model's folder")
    return Path(location)
