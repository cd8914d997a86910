"""The lexical index in SQL (SQLite FTS5, PostgreSQL tsvector): written, deleted, migrated,
repaired with the episodes; and reciprocal-rank fusion."""

from __future__ import annotations

import pytest
from alembic import command
from sqlalchemy import text

from memory import ChromaVectorIndex, Database, InvalidRecord, MemoryStore, NewEpisode
from memory.fusion import FusionConfig, fuse
from memory.lexical import query_terms
from tests.fakes import HashEmbedder

TEXTS = [
    "the lighthouse keeper lit the lamp at dusk",
    "a storm broke over the harbour and the boats",
    "the cook baked bread with rye and caraway",
    "the keeper climbed the lighthouse stairs again",
    "the harbour master counted the boats at dawn",
]


def add_texts(store: MemoryStore, namespace: str, texts: list[str]) -> list[int]:
    return [e.id for e in store.add(namespace, [NewEpisode(text=t) for t in texts])]


def found(store: MemoryStore, namespace: str, query: str, k: int = 10) -> list[int]:
    return [h.episode.id for h in store.lexical_search(namespace, query, k)]


def test_query_terms_drop_stop_words_and_repeats() -> None:
    assert query_terms("What did the Keeper see at the keeper's lighthouse?") == [
        "keeper",
        "see",
        "lighthouse",
    ]
    assert query_terms("who is it?") == []
    assert query_terms('a "quoted" OR NEAR(x) -- *') == ["quoted", "near", "x"]  # no syntax


def test_words_rank_rare_matches_first_and_never_cross_namespaces(store: MemoryStore) -> None:
    ids = add_texts(store, "book", TEXTS)
    [other] = add_texts(store, "other", ["caraway caraway caraway bread"])
    assert found(store, "book", "caraway bread") == [ids[2]]
    # "keeper" is in two episodes, "lamp" in one: the one with both comes first.
    assert found(store, "book", "Where did the keeper light the lamp?")[0] == ids[0]
    assert set(found(store, "book", "harbour boats")) == {ids[1], ids[4]}
    assert found(store, "book", "boats", k=1) in ([ids[1]], [ids[4]])
    assert found(store, "other", "caraway") == [other]
    assert found(store, "book", "what is it?") == []  # stop words only
    assert found(store, "book", "zeppelin") == []
    with pytest.raises(InvalidRecord, match="at least one"):
        store.lexical_search("book", "keeper", 0)


def test_words_are_weighed_by_their_rarity_in_the_namespace(store: MemoryStore) -> None:
    """A word every episode of a namespace holds says little there, and another tenant's
    texts do not reorder a namespace's results (SQLite's length normalisation still uses the
    file's mean episode length, so scores may move a little)."""
    texts = [f"the reindeer {w} the reindeer" for w in ("ran", "slept", "ate", "flew")]
    ids = add_texts(store, "tenant-a", [*texts, "a sleigh in the snow"])
    query = "reindeer sleigh"
    alone = store.lexical_search("tenant-a", query, 5)
    assert alone[0].episode.id == ids[-1]  # the rare word wins over the common one repeated
    add_texts(store, "tenant-b", [f"sleigh number {i} and another sleigh" for i in range(40)])
    crowded = store.lexical_search("tenant-a", query, 5)
    assert [h.episode.id for h in crowded] == [h.episode.id for h in alone]


def test_stemming_matches_other_forms(store: MemoryStore) -> None:
    [storm] = add_texts(store, "book", ["storms were breaking over the harbours"])
    assert found(store, "book", "a harbour storm") == [storm]


