"""Each Triton kernel against its PyTorch twin on fresh random inputs.

Without CUDA the kernels run in Triton's interpreter (conftest sets TRITON_INTERPRET=1), which
is slow, so shapes stay small; ``gpu`` tests run the compiled kernels on CUDA, bf16 included.
"""

from __future__ import annotations

import pytest
import torch

from serving.kernels.blocks import bound_representatives, fixed_blocks, mean_representatives
from serving.kernels.merge import Partial, merge
from serving.kernels.triton_decode import paged_decode, paged_decode_reference
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
    """Llama-3-8B-shaped decode: 32 query heads, 8 KV heads, head dim 128, 64-token pages."""
    check_decode(32, 8, 128, 8192, 64, dtype, seed=7)
    keys = torch.randn(8, 8192, 128, device=DEVICE)
    vectors = mean_representatives(keys, fixed_blocks(0, 8192, 64)).to(dtype)
    query = torch.randn(32, 128, device=DEVICE, dtype=dtype)
    torch.testing.assert_close(
        landmark_scores(query, vectors),
        landmark_scores_reference(query, vectors),
        atol=0.05,
        rtol=0.02,
    )
