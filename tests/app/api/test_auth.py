"""Keys and tenants: every /v1 route needs a live key; another tenant's records answer 404 and
never appear in a listing or a search."""

from __future__ import annotations

from collections.abc import Callable

from fastapi.testclient import TestClient

from memory import Database
from memory.keys import SqlKeyStore
from tests.app.api.conftest import ingest, wait_for
from tests.texts import story

ROUTES = [
    ("GET", "/v1/documents", None),
    ("POST", "/v1/documents", {"name": "x", "text": "some text"}),
    ("GET", "/v1/documents/1", None),
    ("POST", "/v1/documents/1/search", {"query": "x"}),
    ("POST", "/v1/documents/1/ask", {"question": "x"}),
    ("POST", "/v1/documents/1/summarize", None),
    ("DELETE", "/v1/documents/1", None),
    ("GET", "/v1/jobs/abc", None),
    ("GET", "/v1/jobs/abc/events", None),
    ("GET", "/v1/stories", None),
    ("POST", "/v1/stories", {"genre": "g", "premise": "p"}),
    ("GET", "/v1/stories/1", None),
    ("POST", "/v1/stories/1/steps", {}),
    ("GET", "/v1/stories/1/steps/running", None),
    ("DELETE", "/v1/stories/1/steps/running", None),
    ("POST", "/v1/stories/1/branch", {"node_id": 1}),
    ("POST", "/v1/stories/1/undo", None),
    ("GET", "/v1/stories/1/export", None),
    ("DELETE", "/v1/stories/1", None),
    ("GET", "/v1/memories", None),
    ("POST", "/v1/memories/m/events", {"events": [{"text": "x"}]}),
    ("POST", "/v1/memories/m/search", {"query": "x"}),
    ("POST", "/v1/memories/m/pin", {"episode_ids": [1]}),
    ("POST", "/v1/memories/m/forget", {}),
    ("DELETE", "/v1/memories/m", None),
]


