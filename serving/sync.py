"""``SyncLLM``: the thin blocking wrapper over any :class:`serving.llm.LLM`, for scripts and
Streamlit, which have no event loop of their own.

Every call runs on one :class:`base.bridge.LoopThread` (a private event loop in a daemon thread),
so an async client's connections (bound to the loop that opened them) are reused across calls.
Each method hands its coroutine to the loop and blocks for the result; no logic is duplicated here.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from types import TracebackType
from typing import Protocol, runtime_checkable

from base.bridge import LoopThread
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
        self._bridge = LoopThread(f"SyncLLM({llm.model})")

    @property
    def model(self) -> str:
        return self._llm.model

    def complete(self, prompt: str, params: SamplingParams = GREEDY) -> Completion:
        return self._bridge.run(self._llm.complete(prompt, params))

    def chat(self, messages: Sequence[ChatMessage], params: SamplingParams = GREEDY) -> Completion:
        return self._bridge.run(self._llm.chat(messages, params))

    def stream_complete(
        self, prompt: str, params: SamplingParams = GREEDY
    ) -> Iterator[StreamDelta]:
        return self._bridge.iterate(self._llm.stream_complete(prompt, params))

    def stream_chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams = GREEDY
    ) -> Iterator[StreamDelta]:
        return self._bridge.iterate(self._llm.stream_chat(messages, params))

    def token_logprobs(self, text: str) -> list[TokenLogprob]:
        return self._bridge.run(self._llm.token_logprobs(text))

    def count_tokens(self, text: str) -> int:
        return self._bridge.run(self._llm.count_tokens(text))

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
        return self._bridge.run(
            self._llm.generate_json(messages, schema, params, on_text=on_text, repairs=repairs)
        )

    def close(self) -> None:
        """Close the backend (if it has ``aclose``), stop the loop and join its thread.

        Idempotent; any call after it raises ``RuntimeError``.
        """
        if self._bridge.closed:
            return
        try:
            if isinstance(self._llm, AsyncClosable):
                self._bridge.run(self._llm.aclose())
        finally:
            self._bridge.close()

    def __enter__(self) -> SyncLLM:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
