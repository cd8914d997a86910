"""Fakes that implement Mneme's Protocols (real classes, not patched mocks)."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Callable, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from serving.llm import (
    GREEDY,
    ChatMessage,
    Completion,
    OnText,
    SamplingParams,
    Schema,
    StreamDelta,
)
from serving.structured import validated

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
    """The LLM Protocol's JSON path: raw replies from a script, validated by the real repair
    loop (``serving.structured.validated``). The other methods are not scripted and raise."""

    model = "scripted"

    def __init__(self, reply: Reply) -> None:
        self.reply = reply
        self.prompts: list[str] = []

    async def generate_json(
        self,
        messages: Sequence[ChatMessage],
        schema: type[Schema],
        params: SamplingParams = GREEDY,
        *,
        on_text: OnText | None = None,
    ) -> Schema:
        async def generate(conversation: Sequence[ChatMessage]) -> str:
            self.prompts.append(conversation[-1].content)
            reply = self.reply(messages[-1].content, len(self.prompts))
            if on_text is not None:  # streamed in pieces of 7 characters, as a server would
                for end in range(7, len(reply) + 7, 7):
                    on_text(reply[:end])
                    await asyncio.sleep(0)
            return reply

        return await validated(generate, messages, schema)

    async def chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams = GREEDY
    ) -> Completion:
        raise NotImplementedError

    async def complete(self, prompt: str, params: SamplingParams = GREEDY) -> Completion:
        raise NotImplementedError

    def stream_chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams = GREEDY
    ) -> AsyncIterator[StreamDelta]:
        raise NotImplementedError

    def stream_complete(
        self, prompt: str, params: SamplingParams = GREEDY
    ) -> AsyncIterator[StreamDelta]:
        raise NotImplementedError

    async def token_logprobs(self, text: str) -> list[Any]:
        raise NotImplementedError

    async def count_tokens(self, text: str) -> int:
        return len(text.split())
