"""Stop work for a client that has gone: race it against the ASGI ``http.disconnect`` message.

Reranked generations run for seconds to minutes and answer in one piece, so a client that
times out or is closed would otherwise leave the server sampling for nobody. After the request
body has been read, the next ASGI ``receive`` returns only when the client disconnects.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine, MutableMapping
from typing import Any, TypeVar

T = TypeVar("T")
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]


class ClientGone(Exception):
    """The client disconnected before the work was done; the work was cancelled."""


async def until_disconnect(receive: Receive) -> None:
    """Return when the client disconnects (call only once the body has been read)."""
    while (await receive())["type"] != "http.disconnect":
        pass


async def unless_disconnected(work: Coroutine[Any, Any, T], receive: Receive) -> T:
    """``work``'s result; :class:`ClientGone` (and ``work`` cancelled) if the client leaves
    first. ``work``'s own exceptions propagate."""
    task = asyncio.ensure_future(work)
    gone = asyncio.ensure_future(until_disconnect(receive))
    try:
        await asyncio.wait((task, gone), return_when=asyncio.FIRST_COMPLETED)
    finally:
        gone.cancel()
        if not task.done():  # the client left (or we were cancelled ourselves)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
    if task.cancelled():
        raise ClientGone("the client disconnected; its reranked generation was stopped")
    return task.result()
