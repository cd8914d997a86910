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
process): ``serving.vllm.backend`` calls it from inside vLLM. Settings arrive through the
``MNEME_VLLM_ATTENTION`` variable, which ``mneme llm serve --engine vllm --attention blocks``
sets.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

ENVIRONMENT = "MNEME_VLLM_ATTENTION"
"""Variable carrying the settings (JSON) into every vLLM process: API server, engine core and
workers all inherit it, which no command-line flag of vLLM's reaches. Read by the plugin."""

SELECTING_MESSAGE = "Mneme page selection active"
"""Logged once per vLLM process on the first decode step that attends a page selection."""


@dataclass(frozen=True, slots=True)
class PageSettings:
    """Decode-time page selection; every count in tokens."""

    budget: int = 2048
    """Cached tokens a decode query attends to (sink + selected + local pages)."""
    n_init: int = 128
    """First tokens always attended (rounded up to whole pages)."""
    n_local: int = 512
    """Most recent tokens always attended (rounded up to whole pages)."""
    neighbours: int = 1
    """Pages on each side of a selected page also attended."""

    @classmethod
    def from_json(cls, text: str) -> PageSettings | None:
        """Settings from ``{"attention": "blocks", "budget": 2048, ...}``; None for
        ``{"attention": "full"}``. ValueError names a bad field."""
        try:
            raw: Any = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{ENVIRONMENT} is not JSON: {err}") from err
        if not isinstance(raw, dict):
            raise ValueError(f"{ENVIRONMENT} must be a JSON object, got {text!r}")
        kind = raw.pop("attention", "blocks")
        if kind == "full":
            return None
        if kind != "blocks":
            raise ValueError(f"{ENVIRONMENT}: attention {kind!r} is not 'blocks' or 'full'")
        unknown = sorted(set(raw) - set(cls.__dataclass_fields__))
        if unknown:
            raise ValueError(f"{ENVIRONMENT} has unknown fields {unknown}")
        settings = cls(**{k: int(v) for k, v in raw.items()})
        if (
            min(settings.budget, settings.n_local) < 1
            or min(settings.n_init, settings.neighbours) < 0
        ):
            raise ValueError(f"{ENVIRONMENT}: counts must be positive, got {settings}")
        return settings

    def environment(self) -> dict[str, str]:
        """The variable that hands these settings to a vLLM server process."""
        return {ENVIRONMENT: json.dumps({"attention": "blocks", **dataclasses.asdict(self)})}


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
    settings: PageSettings,
    block_size: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A compacted block table (R, W) and the matching sequence lengths (R,) for the pages each
    request attends to; requests within the budget keep every page."""
    import torch

    kv_heads = bounds.low.shape[1]
    rows, lengths = [], []
    init_pages = -(-settings.n_init // block_size)
    local_pages = -(-settings.n_local // block_size)
    room = max(settings.budget // block_size - init_pages - local_pages, 1)
    for request in range(query.shape[0]):
        length = int(seq_lens[request])
        pages = -(-length // block_size)
        middle = torch.arange(init_pages, max(pages - local_pages, init_pages))
        if middle.numel() <= room:
            chosen = torch.arange(pages)
        else:
            physical = block_table[request, middle].long()
            low, high = bounds.low[physical], bounds.high[physical]  # (m, Hkv, D)
            grouped = query[request].float().reshape(kv_heads, -1, query.shape[-1])  # (Hkv, G, D)
            score = torch.einsum("hgd,mhd->mhg", grouped.clamp(min=0), high) + torch.einsum(
                "hgd,mhd->mhg", grouped.clamp(max=0), low
            )
            score = score.flatten(1).amax(1).nan_to_num(float("inf"))  # unknown bounds: keep
            count = max(1, room // (2 * settings.neighbours + 1))
            picked = torch.zeros(middle.numel(), dtype=torch.bool)
            picked[score.topk(count).indices] = True
            if settings.neighbours:
                picked = (
                    torch.nn.functional.max_pool1d(
                        picked[None, None].float(),
                        2 * settings.neighbours + 1,
                        stride=1,
                        padding=settings.neighbours,
                    )[0, 0]
                    > 0
                )
            chosen = torch.cat(
                [
                    torch.arange(init_pages),
                    middle[picked],
                    torch.arange(max(pages - local_pages, init_pages), pages),
                ]
            )
        rows.append(block_table[request, chosen.to(block_table.device)])
        lengths.append((chosen.numel() - 1) * block_size + length - (pages - 1) * block_size)
    width = max(r.numel() for r in rows)
    table = block_table.new_zeros(len(rows), width)
    for index, row in enumerate(rows):
        table[index, : row.numel()] = row
    return table, torch.tensor(lengths, dtype=seq_lens.dtype, device=seq_lens.device)
