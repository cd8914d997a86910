"""Kill a process between the SQL write and the Chroma write; reopening loses nothing."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

import pytest

from memory import ChromaVectorIndex, Database, MemoryStore, NewEpisode
from tests.fakes import HashEmbedder

ROOT = Path(__file__).resolve().parents[2]


def seeded_store(folder: Path) -> tuple[MemoryStore, list[int]]:
    database = Database(f"sqlite:///{folder / 'mneme.db'}")
    database.upgrade()
    store = MemoryStore(database, ChromaVectorIndex(path=folder / "chroma"), HashEmbedder())
    texts = ["the ship sailed north", "the crew sang at night", "ice closed the bay"]
    ids = [e.id for e in store.add("book", [NewEpisode(text=t) for t in texts])]
    store.database.close()
    return store, ids


def kill_between_writes(folder: Path, action: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tests.memory.crash_writer", str(folder), action],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == -signal.SIGKILL, done.stderr


def reopen(folder: Path) -> tuple[MemoryStore, int, int, int]:
    database = Database(f"sqlite:///{folder / 'mneme.db'}")
    store, report = MemoryStore.open(
        database, ChromaVectorIndex(path=folder / "chroma"), HashEmbedder()
    )
    return store, report.restored, report.refreshed, report.removed


@pytest.mark.slow
def test_killed_after_sql_insert_the_vector_is_restored(tmp_path: Path) -> None:
    _, ids = seeded_store(tmp_path)
    kill_between_writes(tmp_path, "add")
    store, restored, refreshed, removed = reopen(tmp_path)
    assert (restored, refreshed, removed) == (1, 0, 0)
    top = store.search("book", "where is the treasure buried", k=1)[0]
    assert top.episode.text == "the treasure is buried under the old oak"
    assert top.episode.id not in ids


@pytest.mark.slow
def test_killed_after_sql_edit_the_stale_vector_is_refreshed(tmp_path: Path) -> None:
    _, ids = seeded_store(tmp_path)
    kill_between_writes(tmp_path, "edit")
    store, restored, refreshed, removed = reopen(tmp_path)
    assert (restored, refreshed, removed) == (0, 1, 0)
    top = store.search("book", "map burned fireplace", k=1)[0]
    assert (top.episode.id, top.episode.version) == (ids[0], 2)


@pytest.mark.slow
def test_killed_after_sql_delete_the_extra_vector_is_removed(tmp_path: Path) -> None:
    _, ids = seeded_store(tmp_path)
    kill_between_writes(tmp_path, "delete")
    store, restored, refreshed, removed = reopen(tmp_path)
    assert (restored, refreshed, removed) == (0, 0, 1)
    space = store.namespaces.get("book")
    assert set(store.index.entries(space.id)) == set(ids[1:])
