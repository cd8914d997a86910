"""Property-based fuzzing of the whole OpenAPI schema with schemathesis, against a real server
on 127.0.0.1: no 5xx, every response as the schema promises (status, content type, body),
invalid data refused and valid data accepted. Examples per operation are bounded so the whole
run stays near a minute."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings

from app.api import create_app
from app.reading import Reading
from memory import ChromaVectorIndex, Database, MemoryStore
from memory.keys import SqlKeyStore
from tests.app.api.conftest import ApiLLM, api_settings, reply
from tests.fakes import HashEmbedder
from tests.net import serving
from tests.texts import story

pytestmark = pytest.mark.slow

EXAMPLES = 25
"""Hypothesis examples per operation (and per generation mode)."""


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Reading]]:
    home: Path = tmp_path_factory.mktemp("fuzz")
    database = Database(f"sqlite:///{home / 'mneme.db'}")
    database.upgrade()
    store = MemoryStore(database, ChromaVectorIndex(path=home / "chroma"), HashEmbedder())
    reading = Reading(api_settings(home), store=store, llm=ApiLLM(reply))
    _, key = SqlKeyStore(database).create("fuzz")
    with serving(create_app(reading.settings, reading=reading)) as url:
        import httpx

        headers = {"Authorization": f"Bearer {key}"}
        # Something to find: a document, a memory and a story with small ids.
        httpx.post(f"{url}/v1/documents", json={"name": "d", "text": story()}, headers=headers)
        events = {"events": [{"text": "The keeper polished the lens."}]}
        httpx.post(f"{url}/v1/memories/m/events", json=events, headers=headers)
        httpx.post(f"{url}/v1/stories", json={"genre": "g", "premise": "p"}, headers=headers)
        yield url, key, reading
    database.close()


# The schema is the app's own (building the app touches no store; the server below serves
# the same routes).
schema = schemathesis.openapi.from_dict(
    create_app(api_settings(Path(tempfile.gettempdir()) / "mneme-fuzz-schema")).openapi()
)
# Invalid data may also be too large: 413 is a refusal too.
schema.config.checks.negative_data_rejection.expected_statuses.append("413")


def refusal(case: schemathesis.Case, reading: Reading) -> str | None:
    """Why the server may refuse ``case`` (422) although the schema allows it — for what the
    request means, which no JSON schema can say — or None: a schema-valid ``case`` must then be
    accepted (positive_data_acceptance). Everything a schema can say, it says (issue 17)."""
    body: dict[str, Any] = case.body if isinstance(case.body, dict) else {}
    operation = f"{case.method} {case.operation.path}"
    if operation == "POST /v1/documents" and case.media_type == "multipart/form-data":
        return "the file's bytes may hold no text (binary, empty, corrupted)"
    if operation == "POST /v1/memories/{name}/forget" and body.get("episode_ids"):
        return "a pinned episode cannot be forgotten until it is unpinned"
    query = body.get("query", body.get("question"))
    if isinstance(query, str):  # search and ask: a query must fit its budget, counted in tokens
        budget = body.get("budget_tokens")
        if not isinstance(budget, int):  # absent (the default), or invalid (no check applies)
            budget = reading.settings.recall_budget_tokens
        # ask: the question must also fit the prompt beside its instructions; a quarter of the
        # prompt always does (the exact room depends on the instructions' wording).
        prompt = reading.reader("fuzz").config.max_prompt_tokens
        if reading.count_tokens(query) > min(budget, prompt // 4):
            return "the query is longer than its token budget (or the prompt)"
    return None


def sent_as_text(case: schemathesis.Case) -> bool:
    """A multipart form whose fields are not all text: on the wire every field is text, so a
    "wrong type" there (``{}`` for a name) arrives as a valid string and may be accepted."""
    if case.media_type != "multipart/form-data" or not isinstance(case.body, dict):
        return False
    return any(not isinstance(v, str | bytes) for k, v in case.body.items() if k != "file")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
def test_no_5xx_and_responses_match_the_schema(
    case: schemathesis.Case, fuzz_server: tuple[str, str, Reading]
) -> None:
    url, key, reading = fuzz_server
    excluded = [schemathesis.checks.positive_data_acceptance] if refusal(case, reading) else []
    if sent_as_text(case):
        excluded.append(schemathesis.checks.negative_data_rejection)
    case.call_and_validate(
        base_url=url, headers={"Authorization": f"Bearer {key}"}, excluded_checks=excluded
    )
