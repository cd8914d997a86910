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

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch

from serving.kernels.config import Representative
from serving.kernels.merge import Partial, attend, group_queries

_CHUNK = 256  # blocks per step when building representatives (bounds memory)
_STACKED = 1 << 21  # representative elements stacked per scoring call on a CPU (8 MB float32)


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
    """(..., Hkv, nb) score of each block for the queries (..., Hq, T, D) sharing a KV head: the
    max over the group's heads and the queries of q*r (mean representatives, (..., Hkv, nb, D))
    or of the Quest bound q+*max + q-*min (bounds, (..., Hkv, nb, 2, D)). Leading dimensions
    (the rows of a decode batch) pair queries with their own representatives."""
    return score_query_groups(query, representatives, query.shape[-2]).squeeze(-3)


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
    query: torch.Tensor,  # (..., Hq, T, D)
    representatives: torch.Tensor,  # (..., Hkv, nb, D) or (..., Hkv, nb, 2, D)
    group: int,
) -> torch.Tensor:  # (..., U, Hkv, nb) float32, U = ceil(T / group)
    """Block scores for each run of ``group`` consecutive queries: the max over a run's queries
    and the KV-head group's heads, as :func:`score_blocks` computes for one run.

    Chunked prefill feeds hundreds of queries at once; one selection for all of them lets the
    many queries of ordinary text outvote the few that ask for something far (a question at
    the end of a prompt), so each run chooses its own blocks (landmark attention chooses per
    token; runs of ``group`` bound the gathers)."""
    *lead, heads, new, _ = query.shape
    bounds = representatives.dim() == query.dim() + 1
    kv_heads = representatives.shape[len(lead)]
    grouped = group_queries(query.float(), kv_heads)  # (..., Hkv, G*T, D), head-major
    representatives = representatives.float()
    if bounds:
        scores = score_bounds(grouped, representatives[..., 0, :], representatives[..., 1, :])
    else:
        scores = grouped @ representatives.transpose(-1, -2)  # (..., Hkv, G*T, nb)
    blocks = scores.shape[-1]
    scores = scores.view(*lead, kv_heads, heads // kv_heads, new, blocks).amax(-3)
    runs = -(-new // group)  # scores: (..., Hkv, T, nb)
    if runs * group != new:  # pad the last run with a copy of its last query
        pad = scores[..., -1:, :].expand(*lead, kv_heads, runs * group - new, blocks)
        scores = torch.cat([scores, pad], -2)
    return scores.view(*lead, kv_heads, runs, group, blocks).amax(-2).transpose(-3, -2)


def select_blocks(
    scores: torch.Tensor, count: int | torch.Tensor, neighbours: int = 1
) -> torch.Tensor:
    """(..., nb) bool: each row's ``count`` best blocks of (..., nb) ``scores`` and their
    +-``neighbours``. ``count`` is one number for every row, or an int64 tensor broadcastable
    to (..., 1) with each row's own (rows of a decode batch with different budgets left)."""
    blocks = scores.shape[-1]
    if isinstance(count, int) and count >= blocks:
        return torch.ones_like(scores, dtype=torch.bool)
    chosen = torch.zeros_like(scores, dtype=torch.bool)
    if isinstance(count, int):
        chosen.scatter_(-1, scores.topk(max(count, 0), dim=-1).indices, True)
    else:
        top = max(0, min(int(count.max()), blocks)) if count.numel() else 0  # CPU count: no sync
        counts = count.to(scores.device)
        order = scores.topk(top, dim=-1).indices  # (..., top) best first
        ranks = torch.arange(top, device=scores.device)
        chosen.scatter_(-1, order, (ranks < counts).expand_as(order))
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
    return chosen_tokens(chosen, table.starts, table.lengths)


def chosen_tokens(
    chosen: torch.Tensor,  # (..., nb) bool
    starts: torch.Tensor,  # broadcastable to (..., nb): each block's first position
    lengths: torch.Tensor,  # broadcastable to (..., nb): its token count (0 = no block)
) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`block_tokens` over per-row block tables (the rows of a decode batch, each with
    its own index, padded with zero-length blocks)."""
    lead = chosen.shape[:-1]
    shape = (math.prod(lead), chosen.shape[-1])  # explicit: -1 is ambiguous with no blocks
    starts = starts.to(chosen.device).expand_as(chosen).reshape(shape)
    lengths = lengths.to(chosen.device).expand_as(chosen).reshape(shape)
    chosen = chosen.reshape(shape)
    counts = chosen.sum(1)  # (rows,)
    width = int(counts.max()) if chosen.numel() else 0
    ids = torch.argsort((~chosen).to(torch.int8), dim=1, stable=True)[:, :width]  # chosen first
    real = torch.arange(width, device=chosen.device)[None, :] < counts[:, None]  # (rows, W)
    first = torch.gather(starts, 1, ids)
    length = torch.where(real, torch.gather(lengths, 1, ids), 0)
    span = int(length.max()) if length.numel() else 0
    offsets = torch.arange(span, device=chosen.device)
    positions = (first[..., None] + offsets).flatten(1)  # (rows, W*L)
    valid = (offsets < length[..., None]).flatten(1)
    positions = torch.where(valid, positions, 0)
    return positions.view(*lead, positions.shape[-1]), valid.view(*lead, valid.shape[-1])


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


def select_rows(
    indexes: Sequence[BlockIndex | None],  # per row; None = no far context
    query: torch.Tensor,  # (B, Hq, D) one decode query per row
    rooms: Sequence[int],  # far tokens each row may select
    neighbours: int,
    *,
    kv_heads: int,
    score: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """:meth:`BlockIndex.select` for every row of a decode batch at once: positions
    (B, Hkv, N) and validity of the blocks each row chooses within its room.

    The rows' representatives are stacked, padded to the widest index, and scored in one call
    of ``score`` ((B, Hq, D), (B, Hkv, nb, ...) -> (B, Hkv, nb); default
    :func:`score_blocks`, the Triton kernel on CUDA); padding scores -inf and is never chosen.
    On a CPU, rows are stacked in groups of about 8 MB (see :func:`_stacks`).
    Rows whose blocks all fit their room keep all of them, as :meth:`BlockIndex.select` does."""
    rows, device = len(indexes), query.device
    held = [
        (row, index)
        for row, index in enumerate(indexes)
        if index is not None and index.vectors is not None
    ]
    width = max((len(index.table) for _, index in held), default=0)
    starts = torch.zeros(rows, width, dtype=torch.long)
    lengths = torch.zeros(rows, width, dtype=torch.long)
    counts = torch.zeros(rows, dtype=torch.long)
    for row, index in held:
        blocks = len(index.table)
        starts[row, :blocks], lengths[row, :blocks] = index.table.starts, index.table.lengths
        if int(index.table.lengths.sum()) <= rooms[row]:
            counts[row] = width  # every block fits
        else:
            widest = int(index.table.lengths.max())
            counts[row] = max(1, rooms[row] // ((2 * neighbours + 1) * widest))
    real = (lengths > 0).to(device)[:, None, :].expand(rows, kv_heads, width)  # (B, Hkv, nb)
    if any(int(counts[row]) < len(index.table) for row, index in held):
        scored = torch.full((rows, kv_heads, width), float("-inf"), device=device)
        for group in _stacks(held):
            ids = [row for row, _ in group]
            vectors = _stacked([vectors for _, vectors in group])  # (g, Hkv, nb_g, ...)
            picked = query if len(ids) == rows else query[ids]
            scored[ids, :, : vectors.shape[2]] = (score or _score_decode)(picked, vectors)
        scored = scored.masked_fill(~real, float("-inf"))  # padding is never chosen
        chosen = select_blocks(scored, counts[:, None, None], neighbours) & real
    else:
        chosen = real
    return chosen_tokens(chosen, starts.to(device)[:, None], lengths.to(device)[:, None])


def _stacks(held: list[tuple[int, BlockIndex]]) -> Iterator[list[tuple[int, torch.Tensor]]]:
    """The rows' representatives in groups to score together: all rows on CUDA; on a CPU,
    groups of at most ``_STACKED`` elements (a row alone can be larger: it is not copied),
    since a fresh buffer over 32 MB costs page faults on every step (glibc maps it anew)."""
    group: list[tuple[int, torch.Tensor]] = []
    size = 0
    for row, index in held:
        vectors = index.vectors
        assert vectors is not None
        if group and not vectors.is_cuda and size + vectors.numel() > _STACKED:
            yield group
            group, size = [], 0
        group.append((row, vectors))
        size += vectors.numel()
    if group:
        yield group


def _stacked(parts: list[torch.Tensor]) -> torch.Tensor:
    """(g, Hkv, nb, ...) from per-row (Hkv, nb_i, ...), zero-padded to the widest."""
    if len(parts) == 1:
        return parts[0][None]  # a view: no copy
    width = max(part.shape[1] for part in parts)
    first = parts[0]
    stacked = first.new_empty(len(parts), first.shape[0], width, *first.shape[2:])
    for row, part in enumerate(parts):
        stacked[row, :, : part.shape[1]] = part
        stacked[row, :, part.shape[1] :] = 0
    return stacked


def _score_decode(query: torch.Tensor, representatives: torch.Tensor) -> torch.Tensor:
    return score_blocks(query[..., None, :], representatives)  # (B, Hq, 1, D) -> (B, Hkv, nb)
