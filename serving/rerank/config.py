"""How to rerank: the decoding method, its budget and the scorer to use (RankGen, Krishna et al.
2022, arXiv 2205.09726; defaults are the paper's beam-search settings)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from serving.llm import penalty_problems

Method = Literal["sample", "beam"]

RANKGEN_CHECKPOINTS = {
    "rankgen-t5-base-all": "kalpeshk2011/rankgen-t5-base-all",
    "rankgen-t5-large-all": "kalpeshk2011/rankgen-t5-large-all",
    "rankgen-t5-xl-all": "kalpeshk2011/rankgen-t5-xl-all",
    "rankgen-t5-xl-pg19": "kalpeshk2011/rankgen-t5-xl-pg19",
}
"""Short names of the published RankGen checkpoints → their hub names."""

EMBEDDER_SCORER = "embedder"
"""The scorer name of the sentence-transformers bi-encoder (all-MiniLM-L6-v2 by default)."""


@dataclass(frozen=True, slots=True)
class RerankConfig:
    """One reranked generation. ``method="sample"`` over-generates ``samples`` continuations of
    up to ``max_tokens`` tokens and keeps the best; ``method="beam"`` is RankGen's beam search:
    each beam samples ``samples`` continuations of ``step_tokens`` tokens, the best ``beam``
    (beam text + new text, scored against the prefix) survive, until EOS or ``max_tokens``."""

    method: Method = "beam"
    """"sample" (over-generate and rerank) or "beam" (RankGen sentence-level beam search)."""
    scorer: str = EMBEDDER_SCORER
    """Scorer name: "embedder" (ships with Mneme, works offline) or a RankGen checkpoint (short or
    hub name, or a local folder)."""
    samples: int = 10
    """Candidates sampled per beam and step (the paper's N; the rerank pool for "sample")."""
    beam: int = 2
    """Beams kept after each step (the paper's B); "sample" keeps one."""
    step_tokens: int = 20
    """New tokens per beam and step (the paper's L); "sample" generates max_tokens at once."""
    max_tokens: int = 115
    """Longest continuation in tokens of the generator (the paper's max_length)."""
    top_p: float = 0.9
    """Nucleus mass in (0, 1] for the candidates."""
    temperature: float = 1.0
    """Sampling temperature in (0, 2] for the candidates (0 would make every candidate equal)."""
    top_k: int = 0
    """Keep only the k likeliest tokens for the candidates; 0 = off."""
    min_p: float = 0.0
    """In [0, 1]: drop tokens less likely than min_p times the likeliest one; 0 = off."""
    presence_penalty: float = 0.0
    """In [-2, 2]: OpenAI's presence penalty for the candidates (over each request's output)."""
    frequency_penalty: float = 0.0
    """In [-2, 2]: OpenAI's frequency penalty for the candidates (over each request's output)."""
    repetition_penalty: float = 1.0
    """In (0, 10]; 1 = off: vLLM's repetition penalty for the candidates (prompt and output;
    a beam's text is part of its next step's prompt)."""
    runners_up: int = 0
    """How many next-best candidates (beams for "beam") to return besides the chosen one."""

    def __post_init__(self) -> None:
        problems = []
        if self.method not in ("sample", "beam"):
            problems.append(f"method={self.method!r} must be 'sample' or 'beam'")
        if not self.scorer.strip():
            problems.append("scorer must name a scorer (e.g. 'rankgen-t5-base-all', 'embedder')")
        if not 1 <= self.samples <= 64:
            problems.append(f"samples={self.samples} must be in [1, 64]")
        if not 1 <= self.beam <= 16:
            problems.append(f"beam={self.beam} must be in [1, 16]")
        if self.method == "beam" and self.beam * self.samples > 256:
            problems.append(f"beam*samples={self.beam * self.samples} must be at most 256")
        if not 1 <= self.step_tokens <= 4096:
            problems.append(f"step_tokens={self.step_tokens} must be in [1, 4096]")
        if not 1 <= self.max_tokens <= 32768:
            problems.append(f"max_tokens={self.max_tokens} must be in [1, 32768]")
        if not 0.0 < self.top_p <= 1.0:
            problems.append(f"top_p={self.top_p} must be in (0, 1]")
        if not 0.0 < self.temperature <= 2.0:
            problems.append(f"temperature={self.temperature} must be in (0, 2]")
        if not 0 <= self.runners_up <= 64:
            problems.append(f"runners_up={self.runners_up} must be in [0, 64]")
        if self.top_k < 0:
            problems.append(f"top_k={self.top_k} must be 0 (off) or positive")
        problems += penalty_problems(
            self.presence_penalty, self.frequency_penalty, self.repetition_penalty, self.min_p
        )
        if problems:
            raise ValueError("invalid rerank options: " + "; ".join(problems))

    @property
    def steps(self) -> int:
        """Most generation steps this config can take."""
        if self.method == "sample":
            return 1
        return -(-self.max_tokens // self.step_tokens)


ScorerDtype = Literal["float32", "bfloat16", "auto"]


@dataclass(frozen=True, slots=True)
class ScorerConfig:
    """Where and how a scorer runs (shared by every :class:`~serving.rerank.Reranker`)."""

    device: str | None = None
    """torch device ("cpu", "cuda"); None = CUDA when available, else CPU."""
    dtype: ScorerDtype = "auto"
    """"float32", "bfloat16" or "auto" (bfloat16 on CUDA, float32 on CPU); T5 overflows in fp16."""
    batch_size: int = 32
    """Texts encoded per forward pass."""
    prefix_tokens: int = 512
    """Longest prefix in scorer tokens, "pre " marker included (RankGen: 512)."""
    candidate_tokens: int = 128
    """Longest candidate in scorer tokens, "suffi " marker included (RankGen: 128)."""
    prefix_cache: int = 32
    """Encoded prefixes kept, least recently used dropped first."""
    tokenizer: str | None = None
    """T5 tokenizer (hub name or folder) when the checkpoint folder has none; None =
    google/t5-v1_1-{base,large,xl} by the model's width, as the RankGen code does."""
    allow_download: bool = False
    """Fetch a hub checkpoint that is not cached locally (off: fail fast with a clear message)."""

    def __post_init__(self) -> None:
        if self.dtype not in ("float32", "bfloat16", "auto"):
            raise ValueError(f"dtype={self.dtype!r} must be float32, bfloat16 or auto")
        if self.batch_size < 1 or self.prefix_tokens < 2 or self.candidate_tokens < 2:
            raise ValueError("batch_size must be >= 1 and token limits >= 2")