def test_every_v1_route_is_in_the_list(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    listed = {(method, path) for method, path, _ in ROUTES}
    for path, operations in schema["paths"].items():
        for method in operations:
            if path.startswith("/v1"):
                concrete = path.replace("{document_id}", "1").replace("{story_id}", "1")
                concrete = concrete.replace("{job_id}", "abc").replace("{name}", "m")
                assert (method.upper(), concrete) in listed, (method, path)


BAD_AUTHORIZATIONS = [
    None,
    "Bearer",
    "Bearer wrong",
    "Basic dXNlcjpwYXNz",
    "Bearer mneme_000000000000_" + "a" * 43,  # well-formed, never issued
]


def test_without_a_valid_key_every_route_answers_401(client: TestClient) -> None:
    wrong = []
    for method, path, body in ROUTES:
        for authorization in BAD_AUTHORIZATIONS:
            headers = {"Authorization": authorization} if authorization else {}
            answer = client.request(method, path, json=body, headers=headers)
            error = answer.json().get("error", {})
            if answer.status_code != 401 or error.get("type") != "authentication_error":
                wrong.append((method, path, authorization, answer.status_code))
            elif "mneme keys create" not in error["message"]:
                wrong.append((method, path, authorization, error["message"]))
            elif answer.headers.get("www-authenticate") != "Bearer":
                wrong.append((method, path, authorization, dict(answer.headers)))
    assert wrong == []


def test_health_and_ready_need_no_key(client: TestClient) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json() == {"status": "ready"}
    assert client.get("/openapi.json").status_code == 200
    assert client.get("/docs").status_code == 200


def test_a_revoked_key_fails_at_once(client: TestClient, api_database: Database) -> None:
    keys = SqlKeyStore(api_database)
    facts, key = keys.create("acme")
    headers = {"Authorization": f"Bearer {key}"}
    assert client.get("/v1/documents", headers=headers).status_code == 200
    keys.revoke(facts.id)
    assert client.get("/v1/documents", headers=headers).status_code == 401
    assert keys.all("acme")[0].revoked_at is not None
    # Another key of the same tenant still works and sees the same data.
    _, other = keys.create("acme")
    assert (
        client.get("/v1/documents", headers={"Authorization": f"Bearer {other}"}).status_code == 200
    )


def test_tenants_are_isolated(
    client: TestClient, acme: dict[str, str], globex: dict[str, str],
    new_key: Callable[[str], dict[str, str]],
) -> None:  # fmt: skip
    mine = ingest(client, acme, story(), name="acme-doc")
    theirs = ingest(client, globex, story(2), name="globex-doc")
    job = client.get("/v1/documents/" + str(mine), headers=acme).json()["job_id"]

    # Listings show only one's own.
    assert [d["id"] for d in client.get("/v1/documents", headers=acme).json()["documents"]] == [
        mine
    ]
    assert [d["id"] for d in client.get("/v1/documents", headers=globex).json()["documents"]] == [
        theirs
    ]
    # Every way at another tenant's document or job answers 404, the same as a missing one.
    missing = 10**6
    for target in (theirs, missing):
        for method, path, body in [
            ("GET", f"/v1/documents/{target}", None),
            ("POST", f"/v1/documents/{target}/search", {"query": "lens"}),
            ("POST", f"/v1/documents/{target}/ask", {"question": "lens?"}),
            ("POST", f"/v1/documents/{target}/summarize", None),
            ("DELETE", f"/v1/documents/{target}", None),
        ]:
            answer = client.request(method, path, json=body, headers=acme)
            assert answer.status_code == 404, (method, path, answer.text)
            assert answer.json()["error"]["message"] == (
                f"document {target} does not exist; list yours with GET /v1/documents"
            )
    assert client.get(f"/v1/jobs/{job}", headers=globex).status_code == 404
    assert client.get(f"/v1/jobs/{job}/events", headers=globex).status_code == 404
    assert client.get(f"/v1/jobs/{job}", headers=acme).status_code == 200
    # The other tenant's document is untouched by all that.
    assert client.get(f"/v1/documents/{theirs}", headers=globex).json()["status"] == "ready"
    # A third tenant sees nothing at all.
    stranger = new_key("initech")
    assert client.get("/v1/documents", headers=stranger).json() == {"documents": []}


def test_memories_with_the_same_name_never_cross_tenants(
    client: TestClient, acme: dict[str, str], globex: dict[str, str]
) -> None:
    events = {"events": [{"text": "The lighthouse keeper polished the great lens."}]}
    added = client.post("/v1/memories/notes/events", json=events, headers=acme)
    assert added.status_code == 201
    episode = added.json()["episodes"][0]["id"]
    search = {"query": "lighthouse lens"}
    assert client.post("/v1/memories/notes/search", json=search, headers=globex).status_code == 404
    assert client.get("/v1/memories", headers=globex).json() == {"memories": []}
    pin = {"episode_ids": [episode]}
    assert client.post("/v1/memories/notes/pin", json=pin, headers=globex).status_code == 404
    client.post(
        "/v1/memories/notes/events", json={"events": [{"text": "Saffron."}]}, headers=globex
    )
    # globex's own "notes" cannot reach acme's episode either.
    answer = client.post("/v1/memories/notes/pin", json=pin, headers=globex)
    assert answer.status_code == 404
    forget = {"episode_ids": [episode]}
    assert client.post("/v1/memories/notes/forget", json=forget, headers=globex).status_code == 404
    hits = client.post("/v1/memories/notes/search", json=search, headers=globex).json()["hits"]
    assert all("lighthouse" not in h["text"] for h in hits)
    assert client.post("/v1/memories/notes/search", json=search, headers=acme).json()["hits"]


def test_stories_of_another_tenant_answer_404(
    client: TestClient, acme: dict[str, str], globex: dict[str, str]
) -> None:
    created = client.post(
        "/v1/stories", json={"genre": "adventure", "premise": "A courier."}, headers=acme
    )
    assert created.status_code == 201, created.text
    story_id = created.json()["id"]
    node = created.json()["head"]["id"]
    for method, path, body in [
        ("GET", f"/v1/stories/{story_id}", None),
        ("POST", f"/v1/stories/{story_id}/steps", {"plan": "Go on."}),
        ("POST", f"/v1/stories/{story_id}/branch", {"node_id": node}),
        ("POST", f"/v1/stories/{story_id}/undo", None),
        ("GET", f"/v1/stories/{story_id}/export", None),
        ("DELETE", f"/v1/stories/{story_id}", None),
    ]:
        answer = client.request(method, path, json=body, headers=globex)
        assert answer.status_code == 404, (method, path, answer.text)
    assert client.get("/v1/stories", headers=globex).json() == {"stories": []}
    assert [s["id"] for s in client.get("/v1/stories", headers=acme).json()["stories"]] == [
        story_id
    ]


def test_a_job_id_is_only_its_tenants(client: TestClient, acme: dict[str, str]) -> None:
    answer = client.post("/v1/documents", json={"name": "x", "text": story()}, headers=acme)
    wait_for(client, answer.json()["job_id"], acme)
    assert client.get("/v1/jobs/not-a-job", headers=acme).status_code == 404
