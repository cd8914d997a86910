"""Each Triton kernel against its PyTorch twin on fresh random inputs.

Without CUDA the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1), which
is slow, so shapes stay small; ``gpu`` tests run the compiled kernels on CUDA, bf16 included.
"""

from __future__ import annotations

import pytest
import torch

from serving.kernels.blocks import bound_representatives, fixed_blocks, mean_representatives
from serving.kernels.merge import Partial, merge
from serving.kernels.triton_decode import (
    gather_positions,
    paged_decode,
    paged_decode_reference,
    selected_decode,
    selected_decode_reference,
)
from serving.kernels.triton_landmark import landmark_scores, landmark_scores_reference, top_blocks
from serving.kernels.triton_merge import merge_partials

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
TOLERANCE = {torch.float32: 1e-4, torch.float16: 2e-3, torch.bfloat16: 2e-2}


def block_table(
    kv_heads: int, length: int, size: int, chosen: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random distinct blocks per head of a ``size``-page table over ``length`` tokens (the
    last page ragged), plus one unused slot (length 0)."""
    table = fixed_blocks(0, length, size)
    starts, lengths = [], []
    for _ in range(kv_heads):
        pick = torch.randperm(len(table), generator=generator)[:chosen]
        starts.append(torch.cat([table.starts[pick], torch.zeros(1, dtype=torch.long)]))
        lengths.append(torch.cat([table.lengths[pick], torch.zeros(1, dtype=torch.long)]))
    return torch.stack(starts).to(DEVICE), torch.stack(lengths).to(DEVICE)


def check_decode(
    heads: int, kv_heads: int, dim: int, length: int, size: int, dtype: torch.dtype, seed: int
) -> None:
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(heads, dim, generator=generator).to(DEVICE, dtype)
    keys = torch.randn(kv_heads, length, dim, generator=generator).to(DEVICE, dtype)
    values = torch.randn(kv_heads, length, dim, generator=generator).to(DEVICE, dtype)
    starts, lengths = block_table(kv_heads, length, size, 3, generator)
    lengths[0, 0] = 0 if lengths.shape[1] > 2 else lengths[0, 0]  # an emptied slot mid-table
    got = paged_decode(query, keys, values, starts, lengths, dim**-0.5, block_n=16)
    expected = paged_decode_reference(query, keys, values, starts, lengths, dim**-0.5)
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(got.out, expected.out, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(got.lse, expected.lse, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize(("heads", "kv_heads"), [(2, 2), (4, 1), (4, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize(("length", "size"), [(70, 16), (40, 8), (50, 24)])
def test_paged_decode_matches_its_twin(
    heads: int, kv_heads: int, dtype: torch.dtype, length: int, size: int
) -> None:
    check_decode(heads, kv_heads, 16, length, size, dtype, seed=heads * 100 + length)


def test_paged_decode_of_no_block_is_empty() -> None:
    query, keys = torch.randn(2, 16, device=DEVICE), torch.randn(1, 8, 16, device=DEVICE)
    zero = torch.zeros(1, 1, dtype=torch.long, device=DEVICE)
    got = paged_decode(query, keys, keys, zero, zero, 0.25)
    assert torch.isinf(got.lse).all() and (got.out == 0).all()
    with pytest.raises(ValueError, match="power of two"):
        paged_decode(
            torch.randn(2, 12),
            torch.randn(1, 8, 12),
            torch.randn(1, 8, 12),
            zero.cpu(),
            zero.cpu(),
            0.25,
        )


def check_selected(
    rows: int,
    heads: int,
    kv_heads: int,
    lists: int,
    dim: int,
    length: int,
    dtype: torch.dtype,
    seed: int,
    count: int = 40,
    **options: int,
) -> None:
    """Rows of a decode batch over a strided cache slab (as the engine's cache hands them),
    each with its own padded position lists; one row selects nothing."""
    generator = torch.Generator().manual_seed(seed)
    query = torch.randn(rows, heads, dim, generator=generator).to(DEVICE, dtype)
    slab = torch.randn(2, rows + 1, kv_heads, length + 7, dim, generator=generator)
    slab = slab.to(DEVICE, dtype)
    keys, values = slab[0, :rows, :, :length], slab[1, :rows, :, :length]  # strided views
    count = min(length, count)
    positions = torch.stack(
        [torch.randperm(length, generator=generator)[:count] for _ in range(rows * lists)]
    ).view(rows, lists, count)
    valid = torch.rand(rows, lists, count, generator=generator) < 0.8
    valid[-1] = False  # a row with nothing to attend
    positions, valid = positions.to(DEVICE), valid.to(DEVICE)
    got = selected_decode(query, keys, values, positions, valid, dim**-0.5, **options)
    expected = selected_decode_reference(query, keys, values, positions, valid, dim**-0.5)
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(got.out, expected.out, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(got.lse, expected.lse, atol=tolerance, rtol=tolerance)
    assert torch.isinf(got.lse[-1]).all() and bool((got.out[-1] == 0).all())
    pieces = selected_decode_reference(query, keys, values, positions, valid, dim**-0.5, split=7)
    torch.testing.assert_close(pieces.out, expected.out, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(pieces.lse, expected.lse, atol=tolerance, rtol=tolerance)


@pytest.mark.parametrize("layout", ["contiguous", "cache view", "transposed"])
def test_gather_positions_reads_each_lists_kv_head(layout: str) -> None:
    """Lists per query head read their group's KV head, from a contiguous tensor, a slice of
    a cache slab (the index_select path) or a tensor whose rows are not contiguous."""
    slab = torch.randn(3, 2, 30, 8)
    tensor = {
        "contiguous": slab,
        "cache view": slab[1:, :, 5:25],
        "transposed": slab.transpose(-1, -2).contiguous().transpose(-1, -2),
    }[layout]
    positions = torch.randint(0, tensor.shape[2], (tensor.shape[0], 4, 6))
    got = gather_positions(tensor, positions)
    for row in range(tensor.shape[0]):
        for head in range(4):
            expected = tensor[row, head // 2, positions[row, head]]
            torch.testing.assert_close(got[row, head], expected, atol=0, rtol=0)


@pytest.mark.parametrize(
    ("heads", "kv_heads", "lists"), [(2, 2, 2), (4, 1, 1), (4, 2, 2), (4, 2, 4), (8, 2, 4)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("split", [8, 256])
def test_selected_decode_matches_its_twin(
    heads: int, kv_heads: int, lists: int, dtype: torch.dtype, split: int
) -> None:
    """Lists per KV head (block selection) or per query head (retrieval); several splits per
    list (merged by the merge kernel) or one."""
    seed = heads * 10 + lists + split
    check_selected(3, heads, kv_heads, lists, 16, 60, dtype, seed, split=split, block_n=8)


@pytest.mark.parametrize(("heads", "kv_heads"), [(2, 2), (6, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("bounds", [False, True])
def test_batched_landmark_scores_match_their_twin(
    heads: int, kv_heads: int, dtype: torch.dtype, bounds: bool
) -> None:
    """Each row of a decode batch scored against its own representatives."""
    generator = torch.Generator().manual_seed(heads + 2 * int(bounds))
    keys = torch.randn(3, kv_heads, 75, 16, generator=generator)
    table = fixed_blocks(0, 75, 8)
    build = bound_representatives if bounds else mean_representatives
    vectors = torch.stack([build(k, table) for k in keys]).to(DEVICE, dtype)  # (3, Hkv, nb, ...)
    query = torch.randn(3, heads, 16, generator=generator).to(DEVICE, dtype)
    got = landmark_scores(query, vectors, block_b=4)
    expected = torch.stack(
        [landmark_scores_reference(q, v) for q, v in zip(query, vectors, strict=True)]
    )
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(got, expected, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(
        landmark_scores_reference(query, vectors), expected, atol=1e-5, rtol=1e-5
    )


@pytest.mark.parametrize(("heads", "kv_heads"), [(2, 2), (6, 2)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("bounds", [False, True])
def test_landmark_scores_match_their_twin(
    heads: int, kv_heads: int, dtype: torch.dtype, bounds: bool
) -> None:
    generator = torch.Generator().manual_seed(heads + int(bounds))
    keys = torch.randn(kv_heads, 75, 16, generator=generator)
    table = fixed_blocks(0, 75, 8)  # 10 blocks, the last ragged
    vectors = bound_representatives(keys, table) if bounds else mean_representatives(keys, table)
    vectors = vectors.to(DEVICE, dtype)
    query = torch.randn(heads, 16, generator=generator).to(DEVICE, dtype)
    tolerance = TOLERANCE[dtype]
    got = landmark_scores(query, vectors, block_b=4)
    torch.testing.assert_close(
        got, landmark_scores_reference(query, vectors), atol=tolerance, rtol=tolerance
    )
    chosen = top_blocks(query, vectors, count=2, neighbours=1)
    best = got.topk(2, dim=1).indices
    assert bool(torch.gather(chosen, 1, best).all()) and int(chosen.sum(1).max()) <= 6


@pytest.mark.parametrize("parts", [1, 2, 5])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_merge_kernel_matches_its_twin(parts: int, dtype: torch.dtype) -> None:
    generator = torch.Generator().manual_seed(parts)
    outs = torch.randn(parts, 3, 32, generator=generator).to(DEVICE, dtype)
    lses = (4 * torch.randn(parts, 3, generator=generator)).to(DEVICE)
    lses[0, 1] = float("-inf")  # head 1 never saw part 0
    if parts > 1:
        lses[:, 2] = float("-inf")  # head 2 saw nothing at all
    outs[torch.isinf(lses)] = 0  # a part a head saw nothing of has output 0
    got = merge_partials(outs, lses)
    expected = merge([Partial(outs[i].float(), lses[i]) for i in range(parts)])
    tolerance = TOLERANCE[dtype]
    torch.testing.assert_close(got.out, expected.out, atol=tolerance, rtol=tolerance)
    torch.testing.assert_close(got.lse, expected.lse, atol=tolerance, rtol=tolerance)


@pytest.mark.gpu
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_compiled_kernels_at_model_shapes(dtype: torch.dtype) -> None:
    """Llama-3-8B-shaped decode: 32 query heads, 8 KV heads, head dim 128, 64-token pages;
    a batch of 4 rows over 2048 selected positions each (per KV head and per query head)."""
    check_decode(32, 8, 128, 8192, 64, dtype, seed=7)
    check_selected(4, 32, 8, 8, 128, 8192, dtype, seed=8, count=2048)
    check_selected(4, 32, 8, 32, 128, 8192, dtype, seed=9, count=2048, split=512)
    keys = torch.randn(8, 8192, 128, device=DEVICE)
    vectors = mean_representatives(keys, fixed_blocks(0, 8192, 64)).to(dtype)
    query = torch.randn(32, 128, device=DEVICE, dtype=dtype)
    torch.testing.assert_close(
        landmark_scores(query, vectors),
        landmark_scores_reference(query, vectors),
        atol=0.05,
        rtol=0.02,
    )
