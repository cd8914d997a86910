"""The OpenAPI schema is valid OpenAPI 3.1 and says what validation does (issue 17): every
``$ref`` resolves, integer bounds are integers, and requests at the schema's edges (the largest
id, an integral float, blank text, an extra multipart field) get what the schema promises."""

from __future__ import annotations

import re
import sys
from collections.abc import Iterator
from typing import Any

import jsonschema_rs
import pytest
from fastapi.testclient import TestClient
from hypothesis import given
from hypothesis import strategies as st
from openapi_spec_validator import OpenAPIV31SpecValidator

from agents.quality import words
from app.api import create_app
from app.api.schemas import FILLED, MAX_ID, SPACE, STORABLE, WORDED, clean, filled, worded
from tests.app.api.conftest import api_settings


@pytest.fixture(scope="module")
def schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    app = create_app(api_settings(tmp_path_factory.mktemp("openapi")))  # touches no store
    return app.openapi()


def _nodes(node: Any) -> Iterator[dict[str, Any]]:
    """Every object in the schema, depth first."""
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from _nodes(value)
    elif isinstance(node, list):
        for item in node:
            yield from _nodes(item)


def test_the_schema_is_valid_openapi_3_1(schema: dict[str, Any]) -> None:
    assert schema["openapi"].startswith("3.1")
    errors = [e.message for e in OpenAPIV31SpecValidator(schema).iter_errors()]
    assert errors == []


def test_every_ref_resolves(schema: dict[str, Any]) -> None:
    refs = {n["$ref"] for n in _nodes(schema) if isinstance(n.get("$ref"), str)}
    assert "#/components/schemas/DocumentText" in refs  # the upload's JSON body
    for ref in sorted(refs):
        assert ref.startswith("#/"), ref
        target: Any = schema
        for part in ref[2:].split("/"):
            part = part.replace("~1", "/").replace("~0", "~")
            assert isinstance(target, dict) and part in target, f"{ref} does not resolve"
            target = target[part]


def test_integer_bounds_are_integers(schema: dict[str, Any]) -> None:
    bounds = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "multipleOf")
    checked = 0
    for node in _nodes(schema):
        kinds = node.get("type")
        if kinds == "integer" or (isinstance(kinds, list) and "integer" in kinds):
            for key in bounds:
                if key in node:
                    checked += 1
                    value = node[key]
                    assert type(value) is int, f"{key}: {value!r} on {node}"
    assert checked > 20  # ids, budgets, k_*, ttl_s: the walk saw them
    assert not [n for n in _nodes(schema) if {"ge", "le", "gt", "lt"} & n.keys()]  # all stated
    node_id = schema["components"]["schemas"]["BranchRequest"]["properties"]["node_id"]
    assert node_id["maximum"] == MAX_ID == 2**62
    parameters = schema["paths"]["/v1/documents/{document_id}"]["get"]["parameters"]
    assert parameters[0]["schema"]["maximum"] == MAX_ID


def test_the_served_schema_is_the_finished_one(client: TestClient) -> None:
    served = client.get("/openapi.json")
    assert served.status_code == 200
    assert '"maximum":4611686018427387904' in served.text.replace(" ", "")  # not 4.6e+18
    assert "DocumentText" in served.json()["components"]["schemas"]


def test_the_space_class_is_what_str_isspace_counts() -> None:
    spaces = {chr(c) for c in range(sys.maxunicode + 1) if chr(c).isspace()}
    assert {chr(c) for c in range(sys.maxunicode + 1) if re.fullmatch(f"[{SPACE}]", chr(c))} == (
        spaces
    )


def _accepted(check: Any, text: str) -> bool:
    try:
        check(clean(text))
    except ValueError:
        return False
    return True


_EDGES = st.sampled_from(["a", "'", "é", "\x00", "\ufeff", "\u200b", "\x1c", "\x85", "\u3000", " "])


@given(st.text(alphabet=st.one_of(_EDGES, st.characters(codec="utf-8")), max_size=12))
def test_the_patterns_judge_what_validation_does(text: str) -> None:
    """Python's re (how hypothesis generates) and jsonschema-rs (how schemathesis validates)
    agree with clean(), filled() and worded(); worded() with the writer's words()."""
    assert _accepted(worded, text) == (bool(words(text)) and "\x00" not in text)
    for pattern, check in ((FILLED, filled), (STORABLE, str), (WORDED, worded)):
        expected = _accepted(check, text)
        assert (re.search(pattern, text) is not None) == expected, (pattern, text)
        validator = jsonschema_rs.validator_for({"type": "string", "pattern": pattern})
        assert validator.is_valid(text) == expected, (pattern, text)


# -- requests at the schema's edges ------------------------------------------------------------


def _events(client: TestClient, headers: dict[str, str], **event: Any) -> Any:
    return client.post("/v1/memories/m/events", json={"events": [event]}, headers=headers)


def test_the_largest_id_passes_validation(client: TestClient, acme: dict[str, str]) -> None:
    added = _events(client, acme, text="The keeper polished the lens.")
    assert added.status_code == 201, added.text
    for too_large, status in ((MAX_ID, 404), (MAX_ID + 1, 422)):
        assert client.get(f"/v1/documents/{too_large}", headers=acme).status_code == status
        assert client.get(f"/v1/stories/{too_large}", headers=acme).status_code == status
        pinned = client.post("/v1/memories/m/pin", json={"episode_ids": [too_large]}, headers=acme)
        assert pinned.status_code == status, pinned.text
        branched = client.post("/v1/stories/1/branch", json={"node_id": too_large}, headers=acme)
        assert branched.status_code == status, branched.text
        step = client.post("/v1/stories/1/steps", json={"parent_id": too_large}, headers=acme)
        assert step.status_code == status, step.text
    assert (
        "episode_ids.0"
        in client.post(
            "/v1/memories/m/pin", json={"episode_ids": [MAX_ID + 1]}, headers=acme
        ).json()["error"]["message"]
    )


