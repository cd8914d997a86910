"""The REST API under TestClient: a temporary SQLite database and Chroma folder, the hashing
embedder, fixed-window segmentation and a scripted LLM (asks, summaries, stories)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.api import create_app
from app.api.ids import PublicIds
from app.reading import Reading
from app.settings import Settings, load_settings
from memory import ChromaVectorIndex, Database, MemoryStore
from memory.keys import SqlKeyStore
from memory.public_ids import SqlPublicIdKey
from serving.llm import GREEDY, ChatMessage, Choice, Completion, SamplingParams
from tests.agents.test_writer import echo
from tests.fakes import HashEmbedder, ScriptedLLM


def reply(user: str, call: int) -> str:
    """Answers cite passage 1 (a question about gibberish gets no valid JSON); stories follow
    :func:`tests.agents.test_writer.echo`."""
    if user.startswith("Passages:") and "gibberish" in user:
        return "not JSON at all"  # the model fails to follow the schema, every try
    if user.startswith("Passages:"):
        return json.dumps({"answer": "The keeper polished the lens.", "passages": [1]})
    return echo(user, call)


class ApiLLM(ScriptedLLM):
    """The scripted LLM, plus plain chat for summaries: the first words of what it is given."""

    async def chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams = GREEDY
    ) -> Completion:
        words = messages[-1].content.split()[-12:]
        return Completion("scripted", (Choice(0, " ".join(words), "stop"),), 10, 10)


class GatedEmbedder(HashEmbedder):
    """The hashing embedder, held at a gate while a test closes it (work in flight)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()

    def embed(self, texts: Sequence[str]) -> Any:
        if not self.gate.wait(timeout=30):
            raise TimeoutError("the test never opened the gate")
        return super().embed(texts)


def api_settings(home: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "home": home,
        "segmenter": "fixed",
        "event_min_tokens": 4,
        "event_max_tokens": 48,
        "llm_context_tokens": 2048,
        "api_job_heartbeat_s": 0.2,
        "api_job_stale_s": 30.0,
        "api_max_upload_bytes": 64 * 1024,
    }
    return load_settings(**(values | overrides))


@pytest.fixture
def api_database(tmp_path: Path) -> Iterator[Database]:
    database = Database(f"sqlite:///{tmp_path / 'mneme.db'}")
    database.upgrade()
    yield database
    database.close()


@pytest.fixture
def reading(api_database: Database, tmp_path: Path) -> Reading:
    index = ChromaVectorIndex(path=tmp_path / "chroma")
    store = MemoryStore(api_database, index, GatedEmbedder())
    return Reading(api_settings(tmp_path), store=store, llm=ApiLLM(reply))


@pytest.fixture
def client(reading: Reading) -> Iterator[TestClient]:
    with TestClient(create_app(reading.settings, reading=reading)) as test_client:
        yield test_client


@pytest.fixture
def new_key(api_database: Database) -> Callable[[str], dict[str, str]]:
    """Headers with a fresh key of a tenant."""

    def make(tenant: str) -> dict[str, str]:
        _, key = SqlKeyStore(api_database).create(tenant)
        return {"Authorization": f"Bearer {key}"}

    return make


@pytest.fixture
def acme(new_key: Callable[[str], dict[str, str]]) -> dict[str, str]:
    return new_key("acme")


@pytest.fixture
def globex(new_key: Callable[[str], dict[str, str]]) -> dict[str, str]:
    return new_key("globex")


def public_ids(database: Database) -> PublicIds:
    """The API's ids on ``database``: ``.documents.decode(shown)`` is the row id (what the
    stores, the CLI and the SDK use) of a document id the API showed."""
    return PublicIds(SqlPublicIdKey(database).get())


def wait_for(client: TestClient, job_id: str, headers: dict[str, str]) -> dict[str, Any]:
    """The job once it is done or failed (polling, 20 s at most)."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        job: dict[str, Any] = client.get(f"/v1/jobs/{job_id}", headers=headers).json()
        if job["status"] in ("done", "failed"):
            return job
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish: {job}")


def ingest(client: TestClient, headers: dict[str, str], text: str, name: str = "doc") -> int:
    """Upload ``text`` and wait until it is ready; returns the document id."""
    answer = client.post("/v1/documents", json={"name": name, "text": text}, headers=headers)
    assert answer.status_code == 202, answer.text
    job = wait_for(client, answer.json()["job_id"], headers)
    assert job["status"] == "done", job
    return int(answer.json()["document_id"])
