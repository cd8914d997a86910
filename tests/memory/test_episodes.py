"""The SQL episode store: round trips, order, versions, isolation — on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import numpy as np
import pytest

from memory import Database, InvalidRecord, NewEpisode, NotFound
from memory.documents import SqlDocumentStore
from memory.episodes import SqlEpisodeStore
from memory.namespaces import SqlNamespaceStore


@pytest.fixture
def episodes(database: Database) -> SqlEpisodeStore:
    spaces = SqlNamespaceStore(database)
    spaces.ensure("story-a", embedding_model="m", embedding_dim=4)
    spaces.ensure("story-b", embedding_model="m", embedding_dim=4)
    return SqlEpisodeStore(database)


def vectors(n: int, dim: int = 4) -> np.ndarray:
    rng = np.random.default_rng(n)
    out = rng.normal(size=(n, dim)).astype(np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_round_trip_keeps_every_field(episodes: SqlEpisodeStore) -> None:
    expires = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    new = NewEpisode(
        text="The ship left at dawn.",
        start_char=100,
        token_count=6,
        surprise_mean=1.5,
        surprise_max=4.25,
        importance=0.7,
        pinned=True,
        summary="departure",
        expires_at=expires,
        metadata={"chapter": 3, "tags": ["sea"]},
    )
    [stored] = episodes.add("story-a", [new], vectors(1))
    got = episodes.get("story-a", stored.id)
    assert got == stored
    assert (got.text, got.start_char, got.end_char) == (new.text, 100, 100 + len(new.text))
    assert (got.token_count, got.surprise_mean, got.surprise_max) == (6, 1.5, 4.25)
    assert (got.importance, got.pinned, got.summary, got.version) == (0.7, True, "departure", 1)
    assert got.expires_at == expires and got.created_at.tzinfo is not None
    assert got.metadata == {"chapter": 3, "tags": ["sea"]}
    _ids, stored_vectors = episodes.embeddings(got.namespace_id, [got.id])
    np.testing.assert_array_equal(stored_vectors, vectors(1))


def test_ordinals_continue_across_batches_and_list_pages(episodes: SqlEpisodeStore) -> None:
    first = episodes.add("story-a", [NewEpisode(text=f"e{i}") for i in range(3)])
    second = episodes.add("story-a", [NewEpisode(text=f"f{i}") for i in range(2)])
    assert [e.ordinal for e in first + second] == [0, 1, 2, 3, 4]
    page = episodes.page("story-a", after_ordinal=1, limit=2)
    assert [e.text for e in page] == ["e2", "f0"]
    assert episodes.count("story-a") == 5


def test_bad_episode_in_a_batch_writes_nothing(episodes: SqlEpisodeStore) -> None:
    batch = [NewEpisode(text="fine"), NewEpisode(text="   ")]
    with pytest.raises(InvalidRecord, match="empty"):
        episodes.add("story-a", batch)
    with pytest.raises(InvalidRecord, match="offsets"):
        episodes.add("story-a", [NewEpisode(text="x", start_char=5, end_char=2)])
    with pytest.raises(InvalidRecord, match="dimension 4"):
        episodes.add("story-a", [NewEpisode(text="x")], vectors(1, dim=3))
    with pytest.raises(InvalidRecord, match="2 episodes but 1 embeddings"):
        episodes.add("story-a", [NewEpisode(text="x"), NewEpisode(text="y")], vectors(1))
    assert episodes.count("story-a") == 0


def test_edits_are_versioned(episodes: SqlEpisodeStore) -> None:
    [episode] = episodes.add("story-a", [NewEpisode(text="v1 text", importance=1.0)], vectors(1))
    edited = episodes.edit(
        "story-a", episode.id, text="v2 text", embedding=vectors(2)[1], reason="typo"
    )
    edited = episodes.edit("story-a", episode.id, importance=0.2, pinned=True, reason="demote")
    assert edited.version == 3 and edited.text == "v2 text" and edited.importance == 0.2
    history = episodes.history("story-a", episode.id)
    assert [(v.version, v.text, v.importance, v.pinned, v.reason) for v in history] == [
        (1, "v1 text", 1.0, False, "typo"),
        (2, "v2 text", 1.0, False, "demote"),
    ]
    _, stored = episodes.embeddings(episode.namespace_id, [episode.id])
    np.testing.assert_array_equal(stored[0], vectors(2)[1])


def test_text_edit_without_new_embedding_is_refused(episodes: SqlEpisodeStore) -> None:
    [episode] = episodes.add("story-a", [NewEpisode(text="old")], vectors(1))
    with pytest.raises(InvalidRecord, match="embedding"):
        episodes.edit("story-a", episode.id, text="new")
    assert episodes.get("story-a", episode.id).version == 1
    assert episodes.history("story-a", episode.id) == []


def test_no_query_crosses_namespaces(database: Database, episodes: SqlEpisodeStore) -> None:
    [a] = episodes.add("story-a", [NewEpisode(text="alpha")])
    [b] = episodes.add("story-b", [NewEpisode(text="beta")])
    assert b.ordinal == 0  # order is per namespace
    with pytest.raises(NotFound):
        episodes.get("story-b", a.id)
    with pytest.raises(NotFound):
        episodes.edit("story-b", a.id, importance=0.0)
    with pytest.raises(NotFound):
        episodes.history("story-b", a.id)
    assert episodes.get_many("story-b", [a.id, b.id]) == [b]
    assert [e.text for e in episodes.page("story-b")] == ["beta"]
    assert episodes.delete("story-b", [a.id]) == []
    assert episodes.get("story-a", a.id) == a
    documents = SqlDocumentStore(database)
    doc = documents.add("story-a", "book.txt", "alpha")
    with pytest.raises(NotFound):
        documents.get("story-b", doc.id)
    with pytest.raises(NotFound, match="documents"):
        episodes.add("story-b", [NewEpisode(text="x", document_id=doc.id)])
    assert documents.all("story-b") == []


def test_unknown_namespace_is_not_found(episodes: SqlEpisodeStore) -> None:
    with pytest.raises(NotFound, match="nowhere"):
        episodes.page("nowhere")
    with pytest.raises(InvalidRecord, match="not valid"):
        episodes.page("../etc")


def test_delete_document_cascades_to_its_episodes(
    database: Database, episodes: SqlEpisodeStore
) -> None:
    documents = SqlDocumentStore(database)
    doc = documents.add("story-a", "book.txt", "one two", metadata={"lang": "en"})
    assert doc.char_count == 7 and len(doc.sha256) == 64
    episodes.add("story-a", [NewEpisode(text="one", document_id=doc.id)])
    [loose] = episodes.add("story-a", [NewEpisode(text="loose")])
    documents.delete("story-a", doc.id)
    assert episodes.page("story-a") == [loose]


def test_touch_updates_access_time(episodes: SqlEpisodeStore) -> None:
    [episode] = episodes.add("story-a", [NewEpisode(text="x")])
    later = episode.accessed_at + timedelta(days=3)
    episodes.touch("story-a", [episode.id], later)
    assert episodes.get("story-a", episode.id).accessed_at == later


def test_namespace_remembers_its_embedding_model(database: Database) -> None:
    spaces = SqlNamespaceStore(database)
    first = spaces.ensure("agent-1", embedding_model="m", embedding_dim=4)
    assert spaces.ensure("agent-1", embedding_model="m", embedding_dim=4) == first
    with pytest.raises(InvalidRecord, match="MNEME_EMBEDDING_MODEL"):
        spaces.ensure("agent-1", embedding_model="other", embedding_dim=8)
    assert [n.name for n in spaces.all()] == ["agent-1"]
    spaces.delete("agent-1")
    assert spaces.all() == []
