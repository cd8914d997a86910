"""Fakes that implement Mneme's Protocols (real classes, not patched mocks)."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.errors import RequestRejected
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
)
from serving.structured import validated


def _completion(text: str) -> Completion:
    return Completion("scripted", (Choice(0, text, "stop"),), 0, len(text.split()))


_WORD = re.compile(r"[a-z0-9]+")


class HashEmbedder:
    """A deterministic bag-of-words embedder: texts sharing words get similar vectors.

    Implements ``memory.embedder.Embedder`` without a model, for logic tests.
    """

    def __init__(self, dimension: int = 256, model_name: str = "test/hash-embedder") -> None:
        self._dimension = dimension
        self._model_name = model_name
        self.calls = 0  # texts embedded so far (tests check nothing is re-embedded)

    @property
    def model_name(self) -> str:
        return self._model_name

    @property
    def dimension(self) -> int:
        return self._dimension

    def embed(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        self.calls += len(texts)
        out = np.zeros((len(texts), self._dimension), dtype=np.float32)
        for row, text in enumerate(texts):
            for word in _WORD.findall(text.lower()):
                bucket = int.from_bytes(hashlib.blake2b(word.encode(), digest_size=4).digest())
                out[row, bucket % self._dimension] += 1.0
            norm = np.linalg.norm(out[row])
            out[row] = out[row] / norm if norm else 1.0 / np.sqrt(self._dimension)
        return out


Reply = Callable[[str, int], str]
"""(the last user message, call number) -> the raw reply text."""


class ScriptedLLM:
    """The LLM Protocol from a script: ``reply(last user message, call number)`` is the raw text
    of every call. JSON goes through the real repair loop (``serving.structured.validated``);
    chat and completion stream the reply in pieces of 7 characters, as a server would.
    ``prompts`` records each call's last user message (or the raw prompt)."""

    model = "scripted"
    capabilities = Capabilities()

    def __init__(self, reply: Reply, *, chat_template: bool = True) -> None:
        self.reply = reply
        self.chat_template = chat_template
        self.prompts: list[str] = []
        self.params: list[SamplingParams] = []

    def _next(self, text: str, params: SamplingParams) -> str:
        self.prompts.append(text)
        self.params.append(params)
        return self.reply(text, len(self.prompts))

    async def generate_json(
        self,
        messages: Sequence[ChatMessage],
        schema: type[Schema],
        params: SamplingParams = GREEDY,
        *,
        on_text: OnText | None = None,
        repairs: int = 2,
    ) -> Schema:
        self._refuse_chat()

        async def generate(conversation: Sequence[ChatMessage]) -> str:
            self.prompts.append(conversation[-1].content)  # a repair request, after the first
            self.params.append(params)
            reply = self.reply(messages[-1].content, len(self.prompts))
            if on_text is not None:
                for end in range(7, len(reply) + 7, 7):
                    on_text(reply[:end])
                    await asyncio.sleep(0)
            return reply

        return await validated(generate, messages, schema, repairs=repairs)

    def _refuse_chat(self) -> None:
        if not self.chat_template:
            raise RequestRejected("the model 'scripted' has no chat template; use completions")

    async def _pieces(self, text: str, params: SamplingParams) -> AsyncIterator[StreamDelta]:
        reply = self._next(text, params)
        for start in range(0, len(reply), 7):
            await asyncio.sleep(0)
            yield StreamDelta(0, reply[start : start + 7])
        yield StreamDelta(0, "", "stop")

    async def chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams = GREEDY
    ) -> Completion:
        self._refuse_chat()
        return _completion(self._next(messages[-1].content, params))

    async def complete(self, prompt: str, params: SamplingParams = GREEDY) -> Completion:
        return _completion(self._next(prompt, params))

    async def stream_chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams = GREEDY
    ) -> AsyncIterator[StreamDelta]:
        self._refuse_chat()
        async for delta in self._pieces(messages[-1].content, params):
            yield delta

    async def stream_complete(
        self, prompt: str, params: SamplingParams = GREEDY
    ) -> AsyncIterator[StreamDelta]:
        async for delta in self._pieces(prompt, params):
            yield delta

    async def token_logprobs(self, text: str) -> list[Any]:
        raise NotImplementedError

    async def count_tokens(self, text: str) -> int:
        return len(text.split())
