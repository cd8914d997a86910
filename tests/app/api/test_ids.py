"""Public ids (issue 17): the API shows a keyed permutation of each row id, so an id reveals
nothing about other tenants' volume, every route takes back what it gave, messages name the id
the client sent, every app on a database agrees, and migration 0007 keys an existing database."""

from __future__ import annotations

import io
import itertools
import re
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import text

from app.api import create_app
from app.api.ids import Permutation, PublicIds
from app.api.schemas import MAX_ID
from app.reading import Reading
from memory import ChromaVectorIndex, Database, MemoryStore, NewEpisode, SchemaOutOfDate
from memory.keys import SqlKeyStore
from memory.public_ids import KEY_BYTES, SqlPublicIdKey
from memory.tables import DeploymentSecretRow
from tests.app.api.conftest import ApiLLM, ingest, public_ids, reply, wait_for
from tests.fakes import HashEmbedder
from tests.texts import TOPICS, story

IDS = PublicIds(bytes(range(32)))
FAR = 2**40
"""Public ids this close to each other (or to 0) would hint at a counter; two random ids are
this close with probability about 2**-21."""
STORY = {"genre": "adventure", "premise": "A courier crosses."}


def _mentions(message: str, number: int) -> bool:
    return re.search(rf"(?<!\d){number}(?!\d)", message) is not None


# -- the permutation ---------------------------------------------------------------------------


@given(st.integers(min_value=1, max_value=MAX_ID))
def test_decode_inverts_encode_over_the_whole_range(row: int) -> None:
    for kind in (IDS.documents, IDS.episodes, IDS.stories, IDS.nodes):
        shown = kind.encode(row)
        assert 1 <= shown <= MAX_ID and kind.decode(shown) == row
        assert 1 <= kind.decode(row) <= MAX_ID and kind.encode(kind.decode(row)) == row


def test_the_bounds_map_into_the_range_and_back() -> None:
    edges = [1, 2, 2**31 - 1, 2**31, 2**31 + 1, MAX_ID - 1, MAX_ID]
    for row in edges:
        shown = IDS.documents.encode(row)
        assert 1 <= shown <= MAX_ID and IDS.documents.decode(shown) == row
    assert len({IDS.documents.encode(row) for row in edges}) == len(edges)
    assert {IDS.documents.decode(IDS.documents.encode(row)) for row in (1, MAX_ID)} == {1, MAX_ID}
    for outside in (0, -1, MAX_ID + 1):
        with pytest.raises(ValueError, match="outside"):
            IDS.documents.encode(outside)
        with pytest.raises(ValueError, match="outside"):
            IDS.documents.decode(outside)
    with pytest.raises(ValueError, match="16 bytes"):
        PublicIds(b"short")
    assert IDS.documents.size == MAX_ID


@pytest.mark.parametrize("bits", [2, 8, 16])
def test_a_narrow_permutation_is_a_bijection(bits: int) -> None:
    """The network cannot be enumerated at 62 bits; its structure is the same at any width, so
    check every value at narrow ones."""
    permutation = Permutation(bytes(32), bits=bits)
    every = list(range(1, 2**bits + 1))
    shown = [permutation.encode(row) for row in every]
    assert sorted(shown) == every and [permutation.decode(s) for s in shown] == every
    if bits == 16:
        assert sum(a == b for a, b in zip(shown, every, strict=True)) < 8  # not the identity


def test_consecutive_rows_get_scattered_ids_under_each_kind_and_key() -> None:
    shown = [IDS.episodes.encode(row) for row in range(1, 5_001)]
    assert len(set(shown)) == len(shown)  # one-to-one on a block of consecutive rows
    assert min(shown) > FAR  # no small ids: none of them says "early"
    assert min(abs(a - b) for a, b in itertools.pairwise(shown)) > FAR  # neighbours are not
    assert len({value >> 58 for value in shown}) == 16  # spread over the range, not a corner
    # Another kind, another key: unrelated ids for the same rows.
    others = [IDS.stories, IDS.nodes, IDS.documents, PublicIds(bytes(32)).episodes]
    for other in others:
        assert all(other.encode(row) != IDS.episodes.encode(row) for row in range(1, 1_001))


