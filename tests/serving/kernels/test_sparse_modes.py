"""The long-context modes' own choices, pass by pass, on planted keys (issue 16).

Block selection per run of queries (a question at the end of a prefill chunk gets the block it
asks for even when the chunk's other queries want others), and a retrieval graph that links a
key to the later queries that look for it.
"""

from __future__ import annotations

from typing import Any

import torch

from serving.engine.attention import ModeContext
from serving.engine.config import EngineConfig
from serving.engine.retrieval import RetrievalAttention
from serving.engine.selection import BlockAttention
from serving.kernels.config import AttentionConfig
from serving.kernels.merge import attend
from serving.kernels.static import layout


def test_each_run_of_prefill_queries_chooses_its_own_blocks() -> None:
    """The first 16 queries of a chunk want block A strongly, the last 16 want block B weakly;
    the budget holds one block. One choice for the whole chunk would give every query A."""
    torch.manual_seed(0)
    dim = 8
    mode = BlockAttention(
        ModeContext(
            EngineConfig(
                attention=AttentionConfig(
                    mode="blocks", budget=16, sinks=0, window=8, block_size=4, neighbours=0
                )
            )
        )
    )
    split = layout(72, 32, 0, 8)  # far context [0, 64): 16 blocks of 4, no open tail
    keys = 0.1 * torch.randn(1, split.total, dim)
    values = torch.randn(1, split.total, dim)
    keys[0, 8:12, 0] = 5.0  # block A
    keys[0, 40:44, 1] = 5.0  # block B
    query = torch.zeros(1, 32, dim)
    query[0, :16, 0] = 10.0
    query[0, 16:, 1] = 2.0
    far = mode.far(mode.new_state(), query, keys, values, split, 0.5)
    assert far is not None
    for run, block in ((slice(0, 16), slice(8, 12)), (slice(16, 32), slice(40, 44))):
        expected = attend(query[:, run], keys[:, block], values[:, block], 0.5)
        torch.testing.assert_close(far.out[:, run], expected.out, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(far.lse[:, run], expected.lse, atol=1e-5, rtol=1e-5)


def _retrieval(**settings: Any) -> RetrievalAttention:
    attention = AttentionConfig(mode="retrieval", sinks=0, window=8, **settings)
    return RetrievalAttention(ModeContext(EngineConfig(attention=attention)))


def test_retrieval_links_a_key_to_the_later_queries_that_ask_for_it() -> None:
    """Keys 40..47 hold a fact that only queries at 48..55 look at (a needle's second mention,
    a question). Fed in 16-token prefill chunks, those queries arrive while the fact is still in
    the local window, in the pass that indexes the segment before it; the graph must still
    link the fact's keys to them when the fact's own segment is indexed, and a decode query
    that asks for the fact must find it by walking the graph (k = 8 of 248 keys: no scan)."""
    generator = torch.Generator().manual_seed(1)
    dim, length = 16, 256
    topic, fact = torch.eye(dim)[0], torch.eye(dim)[1]  # what the text is about; the fact
    keys = topic + 0.3 * torch.randn(1, length, dim, generator=generator)
    keys[0, 40:48] = 3 * fact + 0.3 * torch.randn(8, dim, generator=generator)
    queries = 3 * topic + 0.5 * torch.randn(1, length, dim, generator=generator)
    queries[0, 48:56] = fact  # the only queries that look at the fact
    mode = _retrieval(budget=60, retrieval_segment=16)
    state = mode.new_state()
    for past in range(0, length, 16):
        split = layout(past, 16, 0, 8)
        mode.observe(state, queries[:, past : past + 16], keys[:, : split.total], split)
    graph = state.graph
    assert graph.end >= 48 and graph.adjacency is not None
    # the asking query's top list links the fact's keys to one another (the temporal chain
    # alone gives each at most 2 of them)
    rows = [{int(e) for e in row if e >= 0} for row in graph.adjacency[0, 40:48]]
    assert max(len(row & set(range(40, 48))) for row in rows) >= 5
    found = graph.search(keys, fact[None], 8)
    assert int(found.touched[0]) < graph.count
    assert set(range(40, 48)) <= set(found.indices[0].tolist())
