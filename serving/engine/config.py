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
    max_context: int | None = None
    """Longest prompt + completion in tokens; None = the model's max_position_embeddings."""
    attention: str = "dense"
    """Attention mode registered in ``serving.engine.attention`` ("dense" by default)."""
    allow_download: bool = False
    """Fetch a hub model that is not cached locally (off: fail fast with a clear message)."""
