"""The SDK entry point: a reranked generation over any :class:`~serving.llm.LLM`."""

from __future__ import annotations

from collections.abc import Sequence
from typing import cast

from serving.llm import LLM, ChatMessage, takes_token_ids
from serving.rerank.config import RerankConfig
from serving.rerank.decoders import Generator, RerankResult, decode
from serving.rerank.generators import ProtocolGenerator, TokenGenerator
from serving.rerank.reranker import Reranker
from serving.rerank.scorers import RerankerPool


def prefix_text(prompt: str | Sequence[ChatMessage]) -> str:
    """What continuations are scored against: the prompt, or the conversation's text."""
    if isinstance(prompt, str):
        return prompt
    return "\n".join(m.content for m in prompt)


def generator_for(llm: LLM, prompt: str | Sequence[ChatMessage], max_tokens: int) -> Generator:
    """The token-level generator where the backend takes token ids (``capabilities.token_ids``:
    the built-in engine), else the Protocol one."""
    if takes_token_ids(llm):
        generator = TokenGenerator.for_prompt(llm, prompt)
        generator.check(max_tokens)
        return generator
    return ProtocolGenerator(llm, prompt)


async def generate(
    llm: LLM,
    prompt: str | Sequence[ChatMessage],
    *,
    rerank: RerankConfig | None = None,
    reranker: Reranker | None = None,
    scorers: RerankerPool | None = None,
    seed: int | None = None,
    stop: Sequence[str] = (),
) -> RerankResult:
    """Continue ``prompt`` (text, or a conversation) with reranked sampling.

    The scorer is ``reranker`` if given, else ``rerank.scorer`` from ``scorers``: a pool the
    caller keeps for as long as it generates (e.g. ``RerankerPool.standard()``), which loads each
    scorer on first use and keeps it, so a RankGen checkpoint is not reloaded per call. Without
    either, :class:`TypeError`.
    Raises :class:`~serving.errors.ModelNotAvailable` when the scorer's weights are missing,
    :class:`~serving.errors.RequestRejected` when prompt + ``rerank.max_tokens`` exceed the
    local model's context, and whatever the backend raises (``LLMError``).
    """
    config = rerank or RerankConfig()
    if reranker is None:
        if scorers is None:
            raise TypeError(
                "generate() needs reranker= (a scorer) or scorers= (a RerankerPool the caller "
                "keeps, such as RerankerPool.standard(), so each scorer loads once)"
            )
        reranker = scorers.get(config.scorer)
    generator = generator_for(llm, prompt, config.max_tokens)
    return await decode(generator, reranker, prefix_text(prompt), config, seed=seed, stop=stop)


class RerankedGeneration:
    """``llm.generate(prompt, rerank=RerankConfig(...))`` on the concrete backends
    (``LocalLLM``, ``OpenAICompatibleLLM``): the same as :func:`generate` with ``llm = self``."""

    __slots__ = ()

    async def generate(
        self,
        prompt: str | Sequence[ChatMessage],
        *,
        rerank: RerankConfig | None = None,
        reranker: Reranker | None = None,
        scorers: RerankerPool | None = None,
        seed: int | None = None,
        stop: Sequence[str] = (),
    ) -> RerankResult:
        """Continue ``prompt`` with reranked sampling; see :func:`generate`."""
        llm = cast("LLM", self)  # only LLM backends mix this in
        return await generate(
            llm, prompt, rerank=rerank, reranker=reranker, scorers=scorers, seed=seed, stop=stop
        )
