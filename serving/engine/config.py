"""Configuration of the built-in engine."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from serving.kernels.config import AttentionConfig

Dtype = Literal["auto", "float32", "float16", "bfloat16"]
"""Weights' and activations' dtype; "auto" = float32 on CPU, bfloat16 on CUDA."""


@dataclass(frozen=True, slots=True)
class EngineConfig:
    model: str | None = None
    """Hub name or local folder/GGUF file; None = the bundled SmolLM2-135M-Instruct."""
    device: str = "cpu"
    """torch device: "cpu" or "cuda"."""
    dtype: Dtype = "auto"
    """"float32", "float16", "bfloat16" or "auto" (float32 on CPU, bfloat16 on CUDA)."""
    max_batch: int = 16
    """Most sequences decoded together in one forward pass."""
    prefill_chunk: int = 512
    """Prompt tokens per prefill forward; long prompts are split so decoding keeps flowing."""
    prefix_cache_tokens: int = 4096
    """Prompt tokens whose KV is kept for later prompts that share a prefix (full attention
    only; serving/engine/prefixes.py); 0 = off."""
    prefix_idle_s: float | None = 30.0
    """Kept prefixes are dropped after this many seconds with no request, so an idle process
    gives their memory back (up to ~190 MB for SmolLM2 in float32); None keeps them."""
    max_context: int | None = None
    """Longest prompt + completion in tokens; None = the model's max_position_embeddings."""
    attention: AttentionConfig = AttentionConfig()
    """Long-context attention: full (exact), block selection or retrieval, and their sizes
    (``serving.kernels.config``); checked when built."""
    allow_download: bool = False
    """Fetch a hub model that is not cached locally (off: fail fast with a clear message)."""
