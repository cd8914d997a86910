"""Candidate generators for the decoders: over any :class:`~serving.llm.LLM`, or token by token.

:class:`ProtocolGenerator` continues text through the ``LLM`` Protocol (any backend, e.g. vLLM
over HTTP): a beam's text is appended to the prompt and re-tokenised by the backend, as the
RankGen code does. :class:`TokenGenerator` drives a :class:`~serving.llm.TokenLevelLLM` (a
backend with ``capabilities.token_ids``: the built-in engine) with token ids: every beam of a
step is one request with ``n`` choices, submitted together, so the engine decodes all candidates
of the step in the same batched forward passes, and the ``n`` choices of a beam share one
prefill of its prompt (the engine forks the prompt's KV cache slot).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from serving.llm import ChatMessage, Completion, SamplingParams
from serving.rerank.decoders import Beam, Sample, Step, gather_all
from serving.rerank.errors import RerankUnsupported

if TYPE_CHECKING:
    from serving.llm import LLM, TokenLevelLLM


MAX_CHOICES = 64  # SamplingParams.n's limit


class ProtocolGenerator:
    """Candidates through ``LLM.complete`` (a prompt) or ``LLM.chat`` (messages).

    Chat can only be over-generated: a chat endpoint cannot continue a partial reply, so beam
    search over messages raises :class:`RerankUnsupported` (the local engine can).
    """

    def __init__(self, llm: LLM, prompt: str | Sequence[ChatMessage]) -> None:
        self.llm = llm
        self.prompt = prompt

    async def _one(self, beam: Beam, params: SamplingParams) -> Completion:
        if isinstance(self.prompt, str):
            return await self.llm.complete(self.prompt + beam.text, params)
        if beam.text:
            raise RerankUnsupported(
                "beam search over a chat needs a backend that continues a partial reply; use "
                "method='sample' over this backend, a completions prompt, or the local engine"
            )
        return await self.llm.chat(self.prompt, params)

    async def sample(self, beams: Sequence[Beam], params: SamplingParams) -> Step:
        replies = await gather_all(self._one(b, params) for b in beams)
        samples = tuple(
            tuple(Sample(beam.text + c.text, (), c.finish_reason == "stop") for c in reply.choices)
            for beam, reply in zip(beams, replies, strict=True)
        )
        return Step(samples, sum(r.completion_tokens for r in replies))


class TokenGenerator:
    """Candidates from a backend that takes token ids, continuing each beam from its ids."""

    def __init__(self, llm: TokenLevelLLM, prompt_ids: Sequence[int]) -> None:
        self.llm = llm
        self.prompt_ids = tuple(prompt_ids)

    @classmethod
    def for_prompt(cls, llm: TokenLevelLLM, prompt: str | Sequence[ChatMessage]) -> TokenGenerator:
        ids = llm.encode(prompt) if isinstance(prompt, str) else llm.encode_chat(prompt)
        return cls(llm, ids)

    def check(self, max_tokens: int) -> None:
        """Raise :class:`~serving.errors.RequestRejected` if prompt + max_tokens do not fit."""
        self.llm.check_ids(self.prompt_ids, SamplingParams(max_tokens=max_tokens))

    async def _one(self, beam: Beam, params: SamplingParams) -> tuple[tuple[Sample, ...], int]:
        choices = await self.llm.continue_ids(self.prompt_ids + beam.token_ids, params)
        samples = []
        for choice in choices:
            # the whole continuation detokenised at once: spacing at step joins comes out as a
            # single generation would give it, and a stop string across a join is found
            whole = beam.token_ids + choice.token_ids
            text, cut = self.llm.detokenize(whole, params.stop)
            samples.append(Sample(text, whole, choice.stopped or cut))
        return tuple(samples), sum(len(c.token_ids) for c in choices)

    async def sample(self, beams: Sequence[Beam], params: SamplingParams) -> Step:
        parts = await gather_all(self._one(b, params) for b in beams)
        return Step(tuple(p[0] for p in parts), sum(p[1] for p in parts))