def test_reword_shows_row_ids_in_lower_messages_as_public_ids() -> None:
    message = "story 12 already has its root node 7; episodes [3, 4] and document 9 (2 tries)"
    assert IDS.reword(message) == (
        f"story {IDS.stories.encode(12)} already has its root node {IDS.nodes.encode(7)}; "
        f"episodes [{IDS.episodes.encode(3)}, {IDS.episodes.encode(4)}] and document "
        f"{IDS.documents.encode(9)} (2 tries)"
    )
    calm = "nothing to undo: the story is at its opening"
    assert IDS.reword(calm) == calm


# -- what a tenant sees ------------------------------------------------------------------------


def test_a_new_tenants_first_ids_do_not_reveal_the_counter(
    client: TestClient, acme: dict[str, str], globex: dict[str, str], reading: Reading
) -> None:
    ids = public_ids(reading.store.database)
    acme_documents = [ingest(client, acme, TOPICS[n], name=f"a{n}") for n in range(3)]
    events = {"events": [{"text": topic} for topic in TOPICS * 5]}
    added = client.post("/v1/memories/a/events", json=events, headers=acme).json()["episodes"]
    acme_episodes = [e["id"] for e in added]
    acme_story = client.post("/v1/stories", json=STORY, headers=acme).json()

    first_document = ingest(client, globex, TOPICS[0], name="g")
    three = {"events": [{"text": topic} for topic in TOPICS[:3]]}
    added = client.post("/v1/memories/g/events", json=three, headers=globex).json()["episodes"]
    first_episodes = [e["id"] for e in added]
    first_story = client.post("/v1/stories", json=STORY, headers=globex).json()

    # The rows do follow one counter across tenants: that is what the ids must not show.
    assert [ids.documents.decode(d) for d in acme_documents] == [1, 2, 3]
    assert ids.documents.decode(first_document) == 6  # acme: 3 documents, a memory, a story
    assert ids.episodes.decode(first_episodes[0]) > ids.episodes.decode(acme_episodes[-1])
    assert ids.stories.decode(first_story["id"]) == ids.stories.decode(acme_story["id"]) + 1

    seen = [*acme_documents, *acme_episodes, acme_story["id"], acme_story["head"]["id"]]
    firsts = [first_document, *first_episodes, first_story["id"], first_story["head"]["id"]]
    for shown in firsts:
        assert shown > FAR, "a small id counts the records made before it"
        assert all(abs(shown - other) > FAR for other in seen), "close to acme's ids"
    for run in (first_episodes, acme_episodes, acme_documents, firsts):
        assert all(abs(a - b) > FAR for a, b in itertools.pairwise(run))  # consecutive rows


