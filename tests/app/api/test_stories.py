"""Stories over the API with the scripted writer: create, step, branch, undo, export, delete."""

from __future__ import annotations

import io
import zipfile

from fastapi.testclient import TestClient

from app.reading import Reading


def test_story_lifetime(client: TestClient, acme: dict[str, str], reading: Reading) -> None:
    created = client.post(
        "/v1/stories", json={"genre": "adventure", "premise": "A courier crosses."}, headers=acme
    )
    assert created.status_code == 201, created.text
    story = created.json()
    root = story["head"]
    assert story["title"] == "The Salt Road" and len(root["plans"]) == 3 and root["depth"] == 0

    first = client.post(
        f"/v1/stories/{story['id']}/steps", json={"plan": "A storm rises."}, headers=acme
    )
    assert first.status_code == 201, first.text
    step = first.json()
    assert step["parent_id"] == root["id"] and "A storm rises." in step["paragraph"]
    assert client.get(f"/v1/stories/{story['id']}", headers=acme).json()["head"]["id"] == step["id"]

    undone = client.post(f"/v1/stories/{story['id']}/undo", headers=acme).json()
    assert undone["id"] == root["id"]
    again = client.post(f"/v1/stories/{story['id']}/undo", headers=acme)
    assert again.status_code == 409 and "opening" in again.json()["error"]["message"]

    other = client.post(
        f"/v1/stories/{story['id']}/steps", json={"plan": "A caravan passes."}, headers=acme
    ).json()
    assert other["parent_id"] == root["id"]  # a second branch from the opening
    branched = client.post(
        f"/v1/stories/{story['id']}/branch", json={"node_id": step["id"]}, headers=acme
    )
    assert branched.json()["id"] == step["id"]
    markdown = client.get(f"/v1/stories/{story['id']}/export", headers=acme)
    assert markdown.headers["content-type"].startswith("text/markdown")
    assert "A storm rises." in markdown.text and "A caravan passes." not in markdown.text
    assert markdown.text.startswith("# The Salt Road")

    for kind in ("docx", "epub"):
        exported = client.get(f"/v1/stories/{story['id']}/export?format={kind}", headers=acme)
        assert exported.status_code == 200 and zipfile.is_zipfile(io.BytesIO(exported.content))
        assert f".{kind}" in exported.headers["content-disposition"]
    bad = client.get(f"/v1/stories/{story['id']}/export?format=pdf", headers=acme)
    assert bad.status_code == 422 and "format" in bad.json()["error"]["message"]

    nowhere = client.post(
        f"/v1/stories/{story['id']}/branch", json={"node_id": 10**6}, headers=acme
    )
    assert nowhere.status_code == 404 and "not in story" in nowhere.json()["error"]["message"]

    namespace = "tenant:acme/stories/"
    assert any(n.name.startswith(namespace) for n in reading.store.namespaces.all())
    assert client.delete(f"/v1/stories/{story['id']}", headers=acme).json()["deleted"]
    assert client.get(f"/v1/stories/{story['id']}", headers=acme).status_code == 404
    assert not any(n.name.startswith(namespace) for n in reading.store.namespaces.all())


def test_steps_from_another_storys_node_are_404(client: TestClient, acme: dict[str, str]) -> None:
    body = {"genre": "adventure", "premise": "A courier crosses."}
    one = client.post("/v1/stories", json=body, headers=acme).json()
    two = client.post("/v1/stories", json=body, headers=acme).json()
    answer = client.post(
        f"/v1/stories/{one['id']}/steps", json={"parent_id": two["head"]["id"]}, headers=acme
    )
    assert answer.status_code == 404
