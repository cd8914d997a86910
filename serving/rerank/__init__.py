"""RankGen reranking (Krishna et al. 2022): score continuations against their prefix, and decode
by over-generate-and-rerank or RankGen's beam search.

Importing this package does not import torch: the ``Reranker`` Protocol, the config and the
value types are plain Python, and the scorers load their models lazily.

    from serving.rerank import RerankConfig, RerankerPool, generate
    scorers = RerankerPool.standard()  # kept by the caller: each scorer loads once
    result = await generate(
        llm, prompt, rerank=RerankConfig(method="beam", scorer="embedder"), scorers=scorers
    )
"""

from serving.rerank.config import EMBEDDER_SCORER, RANKGEN_CHECKPOINTS, RerankConfig, ScorerConfig
from serving.rerank.decoders import RerankResult, beam_search, decode, over_generate
from serving.rerank.embedder import EmbedderReranker
from serving.rerank.errors import RerankError, RerankUnsupported, UnknownScorer
from serving.rerank.generation import generate
from serving.rerank.rankgen import RankGenReranker
from serving.rerank.reranker import Ranked, Reranker, rank
from serving.rerank.scorers import RerankerPool

__all__ = [
    "EMBEDDER_SCORER",
    "RANKGEN_CHECKPOINTS",
    "EmbedderReranker",
    "RankGenReranker",
    "Ranked",
    "RerankConfig",
    "RerankError",
    "RerankResult",
    "RerankUnsupported",
    "Reranker",
    "RerankerPool",
    "ScorerConfig",
    "UnknownScorer",
    "beam_search",
    "decode",
    "generate",
    "over_generate",
    "rank",
]