def test_every_route_family_takes_back_the_ids_it_gives(
    client: TestClient, acme: dict[str, str], reading: Reading
) -> None:
    store = reading.store
    ids = public_ids(store.database)

    # Documents: upload → job → get, list, search, ask, summarise, delete.
    answer = client.post("/v1/documents", json={"name": "t", "text": story()}, headers=acme)
    document_id = answer.json()["document_id"]
    job = wait_for(client, answer.json()["job_id"], acme)
    assert job["document_id"] == job["result"]["document_id"] == document_id
    [space] = [n for n in store.namespaces.all() if n.name.startswith("tenant:acme/documents/")]
    assert ids.documents.decode(document_id) == space.id != document_id
    assert client.get(f"/v1/documents/{document_id}", headers=acme).json()["id"] == document_id
    listed = client.get("/v1/documents", headers=acme).json()["documents"]
    assert [d["id"] for d in listed] == [document_id]
    assert client.get(f"/v1/documents/{space.id}", headers=acme).status_code == 404  # a row id

    rows = {e.id for e in store.episodes.page(space.name)}
    hits = client.post(
        f"/v1/documents/{document_id}/search", json={"query": "violins"}, headers=acme
    ).json()["hits"]
    assert hits and {h["document_id"] for h in hits} == {document_id}
    assert {ids.episodes.decode(h["episode_id"]) for h in hits} <= rows
    assert not {h["episode_id"] for h in hits} & rows
    asked = client.post(
        f"/v1/documents/{document_id}/ask", json={"question": "Who polished it?"}, headers=acme
    ).json()
    [citation] = asked["citations"]
    assert citation["document_id"] == document_id
    assert ids.episodes.decode(citation["episode_id"]) in rows
    summarised = client.post(f"/v1/documents/{document_id}/summarize", headers=acme).json()
    assert summarised["document_id"] == document_id
    done = wait_for(client, summarised["job_id"], acme)
    assert done["status"] == "done" and done["result"]["document_id"] == document_id
    deleted = client.delete(f"/v1/documents/{document_id}", headers=acme).json()
    assert deleted == {"id": document_id, "deleted": True}

    # Stories: create, step after a parent, undo, branch to a node, export, list, delete.
    created = client.post("/v1/stories", json=STORY, headers=acme).json()
    story_id, root = created["id"], created["head"]["id"]
    row = ids.stories.decode(story_id)
    assert _node_rows(reading, row) == [ids.nodes.decode(root)]
    path = f"/v1/stories/{story_id}"
    step = client.post(f"{path}/steps", json={"plan": "A storm.", "parent_id": root}, headers=acme)
    assert step.status_code == 201, step.text
    node = step.json()
    assert node["parent_id"] == root
    assert _node_rows(reading, row) == sorted(ids.nodes.decode(n) for n in (root, node["id"]))
    assert client.post(f"{path}/undo", headers=acme).json()["id"] == root
    branched = client.post(f"{path}/branch", json={"node_id": node["id"]}, headers=acme).json()
    assert branched["id"] == node["id"] and branched["parent_id"] == root
    assert client.get(path, headers=acme).json()["head"]["id"] == node["id"]
    assert "A storm." in client.get(f"{path}/export", headers=acme).text
    epub = client.get(f"{path}/export?format=epub", headers=acme).content
    with zipfile.ZipFile(io.BytesIO(epub)) as book:
        package = next(book.read(n).decode() for n in book.namelist() if n.endswith(".opf"))
    assert f"mneme-story-{story_id}<" in package and f"mneme-story-{row}<" not in package
    assert [s["id"] for s in client.get("/v1/stories", headers=acme).json()["stories"]] == [
        story_id
    ]
    assert client.delete(path, headers=acme).json() == {"id": story_id, "deleted": True}

    # Memories: events, search, pin, forget.
    events = {"events": [{"text": topic} for topic in TOPICS]}
    added = client.post("/v1/memories/m/events", json=events, headers=acme).json()["episodes"]
    shown = [e["id"] for e in added]
    stored = [e.id for e in store.episodes.page("tenant:acme/memories/m")]
    assert [ids.episodes.decode(i) for i in shown] == stored and not set(shown) & set(stored)
    hits = client.post("/v1/memories/m/search", json={"query": "chess queen"}, headers=acme)
    assert {h["episode_id"] for h in hits.json()["hits"]} <= set(shown)
    pinned = client.post("/v1/memories/m/pin", json={"episode_ids": [shown[0]]}, headers=acme)
    assert [(e["id"], e["pinned"]) for e in pinned.json()["episodes"]] == [(shown[0], True)]
    forgotten = client.post("/v1/memories/m/forget", json={"episode_ids": shown[1:3]}, headers=acme)
    assert sorted(forgotten.json()["forgotten"]) == sorted(shown[1:3])
    left = [e.id for e in store.episodes.page("tenant:acme/memories/m")]
    assert left == [stored[0], *stored[3:]]


def _node_rows(reading: Reading, story_row: int) -> list[int]:
    with reading.store.database.session() as session:
        found = session.execute(
            text("SELECT id FROM story_nodes WHERE story_id = :s ORDER BY id"), {"s": story_row}
        )
        return [int(n) for (n,) in found]


