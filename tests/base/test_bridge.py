"""LoopThread and blocking: coroutines driven from sync code on one private loop thread."""

from __future__ import annotations

import asyncio
import inspect
import signal
import threading
from collections.abc import AsyncIterator, Iterator
from types import FrameType

import pytest

from base.bridge import LoopThread, blocking


class Boom(Exception):
    pass


class Interrupted(BaseException):
    """What a signal handler raises in the waiting thread (like ``KeyboardInterrupt``)."""


async def thread_id() -> int:
    return threading.get_ident()


async def fail() -> None:
    raise Boom("went wrong")


def named(name: str) -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name == name]


def test_run_blocks_for_the_result_on_one_named_thread_off_the_callers() -> None:
    with LoopThread("bridge-test") as bridge:
        first, second = bridge.run(thread_id()), bridge.run(thread_id())
        assert first == second != threading.get_ident()
        assert [thread.ident for thread in named("bridge-test")] == [first]
        assert all(thread.daemon for thread in named("bridge-test"))


def test_run_raises_the_coroutines_error_with_its_type() -> None:
    with LoopThread("bridge-test") as bridge, pytest.raises(Boom, match="went wrong"):
        bridge.run(fail())


def test_run_from_the_loops_own_thread_raises_instead_of_deadlocking() -> None:
    inner = thread_id()

    async def reentrant(bridge: LoopThread) -> int:
        return bridge.run(inner)

    with LoopThread("bridge-test") as bridge:
        with pytest.raises(RuntimeError, match="bridge-test called from its own event loop"):
            bridge.run(reentrant(bridge))
        assert inspect.getcoroutinestate(inner) == inspect.CORO_CLOSED
        assert bridge.run(thread_id())  # the loop is still usable


def test_every_call_after_close_raises_and_closes_its_coroutine() -> None:
    bridge = LoopThread("bridge-test")
    bridge.close()
    assert bridge.closed
    late = thread_id()
    with pytest.raises(RuntimeError, match="bridge-test is closed"):
        bridge.run(late)
    assert inspect.getcoroutinestate(late) == inspect.CORO_CLOSED
    with pytest.raises(RuntimeError, match="closed"):
        bridge.submit(thread_id())
    with pytest.raises(RuntimeError, match="closed"):
        bridge.call_soon(print, "late")


def test_close_is_idempotent_and_stops_the_thread() -> None:
    bridge = LoopThread("bridge-close")
    assert len(named("bridge-close")) == 1
    bridge.close()
    bridge.close()
    assert named("bridge-close") == []


def test_close_cancels_what_still_runs_and_refuses_its_own_thread() -> None:
    cancelled = threading.Event()

    async def forever() -> None:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    async def close_inside(bridge: LoopThread) -> None:
        bridge.close()

    bridge = LoopThread("bridge-test")
    with pytest.raises(RuntimeError, match="own event loop thread"):
        bridge.run(close_inside(bridge))
    future = bridge.submit(forever())
    bridge.close()
    assert cancelled.is_set()
    assert future.cancelled()


def test_submit_returns_at_once_and_cancelling_the_future_cancels_the_coroutine() -> None:
    started, cancelled = threading.Event(), threading.Event()

    async def forever() -> None:
        started.set()
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise

    with LoopThread("bridge-test") as bridge:
        future = bridge.submit(forever())
        assert started.wait(5)
        assert not future.done()
        future.cancel()
        assert cancelled.wait(5)
        assert bridge.submit(thread_id()).result(5) != threading.get_ident()


def test_an_interrupted_wait_cancels_the_coroutine() -> None:
    cancelled = threading.Event()

    async def slow() -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise Interrupted

    previous = signal.signal(signal.SIGALRM, interrupt)
    try:
        with LoopThread("bridge-test") as bridge:
            signal.setitimer(signal.ITIMER_REAL, 0.2)
            with pytest.raises(Interrupted):
                bridge.run(slow())
            assert cancelled.wait(5)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_call_soon_runs_the_callback_with_its_arguments_on_the_loop_thread() -> None:
    seen: list[tuple[str, int]] = []
    done = threading.Event()

    def note(word: str) -> None:
        seen.append((word, threading.get_ident()))
        done.set()

    with LoopThread("bridge-test") as bridge:
        bridge.call_soon(note, "hello")
        assert done.wait(5)
        assert seen == [("hello", bridge.run(thread_id()))]


class Countdown:
    """An async iterator that is not an async generator (no ``aclose``)."""

    def __init__(self, start: int) -> None:
        self.left = start

    def __aiter__(self) -> Countdown:
        return self

    async def __anext__(self) -> int:
        if self.left == 0:
            raise StopAsyncIteration
        self.left -= 1
        return self.left + 1


def test_iterate_yields_every_item_in_order() -> None:
    async def words() -> AsyncIterator[str]:
        for word in ["once", "upon", "a", "time"]:
            yield word

    with LoopThread("bridge-test") as bridge:
        assert list(bridge.iterate(words())) == ["once", "upon", "a", "time"]
        assert list(bridge.iterate(Countdown(3))) == [3, 2, 1]


def test_leaving_iterate_early_closes_the_generator_on_the_loop() -> None:
    produced: list[int] = []
    closed_on: list[int] = []

    async def numbers() -> AsyncIterator[int]:
        try:
            for number in range(100):
                produced.append(number)
                yield number
        finally:
            closed_on.append(threading.get_ident())

    with LoopThread("bridge-test") as bridge:
        items: Iterator[int] = bridge.iterate(numbers())
        for number in items:
            if number == 2:
                break
        del items
        assert closed_on == [bridge.run(thread_id())]
        assert produced == [0, 1, 2]  # one item per round trip: nothing read ahead


def test_blocking_without_a_running_loop() -> None:
    assert blocking(thread_id()) == threading.get_ident()
    with pytest.raises(Boom):
        blocking(fail())


def test_blocking_under_a_running_loop_runs_on_a_worker_thread() -> None:
    async def outer() -> tuple[int, int]:
        return blocking(thread_id()), threading.get_ident()

    worker, caller = asyncio.run(outer())
    assert worker != caller
    assert named("mneme-blocking") == []

    async def failing() -> None:
        blocking(fail())

    with pytest.raises(Boom, match="went wrong"):
        asyncio.run(failing())