def test_integral_floats_are_integers(client: TestClient, acme: dict[str, str]) -> None:
    added = _events(client, acme, text="Fog rolled in.", ttl_s=6774.0)
    assert added.status_code == 201, added.text
    episode = added.json()["episodes"][0]
    assert episode["expires_at"] is not None
    searched = client.post(
        "/v1/memories/m/search", json={"query": "fog", "budget_tokens": 64.0}, headers=acme
    )
    assert searched.status_code == 200, searched.text
    for wrong in (6774.5, True, "6774"):
        refused = _events(client, acme, text="Fog rolled in.", ttl_s=wrong)
        assert refused.status_code == 422, (wrong, refused.text)
        assert refused.json()["error"]["detail"][0]["field"] == "events.0.ttl_s"


_BLANK = "is blank (only whitespace)"


@pytest.mark.parametrize(
    ("path", "body", "field", "problem"),
    [
        ("/v1/documents", {"name": "n", "text": " \n\t\u3000"}, "text", _BLANK),
        ("/v1/documents", {"name": "\u2003", "text": "Some text."}, "name", _BLANK),
        ("/v1/documents/1/search", {"query": "  "}, "query", _BLANK),
        ("/v1/documents/1/ask", {"question": "\n"}, "question", _BLANK),
        ("/v1/memories/m/search", {"query": "\t"}, "query", _BLANK),
        ("/v1/memories/m/events", {"events": [{"text": " "}]}, "events.0.text", _BLANK),
        ("/v1/stories", {"genre": " ", "premise": "A keeper."}, "genre", _BLANK),
        ("/v1/stories", {"genre": "gothic", "premise": "\x1c "}, "premise", "holds no words"),
    ],
)
def test_blank_text_is_422_naming_the_field(
    client: TestClient,
    acme: dict[str, str],
    path: str,
    body: dict[str, Any],
    field: str,
    problem: str,
) -> None:
    answer = client.post(path, json=body, headers=acme)
    assert answer.status_code == 422, answer.text
    error = answer.json()["error"]
    assert [d["field"] for d in error["detail"]] == [field]
    assert f"{field}: Value error, {problem}" in error["message"]
    assert client.get("/v1/documents", headers=acme).json()["documents"] == []  # no job started


def test_a_blank_instruction_is_still_allowed(client: TestClient, acme: dict[str, str]) -> None:
    answer = client.post("/v1/stories/1/steps", json={"plan": " ", "action": ""}, headers=acme)
    assert answer.status_code == 404, answer.text  # validated; there is no story 1


def test_multipart_extras_are_declared_refusals(
    client: TestClient, acme: dict[str, str], schema: dict[str, Any]
) -> None:
    operation = schema["paths"]["/v1/documents"]["post"]
    form = operation["requestBody"]["content"]["multipart/form-data"]["schema"]
    assert form["additionalProperties"] is False
    file = {"file": ("notes.txt", b"The keeper polished the lens.", "text/plain")}

    extra = client.post("/v1/documents", files=file, data={"colour": "red"}, headers=acme)
    assert extra.status_code == 422 and "422" in operation["responses"], extra.text
    assert [d["field"] for d in extra.json()["error"]["detail"]] == ["colour"]

    twice = client.post(
        "/v1/documents",
        files=[
            ("file", ("a.txt", b"One.", "text/plain")),
            ("file", ("b.txt", b"Two.", "text/plain")),
        ],
        headers=acme,
    )
    assert twice.status_code == 422, twice.text
    assert [d["field"] for d in twice.json()["error"]["detail"]] == ["file"]

    flood = client.post(
        "/v1/documents", files=file, data={f"f{i}": "x" for i in range(20)}, headers=acme
    )
    assert flood.status_code == 400 and "400" in operation["responses"], flood.text
    assert "more than 8 " in operation["responses"]["400"]["description"]  # declared

    blank = client.post("/v1/documents", files=file, data={"name": "  "}, headers=acme)
    assert blank.status_code == 202, blank.text  # a blank name: the file's
    documents = client.get("/v1/documents", headers=acme).json()["documents"]
    assert [d["name"] for d in documents] == ["notes"]


def test_an_unreadable_upload_is_named_by_its_file(
    client: TestClient, acme: dict[str, str]
) -> None:
    file = {"file": ("empty.txt", b"  \n ", "text/plain")}
    answer = client.post("/v1/documents", files=file, headers=acme)
    assert answer.status_code == 422, answer.text
    message = answer.json()["error"]["message"]
    assert message.startswith("empty.txt: ") and "upload" not in message, message  # not a path


def test_schema_level_rules_are_validated_alike(client: TestClient, acme: dict[str, str]) -> None:
    """The rules the schema states beyond single fields: decay needs half_life_s and threshold
    together; a premise needs a word."""
    _events(client, acme, text="The keeper polished the lens.")
    for body, status in (
        ({"half_life_s": 60.0}, 422),
        ({"half_life_s": 60.0, "threshold": None}, 422),
        ({"threshold": 0.5}, 422),
        ({"half_life_s": 60.0, "threshold": 0.0}, 200),
        ({"half_life_s": None, "threshold": None}, 200),
    ):
        answer = client.post("/v1/memories/m/forget", json=body, headers=acme)
        assert answer.status_code == status, (body, answer.text)
    premise = client.post("/v1/stories", json={"genre": "g", "premise": "¿…?"}, headers=acme)
    assert premise.status_code == 422, premise.text
    assert premise.json()["error"]["detail"][0]["field"] == "premise"