def test_messages_name_the_id_the_client_sent(
    client: TestClient, acme: dict[str, str], globex: dict[str, str], reading: Reading
) -> None:
    ids = public_ids(reading.store.database)
    document_id = ingest(client, acme, story())
    created = client.post("/v1/stories", json=STORY, headers=acme).json()
    note = {"events": [{"text": "A note on the lens."}]}
    [episode] = client.post("/v1/memories/m/events", json=note, headers=acme).json()["episodes"]
    client.post("/v1/memories/m/events", json=note, headers=globex)  # globex's own memory "m"

    def refused(
        method: str, path: str, body: Any, headers: dict[str, str], shown: int, row: int
    ) -> str:
        answer = client.request(method, path, json=body, headers=headers)
        assert answer.status_code in (404, 409, 422), answer.text
        message: str = answer.json()["error"]["message"]
        assert _mentions(message, shown), message
        prose = re.sub(r"/v1/\S*", "", message)  # "/v1" holds a 1: look outside the URLs
        assert not _mentions(prose, row), f"row id {row} in {message!r}"
        return message

    doc, doc_row = document_id, ids.documents.decode(document_id)
    # Another tenant's records: the same 404 as a missing one, naming the id sent.
    refused("GET", f"/v1/documents/{doc}", None, globex, doc, doc_row)
    refused("POST", f"/v1/documents/{doc}/search", {"query": "x"}, globex, doc, doc_row)
    refused("DELETE", f"/v1/documents/{doc}", None, globex, doc, doc_row)
    story_id, story_row = created["id"], ids.stories.decode(created["id"])
    refused("GET", f"/v1/stories/{story_id}", None, globex, story_id, story_row)
    pin = {"episode_ids": [episode["id"]]}
    episode_row = ids.episodes.decode(episode["id"])
    refused("POST", "/v1/memories/m/pin", pin, globex, episode["id"], episode_row)
    refused("POST", "/v1/memories/m/forget", pin, globex, episode["id"], episode_row)
    # A node that is not in the story (here: the story's own id), as a branch and as a parent.
    path = f"/v1/stories/{story_id}"
    absent = {"node_id": story_id}
    message = refused("POST", f"{path}/branch", absent, acme, story_id, story_row)
    assert message.startswith(f"node {story_id} is not in story {story_id}")
    refused("POST", f"{path}/steps", {"parent_id": story_id}, acme, story_id, story_row)
    # States rather than absences name the public id too.
    refused("POST", f"{path}/undo", None, acme, story_id, story_row)
    assert client.post("/v1/memories/m/pin", json=pin, headers=acme).status_code == 200
    forget = refused("POST", "/v1/memories/m/forget", pin, acme, episode["id"], episode_row)
    assert "pinned" in forget


# -- several apps, one database ----------------------------------------------------------------


def test_two_apps_on_one_database_agree_and_another_database_does_not(
    reading: Reading, api_database: Database, acme: dict[str, str], tmp_path: Path
) -> None:
    second = Database(api_database.url)  # its own engine and sessions, as another process has
    other = Reading(
        reading.settings,
        store=MemoryStore(second, ChromaVectorIndex(path=tmp_path / "chroma"), HashEmbedder()),
        llm=ApiLLM(reply),
    )
    with (
        TestClient(create_app(reading.settings, reading=reading)) as one,
        TestClient(create_app(reading.settings, reading=other)) as two,
    ):
        document_id = ingest(one, acme, story())
        assert two.get(f"/v1/documents/{document_id}", headers=acme).json()["status"] == "ready"
        search = {"query": "lens"}
        path = f"/v1/documents/{document_id}/search"
        hits = two.post(path, json=search, headers=acme).json()["hits"]
        again = one.post(path, json=search, headers=acme).json()["hits"]
        assert hits and [h["episode_id"] for h in hits] == [h["episode_id"] for h in again]
        note = {"events": [{"text": "A note."}]}
        [added] = two.post("/v1/memories/m/events", json=note, headers=acme).json()["episodes"]
        pinned = one.post("/v1/memories/m/pin", json={"episode_ids": [added["id"]]}, headers=acme)
        assert pinned.status_code == 200 and pinned.json()["episodes"][0]["id"] == added["id"]
        created = one.post("/v1/stories", json=STORY, headers=acme).json()
        fetched = two.get(f"/v1/stories/{created['id']}", headers=acme).json()
        assert fetched["head"]["id"] == created["head"]["id"]
    second.close()

    fresh = Database(f"sqlite:///{tmp_path / 'other.db'}")  # another deployment: another key
    fresh.upgrade()
    keys = SqlPublicIdKey(api_database).get(), SqlPublicIdKey(fresh).get()
    assert len(keys[0]) == len(keys[1]) == KEY_BYTES and keys[0] != keys[1]
    row = public_ids(api_database).documents.decode(document_id)
    assert public_ids(fresh).documents.encode(row) != document_id
    fresh.close()


