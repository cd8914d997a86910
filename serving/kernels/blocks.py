"""Block selection ("landmark" attention): score one representative per block, attend exactly
over the best blocks and their neighbours.

The far context is cut into blocks -- fixed pages (InfLLM: 128 tokens; Quest: 16) or EM-LLM
events at surprise boundaries with sizes clamped to [8, 128]. A block is represented by
(InfLLM/EM-LLM) the mean of its ``top`` most-attended keys, or (Quest) per-channel min/max
bounds whose score sum_d max(q_d*min_d, q_d*max_d) is an upper bound on q*k. Per query and
KV-head group the top-scoring blocks are taken plus their +-``neighbours`` (EM-LLM's temporal
contiguity), then attended exactly (:func:`gathered_attention`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from serving.kernels.config import Representative
from serving.kernels.merge import Partial, attend, group_queries

_CHUNK = 256  # blocks per step when building representatives (bounds memory)


@dataclass(frozen=True, slots=True)
class BlockTable:
    """Blocks as absolute token ranges ``[starts[i], starts[i] + lengths[i])``, in order."""

    starts: torch.Tensor  # (nb,) int64
    lengths: torch.Tensor  # (nb,) int64

    def __len__(self) -> int:
        return int(self.starts.numel())

    @property
    def end(self) -> int:
        return int(self.starts[-1] + self.lengths[-1]) if len(self) else 0

    def cat(self, other: BlockTable) -> BlockTable:
        return BlockTable(
            torch.cat([self.starts, other.starts]), torch.cat([self.lengths, other.lengths])
        )

    def token_positions(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(n,) positions of every token in the table and (n,) the block each belongs to."""
        block = torch.repeat_interleave(torch.arange(len(self)), self.lengths)  # (n,)
        offsets = torch.cumsum(self.lengths, 0) - self.lengths  # first token index of each block
        within = torch.arange(block.numel()) - offsets[block]
        return self.starts[block] + within, block

    def padded(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(nb, Lmax) positions of each block's tokens and (nb, Lmax) validity (ragged blocks)."""
        width = int(self.lengths.max()) if len(self) else 0
        offsets = torch.arange(width)[None, :]  # (1, Lmax)
        valid = offsets < self.lengths[:, None]
        return torch.where(valid, self.starts[:, None] + offsets, self.starts[:, None]), valid


def fixed_blocks(start: int, end: int, size: int, *, complete_only: bool = False) -> BlockTable:
    """Pages of ``size`` tokens over ``[start, end)``; ragged last one unless ``complete_only``."""
    if size < 1:
        raise ValueError(f"block size {size} must be at least 1")
    starts = torch.arange(start, end, size, dtype=torch.long)
    lengths = torch.clamp(end - starts, max=size)
    if complete_only:
        keep = lengths == size
        starts, lengths = starts[keep], lengths[keep]
    return BlockTable(starts, lengths)


def event_blocks(
    surprise: torch.Tensor,  # (n,) -log p(token) of the tokens at start .. start + n - 1
    start: int,
    *,
    gamma: float = 1.0,
    window: int = 128,
    min_size: int = 8,
    max_size: int = 128,
) -> BlockTable:
    """EM-LLM events: a boundary before token t when s_t > mu + gamma * sigma over the ``window``
    tokens before t; boundaries closer than ``min_size`` dropped, events longer than ``max_size``
    split. The last event may be shorter than ``min_size`` (it is still open)."""
    if not 1 <= min_size <= max_size:
        raise ValueError(f"event sizes [{min_size}, {max_size}] are not a valid range")
    values = surprise.double()
    n = values.numel()
    sums = torch.cat([values.new_zeros(1), torch.cumsum(values, 0)])
    squares = torch.cat([values.new_zeros(1), torch.cumsum(values * values, 0)])
    index = torch.arange(n)
    low = torch.clamp(index - window, min=0)
    count = (index - low).clamp(min=1).double()
    mean = (sums[index] - sums[low]) / count
    std = ((squares[index] - squares[low]) / count - mean * mean).clamp(min=0).sqrt()
    peaks = ((values > mean + gamma * std) & (index >= 1)).nonzero().flatten().tolist()
    bounds = [0]
    for peak in [*peaks, n]:
        while peak - bounds[-1] > max_size:
            bounds.append(bounds[-1] + max_size)
        if peak - bounds[-1] >= min_size or peak == n:
            bounds.append(peak)
    if bounds[-1] != n:
        bounds.append(n)
    edges = torch.tensor(sorted(set(bounds)), dtype=torch.long)
    return BlockTable(edges[:-1] + start, edges[1:] - edges[:-1])


def mean_representatives(
    keys: torch.Tensor,  # (Hkv, S, D)
    table: BlockTable,
    queries: torch.Tensor | None = None,  # (Hkv, R, D) recent queries per KV head (group mean)
    top: int = 4,
) -> torch.Tensor:  # (Hkv, nb, D) float32
    """Per block and KV head, the mean of the ``top`` keys that received the most attention
    from ``queries`` (InfLLM's ``repr_topk``); the plain mean of the block without queries."""
    positions, valid = table.padded()  # (nb, L)
    out = []
    for chunk in range(0, len(table), _CHUNK):
        pos, ok = positions[chunk : chunk + _CHUNK], valid[chunk : chunk + _CHUNK]
        block_keys = keys[:, pos.to(keys.device)].float()  # (Hkv, c, L, D)
        ok = ok.to(keys.device)
        if queries is None or top >= pos.shape[1]:
            weights = ok.float()[None, :, :, None]
            out.append((block_keys * weights).sum(2) / weights.sum(2).clamp(min=1))
            continue
        scores = torch.einsum("hrd,hcld->hrcl", queries.float(), block_keys)  # (Hkv, R, c, L)
        scores = scores.masked_fill(~ok[None, None], float("-inf"))
        received = torch.softmax(scores.flatten(2), -1).view_as(scores).sum(1)  # (Hkv, c, L)
        received = received.masked_fill(~ok[None], -1.0)
        picked = received.topk(top, dim=-1).indices  # (Hkv, c, top)
        chosen = torch.gather(ok[None].expand_as(received), 2, picked).float()  # valid picks
        gathered = torch.gather(block_keys, 2, picked[..., None].expand(-1, -1, -1, keys.shape[-1]))
        out.append((gathered * chosen[..., None]).sum(2) / chosen.sum(2, keepdim=True).clamp(min=1))
    if not out:
        return keys.new_zeros(keys.shape[0], 0, keys.shape[-1], dtype=torch.float32)
    return torch.cat(out, 1)


def bound_representatives(keys: torch.Tensor, table: BlockTable) -> torch.Tensor:
    """(Hkv, nb, 2, D) float32 per-channel minimum and maximum of each block's keys (Quest)."""
    positions, valid = table.padded()
    out = []
    for chunk in range(0, len(table), _CHUNK):
        pos, ok = positions[chunk : chunk + _CHUNK], valid[chunk : chunk + _CHUNK].to(keys.device)
        block_keys = keys[:, pos.to(keys.device)].float()  # (Hkv, c, L, D)
        hidden = ~ok[None, :, :, None]
        low = block_keys.masked_fill(hidden, float("inf")).amin(2)
        high = block_keys.masked_fill(hidden, float("-inf")).amax(2)
        out.append(torch.stack([low, high], 2))
    if not out:
        return keys.new_zeros(keys.shape[0], 0, 2, keys.shape[-1], dtype=torch.float32)
    return torch.cat(out, 1)


def score_blocks(query: torch.Tensor, representatives: torch.Tensor) -> torch.Tensor:
    """(Hkv, nb) score of each block for the queries (Hq, T, D) sharing a KV head: the max over
    the group's heads and the queries of q*r (mean representatives, (Hkv, nb, D)) or of the Quest
    bound q+*max + q-*min (bounds, (Hkv, nb, 2, D))."""
    return score_query_groups(query, representatives, query.shape[1])[0]


def score_bounds(
    queries: torch.Tensor,  # (..., Hkv, Q, D) queries grouped by the KV head they read
    low: torch.Tensor,  # (..., Hkv, nb, D) per-channel minimum of each block's keys
    high: torch.Tensor,  # (..., Hkv, nb, D) per-channel maximum
) -> torch.Tensor:  # (..., Hkv, Q, nb) float32
    """Quest's bound of each query's score over each block: sum_d max(q_d*min_d, q_d*max_d)
    = q+ . max + q- . min, at least q . k for every key k of the block. Leading dimensions
    (requests of a batch) broadcast."""
    queries = queries.float()
    return queries.clamp(min=0) @ high.float().transpose(-1, -2) + queries.clamp(
        max=0
    ) @ low.float().transpose(-1, -2)


def score_query_groups(
    query: torch.Tensor,  # (Hq, T, D)
    representatives: torch.Tensor,  # (Hkv, nb, D) or (Hkv, nb, 2, D)
    group: int,
) -> torch.Tensor:  # (U, Hkv, nb) float32, U = ceil(T / group)
    """Block scores for each run of ``group`` consecutive queries: the max over a run's queries
    and the KV-head group's heads, as :func:`score_blocks` computes for one run.

    Chunked prefill feeds hundreds of queries at once; one selection for all of them lets the
    many queries of ordinary text outvote the few that ask for something far (a question at
    the end of a prompt), so each run chooses its own blocks (landmark attention chooses per
    token; runs of ``group`` bound the gathers)."""
    heads, new = query.shape[:2]
    kv_heads = representatives.shape[0]
    grouped = group_queries(query.float(), kv_heads)  # (Hkv, G*T, D), head-major
    representatives = representatives.float()
    if representatives.dim() == 3:
        scores = grouped @ representatives.transpose(1, 2)  # (Hkv, G*T, nb)
    else:
        scores = score_bounds(grouped, representatives[:, :, 0], representatives[:, :, 1])
    blocks = scores.shape[-1]
    scores = scores.view(kv_heads, heads // kv_heads, new, blocks).amax(1)  # (Hkv, T, nb)
    runs = -(-new // group)
    if runs * group != new:  # pad the last run with a copy of its last query
        scores = torch.cat([scores, scores[:, -1:].expand(-1, runs * group - new, -1)], 1)
    return scores.view(kv_heads, runs, group, blocks).amax(2).transpose(0, 1)


def select_blocks(scores: torch.Tensor, count: int, neighbours: int = 1) -> torch.Tensor:
    """(..., nb) bool: each row's ``count`` best blocks of (..., nb) ``scores`` and their
    +-``neighbours``."""
    blocks = scores.shape[-1]
    if count >= blocks:
        return torch.ones_like(scores, dtype=torch.bool)
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    chosen.scatter_(-1, scores.topk(max(count, 0), dim=-1).indices, True)
    if neighbours > 0:
        spread = torch.nn.functional.max_pool1d(
            chosen.reshape(-1, 1, blocks).float(), 2 * neighbours + 1, stride=1, padding=neighbours
        )
        chosen = (spread > 0).view_as(chosen)
    return chosen


def block_tokens(chosen: torch.Tensor, table: BlockTable) -> tuple[torch.Tensor, torch.Tensor]:
    """Token positions of each row's chosen blocks of (..., nb) ``chosen``, in order, padded:
    (..., N) int64 positions and (..., N) validity. Costs O(blocks chosen), not O(tokens
    indexed)."""
    lead = chosen.shape[:-1]
    chosen = chosen.reshape(-1, chosen.shape[-1])
    counts = chosen.sum(1)  # (rows,)
    width = int(counts.max()) if chosen.numel() else 0
    ids = torch.argsort((~chosen).to(torch.int8), dim=1, stable=True)[:, :width]  # chosen first
    real = torch.arange(width, device=chosen.device)[None, :] < counts[:, None]  # (rows, W)
    starts = table.starts.to(chosen.device)[ids]
    lengths = torch.where(real, table.lengths.to(chosen.device)[ids], 0)
    span = int(lengths.max()) if lengths.numel() else 0
    offsets = torch.arange(span, device=chosen.device)
    positions = (starts[..., None] + offsets).flatten(1)  # (rows, W*L)
    valid = (offsets < lengths[..., None]).flatten(1)
    positions = torch.where(valid, positions, 0)
    return positions.view(*lead, -1), valid.view(*lead, -1)


def gathered_attention(
    query: torch.Tensor,  # (Hq, T, D)
    keys: torch.Tensor,  # (Hkv, S, D)
    values: torch.Tensor,  # (Hkv, S, D)
    indices: torch.Tensor,  # (Hkv, N) positions to attend per KV head
    valid: torch.Tensor,  # (Hkv, N) bool
    scaling: float,
) -> Partial:
    """Exact attention over the gathered positions of each KV head (all before the queries)."""
    dim = keys.shape[-1]
    gather = indices[..., None].expand(-1, -1, dim)
    picked_keys = torch.gather(keys, 1, gather)  # (Hkv, N, D)
    picked_values = torch.gather(values, 1, gather)
    group = query.shape[0] // keys.shape[0]
    visible = valid.repeat_interleave(group, 0)[:, None, :]  # (Hq, 1, N)
    return attend(query, picked_keys, picked_values, scaling, visible)


class BlockIndex:
    """The growing block index of one sequence's far context (one layer, every KV head).

    ``extend`` cuts the newly far tokens into complete blocks and computes their representatives;
    tokens after the last complete block stay out (callers attend to them exactly). ``select``
    returns the positions to attend for a budget of ``budget`` tokens per KV head.
    """

    def __init__(
        self, start: int, *, size: int, representative: Representative = "mean", top: int = 4
    ) -> None:
        self.start, self.size, self.representative, self.top = start, size, representative, top
        self.table = BlockTable(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long))
        self.vectors: torch.Tensor | None = None  # (Hkv, nb, D) or (Hkv, nb, 2, D)

    @property
    def end(self) -> int:
        """First position not covered by a block."""
        return self.table.end if len(self.table) else self.start

    def extend(
        self,
        keys: torch.Tensor,  # (Hkv, S, D)
        end: int,
        queries: torch.Tensor | None = None,  # (Hkv, R, D)
        table: BlockTable | None = None,
    ) -> None:
        """Index complete blocks up to ``end`` (fixed pages, or the given event ``table``)."""
        new = (
            table
            if table is not None
            else fixed_blocks(self.end, end, self.size, complete_only=True)
        )
        if not len(new):
            return
        if self.representative == "bounds":
            vectors = bound_representatives(keys, new)
        else:
            vectors = mean_representatives(keys, new, queries, self.top)
        self.table = self.table.cat(new)
        self.vectors = vectors if self.vectors is None else torch.cat([self.vectors, vectors], 1)

    def copy(self) -> BlockIndex:
        twin = BlockIndex(
            self.start, size=self.size, representative=self.representative, top=self.top
        )
        twin.table, twin.vectors = self.table, self.vectors
        return twin

    def select(
        self,
        query: torch.Tensor,
        budget: int,
        neighbours: int = 1,
        *,
        kv_heads: int,
        group: int | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor, int]:
        """Positions (Hkv, N) and validity of the blocks chosen for ``query`` (Hq, T, D) within
        ``budget`` tokens, plus the key vectors read to score them (representatives).

        With ``group``, each run of ``group`` consecutive queries chooses its own blocks:
        positions and validity are (U, Hkv, N) with U = ceil(T / group)."""
        runs = 1 if group is None else -(-query.shape[1] // group)
        lead = () if group is None else (runs,)
        if self.vectors is None:
            empty = torch.zeros(*lead, kv_heads, 0, dtype=torch.long, device=query.device)
            return empty, empty.bool(), 0
        widest = int(self.table.lengths.max())
        if int(self.table.lengths.sum()) <= budget:
            chosen = torch.ones(
                runs, *self.vectors.shape[:2], dtype=torch.bool, device=query.device
            )
            read = 0
        else:
            scores = score_query_groups(query, self.vectors, group or query.shape[1])
            count = max(1, budget // ((2 * neighbours + 1) * widest))
            chosen = select_blocks(scores, count, neighbours)
            read = len(self.table) * (2 if self.representative == "bounds" else 1)
        indices, valid = block_tokens(chosen, self.table)  # (U, Hkv, N)
        if group is None:
            return indices[0], valid[0], read
        return indices, valid, read
