"""Configuration of the built-in engine."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model: str | None = None
    """Hub name or local folder/GGUF file; None = the bundled SmolLM2-135M-Instruct."""
    device: str = "cpu"
    """torch device: "cpu" or "cuda"."""
    dtype: str = "auto"
    """"float32", "float16", "bfloat16" or "auto" (float32 on CPU, bfloat16 on CUDA)."""
    max_batch: int = 16
    """Most sequences decoded together in one forward pass."""
    prefill_chunk: int = 512
    """Prompt tokens per prefill forward; long prompts are split so decoding keeps flowing."""
    prefix_cache_tokens: int = 4096
    """Prompt tokens whose KV is kept for later prompts that share a prefix (dense attention
    only; serving/engine/prefixes.py); 0 = off."""
    prefix_idle_s: float | None = 30.0
    """Kept prefixes are dropped after this many seconds with no request, so an idle process
    gives their memory back (up to ~190 MB for SmolLM2 in float32); None keeps them."""
    max_context: int | None = None
    """Longest prompt + completion in tokens; None = the model's max_position_embeddings."""
    attention: str = "dense"
    """Attention mode: "dense" (exact), "blocks" (landmark block selection) or "retrieval"."""
    attention_budget: int = 2048
    """blocks/retrieval: cached tokens each query attends to (sinks + window + selected)."""
    attention_init: int = 16
    """blocks/retrieval: first tokens (attention sinks) every query attends to exactly."""
    attention_local: int = 256
    """blocks/retrieval: most recent tokens every query attends to exactly."""
    block_size: int = 16
    """blocks: tokens per block (fixed pages) of the far context (Quest's page size: small blocks
    spend the budget on the tokens that matter)."""
    block_representative: str = "bounds"
    """blocks: "bounds" (Quest's per-channel min/max, an upper bound of every key's score) or
    "mean" of each block's 4 keys most attended by recent queries (InfLLM)."""
    block_neighbours: int = 0
    """blocks: blocks on each side of a selected block also attended (EM-LLM's temporal
    contiguity; pays off with large blocks)."""
    retrieval_segment: int = 128
    """retrieval: far tokens added to the graph index at a time (incremental construction); the
    not-yet-indexed tail, up to this many tokens, is attended exactly."""
    retrieval_degree: int = 32
    """retrieval: most graph edges kept per key."""
    memory_positions: str = "original"
    """Positions of selected far tokens: "original", "fixed" (InfLLM: all at distance
    attention_local) or "packed" (landmark: contiguous just before the window)."""
    allow_download: bool = False
    """Fetch a hub model that is not cached locally (off: fail fast with a clear message)."""
