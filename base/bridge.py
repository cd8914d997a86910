"""``LoopThread``: sync code driving coroutines on one private event loop in a daemon thread.

The one sync-to-async bridge of Mneme (like Starlette's ``concurrency.py``): the blocking wrappers
(``SyncLLM``, ``SyncAgent``, ``SyncEpisodicMemory``) and the web app's ``Studio`` each own a
:class:`LoopThread` and hand it their async core's coroutines; none has a loop of its own. One
long-lived loop, rather than ``asyncio.run`` per call, keeps an async client's connections (bound
to the loop that opened them) alive across calls. :func:`blocking` is the one-shot form for sync
entry points that may be called under a running loop (LangChain's).
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Iterator
from concurrent.futures import Future
from types import TracebackType
from typing import Any, TypeVar, TypeVarTuple

T = TypeVar("T")
Ts = TypeVarTuple("Ts")


class LoopThread:
    """A private event loop running in a daemon thread named ``name``, until :meth:`close`.

    :meth:`run`, :meth:`submit`, :meth:`call_soon` and :meth:`iterate` are safe from any thread
    but the loop's own (calls interleave on the one loop). After :meth:`close` they raise
    ``RuntimeError``.
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=name, daemon=True)
        # Guards _closed against a concurrent submit: what is scheduled before close is
        # cancelled by it, nothing is scheduled after.
        self._lock = threading.Lock()
        self._closed = False
        self._thread.start()

    @property
    def closed(self) -> bool:
        return self._closed

    def run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the loop and block until it returns (or raises: the same error).

        Raises ``RuntimeError`` when closed, or when called from the loop's own thread (that
        would deadlock: await the coroutine there instead). If the waiting thread is interrupted
        (Ctrl-C, a Streamlit rerun) the coroutine is cancelled too.
        """
        if threading.current_thread() is self._thread:
            coroutine.close()  # never awaited: close it so Python does not warn
            raise RuntimeError(
                f"{self.name} called from its own event loop thread, which would deadlock; "
                "await the coroutine instead"
            )
        future = self.submit(coroutine)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # interrupted: stop the coroutine too (a no-op once it is done)
            raise

    def submit(self, coroutine: Coroutine[Any, Any, T]) -> Future[T]:
        """Start ``coroutine`` on the loop and return at once; cancelling the future cancels it.

        Raises ``RuntimeError`` when closed.
        """
        with self._lock:
            if self._closed:
                coroutine.close()  # never awaited: close it so Python does not warn
                raise RuntimeError(f"{self.name} is closed; build a new one")
            return asyncio.run_coroutine_threadsafe(coroutine, self._loop)

    def call_soon(self, callback: Callable[[*Ts], object], *args: *Ts) -> None:
        """Call ``callback(*args)`` on the loop's thread soon (for example ``asyncio.Event.set``,
        which is not thread-safe). Raises ``RuntimeError`` when closed."""
        with self._lock:
            if self._closed:
                raise RuntimeError(f"{self.name} is closed; build a new one")
            self._loop.call_soon_threadsafe(callback, *args)

    def iterate(self, stream: AsyncIterator[T]) -> Iterator[T]:
        """A blocking iterator over ``stream``, one item per round trip to the loop. Leaving it
        early (``break``, an exception, garbage collection) closes ``stream`` on the loop when it
        is an async generator."""

        async def step() -> list[T]:
            try:
                return [await anext(stream)]
            except StopAsyncIteration:
                return []

        async def close_stream() -> None:
            if isinstance(stream, AsyncGenerator):
                await stream.aclose()

        def items() -> Iterator[T]:
            finished = False
            try:
                while batch := self.run(step()):
                    yield batch[0]
                finished = True
            finally:
                if not finished and not self._closed:
                    self.run(close_stream())

        return items()

    def close(self) -> None:
        """Cancel what still runs on the loop (its waiters get ``CancelledError``), finalise its
        async generators, stop the loop, join its thread and close it (its default executor's
        threads finish their current call without being waited for). Idempotent; raises
        ``RuntimeError`` from the loop's own thread (it cannot join itself)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError(f"{self.name} closed from its own event loop thread")
        with self._lock:
            if self._closed:
                return
            self._closed = True
        try:
            asyncio.run_coroutine_threadsafe(_drain(), self._loop).result()
        finally:
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> LoopThread:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()


async def _drain() -> None:
    """Cancel the running loop's other tasks, wait for them, then close its async generators."""
    loop = asyncio.get_running_loop()
    tasks = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await loop.shutdown_asyncgens()


def blocking(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` to the end from sync code, for sync entry points (LangChain's) that may
    be called under a running event loop: ``asyncio.run`` when none runs in this thread, else on
    a :class:`LoopThread` of its own (the running loop waits, blocked, meanwhile)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    with LoopThread("mneme-blocking") as worker:
        return worker.run(coroutine)
