"""MemoryStore over real Chroma: search, edits re-indexed, deletes, and drift repair."""

from __future__ import annotations

from pathlib import Path

import pytest

from memory import ChromaVectorIndex, Database, InvalidRecord, MemoryStore, NewEpisode, NotFound
from tests.fakes import HashEmbedder

TEXTS = [
    "the lighthouse keeper lit the lamp at dusk",
    "a storm broke over the harbour and the boats",
    "the cook baked bread with rye and caraway",
    "the keeper climbed the lighthouse stairs again",
]


def add_texts(store: MemoryStore, namespace: str, texts: list[str]) -> list[int]:
    return [e.id for e in store.add(namespace, [NewEpisode(text=t) for t in texts])]


def test_search_finds_similar_episodes_best_first(store: MemoryStore) -> None:
    ids = add_texts(store, "book", TEXTS)
    hits = store.search("book", "lighthouse keeper", k=2)
    assert {h.episode.id for h in hits} == {ids[0], ids[3]}
    assert hits[0].score >= hits[1].score > 0.3
    assert store.search("book", "bread rye", k=1)[0].episode.id == ids[2]
    with pytest.raises(InvalidRecord, match="at least one"):
        store.search("book", "x", k=0)


def test_search_never_crosses_namespaces(store: MemoryStore) -> None:
    add_texts(store, "tenant-a", TEXTS)
    [other] = add_texts(store, "tenant-b", ["bread and caraway in the oven"])
    hits = store.search("tenant-b", "lighthouse keeper lamp", k=10)
    assert [h.episode.id for h in hits] == [other]
    with pytest.raises(NotFound):
        store.search("tenant-c", "anything")


def test_edit_reindexes_the_new_text(store: MemoryStore, embedder: HashEmbedder) -> None:
    ids = add_texts(store, "book", TEXTS)
    store.edit("book", ids[2], text="the keeper polished the lighthouse lens", reason="rewrite")
    scores = {h.episode.id: h.score for h in store.search("book", "bread rye caraway", k=4)}
    assert scores[ids[2]] < 0.1  # the old text's vector is gone
    top = store.search("book", "polished lens", k=1)[0]
    assert top.episode.id == ids[2] and top.episode.version == 2
    assert store.reconcile().repaired is False  # index already matches SQL


def test_delete_paths_remove_vectors(store: MemoryStore, chroma: ChromaVectorIndex) -> None:
    ids = add_texts(store, "book", TEXTS)
    space = store.namespaces.get("book")
    assert store.delete("book", [ids[0], 999_999]) == [ids[0]]
    assert set(chroma.entries(space.id)) == set(ids[1:])
    doc = store.documents.add("book", "chapter.txt", "a b")
    [in_doc] = store.add("book", [NewEpisode(text="inside the doc", document_id=doc.id)])
    store.delete_document("book", doc.id)
    assert in_doc.id not in chroma.entries(space.id)
    store.delete_namespace("book")
    assert space.id not in chroma.namespace_ids()


def test_reconcile_repairs_missing_stale_extra_and_orphans(
    database: Database, chroma: ChromaVectorIndex, embedder: HashEmbedder, tmp_path: Path
) -> None:
    store = MemoryStore(database, chroma, embedder)
    ids = add_texts(store, "book", TEXTS)
    space = store.namespaces.get("book")
    vectors = embedder.embed(["unrelated words entirely"])
    chroma.delete(space.id, [ids[0]])  # missing
    chroma.upsert(space.id, [ids[1]], vectors, [0])  # stale version and wrong vector
    chroma.upsert(space.id, [123_456], vectors, [1])  # extra: no such episode
    chroma.upsert(99_999, [1], vectors, [1])  # orphan collection: no such namespace
    calls = embedder.calls
    reopened, report = MemoryStore.open(
        database, ChromaVectorIndex(path=tmp_path / "chroma"), embedder
    )
    assert (report.restored, report.refreshed, report.removed) == (1, 1, 1)
    assert report.dropped_namespaces == [99_999]
    assert embedder.calls == calls  # repaired from SQL's embeddings, nothing re-embedded
    assert reopened.index.entries(space.id) == {i: 1 for i in ids}
    assert reopened.search("book", TEXTS[1], k=1)[0].episode.id == ids[1]
    assert reopened.reconcile().repaired is False
