"""The attention-aware graph index: structure, incremental growth, recall on OOD data."""

from __future__ import annotations

import torch

from serving.kernels.retrieval import AttentionGraph


def ood_data(
    seed: int, count: int = 6000, dim: int = 64
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Keys and queries with different means (out of distribution for each other), passages of
    related keys, prompt queries that each look at one passage, and decode queries like the
    prompt's last ones (which look at a planted passage set)."""
    generator = torch.Generator().manual_seed(seed)
    kv_heads = 2
    key_mean, query_mean = (
        3 * torch.randn(dim, generator=generator),
        -3 * torch.randn(dim, generator=generator),
    )
    passages = -(-count // 32)
    wanted = min(7, passages - 1)
    topic = torch.randn(kv_heads, passages, dim, generator=generator)
    keys = (
        key_mean
        + topic.repeat_interleave(32, 1)[:, :count]
        + 0.3 * torch.randn(kv_heads, count, dim, generator=generator)
    )
    target = torch.randint(0, passages, (kv_heads, 800), generator=generator)
    target[:, -100:] = wanted  # the prompt ends with a question about one passage
    prompt = query_mean + 2 * torch.gather(topic, 1, target[..., None].expand(-1, -1, dim))
    prompt = prompt + 0.5 * torch.randn(prompt.shape, generator=generator)
    decode = (
        query_mean + 2 * topic[:, wanted] + 0.5 * torch.randn(kv_heads, dim, generator=generator)
    )
    return keys, prompt, decode.repeat_interleave(2, 0), target  # decode: (Hq=4, D)


def test_graph_rows_hold_unique_edges_within_the_degree() -> None:
    keys, prompt, _, _ = ood_data(0, count=600)
    graph = AttentionGraph(5, degree=8)
    graph.extend(keys, 300, prompt[:, :200])
    graph.extend(keys, 600, prompt[:, 200:400])
    assert graph.count == 595 and graph.adjacency is not None
    adjacency = graph.adjacency[:, : graph.count]
    for head in range(2):
        for row, edges in enumerate(adjacency[head].tolist()):
            real = [e for e in edges if e >= 0]
            assert len(real) == len(set(real)) <= 8 and row not in real
            assert all(0 <= e < graph.count for e in real)
    # consecutive keys stay linked, so every key is reachable even if no query picked it
    for head in range(2):
        rows = adjacency[head].tolist()
        for row in range(graph.count - 1):
            assert row + 1 in rows[row] and row in rows[row + 1]


def test_search_finds_the_true_top_keys_touching_few() -> None:
    keys, prompt, decode, _ = ood_data(1, count=3000)
    graph = AttentionGraph(0)
    for end in range(500, 3001, 500):  # one segment at a time, its own queries
        graph.extend(keys, end, prompt[:, (end - 500) * 800 // 3000 : end * 800 // 3000])
    result = graph.search(keys, decode, 32)
    exact = torch.einsum("hd,hnd->hn", decode, keys.repeat_interleave(2, 0)).topk(32).indices
    recall = [len(set(result.indices[h].tolist()) & set(exact[h].tolist())) / 32 for h in range(4)]
    assert min(recall) >= 0.9, recall
    assert float(result.touched.max()) / 3000 < 0.25


def test_search_returns_everything_when_asked_for_more_than_indexed() -> None:
    keys, prompt, decode, _ = ood_data(2, count=64)
    graph = AttentionGraph(4, degree=8)
    graph.extend(keys, 64, prompt[:, :50])
    result = graph.search(keys, decode, 100)
    assert int(result.valid.sum(1).min()) == 60
    for head in range(4):
        assert sorted(result.indices[head, result.valid[head]].tolist()) == list(range(4, 64))


def test_copy_is_independent() -> None:
    keys, prompt, _, _ = ood_data(3, count=200)
    graph = AttentionGraph(0, degree=8)
    graph.extend(keys, 100, prompt[:, :50])
    twin = graph.copy()
    graph.extend(keys, 200, prompt[:, 50:100])
    assert twin.count == 100 and graph.count == 200


def test_a_large_top_k_scans_every_key_exactly() -> None:
    """Asked for 1/8 of the keys or more, a walk would visit most of them: score them all."""
    keys, prompt, decode, _ = ood_data(4, count=800)
    graph = AttentionGraph(0)
    graph.extend(keys, 800, prompt[:, :300])
    result = graph.search(keys, decode, 100)
    exact = torch.einsum("hd,hnd->hn", decode, keys.repeat_interleave(2, 0)).topk(100).indices
    for head in range(4):
        assert set(result.indices[head].tolist()) == set(exact[head].tolist())
    assert result.valid.all() and result.touched.tolist() == [800] * 4
    walked = graph.search(keys, decode, 99)  # just under 1/8: the graph walk
    assert int(walked.touched.max()) < 400
