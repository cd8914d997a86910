"""Agent memories over the API: events in order, two-stage search, pin, forget."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.texts import TOPICS


def test_events_search_pin_forget(client: TestClient, acme: dict[str, str]) -> None:
    events = {"events": [{"text": topic} for topic in TOPICS]}
    added = client.post("/v1/memories/agent-1/events", json=events, headers=acme)
    assert added.status_code == 201, added.text
    episodes = added.json()["episodes"]
    assert [e["text"] for e in episodes] == TOPICS
    ids = [e["id"] for e in episodes]  # public ids: opaque, not in creation order
    assert len(set(ids)) == len(ids)

    hits = client.post(
        "/v1/memories/agent-1/search", json={"query": "chess queen king", "budget_tokens": 40},
        headers=acme,
    ).json()["hits"]  # fmt: skip
    best = max(hits, key=lambda h: h["score"])
    assert "chess" in best["text"] and best["reason"] == "similarity"
    assert best["document_id"] is None
    assert sum(h["tokens"] for h in hits) <= 40

    listed = client.get("/v1/memories", headers=acme).json()["memories"]
    assert listed == [
        {"namespace": "agent-1", "episodes": len(TOPICS), "created_at": listed[0]["created_at"]}
    ]

    pinned = client.post(
        "/v1/memories/agent-1/pin", json={"episode_ids": [ids[0]]}, headers=acme
    ).json()["episodes"]
    assert pinned[0]["pinned"] and pinned[0]["version"] == 2
    refused = client.post(
        "/v1/memories/agent-1/forget", json={"episode_ids": [ids[0], ids[1]]}, headers=acme
    )
    assert refused.status_code == 422 and "pinned" in refused.json()["error"]["message"]

    forgotten = client.post(
        "/v1/memories/agent-1/forget", json={"episode_ids": [ids[1]]}, headers=acme
    ).json()
    assert forgotten == {"forgotten": [ids[1]]}
    # By decay: everything unpinned has faded below a threshold above its importance.
    faded = client.post(
        "/v1/memories/agent-1/forget", json={"half_life_s": 1, "threshold": 2.0}, headers=acme
    ).json()["forgotten"]
    assert sorted(faded) == sorted(ids[2:])
    half = client.post("/v1/memories/agent-1/forget", json={"threshold": 1.0}, headers=acme)
    assert half.status_code == 422 and "half_life_s" in half.json()["error"]["message"]

    missing = client.post("/v1/memories/agent-1/pin", json={"episode_ids": [10**6]}, headers=acme)
    assert missing.status_code == 404
    assert client.delete("/v1/memories/agent-1", headers=acme).json()["deleted"]
    gone = client.post("/v1/memories/agent-1/search", json={"query": "x"}, headers=acme)
    assert gone.status_code == 404 and "does not exist" in gone.json()["error"]["message"]


def test_ttl_and_names_are_checked(client: TestClient, acme: dict[str, str]) -> None:
    body = {"events": [{"text": "A short-lived note about saffron prices.", "ttl_s": 60}]}
    added = client.post("/v1/memories/m/events", json=body, headers=acme).json()["episodes"]
    assert added[0]["expires_at"] > added[0]["created_at"]
    bad = client.post("/v1/memories/-bad/events", json=body, headers=acme)
    assert bad.status_code == 422 and "name" in bad.json()["error"]["message"]
    empty = client.post("/v1/memories/m/events", json={"events": []}, headers=acme)
    assert empty.status_code == 422