def test_index_follows_edits_deletes_and_failed_writes(store: MemoryStore) -> None:
    ids = add_texts(store, "book", TEXTS)
    store.edit("book", ids[2], text="the keeper polished the brass lens", reason="rewrite")
    assert found(store, "book", "caraway") == []
    assert found(store, "book", "brass lens") == [ids[2]]
    store.delete("book", [ids[0]])
    assert found(store, "book", "lamp dusk") == []
    doc = store.documents.add("book", "chapter.txt", "x")
    [inside] = store.add("book", [NewEpisode(text="a zeppelin over town", document_id=doc.id)])
    assert found(store, "book", "zeppelin") == [inside.id]
    assert [h.episode.id for h in store.lexical_search("book", "keeper", document_id=doc.id)] == []
    store.delete_document("book", doc.id)  # episodes go by cascade: so do their words
    assert found(store, "book", "zeppelin") == []
    bad = [NewEpisode(text="a walrus on the pier"), NewEpisode(text="   ")]
    with pytest.raises(InvalidRecord):
        store.add("book", bad, HashEmbedder().embed(["a", "b"]))  # all or nothing
    assert found(store, "book", "walrus") == []
    assert store.lexical.drift() == 0
    store.delete_namespace("book")
    assert store.lexical.drift() == 0


def test_migration_backfills_existing_episodes(
    database: Database, chroma: ChromaVectorIndex, embedder: HashEmbedder
) -> None:
    config = database._alembic()
    with database.engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0005")
    store = MemoryStore(database, chroma, embedder)
    ids = add_texts(store, "book", TEXTS)  # written before the lexical index exists
    database.upgrade()
    assert found(store, "book", "rye bread") == [ids[2]]
    [new] = add_texts(store, "book", ["a new rye loaf"])
    assert set(found(store, "book", "rye")) == {ids[2], new}


def test_reconcile_rebuilds_a_drifted_sqlite_index(
    sqlite_database: Database, chroma: ChromaVectorIndex, embedder: HashEmbedder
) -> None:
    store = MemoryStore(sqlite_database, chroma, embedder)
    ids = add_texts(store, "book", TEXTS)
    with sqlite_database.engine.begin() as connection:  # an index that lost its rows
        connection.execute(text("INSERT INTO episodes_fts(episodes_fts) VALUES ('delete-all')"))
    assert found(store, "book", "caraway") == []
    report = store.reconcile()
    assert report.lexical_drift == len(TEXTS) and report.repaired
    assert found(store, "book", "caraway") == [ids[2]]
    assert store.reconcile().repaired is False


def test_fusion_rewards_agreement_and_normalises_to_one() -> None:
    fused = fuse([["a", "b", "c"], ["b", "d"]], [1.0, 1.0], rank_constant=60)
    assert [item for item, _ in fused] == ["b", "a", "d", "c"]
    assert fuse([["x"], ["x"]], [1.0, 1.0])[0] == ("x", 1.0)
    assert fuse([["x"], ["y"]], [1.0, 0.0]) == [("x", 1.0)]  # a weight of 0 leaves it out
    weighted = dict(fuse([["a"], ["b"]], [2.0, 1.0], rank_constant=0))
    assert weighted["a"] == pytest.approx(2 / 3) and weighted["b"] == pytest.approx(1 / 3)
    with pytest.raises(ValueError, match="weights"):
        fuse([["a"]], [1.0, 1.0])
    with pytest.raises(ValueError, match="both fusion weights are 0"):
        FusionConfig(dense_weight=0, lexical_weight=0)


def test_search_while_episodes_are_written_sees_one_snapshot(store: MemoryStore) -> None:
    """A writer adding episodes between a search's statements once made the file's counts
    disagree (more matches than rows: a math domain error in the idf); counts and bm25() now
    come from one statement."""
    import threading

    add_texts(store, "book", TEXTS)
    errors: list[BaseException] = []

    def write() -> None:
        try:
            for _ in range(30):
                add_texts(store, "book", ["the keeper walked the harbour wall"] * 4)
        except BaseException as err:  # pragma: no cover - reported below
            errors.append(err)

    writer = threading.Thread(target=write)
    writer.start()
    searches = 0
    while writer.is_alive() or searches < 3:
        assert found(store, "book", "keeper harbour lamp")
        searches += 1
    writer.join()
    assert not errors
