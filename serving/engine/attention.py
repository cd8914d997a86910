"""The engine's pluggable attention interface.

``transformers`` computes queries, keys and values (keys after rotary embedding) and hands them
to the function registered under ``config._attn_implementation``. The engine registers
``mneme`` there: it writes the new keys/values into the engine's own KV cache
(``serving.engine.cache``) and asks the active :class:`AttentionMode` to attend over the cached
context. Modes (full attention here; block selection and retrieval beside it, all named in
``serving.engine.modes``) see the whole padded batch and return one output per query.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    import torch

    from serving.engine.cache import SlotKVCache
    from serving.engine.config import EngineConfig
    from serving.kernels.config import KernelBackend

ATTENTION_NAME = "mneme"


@dataclass(frozen=True, slots=True)
class ModeContext:
    """What a mode is built from: the engine's settings and the model's rotary embedding."""

    config: EngineConfig
    inv_freq: torch.Tensor | None = None  # (D/2,) rotary inverse frequencies; None = no RoPE
    rope_type: str = "default"
    kernels: KernelBackend = "auto"
    """The decode kernels' backend (``serving.kernels.backend``): Triton on CUDA by default."""


@dataclass(slots=True)
class ForwardBatch:
    """What one forward pass is about: which cache slots, and how far each is already filled."""

    cache: SlotKVCache
    slots: torch.Tensor  # (B,) int64 cache slot of each batch row
    past: torch.Tensor  # (B,) int64 tokens already cached per row, before this pass
    new: int  # tokens fed per row in this pass (1 when decoding)
    mode: AttentionMode


class AttentionMode(Protocol):
    """Attention of new queries over a padded batch of cached keys and values."""

    def __call__(
        self,
        query: torch.Tensor,  # (B, Hq, T, D) the new tokens' queries
        keys: torch.Tensor,  # (B, Hkv, S, D) cached keys, rows padded to the longest S
        values: torch.Tensor,  # (B, Hkv, S, D)
        past: torch.Tensor,  # (B,) tokens before the new ones, per row
        scaling: float,
        layer: int,
    ) -> torch.Tensor:  # (B, Hq, T, D)
        ...


def causal_padding_mask(past: torch.Tensor, new: int, total: int) -> torch.Tensor:
    """(B, 1, T, S) bool: query t of row b may see key s iff s <= past[b] + t."""
    import torch

    key_positions = torch.arange(total, device=past.device)  # (S,)
    query_positions = past[:, None] + torch.arange(new, device=past.device)[None, :]  # (B, T)
    return (key_positions[None, None, :] <= query_positions[:, :, None])[:, None]


class FullAttention:
    """Exact attention over every cached token (PyTorch SDPA): the reference mode."""

    def __call__(
        self,
        query: torch.Tensor,
        keys: torch.Tensor,
        values: torch.Tensor,
        past: torch.Tensor,
        scaling: float,
        layer: int,
    ) -> torch.Tensor:
        import torch.nn.functional as F

        mask = causal_padding_mask(past, query.shape[2], keys.shape[2])
        return F.scaled_dot_product_attention(
            query,
            keys,
            values,
            attn_mask=mask,
            scale=scaling,
            enable_gqa=query.shape[1] != keys.shape[1],
        )


CURRENT: ContextVar[ForwardBatch | None] = ContextVar("mneme_forward_batch", default=None)


def rotary_of(model: Any) -> tuple[torch.Tensor | None, str]:
    """The rotary inverse frequencies (D/2,) of a transformers model and its RoPE type."""
    for name, module in model.named_modules():
        if name.endswith("rotary_emb") and hasattr(module, "inv_freq"):
            return module.inv_freq.detach(), str(getattr(module, "rope_type", "default"))
    return None, "none"


def mneme_attention(
    module: Any,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """The function ``transformers`` calls per layer; ``attention_mask`` is ignored (the cache
    knows each row's length)."""
    batch = CURRENT.get()
    if batch is None:
        raise RuntimeError("mneme attention called outside an engine forward pass")
    layer = int(module.layer_idx)
    batch.cache.write(layer, batch.slots, batch.past, key, value)
    keys, values = batch.cache.read(layer, batch.slots, int(batch.past.max()) + batch.new)
    out = batch.mode(query, keys, values, batch.past, scaling, layer)  # (B, Hq, T, D)
    return out.transpose(1, 2).contiguous(), None  # (B, T, Hq, D) as transformers expects


def register_with_transformers() -> None:
    """Make ``attn_implementation="mneme"`` available to every transformers model (idempotent)."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, mneme_attention)
