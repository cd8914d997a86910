"""MemoryStore over real Chroma: search, edits re-indexed, deletes, and drift repair."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import memory.vectors as vector_layout
from memory import (
    ChromaVectorIndex,
    Database,
    InvalidRecord,
    MemoryStore,
    NewEpisode,
    NotFound,
)
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


def test_many_namespaces_share_few_collections(
    store: MemoryStore, chroma: ChromaVectorIndex
) -> None:
    for n in range(70):
        add_texts(store, f"doc-{n}", [f"document {n} talks of lighthouses", f"and of bread {n}"])
    names = chroma.client.list_collections()
    assert len(names) == 2  # 70 namespaces: two buckets of NAMESPACES_PER_COLLECTION
    for n in (0, 42, 69):  # every search stays inside its namespace
        space = store.namespaces.get(f"doc-{n}")
        hits = store.search(f"doc-{n}", "lighthouses and bread", k=10)
        assert {h.episode.namespace_id for h in hits} == {space.id} and len(hits) == 2


def test_collections_of_the_old_layout_are_rebuilt_from_sql(
    database: Database, chroma: ChromaVectorIndex, embedder: HashEmbedder, tmp_path: Path
) -> None:
    store = MemoryStore(database, chroma, embedder)
    ids = add_texts(store, "book", TEXTS)
    space = store.namespaces.get("book")
    chroma.drop(space.id)  # as if the vectors lived only in an old one-per-namespace collection
    old = chroma.client.create_collection(f"mneme-ns-{space.id}", embedding_function=None)
    old.upsert(ids=[str(i) for i in ids], embeddings=embedder.embed(TEXTS))
    calls = embedder.calls
    reopened, report = MemoryStore.open(
        database, ChromaVectorIndex(path=tmp_path / "chroma"), embedder
    )
    assert (report.retired_collections, report.restored) == (1, len(ids))
    assert embedder.calls == calls  # from SQL's embeddings
    assert all(not n.startswith("mneme-ns-") for n in reopened.index._names())
    assert reopened.search("book", TEXTS[2], k=1)[0].episode.id == ids[2]
    assert reopened.reconcile().repaired is False


@pytest.mark.parametrize("exact_limit", [4000, 2])  # 2: the small one takes Chroma's filter
def test_shared_collection_search_is_exact_for_large_and_small_namespaces(
    chroma: ChromaVectorIndex, exact_limit: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(vector_layout, "_EXACT_LIMIT", exact_limit)
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((43, 16)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    chroma.upsert(1, list(range(40)), vectors[:40], [1] * 40)  # fills the collection
    chroma.upsert(2, [40, 41, 42], vectors[40:], [1] * 3)  # shares it
    query = vectors[7] + 0.3 * vectors[41]
    for namespace, rows in ((1, range(40)), (2, range(40, 43))):
        exact = sorted(rows, key=lambda i: -float(vectors[i] @ query))[:5]
        assert [h.id for h in chroma.query(namespace, query, k=5)] == exact
