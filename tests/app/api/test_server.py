"""A real ``mneme api`` process on 127.0.0.1, driven by httpx: keys from the real CLI, a long
document from the shared evaluation data through the real default embedder, SSE progress to
the end, search, ask with the tiny model; and a server killed in the middle of an ingest."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.loaders import load_document
from memory import ChromaVectorIndex, Database
from tests.app.api.conftest import public_ids
from tests.net import free_port

EVAL = Path(__file__).resolve().parents[4] / "shared" / "eval-data"
ESSAYS = EVAL / "pg-essays-haystack" / "essays"
MOBY_DICK = EVAL / "gutenberg-novels" / "2701-0.txt"
MNEME = [sys.executable, "-c", "from app.cli import main; main()"]

pytestmark = pytest.mark.slow


def environment(home: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MNEME_")}
    return env | {"MNEME_HOME": str(home)} | extra


def cli_json(home: Path, *args: str, **extra: str) -> Any:
    done = subprocess.run(
        [*MNEME, *args], env=environment(home, **extra), capture_output=True, text=True,
        timeout=120, check=True,
    )  # fmt: skip
    return json.loads(done.stdout)


@contextmanager
def api_server(home: Path, **extra: str) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``mneme api`` on a free port; yields its URL once /ready answers, and the process."""
    port = free_port()
    home.mkdir(parents=True, exist_ok=True)
    log = home / f"api-{port}.log"
    with log.open("wb") as output:
        process = subprocess.Popen(
            [*MNEME, "api", "--host", "127.0.0.1", "--port", str(port)],
            env=environment(home, **extra),
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            if process.poll() is not None:
                raise AssertionError(log.read_text(errors="replace"))
            try:
                if httpx.get(f"{url}/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError("mneme api did not become ready in 120 s")
            time.sleep(0.2)
        yield url, process
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def follow(url: str, job_id: str, headers: dict[str, str]) -> list[tuple[str, dict[str, Any]]]:
    """Every server-sent event of a job until the stream ends."""
    events: list[tuple[str, dict[str, Any]]] = []
    name = ""
    with httpx.stream(
        "GET", f"{url}/v1/jobs/{job_id}/events", headers=headers, timeout=600
    ) as stream:
        assert stream.status_code == 200
        for line in stream.iter_lines():
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                events.append((name, json.loads(line.removeprefix("data: "))))
    return events


def essays(chars: int) -> str:
    text = "\n\n".join(p.read_text(encoding="utf-8") for p in sorted(ESSAYS.glob("*.txt")))
    return text[:chars]


@pytest.fixture
def home(tmp_path: Path) -> Path:
    if not ESSAYS.is_dir():
        pytest.skip(f"{ESSAYS} is not there")
    return tmp_path / "home"


def test_ingest_follow_search_and_revoke(home: Path, tmp_path: Path) -> None:
    created = cli_json(home, "keys", "create", "--tenant", "acme", "--json")
    assert set(created) == {"tenant", "key", "id"} and created["tenant"] == "acme"
    headers = {"Authorization": f"Bearer {created['key']}"}
    upload = tmp_path / "essays.txt"
    upload.write_text(essays(40_000), encoding="utf-8")
    text = load_document(upload).text  # what the server reads from the file
    with api_server(home) as (url, _):
        schema = httpx.get(f"{url}/openapi.json").json()
        assert "/v1/documents/{document_id}/search" in schema["paths"]
        files = {"file": ("essays.txt", upload.read_bytes(), "text/plain")}
        answer = httpx.post(
            f"{url}/v1/documents", files=files, data={"segmenter": "embedding"}, headers=headers
        )
        assert answer.status_code == 202, answer.text
        document_id, job_id = answer.json()["document_id"], answer.json()["job_id"]
        events = follow(url, job_id, headers)
        assert events[-1][0] == "done", events[-1]
        assert [e for e, _ in events[:-1]] == ["progress"] * (len(events) - 1)
        progress = [data["progress"] for _, data in events]
        assert progress == sorted(progress) and progress[-1] == 1.0 and len(progress) >= 3
        result = events[-1][1]["result"]
        assert result["chars"] == len(text) and result["episodes"] > 20
        document = httpx.get(f"{url}/v1/documents/{document_id}", headers=headers).json()
        assert document["status"] == "ready" and document["segmenter"] == "embedding"

        hits = httpx.post(
            f"{url}/v1/documents/{document_id}/search",
            json={"query": "How should a startup find investors?", "budget_tokens": 300},
            headers=headers,
            timeout=60,
        ).json()["hits"]
        assert hits and sum(h["tokens"] for h in hits) <= 300
        assert all(text[h["start"] : h["end"]] == h["text"] for h in hits)

        assert cli_json(home, "keys", "revoke", created["id"], "--json")["revoked_at"]
        refused = httpx.get(f"{url}/v1/documents", headers=headers)
        assert refused.status_code == 401
        listed = cli_json(home, "keys", "list", "--json")["keys"]
        assert [k["id"] for k in listed] == [created["id"]] and "key" not in listed[0]


@pytest.mark.model
def test_surprise_ingest_with_the_tiny_model_then_ask(home: Path, test_model: Path) -> None:
    """Surprise from the tiny pretrained model; answers from the bundled SmolLM2-135M-Instruct
    (the tiny model has no chat template and a 512-token context: too small for the reader's
    prompts, which the API says with a 500 configuration_error)."""
    key = cli_json(home, "keys", "create", "--tenant", "acme", "--json")["key"]
    headers = {"Authorization": f"Bearer {key}"}
    body = {"name": "essays", "text": essays(6_000), "segmenter": "surprise"}
    question = {"question": "What do investors want?"}
    with api_server(home, MNEME_LLM_MODEL=str(test_model)) as (url, _):
        answer = httpx.post(f"{url}/v1/documents", json=body, headers=headers).json()
        assert follow(url, answer["job_id"], headers)[-1][0] == "done"
        path = f"{url}/v1/documents/{answer['document_id']}/ask"
        refused = httpx.post(path, json=question, headers=headers, timeout=300)
        assert refused.status_code == 500, refused.text
        assert refused.json()["error"]["type"] == "configuration_error"
        assert "MNEME_LLM_CONTEXT_TOKENS" in refused.json()["error"]["message"]
    document = httpx.Client()  # a fresh server process on the same home: the bundled model
    with api_server(home, MNEME_LLM_CONTEXT_TOKENS="2048") as (url, _):
        stored = document.get(f"{url}/v1/documents/{answer['document_id']}", headers=headers)
        assert stored.json()["segmenter"] == "surprise"
        asked = document.post(
            f"{url}/v1/documents/{answer['document_id']}/ask",
            json=question | {"budget_tokens": 256},
            headers=headers,
            timeout=600,
        )
        assert asked.status_code == 200, asked.text
        reply = asked.json()
        assert isinstance(reply["answer"], str) and reply["citations"]
        for citation in reply["citations"]:
            assert body["text"][citation["start"] : citation["end"]] == citation["text"]
    document.close()


def test_a_server_killed_during_an_ingest(home: Path) -> None:
    """SIGKILL mid-ingest; the restarted server ends the job (failed: nothing was stored), and
    neither SQL nor the vector index holds anything of it."""
    if not MOBY_DICK.is_file():
        pytest.skip(f"{MOBY_DICK} is not there")
    key = cli_json(home, "keys", "create", "--tenant", "acme", "--json")["key"]
    headers = {"Authorization": f"Bearer {key}"}
    quick = {"MNEME_API_JOB_HEARTBEAT_S": "0.5", "MNEME_API_JOB_STALE_S": "3"}
    with api_server(home, **quick) as (url, process):
        body = {"name": "moby", "text": MOBY_DICK.read_text(encoding="utf-8"), "segmenter": "fixed"}
        answer = httpx.post(f"{url}/v1/documents", json=body, headers=headers, timeout=60).json()
        job_id, document_id = answer["job_id"], answer["document_id"]
        deadline = time.monotonic() + 120
        while True:
            job = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers).json()
            if job["status"] == "running" and job["progress"] > 0:
                break
            assert job["status"] in ("queued", "running") and time.monotonic() < deadline, job
            time.sleep(0.1)
        process.kill()  # SIGKILL: no shutdown handler runs
        process.wait()
    with api_server(home, **quick) as (url, _):
        started = time.monotonic()
        while True:
            job = httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers).json()
            if job["status"] in ("done", "failed"):
                break
            assert time.monotonic() - started < 30, f"the job hangs: {job}"
            time.sleep(0.2)
        assert job["status"] == "failed" and "interrupted" in job["error"], job
        document = httpx.get(f"{url}/v1/documents/{document_id}", headers=headers).json()
        assert document["status"] == "failed"
        # Uploading it again works and finishes.
        again = httpx.post(f"{url}/v1/documents", json={**body, "text": body["text"][:20_000]},
                           headers=headers).json()  # fmt: skip
        assert follow(url, again["job_id"], headers)[-1][0] == "done"
    database = Database(f"sqlite:///{home / 'mneme.db'}")
    space = public_ids(database).documents.decode(document_id)  # the API shows a public id
    with database.engine.connect() as connection:
        from sqlalchemy import text

        rows = connection.execute(
            text("SELECT count(*) FROM episodes WHERE namespace_id = :n"), {"n": space}
        ).scalar_one()
        documents = connection.execute(
            text("SELECT count(*) FROM documents WHERE namespace_id = :n"), {"n": space}
        ).scalar_one()
    database.close()
    assert (rows, documents) == (0, 0)
    assert ChromaVectorIndex(path=home / "chroma").entries(space) == {}
