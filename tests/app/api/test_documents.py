"""Documents through the API: upload (JSON and multipart) as a job, progress, search, ask,
summarise, delete (rows and vectors)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api import create_app
from app.reading import Reading
from tests.app.api.conftest import api_settings, ingest, public_ids, wait_for
from tests.texts import story


def test_upload_json_then_search_ask_and_delete(
    client: TestClient, acme: dict[str, str], reading: Reading
) -> None:
    answer = client.post("/v1/documents", json={"name": "topics", "text": story()}, headers=acme)
    assert answer.status_code == 202
    document_id, job_id = answer.json()["document_id"], answer.json()["job_id"]
    job = wait_for(client, job_id, acme)
    assert job["status"] == "done" and job["progress"] == 1.0 and job["kind"] == "ingest"
    assert job["result"]["episodes"] >= 6 and job["document_id"] == document_id

    listed = client.get("/v1/documents", headers=acme).json()["documents"]
    assert [(d["id"], d["name"], d["status"]) for d in listed] == [(document_id, "topics", "ready")]
    one = client.get(f"/v1/documents/{document_id}", headers=acme).json()
    assert one["chars"] == len(story()) and one["segmenter"] == "fixed"

    hits = client.post(
        f"/v1/documents/{document_id}/search",
        json={"query": "violins and the symphony score", "budget_tokens": 64},
        headers=acme,
    ).json()["hits"]
    assert hits and all(h["document_id"] == document_id for h in hits)
    best = max(hits, key=lambda h: h["score"])
    assert "orchestra" in best["text"] and story()[best["start"] : best["end"]] == best["text"]
    assert set(best) == {
        "episode_id",
        "document_id",
        "text",
        "start",
        "end",
        "tokens",
        "score",
        "reason",
    }  # fmt: skip  -- the shape of `mneme doc search --json`

    asked = client.post(
        f"/v1/documents/{document_id}/ask",
        json={"question": "Who polished the lens?"},
        headers=acme,
    )
    assert asked.status_code == 200, asked.text
    body = asked.json()
    assert body["answer"] == "The keeper polished the lens."
    assert (
        body["citations"][0]["number"] == 1 and body["citations"][0]["document_id"] == document_id
    )

    namespace = "tenant:acme/documents/"
    assert any(n.name.startswith(namespace) for n in reading.store.namespaces.all())
    row = public_ids(reading.store.database).documents.decode(document_id)  # a public id
    assert row in reading.store.index.namespace_ids()
    deleted = client.delete(f"/v1/documents/{document_id}", headers=acme)
    assert deleted.status_code == 200 and deleted.json() == {"id": document_id, "deleted": True}
    assert not any(n.name.startswith(namespace) for n in reading.store.namespaces.all())
    assert row not in reading.store.index.namespace_ids()  # vectors dropped too
    assert client.get(f"/v1/documents/{document_id}", headers=acme).status_code == 404
    assert client.get(f"/v1/jobs/{job_id}", headers=acme).status_code == 404


def test_multipart_upload_reads_the_file(client: TestClient, acme: dict[str, str]) -> None:
    data = story().encode("utf-16")  # a BOM: the loaders detect the encoding
    answer = client.post(
        "/v1/documents",
        files={"file": ("topics.txt", data, "text/plain")},
        data={"segmenter": "fixed"},
        headers=acme,
    )
    assert answer.status_code == 202, answer.text
    assert wait_for(client, answer.json()["job_id"], acme)["status"] == "done"
    document = client.get(f"/v1/documents/{answer.json()['document_id']}", headers=acme).json()
    assert document["name"] == "topics" and document["chars"] == len(story())


def test_events_stream_progress_until_done(client: TestClient, acme: dict[str, str]) -> None:
    answer = client.post("/v1/documents", json={"name": "t", "text": story(20)}, headers=acme)
    job_id = answer.json()["job_id"]
    events = []
    with client.stream("GET", f"/v1/jobs/{job_id}/events", headers=acme) as stream:
        assert stream.headers["content-type"].startswith("text/event-stream")
        name = None
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    assert events[-1][0] == "done" and events[-1][1]["progress"] == 1.0
    assert all(kind == "progress" for kind, _ in events[:-1])
    progress = [data["progress"] for _, data in events]
    assert progress == sorted(progress)


def test_summarize_is_a_job(client: TestClient, acme: dict[str, str]) -> None:
    document_id = ingest(client, acme, story())
    answer = client.post(f"/v1/documents/{document_id}/summarize", headers=acme)
    assert answer.status_code == 202
    job = wait_for(client, answer.json()["job_id"], acme)
    assert job["status"] == "done" and job["kind"] == "summarize"
    assert job["result"]["summary"] and job["result"]["calls"] >= 1


def test_ask_streams_server_sent_events(client: TestClient, acme: dict[str, str]) -> None:
    document_id = ingest(client, acme, story())
    with client.stream(
        "POST",
        f"/v1/documents/{document_id}/ask",
        json={"question": "Who polished the lens?", "stream": True},
        headers=acme,
    ) as stream:
        text = "".join(stream.iter_text())
    assert text.index("event: progress") < text.index("event: answer") < text.index("event: done")
    answer = json.loads(text.split("event: answer\ndata: ")[1].split("\n")[0])
    assert answer["answer"] == "The keeper polished the lens." and answer["citations"]


def test_a_document_being_read_answers_409_and_cannot_be_deleted(
    client: TestClient, acme: dict[str, str], reading: Reading
) -> None:
    gate = reading.store.embedder.gate  # type: ignore[attr-defined]
    gate.clear()  # the ingest waits at its first embedding
    try:
        answer = client.post("/v1/documents", json={"name": "t", "text": story()}, headers=acme)
        document_id, job_id = answer.json()["document_id"], answer.json()["job_id"]
        document = client.get(f"/v1/documents/{document_id}", headers=acme).json()
        assert document["status"] in ("queued", "running") and document["name"] == "t"
        for method, path, body in [
            ("POST", f"/v1/documents/{document_id}/search", {"query": "lens"}),
            ("POST", f"/v1/documents/{document_id}/ask", {"question": "lens?"}),
            ("POST", f"/v1/documents/{document_id}/summarize", None),
            ("DELETE", f"/v1/documents/{document_id}", None),
        ]:
            early = client.request(method, path, json=body, headers=acme)
            assert early.status_code == 409, (method, early.text)
            assert early.json()["error"]["type"] == "conflict"
            assert f"job {job_id}" in early.json()["error"]["message"]
    finally:
        gate.set()
    assert wait_for(client, job_id, acme)["status"] == "done"
    late = client.post(f"/v1/documents/{document_id}/search", json={"query": "lens"}, headers=acme)
    assert late.status_code == 200


def test_a_failed_ingest_is_reported_with_its_error(
    client: TestClient, reading: Reading, acme: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(texts: Any) -> Any:
        raise RuntimeError("the embedder ran out of memory")

    monkeypatch.setattr(reading.store.embedder, "embed", broken)
    answer = client.post("/v1/documents", json={"name": "doc", "text": story()}, headers=acme)
    job = wait_for(client, answer.json()["job_id"], acme)
    assert job["status"] == "failed" and "out of memory" in job["error"]
    document = client.get(f"/v1/documents/{answer.json()['document_id']}", headers=acme).json()
    assert document["status"] == "failed" and "out of memory" in document["error"]
    search = client.post(
        f"/v1/documents/{document['id']}/search", json={"query": "x"}, headers=acme
    )
    assert search.status_code == 409 and "upload it again" in search.json()["error"]["message"]
    assert client.delete(f"/v1/documents/{document['id']}", headers=acme).status_code == 200


def test_a_model_failure_is_502_or_an_error_event(client: TestClient, acme: dict[str, str]) -> None:
    document_id = ingest(client, acme, story())
    path = f"/v1/documents/{document_id}/ask"
    question = {"question": "What does the lighthouse gibberish mean?"}
    failed = client.post(path, json=question, headers=acme)
    assert failed.status_code == 502 and failed.json()["error"]["type"] == "model_error"
    with client.stream("POST", path, json=question | {"stream": True}, headers=acme) as stream:
        assert stream.status_code == 200
        text = "".join(stream.iter_text())
    assert "event: error" in text and "event: done" not in text
    event = json.loads(text.split("event: error\ndata: ")[1].split("\n")[0])
    assert event["type"] == "model_error" and event["status"] == 502


def test_an_upload_cut_short_before_its_job_shows_as_failed(
    client: TestClient, acme: dict[str, str], reading: Reading
) -> None:
    space = reading.store.namespace("tenant:acme/documents/cut-short")  # a crash right after
    shown = public_ids(reading.store.database).documents.encode(space.id)
    document = client.get(f"/v1/documents/{shown}", headers=acme).json()
    assert document["status"] == "failed" and "upload it again" in document["error"]
    assert client.delete(f"/v1/documents/{shown}", headers=acme).status_code == 200


@pytest.mark.parametrize("suffix", [".docx", ".epub"])
def test_a_decompression_bomb_is_refused_with_413_naming_the_file(
    reading: Reading, tmp_path: Path, acme: dict[str, str], suffix: str
) -> None:
    from tests.app.test_loader_bombs import bomb

    settings = api_settings(tmp_path, api_max_upload_bytes=2 * 1024 * 1024)  # the bomb fits
    file = {"file": (f"report{suffix}", bomb(suffix), "application/octet-stream")}
    with TestClient(create_app(settings, reading=reading)) as client:
        answer = client.post("/v1/documents", files=file, headers=acme)
        assert answer.status_code == 413, answer.text
        message = answer.json()["error"]["message"]
        assert message.startswith(f"report{suffix}: ") and "limit" in message
        assert client.get("/v1/documents", headers=acme).json()["documents"] == []
