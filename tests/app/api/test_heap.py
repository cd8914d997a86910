"""The heap is given back once requests stop: counted in flight, trimmed once per quiet spell."""

from __future__ import annotations

import asyncio
import sys

import pytest

from app.api import heap


def test_glibc_takes_the_calls() -> None:
    if not sys.platform.startswith("linux"):
        pytest.skip("glibc only")
    assert heap.limit_arenas(64)  # as many as glibc's default allows here: harmless
    blocks = [bytearray(1000) for _ in range(100_000)]  # ~100 MB of small blocks in the heap
    del blocks
    assert heap.trim()  # their freed pages went back to the system


def test_the_heap_is_trimmed_once_after_requests_stop(monkeypatch: pytest.MonkeyPatch) -> None:
    trims: list[int] = []
    monkeypatch.setattr(heap, "trim", lambda: trims.append(1) or True)
    activity = heap.Activity()
    release = asyncio.Event()

    async def app(scope, receive, send):  # type: ignore[no-untyped-def]
        await release.wait()

    quiet = heap.Quiet(app, activity)

    async def scenario() -> None:
        trimmer = asyncio.create_task(heap.trim_when_quiet(activity, after_s=0.05, every_s=0.01))
        request = asyncio.create_task(quiet({"type": "http"}, None, None))  # type: ignore[arg-type]
        await asyncio.sleep(0.2)
        assert activity.in_flight == 1 and trims == []  # never while a request runs
        release.set()
        await request
        await asyncio.sleep(0.3)
        assert activity.in_flight == 0 and trims == [1]  # once, not every tick
        trimmer.cancel()

    asyncio.run(scenario())
