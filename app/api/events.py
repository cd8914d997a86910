"""Server-sent events: the wire format, keep-alives while work runs, and job progress.

A job's events come from polling its row, not from the worker's memory, so any API worker can
stream the progress of a job another worker runs.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")

KEEPALIVE_S = 10.0
"""Seconds between comment lines while nothing happens, so proxies keep the stream open."""


def sse(event: str, data: Any) -> str:
    """One event: ``event: <name>`` and one ``data:`` line of JSON."""
    return f"event: {event}\ndata: {json.dumps(data, default=str, ensure_ascii=False)}\n\n"


async def keepalive(work: Awaitable[T], every_s: float = KEEPALIVE_S) -> AsyncIterator[str | T]:
    """Yield ``": keep-alive"`` comments while ``work`` runs, then its result.

    The work is cancelled if the client goes away (the generator is closed).
    """
    task = asyncio.ensure_future(work)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=every_s)
            if done:
                break
            yield ": keep-alive\n\n"
        yield task.result()
    finally:
        if not task.done():
            task.cancel()


async def follow(
    read: Callable[[], Awaitable[dict[str, Any] | None]],
    poll_s: float,
    every_s: float = KEEPALIVE_S,
) -> AsyncIterator[str]:
    """Events of a job until it ends: ``progress`` on each change, then ``done`` or ``failed``.

    ``read`` returns the job as JSON, or None once it no longer exists (its document was
    deleted), which ends the stream with an ``error`` event.
    """
    last: tuple[Any, ...] | None = None
    quiet = 0.0
    while True:
        job = await read()
        if job is None:
            yield sse("error", {"type": "not_found", "message": "the job no longer exists"})
            return
        state = (job["status"], job["done"], job["total"])
        if job["status"] in ("done", "failed"):
            yield sse(job["status"], job)
            return
        if state != last:
            yield sse("progress", job)
            last, quiet = state, 0.0
        elif quiet >= every_s:
            yield ": keep-alive\n\n"
            quiet = 0.0
        await asyncio.sleep(poll_s)
        quiet += poll_s
