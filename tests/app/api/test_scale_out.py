"""Scale-out, proven: two real ``mneme api`` processes with homes of their own share one
PostgreSQL database and one Chroma server (as N workers behind a load balancer would). A job
submitted to one is followed, searched and, once its worker is killed, ended by the other.

Plus the reaper's half of a crash between the two stores, in-process: a worker killed after its
ingest's SQL commit but before the vectors reached the index leaves a document that another
worker finishes as done, and that worker indexes its vectors from SQL so searches find them."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from sqlalchemy import text, update

from app.api.worker import JobWorker
from app.reading import Reading
from memory import ChromaVectorIndex, Database, JobStatus, NewEpisode
from memory.tables import JobRow, utcnow
from tests.app.api.test_server import ESSAYS, MOBY_DICK, api_server, cli_json, essays
from tests.net import chroma_server
from tests.postgres import fresh_database

DEADLINE_S = 180.0
"""Longest any wait here may take before the test fails; only there so a bug cannot hang it."""


def stream(url: str, job_id: str, headers: dict[str, str]) -> Iterator[tuple[str, Any]]:
    """A job's server-sent events as (event, data), and ("", None) for each keep-alive comment,
    so a caller can act between events; fails past ``DEADLINE_S``."""
    deadline = time.monotonic() + DEADLINE_S
    name = ""
    with httpx.stream(
        "GET", f"{url}/v1/jobs/{job_id}/events", headers=headers, timeout=60
    ) as answer:
        assert answer.status_code == 200, answer.read()
        for line in answer.iter_lines():
            assert time.monotonic() < deadline, f"job {job_id} did not end: hangs"
            if line.startswith("event: "):
                name = line.removeprefix("event: ")
            elif line.startswith("data: "):
                yield name, json.loads(line.removeprefix("data: "))
            elif line.startswith(":"):
                yield "", None


def sql_episodes(database_url: str) -> int:
    database = Database(database_url)
    try:
        with database.engine.connect() as connection:
            return int(connection.execute(text("SELECT count(*) FROM episodes")).scalar_one())
    finally:
        database.close()


def indexed_vectors(chroma_url: str) -> int:
    index = ChromaVectorIndex(url=chroma_url)
    return sum(len(index.entries(n)) for n in index.namespace_ids())


@pytest.fixture
def shared_stores(postgres_url: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    """(database URL, Chroma URL): a fresh PostgreSQL database and a Chroma server."""
    with chroma_server(tmp_path / "chroma") as (chroma_url, reason):
        if chroma_url is None:
            pytest.skip(reason)
        with fresh_database(postgres_url) as database_url:
            yield database_url, chroma_url


@pytest.mark.slow
def test_two_api_processes_share_one_database_and_one_index(
    shared_stores: tuple[str, str], tmp_path: Path
) -> None:
    if not (ESSAYS.is_dir() and MOBY_DICK.is_file()):
        pytest.skip(f"the evaluation texts ({ESSAYS}, {MOBY_DICK}) are not there")
    database_url, chroma_url = shared_stores
    shared = {
        "MNEME_DATABASE_URL": database_url,
        "MNEME_CHROMA_URL": chroma_url,
        "MNEME_SEGMENTER": "fixed",
        "MNEME_API_JOB_HEARTBEAT_S": "0.5",
        "MNEME_API_JOB_STALE_S": "3",
    }
    home_a, home_b = tmp_path / "a", tmp_path / "b"  # nothing shared through the file system
    # PostgreSQL is never migrated behind the operator's back: `mneme db upgrade` first.
    assert cli_json(home_a, "db", "upgrade", "--json", **shared)["revision"]
    key = cli_json(home_a, "keys", "create", "--tenant", "t", "--json", **shared)["key"]
    headers = {"Authorization": f"Bearer {key}"}

    with (
        api_server(home_a, **shared) as (a, process_a),
        api_server(home_b, **shared) as (b, process_b),
    ):
        # 1. Ingest through A; B streams its progress from the shared jobs table, then searches.
        essay = essays(60_000)
        body = {"name": "essays", "text": essay}
        accepted = httpx.post(f"{a}/v1/documents", json=body, headers=headers, timeout=60)
        assert accepted.status_code == 202, accepted.text
        first, first_job = accepted.json()["document_id"], accepted.json()["job_id"]
        events = [(e, data) for e, data in stream(b, first_job, headers) if e]
        assert events[-1][0] == "done", events[-1]
        assert {e for e, _ in events[:-1]} == {"progress"}
        progress = [data["progress"] for _, data in events]
        assert progress == sorted(progress) and progress[-1] == 1.0
        assert any(0 < p < 1 for p in progress), progress  # B saw A's job part-way
        episodes = events[-1][1]["result"]["episodes"]
        assert episodes > 20 and events[-1][1]["result"]["chars"] == len(essay)
        hits = httpx.post(
            f"{b}/v1/documents/{first}/search",
            json={"query": "How should a startup find investors?", "budget_tokens": 300},
            headers=headers,
            timeout=60,
        ).json()["hits"]
        assert hits and all(essay[h["start"] : h["end"]] == h["text"] for h in hits)

        # 2. A second ingest through A; A is killed (SIGKILL) part-way; B, still streaming the
        # job, sees its own worker end it rather than leave it at "running".
        moby = {"name": "moby", "text": MOBY_DICK.read_text(encoding="utf-8")}
        accepted = httpx.post(f"{a}/v1/documents", json=moby, headers=headers, timeout=60)
        assert accepted.status_code == 202, accepted.text
        second, second_job = accepted.json()["document_id"], accepted.json()["job_id"]
        seen: list[tuple[str, Any]] = []
        for event, data in stream(b, second_job, headers):
            if event:
                seen.append((event, data))
            running = event == "progress" and data["status"] == "running"
            if running and data["progress"] > 0 and process_a.poll() is None:
                process_a.kill()  # no shutdown handler runs: only B can end the job
                process_a.wait()
        assert process_a.returncode is not None, f"A finished before it was killed: {seen}"
        last, ended = seen[-1]
        assert last in ("failed", "done"), seen
        if last == "failed":  # A died before committing: nothing of the document was stored
            assert "interrupted" in ended["error"], ended
        documents = httpx.get(f"{b}/v1/documents", headers=headers).json()["documents"]
        listed = {d["id"]: d for d in documents}
        assert set(listed) == {first, second}
        assert listed[first]["status"] == "ready" and listed[first]["episodes"] == episodes
        assert listed[second]["status"] == ("ready" if last == "done" else "failed")
        if last == "failed":
            assert "interrupted" in listed[second]["error"]
            refused = httpx.post(
                f"{b}/v1/documents/{second}/search", json={"query": "whale"}, headers=headers
            )
            assert refused.status_code == 409, refused.text

        # 3. B takes a new upload and finishes it on its own.
        third_text = essays(5_000)
        accepted = httpx.post(
            f"{b}/v1/documents", json={"name": "more", "text": third_text}, headers=headers
        )
        assert accepted.status_code == 202, accepted.text
        third = accepted.json()["document_id"]
        final = [(e, d) for e, d in stream(b, accepted.json()["job_id"], headers) if e][-1]
        assert final[0] == "done", final
        hits = httpx.post(
            f"{b}/v1/documents/{third}/search", json={"query": "startups"}, headers=headers
        ).json()["hits"]
        assert hits and all(third_text[h["start"] : h["end"]] == h["text"] for h in hits)
        documents = httpx.get(f"{b}/v1/documents", headers=headers).json()["documents"]
        ready = [d for d in documents if d["status"] == "ready"]
        assert {d["id"] for d in documents} == {first, second, third}
        # Stopped the way an orchestrator stops a worker behind a load balancer.
        process_b.terminate()
        process_b.wait(timeout=60)

    # The two stores agree with what the API reports: every episode of a ready document, and
    # nothing of the killed ingest, is in SQL and in the index.
    stored = sum(d["episodes"] for d in ready)
    assert sql_episodes(database_url) == stored
    assert indexed_vectors(chroma_url) == stored


def test_a_reaped_ingest_that_was_committed_gets_its_vectors(reading: Reading) -> None:
    """The worker died between the SQL commit and the index write (``MemoryStore`` writes SQL
    first): the worker that finishes the job as done also indexes the document from SQL."""
    store = reading.store
    space = store.namespace("tenant:acme/documents/unindexed")
    job = store.jobs.create("ingest", namespace_id=space.id)
    store.jobs.start(job.id)
    texts = ["The keeper lit the lamp.", "Fog rolled over the rocks.", "A ship came near."]
    vectors = np.asarray(store.embedder.embed(texts), dtype=np.float32)
    store.documents.ingest(  # SQL only: the dead worker never reached the index
        space.name, "log", " ".join(texts), [NewEpisode(t, token_count=6) for t in texts], vectors
    )
    a_minute_ago = utcnow() - timedelta(seconds=60)  # its worker's last heartbeat
    with store.database.session() as session:
        session.execute(update(JobRow).where(JobRow.id == job.id).values(updated_at=a_minute_ago))
    assert store.index.entries(space.id) == {}

    assert JobWorker(store, heartbeat_s=0.1, stale_s=5).reap() == [job.id]
    assert store.jobs.get(job.id).status is JobStatus.DONE
    assert store.index.entries(space.id) == store.episodes.vector_state(space.id)
    assert [h.episode.text for h in store.search(space.name, texts[1], k=1)] == [texts[1]]
