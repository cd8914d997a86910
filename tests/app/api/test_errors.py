"""One error shape for everything; bad input is a 4xx naming the problem, never a 500."""

from __future__ import annotations

import json
from typing import Any

from fastapi.testclient import TestClient

from tests.app.api.conftest import ingest
from tests.texts import story


def error(answer: Any, status: int) -> dict[str, Any]:
    assert answer.status_code == status, answer.text
    body = answer.json()
    assert set(body) == {"error"} and set(body["error"]) == {"type", "message", "detail"}
    assert body["error"]["message"]
    return dict(body["error"])


def raw(client: TestClient, path: str, data: bytes, headers: dict[str, str]) -> Any:
    return client.post(path, content=data, headers={**headers, "Content-Type": "application/json"})


def test_malformed_json_and_invalid_utf8_are_400(client: TestClient, acme: dict[str, str]) -> None:
    document = ingest(client, acme, story())
    for path in ("/v1/documents", f"/v1/documents/{document}/search", "/v1/memories/m/events"):
        assert "not valid JSON" in error(raw(client, path, b'{"name": ', acme), 400)["message"]
        bad = b'{"name": "a", "text": "\xff\xfe caf\xe9", "query": "\xff"}'
        assert "UTF-8" in error(raw(client, path, bad, acme), 400)["message"]


INVALID_DOCUMENTS: list[tuple[Any, str]] = [
    ({"name": "a", "text": "b", "colour": "red"}, "colour"),  # unknown field
    ({"name": 5, "text": "b"}, "name"),  # wrong type
    ({"name": "a", "text": 5}, "text"),
    ({"text": "b"}, "name"),  # missing
    ({"name": "a", "text": "b", "segmenter": "magic"}, "segmenter"),
    ({"name": "x" * 201, "text": "b"}, "name"),  # too long
    ({"name": "a", "text": "nul\x00byte"}, "text"),
    ([1, 2], "body"),
]


def test_invalid_fields_are_422_naming_the_field(client: TestClient, acme: dict[str, str]) -> None:
    for body, field in INVALID_DOCUMENTS:
        found = error(client.post("/v1/documents", json=body, headers=acme), 422)
        assert found["type"] == "invalid_request" and field in found["message"], body
        assert any(item["field"].startswith(field) for item in found["detail"]), body


def test_unpaired_surrogates_are_refused(client: TestClient, acme: dict[str, str]) -> None:
    event = json.dumps({"events": [{"text": "a\ud800b"}]}).encode()  # escaped in ASCII JSON
    found = error(raw(client, "/v1/memories/m/events", event, acme), 422)
    assert "events.0.text" in found["message"] and "unicode" in found["message"]
    document = json.dumps({"name": "a\ud800", "text": "b"}).encode()
    assert error(raw(client, "/v1/documents", document, acme), 400)["type"] == "invalid_request"


def test_search_fields_are_checked(client: TestClient, acme: dict[str, str]) -> None:
    document = ingest(client, acme, story())
    path = f"/v1/documents/{document}/search"
    for body, field in [
        ({"query": ""}, "query"),
        ({"query": "x" * 4001}, "query"),
        ({"query": "x", "budget_tokens": 0}, "budget_tokens"),
        ({"query": "x", "budget_tokens": "many"}, "budget_tokens"),
        ({"query": "x", "k_similar": 10**20}, "k_similar"),
        ({"query": "x", "extra": 1}, "extra"),
    ]:
        assert field in error(client.post(path, json=body, headers=acme), 422)["message"]
    # A query longer than its budget is the memory's own InvalidQuery, mapped to 422.
    long_query = {"query": "lighthouse " * 300, "budget_tokens": 16}
    assert "budget" in error(client.post(path, json=long_query, headers=acme), 422)["message"]
    assert (
        "document_id"
        in error(client.post("/v1/documents/abc/search", json={"query": "x"}, headers=acme), 422)[
            "message"
        ]
    )


def test_size_limits_answer_413(client: TestClient, acme: dict[str, str]) -> None:
    limit = 64 * 1024  # api_max_upload_bytes in these tests
    text = "word " * (limit // 5 + 10)
    found = error(client.post("/v1/documents", json={"name": "a", "text": text}, headers=acme), 413)
    assert found["type"] == "payload_too_large" and str(limit) in found["message"]
    files = {"file": ("big.txt", text.encode(), "text/plain")}
    assert error(client.post("/v1/documents", files=files, headers=acme), 413)
    # Any other route takes at most 1 MiB, whatever the body.
    huge = b'{"query": "' + b"x" * (2 * 1024 * 1024) + b'"}'
    assert error(raw(client, "/v1/memories/m/search", huge, acme), 413)


def test_other_statuses_keep_the_shape(client: TestClient, acme: dict[str, str]) -> None:
    assert error(client.get("/v1/nowhere", headers=acme), 404)["type"] == "not_found"
    assert error(client.put("/v1/documents", headers=acme), 405)["type"] == "method_not_allowed"
    upload = client.post(
        "/v1/documents", content=b"text", headers={**acme, "Content-Type": "text/plain"}
    )
    assert error(upload, 415)["type"] == "unsupported_media_type"
    no_file = client.post("/v1/documents", data={"name": "x"}, files={"other": ("a", b"b")},
                          headers=acme)  # fmt: skip
    assert "file" in error(no_file, 422)["message"]
    binary = client.post("/v1/documents", files={"file": ("a.txt", bytes(range(256)) * 8)},
                         headers=acme)  # fmt: skip
    assert error(binary, 422)["type"] == "unreadable_document"


def test_a_multipart_name_is_checked_like_json(client: TestClient, acme: dict[str, str]) -> None:
    files = {"file": ("a.txt", b"Some text to read.", "text/plain")}
    long_name = client.post("/v1/documents", files=files, data={"name": "n" * 201}, headers=acme)
    assert "name" in error(long_name, 422)["message"]
    bad = client.post("/v1/documents", files=files, data={"segmenter": "magic"}, headers=acme)
    assert "segmenter" in error(bad, 422)["message"]
