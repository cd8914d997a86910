"""Stories over the API with the scripted writer: create, step, branch, undo, export, delete."""

from __future__ import annotations

import asyncio
import io
import threading
import time
import zipfile
from concurrent.futures import ThreadPoolExecutor
from typing import Any

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


def _held(reading: Reading, gate: threading.Event) -> None:
    """Hold every streamed paragraph after its first piece until ``gate`` opens."""
    llm = reading.llm
    original = llm.stream_chat

    async def held(messages, params):  # type: ignore[no-untyped-def]
        async for delta in original(messages, params):
            yield delta
            while not gate.is_set():
                await asyncio.sleep(0.01)

    llm.stream_chat = held  # type: ignore[method-assign]


def _until_running(client: TestClient, story_id: int, headers: dict[str, str]) -> dict[str, Any]:
    for _ in range(1000):
        seen = client.get(f"/v1/stories/{story_id}/steps/running", headers=headers)
        if seen.status_code == 200 and seen.json()["paragraph"]:
            return dict(seen.json())
        time.sleep(0.01)
    raise AssertionError("the step never showed up as running")


def test_a_running_step_is_visible_and_a_second_is_refused(
    client: TestClient, acme: dict[str, str], reading: Reading
) -> None:
    story = client.post("/v1/stories", json={"genre": "adventure", "premise": "A courier."},
                        headers=acme).json()  # fmt: skip
    steps = f"/v1/stories/{story['id']}/steps"
    assert client.get(f"{steps}/running", headers=acme).status_code == 404
    gate = threading.Event()
    _held(reading, gate)
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, steps, json={"plan": "A storm rises."}, headers=acme)
        running = _until_running(client, story["id"], acme)
        assert running["status"] == "running" and running["phase"] == "paragraph"
        assert running["instruction"] == "A storm rises." and running["node_id"] is None
        second = client.post(steps, json={"plan": "A caravan passes."}, headers=acme)
        assert second.status_code == 409 and "already writing" in second.json()["error"]["message"]
        deleted = client.delete(f"/v1/stories/{story['id']}", headers=acme)
        assert deleted.status_code == 409 and "stop it first" in deleted.text
        head = client.get(f"/v1/stories/{story['id']}", headers=acme).json()["head"]
        assert head["id"] == story["head"]["id"]  # the head moves only when the step completes
        gate.set()
        done = first.result(timeout=30)
    assert done.status_code == 201 and "A storm rises." in done.json()["paragraph"]
    assert done.json()["paragraph"].startswith(running["paragraph"])  # what streamed is kept
    assert client.get(f"{steps}/running", headers=acme).status_code == 404


def test_a_stopped_step_stores_nothing(
    client: TestClient, acme: dict[str, str], reading: Reading
) -> None:
    story = client.post("/v1/stories", json={"genre": "adventure", "premise": "A courier."},
                        headers=acme).json()  # fmt: skip
    steps = f"/v1/stories/{story['id']}/steps"
    _held(reading, threading.Event())  # never opens
    with ThreadPoolExecutor(1) as pool:
        first = pool.submit(client.post, steps, json={"plan": "A storm rises."}, headers=acme)
        _until_running(client, story["id"], acme)
        assert client.delete(f"{steps}/running", headers=acme).status_code == 200
        stopped = first.result(timeout=30)
    assert stopped.status_code == 409 and "nothing was stored" in stopped.text
    head = client.get(f"/v1/stories/{story['id']}", headers=acme).json()["head"]
    assert head["id"] == story["head"]["id"]


def test_a_bad_premise_is_refused_before_the_model(
    client: TestClient, acme: dict[str, str], reading: Reading
) -> None:
    long = client.post("/v1/stories", json={"genre": "fantasy", "premise": "x " * 1500},
                       headers=acme)  # fmt: skip
    assert long.status_code == 422 and "2000" in long.text
    assert reading.llm.prompts == []  # type: ignore[attr-defined]
