"""Page selection over vLLM's paged KV cache: Quest bounds per physical block, compacted tables.

vLLM keeps one block table per request, shared by every head, so selection here is per request
(the best pages for any head of the request), unlike the built-in engine's per-KV-head choice;
per-head tables would need a block-manager redesign (vLLM RFCs #10646, #12254). Each physical
block keeps the per-channel minimum and maximum of its keys (Quest), updated as keys are written,
so a decode step scores pages without reading them. The chosen pages form a compacted block
table — sink pages, the best middle pages with their neighbours, the local pages, in order, the
partly filled last page last — that vLLM's unmodified paged kernel reads as a shorter sequence.
Keys in vLLM's cache are already rotated, so their scores do not depend on where they sit in the
compacted table.

No vLLM import, and torch only inside functions (the plugin imports this module in every vLLM
process): ``serving.vllm.backend`` calls it from inside vLLM. Settings are the built-in
engine's :class:`~serving.kernels.config.AttentionConfig`, with the same defaults; they arrive as
JSON in the ``MNEME_VLLM_ATTENTION`` variable, which ``mneme llm serve --engine vllm`` sets.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from serving.kernels.config import AttentionConfig

if TYPE_CHECKING:
    import torch

ENVIRONMENT = "MNEME_VLLM_ATTENTION"
"""Variable carrying the settings (:meth:`AttentionConfig.to_json`) into every vLLM process: API
server, engine core and workers all inherit it, which no command-line flag of vLLM's reaches.
Read by the plugin."""

SELECTING_MESSAGE = "Mneme page selection active"
"""Logged once per vLLM process on the first decode step that attends a page selection."""

_GATHER = 1 << 24  # most gathered bound elements per scoring step (bounds memory, many requests)


def environment(config: AttentionConfig) -> dict[str, str]:
    """The variable that hands ``config`` to a vLLM server process; AttentionSettingsError when
    page selection cannot do what it asks (:meth:`AttentionConfig.check_paged`)."""
    config.check_paged()
    return {ENVIRONMENT: config.to_json()}


class PageBounds:
    """Per physical block and KV head, the running min and max of the keys written to it."""

    def __init__(self, blocks: int, kv_heads: int, dim: int, device: torch.device) -> None:
        import torch

        self.low = torch.full((blocks, kv_heads, dim), float("inf"), device=device)
        self.high = torch.full((blocks, kv_heads, dim), float("-inf"), device=device)

    def update(self, key: torch.Tensor, slot_mapping: torch.Tensor, block_size: int) -> None:
        """Fold keys (T, Hkv, D) written at ``slot_mapping`` (T,) into their blocks' bounds; a
        write at a block's first slot starts the block afresh (the block was reallocated)."""
        keep = slot_mapping >= 0  # padding slots are -1
        slots, key = slot_mapping[keep].long(), key[: slot_mapping.numel()][keep].float()
        if not slots.numel():
            return
        blocks = slots // block_size
        fresh = blocks[slots % block_size == 0]
        self.low[fresh] = float("inf")
        self.high[fresh] = float("-inf")
        index = blocks[:, None, None].expand_as(key)
        self.low.scatter_reduce_(0, index, key, "amin")
        self.high.scatter_reduce_(0, index, key, "amax")


def select_pages(
    query: torch.Tensor,  # (R, Hq, D) one decode query per request
    seq_lens: torch.Tensor,  # (R,) tokens cached per request, the new one included
    block_table: torch.Tensor,  # (R, max_blocks) physical block ids
    bounds: PageBounds,
    config: AttentionConfig,
    block_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A compacted block table (R, W) and the matching sequence lengths (R,) for the pages each
    request attends to; requests within the budget keep every page.

    Sinks and window are rounded up to whole pages; the middle pages of every request are
    scored at once (Quest bounds, :func:`~serving.kernels.blocks.score_bounds`, the best of any
    head) and the best of each row chosen with their neighbours
    (:func:`~serving.kernels.blocks.select_blocks`), rows padded to the longest request."""
    import torch

    from serving.kernels.blocks import score_bounds, select_blocks

    device = block_table.device
    requests, kv_heads, dim = query.shape[0], bounds.low.shape[1], query.shape[-1]
    lengths = seq_lens.to(device).long()  # (R,)
    pages = -(-lengths // block_size)  # (R,)
    width = int(pages.max()) if requests else 0
    init_pages = -(-config.sinks // block_size)
    local_pages = -(-config.window // block_size)
    room = max(config.budget // block_size - init_pages - local_pages, 1)
    index = torch.arange(width, device=device)[None, :]  # (1, P) logical page
    local_start = torch.clamp(pages - local_pages, min=init_pages)[:, None]  # (R, 1)
    middle = (index >= init_pages) & (index < local_start)  # (R, P)
    crowded = middle.sum(1) > room  # (R,) requests that choose
    keep = index < pages[:, None]  # (R, P) every page, for requests within the budget
    if bool(crowded.any()):
        physical = torch.where(middle, block_table[:, :width].long(), 0)  # (R, P)
        grouped = query.float().reshape(requests, kv_heads, -1, dim)  # (R, Hkv, G, D)
        step = max(1, _GATHER // max(1, width * kv_heads * dim))
        scores = torch.cat(
            [
                score_bounds(
                    grouped[i : i + step],
                    bounds.low[physical[i : i + step]].transpose(1, 2),  # (r, Hkv, P, D)
                    bounds.high[physical[i : i + step]].transpose(1, 2),
                )
                .amax((1, 2))  # the best of any head and query of the request: (r, P)
                .nan_to_num(float("inf"))  # unknown bounds: keep
                for i in range(0, requests, step)
            ]
        )
        scores = scores.masked_fill(~middle, float("-inf"))
        count = max(1, room // (2 * config.neighbours + 1))
        picked = select_blocks(scores, count, config.neighbours) & middle
        keep = torch.where(crowded[:, None], keep & (~middle | picked), keep)
    # Compact: each row's kept pages first, in order (a stable sort of the dropped ones last).
    kept = keep.sum(1)  # (R,)
    columns = int(kept.max()) if requests else 0
    order = torch.argsort((~keep).to(torch.int8), dim=1, stable=True)[:, :columns]
    real = torch.arange(columns, device=device)[None, :] < kept[:, None]
    table = torch.where(real, torch.gather(block_table[:, :width], 1, order), 0)
    # every kept page is full but the last, which holds what the request's last page holds
    attended = (kept - 1) * block_size + lengths - (pages - 1) * block_size
    return table.to(block_table.dtype), attended.to(seq_lens.dtype).to(seq_lens.device)
