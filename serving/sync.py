"""``SyncLLM``: the thin blocking wrapper over any :class:`serving.llm.LLM`, for scripts and
Streamlit, which have no event loop of their own.

Every call runs on one private event loop in a daemon thread, so an async client's connections
(bound to the loop that opened them) are reused across calls. Each method hands its coroutine to
:meth:`SyncLLM._run` and blocks for the result; no logic is duplicated here.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Coroutine, Iterator, Sequence
from types import TracebackType
from typing import Any, Protocol, TypeVar, runtime_checkable

from serving.llm import (
    GREEDY,
    LLM,
    ChatMessage,
    Completion,
    OnText,
    SamplingParams,
    Schema,
    StreamDelta,
    TokenLogprob,
)

T = TypeVar("T")


@runtime_checkable
class AsyncClosable(Protocol):
    """A backend holding resources (connections) that :meth:`SyncLLM.close` releases."""

    async def aclose(self) -> None: ...


class SyncLLM:
    """Blocking twins of the :class:`serving.llm.LLM` methods, raising the same errors.

    Owns a daemon thread running a private event loop until :meth:`close` (or the end of a
    ``with`` block), which also closes the wrapped backend when it has ``aclose``. Safe to call
    from several threads (calls interleave on the one loop); calling it from inside one of the
    wrapped backend's own coroutines would deadlock, and raises ``RuntimeError`` instead.
    """

    def __init__(self, llm: LLM) -> None:
        self._llm = llm
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name=f"SyncLLM({llm.model})", daemon=True
        )
        self._thread.start()
        self._closed = False

    @property
    def model(self) -> str:
        return self._llm.model

    def complete(self, prompt: str, params: SamplingParams = GREEDY) -> Completion:
        return self._run(self._llm.complete(prompt, params))

    def chat(self, messages: Sequence[ChatMessage], params: SamplingParams = GREEDY) -> Completion:
        return self._run(self._llm.chat(messages, params))

    def stream_complete(
        self, prompt: str, params: SamplingParams = GREEDY
    ) -> Iterator[StreamDelta]:
        return self._iterate(self._llm.stream_complete(prompt, params))

    def stream_chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams = GREEDY
    ) -> Iterator[StreamDelta]:
        return self._iterate(self._llm.stream_chat(messages, params))

    def token_logprobs(self, text: str) -> list[TokenLogprob]:
        return self._run(self._llm.token_logprobs(text))

    def count_tokens(self, text: str) -> int:
        return self._run(self._llm.count_tokens(text))

    def generate_json(
        self,
        messages: Sequence[ChatMessage],
        schema: type[Schema],
        params: SamplingParams = GREEDY,
        *,
        on_text: OnText | None = None,
        repairs: int = 2,
    ) -> Schema:
        """``on_text`` is called from the wrapper's loop thread."""
        return self._run(
            self._llm.generate_json(messages, schema, params, on_text=on_text, repairs=repairs)
        )

    def close(self) -> None:
        """Close the backend (if it has ``aclose``), stop the loop and join its thread.

        Idempotent; any call after it raises ``RuntimeError``.
        """
        if self._closed:
            return
        try:
            if isinstance(self._llm, AsyncClosable):
                self._run(self._llm.aclose())
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> SyncLLM:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def _run(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run ``coroutine`` on the private loop and block until it returns or raises."""
        if self._closed or threading.current_thread() is self._thread:
            coroutine.close()  # never awaited: close it so Python does not warn
            raise RuntimeError(
                "SyncLLM is closed"
                if self._closed
                else "SyncLLM called from its own event loop; await the async LLM instead"
            )
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # interrupted (Ctrl-C, a Streamlit rerun): stop the call too
            raise

    def _iterate(self, stream: AsyncIterator[T]) -> Iterator[T]:
        """A blocking iterator over ``stream``, one item per round trip to the loop. Leaving it
        early (``break``, an exception, garbage collection) closes ``stream`` on the loop."""

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
                while batch := self._run(step()):
                    yield batch[0]
                finished = True
            finally:
                if not finished and not self._closed:
                    self._run(close_stream())

        return items()
