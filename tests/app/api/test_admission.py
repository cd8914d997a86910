"""Admission control: bounded queues, tenants served in turn, deadlines, 429 with Retry-After,
work stopped when its client leaves; and the same through a real server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from app.api import create_app
from app.api.admission import Gate, admitted
from app.errors import DeadlineExceeded, Overloaded
from app.reading import Reading
from memory import ChromaVectorIndex, Database, MemoryStore
from memory.keys import SqlKeyStore
from serving.llm import ChatMessage, Schema
from serving.server.disconnect import ClientGone
from tests.app.api.conftest import ApiLLM, api_settings, reply
from tests.fakes import HashEmbedder
from tests.net import serving
from tests.texts import story

# -- the gate ------------------------------------------------------------------------------------


def test_a_full_queue_refuses_at_once_with_a_retry_time() -> None:
    async def scenario() -> None:
        gate = Gate("model", slots=1, queue=2, per_tenant=2)
        first = gate.enter("a")
        assert first.granted.done()  # a free slot: no wait
        waiting = [gate.enter("a"), gate.enter("b")]
        assert gate.running == 1 and gate.waiting == 2
        with pytest.raises(Overloaded) as refused:
            gate.enter("c")
        assert refused.value.retry_after_s >= 1
        assert "busy" in str(refused.value) and "retry after" in str(refused.value)
        for ticket in [first, *waiting]:
            ticket.release()
        assert gate.running == 0 and gate.waiting == 0

    asyncio.run(scenario())


def test_one_tenant_cannot_fill_the_queue() -> None:
    async def scenario() -> None:
        gate = Gate("model", slots=1, queue=10, per_tenant=2)
        held = [gate.enter("greedy") for _ in range(3)]  # one runs, two wait
        with pytest.raises(Overloaded, match="this tenant already has 2"):
            gate.enter("greedy")
        other = gate.enter("modest")  # another tenant still gets in line
        assert gate.waiting == 3
        for ticket in [*held, other]:
            ticket.release()

    asyncio.run(scenario())


def test_tenants_are_served_in_turn() -> None:
    async def scenario() -> list[str]:
        gate = Gate("model", slots=1, queue=10, per_tenant=10)
        order: list[str] = []
        blocker = gate.enter("x")
        tickets = [(name, gate.enter(name)) for name in ("a", "a", "a", "b", "b", "c")]

        async def work(name: str, ticket: Any) -> None:
            async with ticket:
                order.append(name)
                await asyncio.sleep(0)

        tasks = [asyncio.create_task(work(name, t)) for name, t in tickets]
        await asyncio.sleep(0)
        blocker.release()
        await asyncio.gather(*tasks)
        assert gate.running == 0 and gate.waiting == 0
        return order

    assert asyncio.run(scenario()) == ["a", "b", "c", "a", "b", "a"]


def test_a_cancelled_waiter_gives_its_place_back() -> None:
    async def scenario() -> None:
        gate = Gate("model", slots=1, queue=1, per_tenant=1)
        holder = gate.enter("a")
        waiter = gate.enter("b")

        async def wait() -> None:
            async with waiter:
                raise AssertionError("never admitted")

        task = asyncio.create_task(wait())
        await asyncio.sleep(0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert gate.waiting == 0
        again = gate.enter("b")  # the place is free again
        holder.release()
        assert again.granted.done() and gate.running == 1
        again.release()
        again.release()  # idempotent
        assert gate.running == 0

    asyncio.run(scenario())


def test_the_deadline_refuses_queued_work_and_stops_running_work() -> None:
    async def scenario() -> None:
        gate = Gate("model", slots=1, queue=1, per_tenant=1)
        holder = gate.enter("a")
        ran: list[str] = []

        async def never() -> str:
            ran.append("queued work ran")
            return "no"

        with pytest.raises(Overloaded, match=r"too busy to start this answer within 0\.05 s"):
            await admitted(gate.enter("b"), never, deadline_s=0.05, what="answer")
        assert not ran and gate.waiting == 0
        holder.release()

        stopped = asyncio.Event()

        async def slow() -> str:
            try:
                await asyncio.sleep(30)
            finally:
                stopped.set()
            return "late"

        with pytest.raises(DeadlineExceeded, match=r"did not finish within 0\.05 s"):
            await admitted(gate.enter("b"), slow, deadline_s=0.05, what="answer")
        assert stopped.is_set() and gate.running == 0

    asyncio.run(scenario())


def test_a_client_that_leaves_stops_its_work() -> None:
    async def scenario() -> None:
        gate = Gate("model", slots=1, queue=0, per_tenant=1)
        left = asyncio.Event()
        stopped = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await left.wait()
            return {"type": "http.disconnect"}

        async def slow() -> str:
            try:
                await asyncio.sleep(30)
            finally:
                stopped.set()
            return "late"

        task = asyncio.create_task(
            admitted(gate.enter("a"), slow, deadline_s=30, what="answer", receive=receive)
        )
        await asyncio.sleep(0.01)
        left.set()
        with pytest.raises(ClientGone):
            await task
        assert stopped.is_set() and gate.running == 0

    asyncio.run(scenario())


# -- through a real server -----------------------------------------------------------------------


class HeldLLM(ApiLLM):
    """Answers only once the test opens the gate; counts the answers it was asked for and the
    ones it gave up on (cancelled)."""

    def __init__(self) -> None:
        super().__init__(reply)
        self.gate = threading.Event()
        self.started = 0
        self.cancelled = 0

    async def generate_json(
        self, messages: Sequence[ChatMessage], schema: Schema, *args: Any, **kwargs: Any
    ) -> Any:
        self.started += 1
        try:
            while not self.gate.is_set():
                await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return await super().generate_json(messages, schema, *args, **kwargs)

    async def chat(self, messages: Sequence[ChatMessage], *args: Any, **kwargs: Any) -> Any:
        while not self.gate.is_set():
            await asyncio.sleep(0.01)
        return await super().chat(messages, *args, **kwargs)


@pytest.fixture
def held_server(tmp_path: Path) -> Iterator[tuple[str, dict[str, str], HeldLLM, int]]:
    database = Database(f"sqlite:///{tmp_path / 'mneme.db'}")
    database.upgrade()
    store = MemoryStore(database, ChromaVectorIndex(path=tmp_path / "chroma"), HashEmbedder())
    llm = HeldLLM()
    settings = api_settings(
        tmp_path, api_model_slots=1, api_model_queue=1, api_tenant_queue=1,
        api_request_timeout_s=20.0,
    )  # fmt: skip
    reading = Reading(settings, store=store, llm=llm)
    _, key = SqlKeyStore(database).create("acme")
    headers = {"Authorization": f"Bearer {key}"}
    with serving(create_app(settings, reading=reading)) as url:
        answer = httpx.post(f"{url}/v1/documents", json={"name": "d", "text": story()},
                            headers=headers)  # fmt: skip
        job_id = answer.json()["job_id"]
        deadline = time.monotonic() + 20
        while httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers).json()["status"] != "done":
            assert time.monotonic() < deadline, "the ingest did not finish"
            time.sleep(0.05)
        yield url, headers, llm, int(answer.json()["document_id"])
    database.close()


def test_asks_beyond_the_queue_get_429_and_the_admitted_are_answered(
    held_server: tuple[str, dict[str, str], HeldLLM, int],
) -> None:
    url, headers, llm, document = held_server
    ask = f"{url}/v1/documents/{document}/ask"
    question = {"question": "What did the keeper polish?"}

    def post() -> httpx.Response:
        return httpx.post(ask, json=question, headers=headers, timeout=30)

    with ThreadPoolExecutor(4) as pool:
        running = pool.submit(post)
        while llm.started < 1:  # the first holds the only slot
            time.sleep(0.01)
        queued = pool.submit(post)
        time.sleep(0.3)  # it is in the queue (of one) now
        refused = post()
        assert refused.status_code == 429, refused.text
        assert int(refused.headers["Retry-After"]) >= 1
        assert refused.json()["error"]["type"] == "overloaded"
        llm.gate.set()
        assert running.result().status_code == 200
        assert queued.result().status_code == 200
    assert llm.started == 2  # the refused one never reached the model


def test_a_client_that_hangs_up_stops_its_answer(
    held_server: tuple[str, dict[str, str], HeldLLM, int],
) -> None:
    url, headers, llm, document = held_server
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{url}/v1/documents/{document}/ask", json={"question": "Who?"},
                   headers=headers, timeout=0.5)  # fmt: skip
    deadline = time.monotonic() + 10
    while llm.cancelled < 1:
        assert time.monotonic() < deadline, "the answer kept running for nobody"
        time.sleep(0.02)
    llm.gate.set()  # the slot is free again: a new ask is answered at once
    answer = httpx.post(f"{url}/v1/documents/{document}/ask", json={"question": "Who?"},
                        headers=headers, timeout=10)  # fmt: skip
    assert answer.status_code == 200, answer.text


def test_a_document_being_summarised_cannot_be_deleted(
    held_server: tuple[str, dict[str, str], HeldLLM, int],
) -> None:
    url, headers, llm, document = held_server
    started = httpx.post(f"{url}/v1/documents/{document}/summarize", headers=headers)
    assert started.status_code == 202
    job_id = started.json()["job_id"]
    refused = httpx.delete(f"{url}/v1/documents/{document}", headers=headers)
    assert refused.status_code == 409, refused.text
    assert job_id in refused.json()["error"]["message"]
    llm.gate.set()
    deadline = time.monotonic() + 20
    while (job := httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers).json())["status"] not in (
        "done",
        "failed",
    ):
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert job["status"] == "done", job
    assert httpx.delete(f"{url}/v1/documents/{document}", headers=headers).status_code == 200
    assert httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers).status_code == 404


def test_a_summary_holds_a_model_slot_while_it_runs(
    held_server: tuple[str, dict[str, str], HeldLLM, int],
) -> None:
    """Jobs that use the model (summarise, surprise ingest) share the model's slots with asks,
    so an ask is not judged alone while a summary computes beside it."""
    url, headers, llm, document = held_server
    started = httpx.post(f"{url}/v1/documents/{document}/summarize", headers=headers)
    job_id = started.json()["job_id"]
    deadline = time.monotonic() + 20
    while httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers).json()["status"] != "running":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    ask = f"{url}/v1/documents/{document}/ask"
    question = {"question": "What did the keeper polish?"}
    with ThreadPoolExecutor(2) as pool:
        queued = pool.submit(httpx.post, ask, json=question, headers=headers, timeout=30)
        time.sleep(0.3)  # waiting behind the summary: the queue (of one) is full
        refused = httpx.post(ask, json=question, headers=headers, timeout=30)
        assert refused.status_code == 429, refused.text
        llm.gate.set()
        assert queued.result().status_code == 200
    while httpx.get(f"{url}/v1/jobs/{job_id}", headers=headers).json()["status"] != "done":
        assert time.monotonic() < deadline
        time.sleep(0.05)


def test_a_gate_admits_unbounded_waiters_for_work_bounded_elsewhere() -> None:
    async def scenario() -> None:
        gate = Gate("model", slots=1, queue=1, per_tenant=1)
        held = [gate.enter("a"), gate.enter("a")]  # one runs, one waits: all it queues
        with pytest.raises(Overloaded):
            gate.enter("a")
        extra = [gate.enter("a", bounded=False) for _ in range(3)]  # jobs, bounded by theirs
        assert gate.waiting == 4
        for ticket in [*held, *extra]:
            ticket.release()
        assert gate.running == 0 and gate.waiting == 0

    asyncio.run(scenario())


def test_work_too_slow_because_the_server_is_busy_is_a_429_not_a_504() -> None:
    async def scenario() -> None:
        gate = Gate("model", slots=2, queue=1, per_tenant=1)
        other = gate.enter("a")  # another request holds the second slot

        async def slow() -> str:
            await asyncio.sleep(30)
            return "late"

        with pytest.raises(Overloaded, match="too busy to finish this answer") as refused:
            await admitted(gate.enter("b"), slow, deadline_s=0.05, what="answer")
        assert refused.value.retry_after_s >= 1
        other.release()
        assert gate.running == 0

    asyncio.run(scenario())
