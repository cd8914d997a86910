"""Property-based fuzzing of the whole OpenAPI schema with schemathesis, against a real server
on 127.0.0.1: no 5xx, and every response as the schema promises (status, content type, body).
Examples per operation are bounded so the whole run stays near a minute."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

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
def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str]]:
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
        yield url, key
    database.close()


# The schema is the app's own (building the app touches no store; the server below serves
# the same routes).
schema = schemathesis.openapi.from_dict(
    create_app(api_settings(Path(tempfile.gettempdir()) / "mneme-fuzz-schema")).openapi()
)
# Invalid data may also be too large: 413 is a refusal too.
schema.config.checks.negative_data_rejection.expected_statuses.append("413")


@schema.parametrize()
@settings(
    max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck)
)
def test_no_5xx_and_responses_match_the_schema(
    case: schemathesis.Case, fuzz_server: tuple[str, str]
) -> None:
    url, key = fuzz_server
    case.call_and_validate(
        base_url=url,
        headers={"Authorization": f"Bearer {key}"},
        # A schema-valid request may still be refused for its meaning (binary bytes in a file,
        # a query longer than its token budget): 422 with a reason, which this check counts
        # as a failure. Every other check — status codes, content types, bodies, headers,
        # invalid data refused, no 5xx — stays on.
        excluded_checks=[schemathesis.checks.positive_data_acceptance],
    )
