"""Giving memory back to the operating system once a burst of requests is over.

CPython hands freed objects back to glibc's ``malloc``, which keeps the freed pages in its
arenas: one per thread that allocated, up to eight per core. After a burst of concurrent
requests (each thread of the pools with its own arena, parsing uploads, embedding, tokenising)
the server holds hundreds of MB it no longer uses, and its resident size stays at the peak.

Two glibc calls fix that, through ``ctypes`` (elsewhere than glibc both do nothing):

- ``mallopt(M_ARENA_MAX, n)`` at start: at most ``n`` arenas, so freed memory is shared by the
  threads instead of stranded in one each (what ``MALLOC_ARENA_MAX`` does for a new process);
- ``malloc_trim(0)`` once the server has been quiet for a moment: every arena's free pages go
  back to the system (since glibc 2.8 the pages inside a heap too, not only its top).

:class:`Quiet` (an ASGI middleware) counts requests in flight in an :class:`Activity`, and
:func:`trim_when_quiet` runs the trim in a thread once they have stopped, once per quiet spell.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
import logging
import time
from functools import cache

from starlette.types import ASGIApp, Receive, Scope, Send

log = logging.getLogger("mneme.api")

_M_ARENA_MAX = -8  # glibc's malloc.h


@cache
def _libc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        libc = ctypes.CDLL(name)
        libc.malloc_trim  # noqa: B018 - glibc only
        libc.mallopt  # noqa: B018
    except (OSError, AttributeError):
        return None
    return libc


def limit_arenas(arenas: int) -> bool:
    """At most ``arenas`` malloc arenas from now on; whether glibc took it."""
    libc = _libc()
    return libc is not None and bool(libc.mallopt(_M_ARENA_MAX, arenas))


def trim() -> bool:
    """Return the free pages of every malloc arena to the system; whether any were."""
    libc = _libc()
    return libc is not None and bool(libc.malloc_trim(0))


class Activity:
    """How many requests are in flight, and when the last one ended."""

    def __init__(self) -> None:
        self.in_flight = 0
        self.last_s = time.monotonic()
        self.since_trim = False


class Quiet:
    """ASGI middleware counting requests in ``activity``."""

    def __init__(self, app: ASGIApp, activity: Activity) -> None:
        self.app = app
        self.activity = activity

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        activity = self.activity
        activity.in_flight += 1
        activity.since_trim = True
        try:
            await self.app(scope, receive, send)
        finally:
            activity.in_flight -= 1
            activity.last_s = time.monotonic()


async def trim_when_quiet(
    activity: Activity, *, after_s: float = 2.0, every_s: float = 1.0
) -> None:
    """Forever: once no request has run for ``after_s`` since some did, trim the heap."""
    while True:
        await asyncio.sleep(every_s)
        idle = activity.in_flight == 0 and time.monotonic() - activity.last_s >= after_s
        if idle and activity.since_trim:
            activity.since_trim = False
            began = time.perf_counter()
            released = await asyncio.to_thread(trim)
            log.debug("heap trimmed (%s) in %.3f s", released, time.perf_counter() - began)
