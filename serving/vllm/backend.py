"""Mneme's attention backend for vLLM's CPU build: CPU_ATTN plus decode-time page selection.

When ``MNEME_VLLM_ATTENTION`` asks for block selection, the plugin binds vLLM's ``CPU_ATTN`` name
(the CPU platform uses no other backend) to :class:`BlockSelectionBackend` in every vLLM process.
Each layer folds the keys it writes into per-page Quest bounds (``serving.vllm.pages``); on steps
where every request decodes one token and some request's context exceeds the budget, it attends
through a compacted block table of the chosen pages with vLLM's own CPU kernel. Prefill and mixed
batches stay dense. GPU backends (FLASH_ATTN, TRITON_ATTN) would take the same
subclass-and-compact approach; that part is not written (no GPU build of vLLM to run it on).

Imported only inside vLLM processes (it imports vLLM at module level).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from vllm import _custom_ops as ops
from vllm import envs
from vllm.logger import init_logger
from vllm.v1.attention.backend import AttentionType
from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend, CPUAttentionBackendImpl

from serving.vllm.pages import SELECTING_MESSAGE, PageBounds, select_pages
from serving.vllm.plugin import page_settings

log = init_logger("vllm.plugins.mneme")


class BlockSelectionImpl(CPUAttentionBackendImpl):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.selection = page_settings()
        if self.attn_type != AttentionType.DECODER or self.sliding_window != -1:
            self.selection = None  # encoders and sliding-window layers stay as they are
        self.bounds: PageBounds | None = None
        self.selected_steps = 0  # decode steps that attended a selection (for tests, logs)

    def do_kv_cache_update(
        self,
        layer: torch.nn.Module,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        slot_mapping: torch.Tensor,
    ) -> None:
        super().do_kv_cache_update(layer, key, value, kv_cache, slot_mapping)
        if self.selection is None:
            return
        blocks, kv_heads, block_size, _ = kv_cache.shape
        if self.bounds is None:
            self.bounds = PageBounds(blocks, kv_heads, self.head_size, key.device)
        self.bounds.update(key, slot_mapping, block_size)

    def forward(
        self,
        layer: Any,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        attn_metadata: Any,
        output: torch.Tensor,
        output_scale: torch.Tensor | None = None,
        output_block_scale: torch.Tensor | None = None,
    ) -> torch.Tensor:
        config, bounds = self.selection, self.bounds
        if (
            config is None
            or bounds is None
            or attn_metadata is None
            or attn_metadata.max_query_len != 1
            or int(attn_metadata.seq_lens.max()) <= config.budget
        ):
            return super().forward(  # type: ignore[no-any-return]
                layer,
                query,
                key,
                value,
                kv_cache,
                attn_metadata,
                output,
                output_scale,
                output_block_scale,
            )
        block_size = kv_cache.shape[2]
        requests = attn_metadata.seq_lens.shape[0]
        table, lengths = select_pages(
            query[:requests],
            attn_metadata.seq_lens,
            attn_metadata.block_table,
            bounds,
            config,
            block_size,
        )
        scheduler = ops.cpu_attn_get_scheduler_metadata(
            num_reqs=requests,
            num_heads=self.num_heads,
            num_kv_heads=self.num_kv_heads,
            head_dim=self.head_size,
            seq_lens=lengths,
            dtype=query.dtype,
            query_start_loc=attn_metadata.query_start_loc,
            causal=attn_metadata.causal,
            sliding_window_size=-1,
            isa=layer.isa,
            enable_kv_split=envs.VLLM_CPU_ATTN_SPLIT_KV,
            kv_cache_dtype=self.kv_cache_dtype,
        )
        compact = dataclasses.replace(
            attn_metadata,
            seq_lens=lengths,
            max_seq_len=int(lengths.max()),
            block_table=table,
            scheduler_metadata=scheduler,
        )
        self.selected_steps += 1
        log.info_once(
            "%s: %d of %d tokens attended (budget %d)",
            SELECTING_MESSAGE,
            int(lengths.max()),
            int(attn_metadata.seq_lens.max()),
            config.budget,
        )
        return super().forward(  # type: ignore[no-any-return]
            layer, query, key, value, kv_cache, compact, output, output_scale, output_block_scale
        )


class BlockSelectionBackend(CPUAttentionBackend):
    """CPU_ATTN whose implementation selects pages at decode when configured to."""

    @staticmethod
    def get_impl_cls() -> type[BlockSelectionImpl]:
        return BlockSelectionImpl
