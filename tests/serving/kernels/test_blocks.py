"""Block partition, representatives, selection and exact attention over chosen blocks."""

from __future__ import annotations

import pytest
import torch

from serving.kernels import blocks
from serving.kernels.blocks import (
    BlockIndex,
    block_tokens,
    bound_representatives,
    event_blocks,
    fixed_blocks,
    gathered_attention,
    mean_representatives,
    score_blocks,
    score_query_groups,
    select_blocks,
    select_rows,
)
from serving.kernels.merge import attend


def test_fixed_blocks_have_a_ragged_last_page_unless_complete_only() -> None:
    table = fixed_blocks(10, 45, 16)
    assert table.starts.tolist() == [10, 26, 42] and table.lengths.tolist() == [16, 16, 3]
    complete = fixed_blocks(10, 45, 16, complete_only=True)
    assert complete.lengths.tolist() == [16, 16] and complete.end == 42
    positions, block = table.token_positions()
    assert positions.tolist() == list(range(10, 45))
    assert block.tolist() == [0] * 16 + [1] * 16 + [2] * 3


def test_events_cut_at_surprise_peaks_within_size_bounds() -> None:
    torch.manual_seed(0)
    surprise = torch.rand(400) * 0.1
    peaks = [40, 45, 100, 390]  # 45 is too close to 40; 100..390 is longer than 128
    surprise[peaks] = 10.0
    table = event_blocks(surprise, start=7, gamma=3.0, min_size=8, max_size=128)
    starts = (table.starts - 7).tolist()
    assert 40 in starts and 45 not in starts and 100 in starts
    assert int(table.lengths.sum()) == 400 and table.starts[0] == 7
    assert int(table.lengths.max()) <= 128
    assert int(table.lengths[:-1].min()) >= 8
    with pytest.raises(ValueError, match="not a valid range"):
        event_blocks(surprise, 0, min_size=9, max_size=8)


def test_bounds_score_is_an_upper_bound_of_every_key_in_the_block() -> None:
    keys = torch.randn(2, 100, 16)
    table = fixed_blocks(0, 100, 12)  # ragged last block of 4
    bounds = bound_representatives(keys, table)
    query = torch.randn(2, 1, 16)  # one head per KV head
    scores = score_blocks(query, bounds)  # (Hkv, nb)
    for head in range(2):
        for index, (start, length) in enumerate(zip(table.starts, table.lengths, strict=True)):
            exact = keys[head, start : start + length] @ query[head, 0]
            assert float(scores[head, index]) >= float(exact.max()) - 1e-5


def test_mean_representatives_follow_the_most_attended_keys() -> None:
    keys = torch.randn(1, 16, 8)
    table = fixed_blocks(0, 16, 8)
    plain = mean_representatives(keys, table)
    torch.testing.assert_close(plain[0, 0], keys[0, :8].mean(0))
    query = torch.zeros(1, 1, 8)
    query[0, 0, 0] = 50.0  # attends to the keys with the largest first channel
    topped = mean_representatives(keys, table, query, top=2)
    best = keys[0, 8:16, 0].topk(2).indices + 8
    torch.testing.assert_close(topped[0, 1], keys[0, best].mean(0))


def test_selection_takes_top_blocks_and_neighbours() -> None:
    scores = torch.tensor([[0.0, 5.0, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0, 0.0, 9.0]])
    chosen = select_blocks(scores, count=1, neighbours=1)
    assert chosen.tolist() == [
        [True, True, True, False, False, False],
        [False, False, False, False, True, True],
    ]
    assert select_blocks(scores, count=10).all()
    table = fixed_blocks(100, 160, 10)
    positions, valid = block_tokens(chosen, table)
    assert positions[0, valid[0]].tolist() == list(range(100, 130))
    assert positions[1, valid[1]].tolist() == list(range(140, 160))


