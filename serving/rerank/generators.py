"""Candidate generators for the decoders: over any :class:`~serving.llm.LLM`, or the local engine.

:class:`ProtocolGenerator` continues text through the ``LLM`` Protocol (any backend, e.g. vLLM
over HTTP): a beam's text is appended to the prompt and re-tokenised by the backend, as the
RankGen code does. :class:`EngineGenerator` drives the built-in engine with token ids: every
beam of a step is one engine request with ``n`` choices, submitted together, so the engine
decodes all candidates of the step in the same batched forward passes, and the ``n`` choices of
a beam share one prefill of its prompt (the engine forks the prompt's KV cache slot).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from serving.llm import ChatMessage, Completion, SamplingParams
from serving.rerank.decoders import Beam, Sample, Step, gather_all
from serving.rerank.errors import RerankUnsupported

if TYPE_CHECKING:
    from serving.engine.engine import TorchEngine
    from serving.llm import LLM


@runtime_checkable
class EngineBacked(Protocol):
    """An LLM served by the built-in engine in this process (``serving.local.LocalLLM``): it
    takes token ids, so beams continue token by token and share their prompt's KV cache."""

    engine: TorchEngine
    tokenizer: Any

    def encode(self, text: str, *, special: bool = True) -> list[int]: ...

    def encode_chat(self, messages: Sequence[ChatMessage]) -> list[int]: ...


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


class EngineGenerator:
    """Candidates from the built-in engine, continuing each beam from its token ids."""

    def __init__(self, llm: EngineBacked, prompt_ids: Sequence[int]) -> None:
        self.llm = llm
        self.prompt_ids = tuple(prompt_ids)

    @classmethod
    def for_prompt(cls, llm: EngineBacked, prompt: str | Sequence[ChatMessage]) -> EngineGenerator:
        ids = llm.encode(prompt) if isinstance(prompt, str) else llm.encode_chat(prompt)
        return cls(llm, ids)

    def check(self, max_tokens: int) -> None:
        """Raise :class:`~serving.errors.RequestRejected` if prompt + max_tokens do not fit."""
        from serving.engine.engine import EngineRequest

        self.llm.engine.check(EngineRequest(self.prompt_ids, SamplingParams(max_tokens=max_tokens)))

    async def _one(self, beam: Beam, params: SamplingParams) -> tuple[tuple[Sample, ...], int]:
        from serving.engine.detokenizer import Detokenizer
        from serving.engine.engine import EngineOutput, EngineRequest

        spec = EngineRequest(self.prompt_ids + beam.token_ids, params)
        ids: list[list[int]] = [[] for _ in range(params.n)]
        ended = [False] * params.n
        async for item in self.llm.engine.generate(spec):
            if isinstance(item, EngineOutput):
                ids[item.index].extend(item.token_ids)
                ended[item.index] = ended[item.index] or item.finish_reason == "stop"
        samples = []
        for new, stop in zip(ids, ended, strict=True):
            # the whole continuation detokenised at once: spacing at step joins comes out as a
            # single generation would give it, and a stop string across a join is found
            detokenizer = Detokenizer(self.llm.tokenizer, params.stop)
            whole = beam.token_ids + tuple(new)
            text = "".join(detokenizer.add(t) for t in whole if not detokenizer.stopped)
            text += "" if detokenizer.stopped else detokenizer.flush()
            samples.append(Sample(text, whole, stop or detokenizer.stopped))
        return tuple(samples), sum(len(n) for n in ids)

    async def sample(self, beams: Sequence[Beam], params: SamplingParams) -> Step:
        parts = await gather_all(self._one(b, params) for b in beams)
        return Step(tuple(p[0] for p in parts), sum(p[1] for p in parts))