# -- migration 0007 ----------------------------------------------------------------------------


def _migrate(database: Database, how: Callable[..., None], revision: str) -> None:
    config = database._alembic()
    with database.engine.begin() as connection:
        config.attributes["connection"] = connection
        how(config, revision)


def test_the_migration_makes_one_key_and_a_lost_key_is_never_replaced(tmp_path: Path) -> None:
    database = Database(f"sqlite:///{tmp_path / 'old.db'}")
    _migrate(database, command.upgrade, "0006")
    with pytest.raises(SchemaOutOfDate, match="mneme db upgrade"):
        SqlPublicIdKey(database).get()  # not migrated yet: a 503 naming the fix, not a 500
    database.upgrade()
    key = SqlPublicIdKey(database).get()
    assert len(key) == KEY_BYTES and key != bytes(KEY_BYTES)
    database.upgrade()  # again: nothing to do, the same key
    assert SqlPublicIdKey(database).get() == key

    # Downgrading drops the key; upgrading again makes a new one (the API's ids change).
    _migrate(database, command.downgrade, "0006")
    database.upgrade()
    assert SqlPublicIdKey(database).get() != key
    with database.session() as session:
        session.delete(session.get(DeploymentSecretRow, "public_ids"))
    with pytest.raises(SchemaOutOfDate, match="restore"):
        SqlPublicIdKey(database).get()  # never silently replaced
    database.close()


def test_records_written_before_the_upgrade_are_served_under_public_ids(
    tmp_path: Path, reading: Reading
) -> None:
    database = Database(f"sqlite:///{tmp_path / 'old.db'}")
    _migrate(database, command.upgrade, "0006")
    before = MemoryStore(database, ChromaVectorIndex(path=tmp_path / "chroma-old"), HashEmbedder())
    stored = before.add("tenant:acme/memories/old", [NewEpisode(text=t) for t in TOPICS])
    document = before.namespace("tenant:acme/documents/old")  # an upload cut short
    _, key = SqlKeyStore(database).create("acme")
    headers = {"Authorization": f"Bearer {key}"}

    database.upgrade()
    rows = [e.id for e in stored]
    assert [e.id for e in before.episodes.page("tenant:acme/memories/old")] == rows  # kept
    ids = public_ids(database)
    upgraded = Reading(reading.settings, store=before, llm=ApiLLM(reply))
    with TestClient(create_app(reading.settings, reading=upgraded)) as client:
        search = {"query": "chess queen king"}
        found = client.post("/v1/memories/old/search", json=search, headers=headers).json()
        shown = [h["episode_id"] for h in found["hits"]]
        assert shown and {ids.episodes.decode(i) for i in shown} <= set(rows)
        assert not set(shown) & set(rows)  # not the row ids any more
        chess = {"episode_ids": [ids.episodes.encode(rows[4])]}
        pinned = client.post("/v1/memories/old/pin", json=chess, headers=headers)
        assert pinned.status_code == 200 and pinned.json()["episodes"][0]["text"] == TOPICS[4]
        listed = client.get("/v1/documents", headers=headers).json()["documents"]
        assert [d["id"] for d in listed] == [ids.documents.encode(document.id)]
        assert client.get(f"/v1/documents/{document.id}", headers=headers).status_code == 404
    database.close()