@pytest.mark.parametrize(("heads", "kv_heads"), [(2, 2), (8, 2)])
def test_gathered_attention_equals_attention_over_the_subset(heads: int, kv_heads: int) -> None:
    keys, values = torch.randn(kv_heads, 90, 16), torch.randn(kv_heads, 90, 16)
    query = torch.randn(heads, 1, 16)
    chosen = torch.rand(kv_heads, 9) > 0.5
    chosen[:, 0] = True
    positions, valid = block_tokens(chosen, fixed_blocks(0, 90, 10))
    got = gathered_attention(query, keys, values, positions, valid, 0.25)
    group = heads // kv_heads
    for head in range(heads):
        kv = head // group
        subset = positions[kv, valid[kv]]
        expected = attend(
            query[head : head + 1], keys[kv : kv + 1, subset], values[kv : kv + 1, subset], 0.25
        )
        torch.testing.assert_close(got.out[head], expected.out[0], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("representative", ["mean", "bounds"])
def test_block_index_grows_and_finds_a_planted_block(representative: str) -> None:
    torch.manual_seed(1)
    keys = torch.randn(2, 400, 32) * 0.3
    query = torch.randn(4, 1, 32)
    keys[:, 200:216] += 2.0 * query[::2, 0, None, :]  # block 200..215 is what both heads want
    index = BlockIndex(4, size=16, representative=representative)  # type: ignore[arg-type]
    index.extend(keys, 150)
    index.extend(keys, 390, query[::2, 0][:, None, :].expand(-1, 3, -1))
    assert len(index.table) == (390 - 4) // 16 and index.end == 4 + 16 * len(index.table)
    positions, valid, read = index.select(query, budget=48, neighbours=1, kv_heads=2)
    assert read == len(index.table) * (2 if representative == "bounds" else 1)
    for head in range(2):
        assert set(range(200, 216)) <= set(positions[head, valid[head]].tolist())
        assert int(valid[head].sum()) <= 48
    everything, ok, _ = index.select(query, budget=10_000, kv_heads=2)
    assert sorted(everything[0, ok[0]].tolist()) == list(range(4, index.end))


@pytest.mark.parametrize("representative", ["mean", "bounds"])
@pytest.mark.parametrize(("heads", "new", "group"), [(2, 7, 3), (6, 32, 16), (6, 5, 8)])
def test_each_run_of_queries_scores_as_one_selection(
    representative: str, heads: int, new: int, group: int
) -> None:
    keys = torch.randn(2, 120, 16)
    table = fixed_blocks(0, 120, 12)
    vectors = (
        bound_representatives(keys, table)
        if representative == "bounds"
        else mean_representatives(keys, table)
    )
    query = torch.randn(heads, new, 16)
    runs = score_query_groups(query, vectors, group)  # (U, Hkv, nb)
    assert runs.shape == (-(-new // group), 2, len(table))
    for run in range(runs.shape[0]):
        alone = score_blocks(query[:, run * group : (run + 1) * group], vectors)
        torch.testing.assert_close(runs[run], alone)
    torch.testing.assert_close(
        score_query_groups(query, vectors, new)[0], score_blocks(query, vectors)
    )


def test_selection_and_token_positions_keep_leading_dimensions() -> None:
    scores = torch.randn(3, 2, 9)
    chosen = select_blocks(scores, count=2, neighbours=1)
    table = fixed_blocks(0, 90, 10)
    positions, valid = block_tokens(chosen, table)
    for run in range(3):
        torch.testing.assert_close(chosen[run], select_blocks(scores[run], 2, 1))
        alone, ok = block_tokens(chosen[run], table)
        for head in range(2):
            assert positions[run, head, valid[run, head]].tolist() == alone[head, ok[head]].tolist()


def test_block_index_chooses_per_run_of_queries() -> None:
    """Queries 0-7 want block 100..115 strongly, queries 8-15 want 308..323 weakly; with room
    for one block, one choice for all gives both runs the first block."""
    keys = torch.randn(1, 400, 32) * 0.1
    keys[0, 100:116, 0] = 4.0
    keys[0, 308:324, 1] = 4.0
    query = torch.zeros(1, 16, 32)
    query[0, :8, 0] = 5.0
    query[0, 8:, 1] = 1.0
    index = BlockIndex(4, size=16, representative="bounds")
    index.extend(keys, 388)
    shared, ok, _ = index.select(query, budget=16, neighbours=0, kv_heads=1)
    assert shared[0, ok[0]].tolist() == list(range(100, 116))
    runs, valid, _ = index.select(query, budget=16, neighbours=0, kv_heads=1, group=8)
    assert runs.shape[:2] == (2, 1)
    assert runs[0, 0, valid[0, 0]].tolist() == list(range(100, 116))
    assert runs[1, 0, valid[1, 0]].tolist() == list(range(308, 324))


def test_select_blocks_takes_each_rows_own_count() -> None:
    scores = torch.randn(4, 2, 12)
    counts = torch.tensor([0, 1, 3, 12])[:, None, None]
    chosen = select_blocks(scores, counts, neighbours=1)
    for row, count in enumerate([0, 1, 3, 12]):
        torch.testing.assert_close(chosen[row], select_blocks(scores[row], count, 1))


@pytest.mark.parametrize("representative", ["mean", "bounds"])
@pytest.mark.parametrize("stacked", ["one stack", "row by row"])
def test_rows_of_a_batch_select_as_each_row_alone(
    representative: str, stacked: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Indexes of different sizes (one empty, one that fits its room) stacked and scored in
    one call (or in groups, as on a CPU for large indexes) choose what each chooses alone."""
    if stacked == "row by row":
        monkeypatch.setattr(blocks, "_STACKED", 1)
    torch.manual_seed(2)
    kv_heads, heads = 2, 6
    ends = [400, 150, 100, 20]
    indexes: list[BlockIndex | None] = []
    for end in ends:
        index = BlockIndex(4, size=16, representative=representative)  # type: ignore[arg-type]
        keys = torch.randn(kv_heads, end, 32)
        index.extend(keys, end, torch.randn(kv_heads, 5, 32))
        indexes.append(index)
    indexes.append(None)  # a row without far context
    query = torch.randn(len(indexes), heads, 32)
    rooms = [48, 64, 200, 48, 0]
    positions, valid = select_rows(indexes, query, rooms, 1, kv_heads=kv_heads)
    assert positions.shape[:2] == (len(indexes), kv_heads)
    for row, index in enumerate(indexes):
        if index is None:
            assert not bool(valid[row].any())
            continue
        alone, ok, _ = index.select(query[row, :, None], rooms[row], 1, kv_heads=kv_heads)
        for head in range(kv_heads):
            got = positions[row, head, valid[row, head]].tolist()
            assert got == alone[head, ok[head]].tolist()
    assert int(valid[2].sum(-1).min()) == 96  # row 2's 6 blocks fit its room: all of them


def test_rows_without_a_complete_far_block_select_nothing() -> None:
    """Right after a sequence passes sinks + window its far context holds no complete block:
    the selection is empty, not an error (a reshape of zero blocks was ambiguous)."""
    index = BlockIndex(4, size=8)
    index.extend(torch.randn(2, 40, 16), 9)  # one far token: no complete block
    positions, valid = select_rows([index], torch.randn(1, 4, 16), [100], 0, kv_heads=2)[:2]
    assert positions.shape == valid.shape == (1, 2, 0)
