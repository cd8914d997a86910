"""SyncLLM: blocking calls over an async LLM, all on one private event loop thread."""

from __future__ import annotations

import threading
from collections.abc import AsyncIterator, Sequence

import pytest
from pydantic import BaseModel

from serving.errors import LLMUnavailable
from serving.llm import (
    GREEDY,
    Capabilities,
    ChatMessage,
    Choice,
    Completion,
    OnText,
    SamplingParams,
    Schema,
    StreamDelta,
    TokenLogprob,
)
from serving.sync import SyncLLM


class Verdict(BaseModel):
    ok: bool


class EchoLLM:
    """An async LLM that echoes its input and records the thread each call ran on."""

    capabilities = Capabilities()

    def __init__(self) -> None:
        self.threads: set[int] = set()
        self.streams_closed = 0
        self.closed = False

    @property
    def model(self) -> str:
        return "echo"

    def _note(self) -> None:
        self.threads.add(threading.get_ident())

    async def complete(self, prompt: str, params: SamplingParams = GREEDY) -> Completion:
        self._note()
        if prompt == "fail":
            raise LLMUnavailable("http://127.0.0.1:1/v1 did not answer")
        choices = tuple(Choice(i, prompt.upper(), "stop") for i in range(params.n))
        return Completion("echo", choices, prompt_tokens=1, completion_tokens=1)

    async def chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams = GREEDY
    ) -> Completion:
        return await self.complete(messages[-1].content, params)

    async def stream_complete(
        self, prompt: str, params: SamplingParams = GREEDY
    ) -> AsyncIterator[StreamDelta]:
        self._note()
        try:
            words = prompt.split()
            for position, word in enumerate(words):
                last = position == len(words) - 1
                yield StreamDelta(0, word, "stop" if last else None)
        finally:
            self.streams_closed += 1

    def stream_chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams = GREEDY
    ) -> AsyncIterator[StreamDelta]:
        return self.stream_complete(messages[-1].content, params)

    async def token_logprobs(self, text: str) -> list[TokenLogprob]:
        self._note()
        return [TokenLogprob(word, None if i == 0 else -1.0) for i, word in enumerate(text.split())]

    async def count_tokens(self, text: str) -> int:
        self._note()
        return len(text.split())

    async def generate_json(
        self,
        messages: Sequence[ChatMessage],
        schema: type[Schema],
        params: SamplingParams = GREEDY,
        *,
        on_text: OnText | None = None,
        repairs: int = 2,
    ) -> Schema:
        self._note()
        return schema.model_validate_json(messages[-1].content)

    async def aclose(self) -> None:
        self._note()
        self.closed = True


def test_every_method_runs_on_one_loop_thread_off_the_callers() -> None:
    backend = EchoLLM()
    with SyncLLM(backend) as llm:
        assert llm.model == "echo"
        assert llm.complete("hi", SamplingParams(n=2)).choices[1].text == "HI"
        assert llm.chat([ChatMessage("user", "yo")]).text == "YO"
        assert llm.token_logprobs("a b") == [TokenLogprob("a", None), TokenLogprob("b", -1.0)]
        assert llm.count_tokens("one two three") == 3
        verdict = llm.generate_json([ChatMessage("user", '{"ok": true}')], Verdict)
        assert verdict == Verdict(ok=True)
        assert [d.text for d in llm.stream_complete("x y")] == ["x", "y"]
    assert len(backend.threads) == 1
    assert threading.get_ident() not in backend.threads


def test_stream_chat_is_a_blocking_iterator_in_order() -> None:
    with SyncLLM(EchoLLM()) as llm:
        deltas = list(llm.stream_chat([ChatMessage("user", "once upon a time")]))
    assert deltas == [
        StreamDelta(0, "once"),
        StreamDelta(0, "upon"),
        StreamDelta(0, "a"),
        StreamDelta(0, "time", "stop"),
    ]


def test_leaving_a_stream_early_closes_it_on_the_loop() -> None:
    backend = EchoLLM()
    with SyncLLM(backend) as llm:
        for delta in llm.stream_chat([ChatMessage("user", "a b c d")]):
            if delta.text == "b":
                break
        assert backend.streams_closed == 1


def test_errors_propagate_with_their_type() -> None:
    with SyncLLM(EchoLLM()) as llm, pytest.raises(LLMUnavailable, match="did not answer"):
        llm.complete("fail")


def test_close_closes_the_backend_and_stops_the_thread() -> None:
    backend = EchoLLM()
    llm = SyncLLM(backend)

    def loop_threads() -> list[threading.Thread]:
        return [thread for thread in threading.enumerate() if thread.name == "SyncLLM(echo)"]

    assert len(loop_threads()) == 1
    llm.close()
    llm.close()  # idempotent
    assert backend.closed
    assert loop_threads() == []
    with pytest.raises(RuntimeError, match="closed"):
        llm.count_tokens("late")


def test_calls_from_several_threads_share_the_loop() -> None:
    backend = EchoLLM()
    results: list[str] = []
    with SyncLLM(backend) as llm:
        workers = [
            threading.Thread(target=lambda i=i: results.append(llm.complete(f"w{i}").text))
            for i in range(8)
        ]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join()
    assert sorted(results) == [f"W{i}" for i in range(8)]
    assert len(backend.threads) == 1
