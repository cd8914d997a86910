"""Memory's :class:`~memory.segmentation.TokenScorer` over the LLM boundary's logprobs."""

from __future__ import annotations

from memory.scoring import scored_from_pieces
from memory.segmentation import ScoredToken
from serving.llm import LLM


class LLMTokenScorer:
    """Surprise -log p(token | previous) in nats from ``LLM.token_logprobs``.

    The LLM reports token strings, not offsets; they are aligned with the text here. Raises
    what the LLM raises (``LogprobsUnsupported`` from an endpoint that gives none).
    """

    def __init__(self, llm: LLM) -> None:
        self.llm = llm

    async def score(self, text: str) -> list[ScoredToken]:
        tokens = await self.llm.token_logprobs(text)
        surprise = [None if t.logprob is None else -t.logprob for t in tokens]
        return scored_from_pieces(text, [t.token for t in tokens], surprise)

    async def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` by the LLM's own tokenizer (surprise windows fit its context)."""
        return await self.llm.count_tokens(text)
