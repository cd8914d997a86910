"""RetrievalAttention's attention-aware index: a RoarGraph-style graph over far keys.

Queries and keys of an LLM are out of distribution for each other, so an index built from key
geometry alone (HNSW, IVF) must scan ~30% of the keys to find a query's top keys by inner
product. RetrievalAttention (arXiv 2409.10516) instead builds the index from the prompt's query
vectors: each query's exact top keys are found once, and keys that are top neighbours of the same
query are linked (the query-key bipartite graph projected onto keys, as RoarGraph does). A
decode query then walks the graph greedily by inner product from a few entry keys and touches a
few percent of the keys.

Here each query's top list is linked as a star around its best key plus a chain in score order
(both directions), consecutive keys are linked too (always kept, so every key stays reachable,
also those no query picked), and each key keeps at most ``degree`` edges, the best-ranked
first. ``extend`` adds one segment at a time: the queries that can attend to it (those at and
after it, some already used for the segment before) are searched exactly over every key indexed
so far, and only rows of keys that gain edges are rewritten.
Keys and the graph live in CPU memory.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

_QUERY_CHUNK = 64  # building queries scored per matmul (bounds memory)
_TEMPORAL = -1  # rank of consecutive-key edges: always kept, so every key stays reachable
_SCAN_SHARE = 8  # a top-k of at least 1/8 of the keys scans them all: a graph walk for that many
# visits most keys anyway (on SmolLM2 at 8k tokens it touched 60-90% of them for k = 64-1024)


@dataclass(frozen=True, slots=True)
class SearchResult:
    """Per query head: the best keys found (absolute positions) and how many keys were scored."""

    indices: torch.Tensor  # (Hq, k) int64 absolute positions, best first
    valid: torch.Tensor  # (Hq, k) bool (False only when fewer than k keys are indexed)
    touched: torch.Tensor  # (Hq,) int64 keys whose inner product was computed


class AttentionGraph:
    """The graph index over keys ``[start, end)`` of one sequence, one graph per KV head."""

    def __init__(
        self,
        start: int,
        *,
        degree: int = 32,
        neighbours: int = 16,
        beam: int = 128,
        width: int = 4,
        entry_stride: int = 1024,
        guide_every: int = 4,
        guided_entries: int = 8,
    ) -> None:
        self.start, self.end = start, start
        self.degree, self.neighbours = degree, neighbours
        self.beam, self.width, self.entry_stride = beam, width, entry_stride
        self.guide_every, self.guided_entries = guide_every, guided_entries
        self.adjacency: torch.Tensor | None = None  # (Hkv, capacity, degree) int64, -1 = none
        self.mirror: torch.Tensor | None = None  # (Hkv, n, D) CPU float32 copy of GPU keys
        self.guides = torch.zeros(0, 0, 0)  # (Hkv, M, D) a sample of the building queries
        self.guide_keys = torch.zeros(0, 0, dtype=torch.long)  # (Hkv, M) each one's best key

    @property
    def count(self) -> int:
        return self.end - self.start

    def copy(self) -> AttentionGraph:
        twin = AttentionGraph(
            self.start,
            degree=self.degree,
            neighbours=self.neighbours,
            beam=self.beam,
            width=self.width,
            entry_stride=self.entry_stride,
            guide_every=self.guide_every,
            guided_entries=self.guided_entries,
        )
        twin.end = self.end
        twin.adjacency = None if self.adjacency is None else self.adjacency.clone()
        twin.guides, twin.guide_keys, twin.mirror = self.guides, self.guide_keys, self.mirror
        return twin

    # ------------------------------------------------------------------ construction

    def extend(
        self,
        keys: torch.Tensor,  # (Hkv, S, D), S >= end
        end: int,
        queries: torch.Tensor,  # (Hkv, Q, D) query vectors (group heads stacked)
        unseen: int | None = None,
    ) -> None:
        """Index keys up to ``end``, linking keys that are top neighbours of the same query.

        ``queries`` should be those that can attend to the new keys: the queries at and after
        the new segment, including ones already given to an earlier ``extend`` (a key that only
        later queries ask for, such as a fact a question at the end of the prompt asks about,
        is otherwise left with its two temporal edges and cannot be reached). Only the last
        ``unseen`` of them (None: all) are new and sampled as search guides."""
        old, new = self.count, end - self.start
        if new <= old:
            return
        heads = keys.shape[0]
        region = keys[:, self.start : end].float().cpu()  # (Hkv, n, D)
        queries = queries.float().cpu()
        top = min(self.neighbours, new)
        lists = [
            (queries[:, i : i + _QUERY_CHUNK] @ region.transpose(1, 2)).topk(top, dim=-1).indices
            for i in range(0, queries.shape[1], _QUERY_CHUNK)
        ]
        src_parts, dst_parts, rank_parts = [], [], []
        if lists and top > 1:
            best = torch.cat(lists, 1)  # (Hkv, Q, top) local ids, best first
            pivot = best[..., :1].expand(-1, -1, top - 1)
            rank = torch.arange(1, top).expand_as(pivot)
            for src, dst in (
                (pivot, best[..., 1:]),
                (best[..., 1:], pivot),
                (best[..., :-1], best[..., 1:]),
                (best[..., 1:], best[..., :-1]),
            ):
                src_parts.append(src.reshape(heads, -1))
                dst_parts.append(dst.reshape(heads, -1))
                rank_parts.append(rank.reshape(heads, -1))
        chain = torch.arange(max(old - 1, 0), new - 1)
        for src, dst in ((chain, chain + 1), (chain + 1, chain)):
            src_parts.append(src.expand(heads, -1))
            dst_parts.append(dst.expand(heads, -1))
            rank_parts.append(torch.full_like(src, _TEMPORAL).expand(heads, -1))
        if lists:
            firsts = torch.cat(lists, 1)[..., 0]  # (Hkv, Q) each query's best key
            held = queries.shape[1] if unseen is None else min(unseen, queries.shape[1])
            if held:
                self._keep_guides(queries[:, -held:], firsts[:, -held:])
        if keys.device.type != "cpu" or keys.dtype != torch.float32:
            # keys in CPU memory for the search (RetrievalAttention keeps far KV on the CPU)
            fresh = region[:, old:new]
            self.mirror = fresh if self.mirror is None else torch.cat([self.mirror, fresh], 1)
        self._grow(heads, new)
        self._insert(torch.cat(src_parts, 1), torch.cat(dst_parts, 1), torch.cat(rank_parts, 1))
        self.end = end

    def _keep_guides(self, queries: torch.Tensor, best: torch.Tensor) -> None:
        """Keep one building query in ``guide_every`` (and its best key) as search entries."""
        every = torch.arange(0, queries.shape[1], self.guide_every)
        guides, keys = queries[:, every], best[:, every]
        if self.guides.numel():
            guides = torch.cat([self.guides, guides], 1)
            keys = torch.cat([self.guide_keys, keys], 1)
        self.guides, self.guide_keys = guides, keys

    def _grow(self, heads: int, count: int) -> None:
        if self.adjacency is not None and self.adjacency.shape[1] >= count:
            return
        capacity = max(count, 2 * (0 if self.adjacency is None else self.adjacency.shape[1]))
        grown = torch.full((heads, capacity, self.degree), -1, dtype=torch.long)
        if self.adjacency is not None:
            grown[:, : self.adjacency.shape[1]] = self.adjacency
        self.adjacency = grown

    def _insert(self, src: torch.Tensor, dst: torch.Tensor, rank: torch.Tensor) -> None:
        """Merge edges (Hkv, E) into the rows of their source keys: existing edges first, then
        new ones by rank; duplicates and self-loops dropped; at most ``degree`` per key."""
        assert self.adjacency is not None
        heads, capacity, degree = self.adjacency.shape
        keep = src != dst
        head = torch.arange(heads)[:, None].expand_as(src)[keep]
        node = head * capacity + src[keep]  # global row id
        dst, rank = dst[keep], rank[keep]
        rows = torch.unique(node)
        flat = self.adjacency.view(heads * capacity, degree)
        current = flat[rows]  # (R, degree) existing edges of touched rows
        present = current >= 0
        node = torch.cat([rows[:, None].expand_as(current)[present], node])
        dst = torch.cat([current[present], dst])
        rank = torch.cat([torch.zeros(int(present.sum()), dtype=torch.long), rank])
        # Two sorts of packed keys: (node, dst, rank) to drop duplicate edges keeping the best
        # rank, then (node, rank, dst) to rank each row's edges, best first.
        level = rank - _TEMPORAL  # >= 0
        levels = int(level.max()) + 1
        packed = torch.sort((node * capacity + dst) * levels + level).values
        pair = packed // levels
        first = torch.ones_like(pair, dtype=torch.bool)
        first[1:] = pair[1:] != pair[:-1]
        packed, pair = packed[first], pair[first]
        node, dst = pair // capacity, pair % capacity
        packed = torch.sort((node * levels + packed % levels) * capacity + dst).values
        node, dst = packed // (levels * capacity), packed % capacity
        starts = torch.ones_like(node, dtype=torch.bool)
        starts[1:] = node[1:] != node[:-1]
        group_start = torch.cummax(torch.where(starts, torch.arange(node.numel()), 0), 0).values
        slot = torch.arange(node.numel()) - group_start
        fits = slot < degree
        flat[rows] = -1
        flat[node[fits], slot[fits]] = dst[fits]

    # ------------------------------------------------------------------ search

    def _rows(self, keys: torch.Tensor) -> tuple[torch.Tensor, int, int]:
        """A (rows, D) float32 CPU view of the keys (no copy when the cache is CPU float32 and
        rows are contiguous), rows per KV head, and the row of local id 0 in head 0."""
        if self.mirror is not None:
            return self.mirror.view(-1, self.mirror.shape[-1]), self.mirror.shape[1], 0
        dim = keys.shape[-1]
        assert keys.stride(-1) == 1 and keys.stride(-2) == dim and keys.stride(0) % dim == 0
        per_head = keys.stride(0) // dim
        rows = (keys.shape[0] - 1) * per_head + keys.shape[1]
        return keys.as_strided((rows, dim), (dim, 1)), per_head, self.start

    def entries(self) -> torch.Tensor:
        """Local ids the search starts from: one key every ``entry_stride``, at least 16."""
        count = min(self.count, max(16, math.ceil(self.count / self.entry_stride)))
        return torch.arange(count) * (self.count - 1) // max(count - 1, 1)  # distinct, sorted

    def search(self, keys: torch.Tensor, query: torch.Tensor, k: int) -> SearchResult:
        """The ``k`` indexed keys with the largest inner product with each query head, found
        by a best-first beam search (beam ``max(beam, k)``, ``width`` nodes expanded per step)
        over the KV head's graph, or exactly by scoring every key when ``k`` is at least 1/8 of
        them. ``keys`` (Hkv, S, D); ``query`` (Hq, D)."""
        assert self.adjacency is not None and self.count > 0
        heads = query.shape[0]
        kv_heads = keys.shape[0]
        q = query.float().cpu()
        head = torch.arange(heads) // (heads // kv_heads)  # KV head of each query head
        flat_keys, per_head, offset = self._rows(keys)
        if k * _SCAN_SHARE >= self.count:  # a walk would visit most keys: score them all
            region = keys[:, self.start : self.end].float().cpu()  # (Hkv, n, D)
            every = torch.einsum("hd,hnd->hn", q, region[head])  # (Hq, n)
            order = every.topk(min(k, self.count), dim=1).indices
            count = torch.full((heads,), self.count, dtype=torch.long)
            pad = max(k - self.count, 0)
            return SearchResult(
                torch.cat([order, order.new_zeros(heads, pad)], 1) + self.start,
                torch.arange(k)[None, :].expand(heads, -1) < self.count,
                count,
            )
        n, beam = self.count, max(self.beam, k)
        # flat views: index_select on a flat table is much cheaper than advanced indexing
        flat_edges = self.adjacency.view(-1, self.degree)
        capacity = self.adjacency.shape[1]
        edge_base = (head * capacity)[:, None]  # (Hq, 1) first edge row of each head's graph
        base = (head * per_head + offset)[:, None]  # (Hq, 1) key row of local id 0 per head
        visited = torch.zeros(heads * n, dtype=torch.bool)
        own = (torch.arange(heads) * n)[:, None]  # (Hq, 1) offset in ``visited``

        def score(ids: torch.Tensor) -> torch.Tensor:  # (Hq, m) local ids -> (Hq, m) q*k
            picked = flat_keys.index_select(0, (ids + base).flatten()).view(*ids.shape, -1)
            return torch.einsum("hd,hmd->hm", q, picked)

        start = self.entries()[None, :].expand(heads, -1)  # (Hq, E)
        touched = torch.full((heads,), start.shape[1], dtype=torch.long)
        if self.guides.numel():  # query-query similarity is in distribution: start where the
            # most similar building queries found their best keys
            likeness = torch.einsum("hd,hmd->hm", q, self.guides[head])  # (Hq, M)
            near = likeness.topk(min(self.guided_entries, likeness.shape[1]), dim=1).indices
            start = torch.cat([start, torch.gather(self.guide_keys[head], 1, near)], 1)
            touched += self.guides.shape[1]
        start, _ = start.sort(dim=1)
        repeat = torch.zeros_like(start, dtype=torch.bool)
        repeat[:, 1:] = start[:, 1:] == start[:, :-1]
        visited[(start + own).flatten()] = True
        scores = score(start).masked_fill(repeat, float("-inf"))
        touched -= repeat.sum(1)
        ids, best, done = _pad(start, scores, beam)
        while True:
            open_scores = best.masked_fill(done, float("-inf"))
            pick_scores, pick = open_scores.topk(min(self.width, beam), dim=1)
            active = pick_scores > float("-inf")  # (Hq, W)
            if not bool(active.any()):
                break
            done.scatter_(1, pick, active | torch.gather(done, 1, pick))
            nodes = torch.gather(ids, 1, pick).clamp(min=0)  # (Hq, W)
            near = flat_edges.index_select(0, (nodes + edge_base).flatten()).view(heads, -1)
            near = near.masked_fill(~active.repeat_interleave(self.degree, 1), -1)
            near, _ = near.sort(dim=1)  # (Hq, W*degree), duplicates side by side
            fresh = near >= 0
            fresh[:, 1:] &= near[:, 1:] != near[:, :-1]
            slots = (near.clamp(min=0) + own).flatten()
            fresh &= ~visited[slots].view_as(near)
            visited[slots[fresh.flatten()]] = True
            # score only the fresh neighbours (most of a node's neighbours were seen before)
            where = fresh.nonzero()  # (F, 2): query head, column
            picked = flat_keys.index_select(0, near[fresh] + base[where[:, 0], 0])  # (F, D)
            near_scores = torch.full(near.shape, float("-inf"))
            near_scores[fresh] = (picked * q[where[:, 0]]).sum(-1)
            touched += fresh.sum(1)
            best, order = torch.cat([best, near_scores], 1).topk(beam, dim=1)
            ids = torch.gather(torch.cat([ids, near], 1), 1, order)
            done = torch.gather(torch.cat([done, ~fresh], 1), 1, order)
        top = best[:, :k]
        valid = top > float("-inf")
        return SearchResult(ids[:, :k].clamp(min=0) + self.start, valid, touched)


def _pad(
    ids: torch.Tensor, scores: torch.Tensor, width: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The best ``width`` of (ids, scores), padded with id -1 / score -inf / done."""
    heads, count = ids.shape
    if count < width:
        ids = torch.cat([ids, ids.new_full((heads, width - count), -1)], 1)
        scores = torch.cat([scores, scores.new_full((heads, width - count), float("-inf"))], 1)
    best, order = scores.topk(width, dim=1)
    ids = torch.gather(ids, 1, order)
    return ids, best, best == float("-inf")
