"""Long-context attention against full attention (PyTorch SDPA), measured in the same run.

``python -m benchmarks.attention --context 131072 --seed 0 --json`` prints one JSON list of rows
``{context, method, keys_touched, recall_top100, rel_error, step_ms, speedup_vs_full,
memory_mb}`` (fractions as 0-1); without ``--json`` a Markdown table. ``--workload perplexity``
instead scores the tiny pretrained model on Gutenberg text at a 25% attention budget.

Synthetic workload (RetrievalAttention's setting, built here): per KV head, keys are
``mu_k + topic(passage) + 0.3 noise`` in passages of 16-64 tokens, queries are
``mu_q + 2 topic(target) + 0.5 noise`` with ``mu_k`` and ``mu_q`` independent, so queries and
keys are out of distribution for each other. Four passages at random far positions share one
"needle" topic (the planted relevant keys); the prompt's last 64 queries ask about it, and so
does the decode query (one per query head, GQA group of ``--group``). Other prompt queries each
look at a random earlier passage. Values are N(0, 1).

Methods, one decode step for all heads:

- ``full``: ``scaled_dot_product_attention`` over every key;
- ``blocks``: 128 sinks + 512 local tokens exact, 64-token pages with InfLLM mean-of-top-4
  representatives (from the prompt's last queries), top blocks +-1 neighbours in a 2048-token
  budget; ``blocks-quest``: the same with Quest min/max bounds; ``blocks-events``: EM-LLM event
  boundaries (surprise = distance between consecutive keys, standing in for token surprise),
  sizes in [8, 128];
- ``retrieval``: the same static set plus the top-100 keys per query head from the attention
  graph, built per 8192-token segment from every ``context/512``-th prompt query of each head
  plus the last 64 (the paper builds it from all prefill queries; sampling bounds build time).

``--batch B`` instead decodes B sequences of each context together (seeds seed .. seed+B-1)
through the built-in engine's attention modes (``serving.engine``: ``full``, ``blocks``,
``blocks-quest``, ``retrieval`` with the same sinks, window, 2048-token budget and 64-token
pages; retrieval indexes 1024-token segments and takes what the budget leaves), and reports
``step_ms`` for one decode step of the whole batch (one layer), ``ms_per_sequence`` and
``rel_error`` against full attention. Index construction is not timed.

``keys_touched``: key vectors scored or attended per query head over the context (static set,
representatives scored — two per block for bounds — selected tokens; for retrieval the keys
the search scored and the guide queries it compared). ``recall_top100``: share of each query
head's 100 highest-scoring keys that the method attends to. ``rel_error``:
``|o - o_full| / |o_full|`` averaged over heads. ``step_ms``: median decode-step time;
``memory_mb``: key/value/index bytes a step reads. Index construction is not timed.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from serving.kernels.blocks import BlockIndex, BlockTable, event_blocks
from serving.kernels.config import Representative
from serving.kernels.merge import attend, merge
from serving.kernels.retrieval import AttentionGraph
from serving.kernels.static import Layout, layout, static_attention

if TYPE_CHECKING:
    from serving.engine.attention import AttentionMode

N_INIT, N_LOCAL, BUDGET, TOP_K, BLOCK = 128, 512, 2048, 256, 64


@dataclass(frozen=True, slots=True)
class Row:
    context: int
    method: str
    keys_touched: float
    recall_top100: float
    rel_error: float
    step_ms: float
    speedup_vs_full: float
    memory_mb: float


@dataclass(frozen=True, slots=True)
class Workload:
    keys: torch.Tensor  # (Hkv, N, D)
    values: torch.Tensor  # (Hkv, N, D)
    query: torch.Tensor  # (Hq, D) the decode query
    prompt: torch.Tensor  # (Hkv, Q, D) sampled prompt queries (group heads stacked)
    prompt_positions: torch.Tensor  # (Q,) their positions (same for every head)
    recent: torch.Tensor  # (Hkv, 64, D) the prompt's last queries, group-mean


def workload(context: int, kv_heads: int, group: int, dim: int, seed: int) -> Workload:
    generator = torch.Generator().manual_seed(seed)

    def noise(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator)

    lengths = torch.randint(16, 65, (context // 16 + 1,), generator=generator)
    ends = torch.cumsum(lengths, 0)
    passages = int((ends < context).sum()) + 1
    passage_of = torch.repeat_interleave(torch.arange(passages), lengths[:passages])[:context]
    topics = noise(kv_heads, passages, dim)
    far = torch.arange(passages)[
        (ends[:passages] > N_INIT) & (ends[:passages] < context - N_LOCAL - 64)
    ]
    needles = far[torch.randperm(far.numel(), generator=generator)[:4]]
    topics[:, needles] = topics[:, needles[:1]]
    key_mean, query_mean = noise(kv_heads, 1, dim), noise(kv_heads, 1, dim)
    keys = key_mean + topics[:, passage_of] + 0.3 * noise(kv_heads, context, dim)
    values = noise(kv_heads, context, dim)
    needle = topics[:, int(needles[0])]  # (Hkv, D)
    # prompt queries: every (context/512)-th position, each at a random earlier passage; the
    # last 64 at the needle
    stride = max(1, context // 512)
    positions = torch.arange(stride, context - 64, stride)
    targets = (torch.rand(positions.numel(), generator=generator) * passage_of[positions]).long()
    sampled = query_mean[:, None] + 2 * topics[:, targets][:, None]  # (Hkv, 1, P, D)
    sampled = sampled + 0.5 * noise(kv_heads, group, positions.numel(), dim)
    asking = query_mean[:, None] + 2 * needle[:, None, None] + 0.5 * noise(kv_heads, group, 64, dim)
    prompt = torch.cat([sampled, asking], 2)  # (Hkv, G, Q, D)
    query = query_mean + 2 * needle[:, None] + 0.5 * noise(kv_heads, group, dim)  # (Hkv, G, D)
    return Workload(
        keys,
        values,
        query.reshape(kv_heads * group, dim),
        prompt.reshape(kv_heads, -1, dim),
        torch.cat([positions, torch.arange(context - 64, context)]).repeat(group),
        asking.mean(1),
    )


def timed(step: Callable[[], torch.Tensor], repeats: int) -> tuple[torch.Tensor, float]:
    out = step()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        out = step()
        times.append(time.perf_counter() - start)
    return out, 1000 * statistics.median(times)


def full_step(data: Workload, scaling: float) -> torch.Tensor:
    group = data.query.shape[0] // data.keys.shape[0]
    return F.scaled_dot_product_attention(
        data.query[None, :, None],
        data.keys[None],
        data.values[None],
        scale=scaling,
        enable_gqa=group > 1,
    )[0, :, 0]


@dataclass(frozen=True, slots=True)
class Setting:
    """One context's workload, exact answer and what every method is compared on."""

    data: Workload
    split: Layout
    scaling: float
    group: int
    exact: torch.Tensor  # (Hq, D) full attention's output
    truth: torch.Tensor  # (Hq, 100) each query head's top-100 keys
    full_ms: float

    @property
    def static(self) -> set[int]:
        return set(range(self.split.init_end)) | set(range(self.split.far_end, self.split.total))

    def row(
        self,
        method: str,
        out: torch.Tensor,
        ms: float,
        attended: list[set[int]],
        touched: torch.Tensor,
        read_bytes: float,
    ) -> Row:
        heads = self.truth.shape[0]
        recall = statistics.mean(
            len(attended[h] & set(self.truth[h].tolist())) / 100 for h in range(heads)
        )
        error = ((out - self.exact).norm(dim=-1) / self.exact.norm(dim=-1)).mean()
        context = self.split.total
        return Row(
            context,
            method,
            float(touched.float().mean()) / context,
            recall,
            float(error),
            ms,
            self.full_ms / ms,
            read_bytes / 2**20,
        )


def bench_blocks(setting: Setting, method: str, repeats: int) -> Row:
    data, split, scaling, group = setting.data, setting.split, setting.scaling, setting.group
    kv_heads, _, dim = data.keys.shape
    representative: Representative = "bounds" if method == "blocks-quest" else "mean"
    index = BlockIndex(N_INIT, size=BLOCK, representative=representative)
    if method == "blocks-events":
        # surprise stand-in: how far each key moved from the previous one
        moved = data.keys[:, N_INIT + 1 : split.far_end] - data.keys[:, N_INIT : split.far_end - 1]
        surprise = moved.norm(dim=-1).mean(0)
        table = event_blocks(torch.cat([surprise[:1], surprise]), N_INIT, min_size=8, max_size=128)
        closed = BlockTable(table.starts[:-1], table.lengths[:-1])  # the open event stays exact
        index.extend(data.keys, split.far_end, data.recent, table=closed)
    else:
        index.extend(data.keys, split.far_end, data.recent)
    tail = torch.arange(index.end, split.far_end)
    room = BUDGET - split.static_length - tail.numel()
    query = data.query[:, None]  # (Hq, 1, D)
    selected: dict[str, torch.Tensor] = {}

    def step() -> torch.Tensor:
        static = static_attention(query, data.keys, data.values, split, scaling)
        positions, valid, read = index.select(query, room, 1, kv_heads=kv_heads)
        positions = torch.cat([positions, tail.expand(kv_heads, -1)], 1)
        valid = torch.cat([valid, torch.ones(kv_heads, tail.numel(), dtype=torch.bool)], 1)
        selected.update(positions=positions, valid=valid, read=torch.tensor(read))
        picked = positions[..., None].expand(-1, -1, dim)
        far = attend(
            query,
            torch.gather(data.keys, 1, picked),
            torch.gather(data.values, 1, picked),
            scaling,
            valid.repeat_interleave(group, 0)[:, None, :],
        )
        return merge([static, far]).out[:, 0]

    out, ms = timed(step, repeats)
    positions, valid = selected["positions"], selected["valid"]
    attended = [
        setting.static | set(positions[h // group, valid[h // group]].tolist())
        for h in range(data.query.shape[0])
    ]
    tokens = valid.sum(1) + split.static_length  # (Hkv,) tokens attended per KV head
    read = int(selected["read"])  # representative vectors scored per KV head
    touched = (tokens + read).repeat_interleave(group)
    read_bytes = float((2 * tokens + read).sum()) * dim * data.keys.element_size()
    return setting.row(method, out, ms, attended, touched, read_bytes)


def bench_retrieval(setting: Setting, repeats: int, segment: int = 8192) -> Row:
    data, split, scaling = setting.data, setting.split, setting.scaling
    heads, dim = data.query.shape
    head_of = torch.arange(heads) // setting.group
    graph = AttentionGraph(N_INIT)
    final = data.prompt_positions >= split.far_end  # the prompt's last queries
    for end in range(N_INIT + segment, split.far_end + segment, segment):
        end = min(end, split.far_end)
        inside = (data.prompt_positions >= end - segment) & (data.prompt_positions < end)
        last = end == split.far_end
        graph.extend(data.keys, end, data.prompt[:, inside | (final & last)])
    query = data.query[:, None]
    found: dict[str, torch.Tensor] = {}

    def step() -> torch.Tensor:
        static = static_attention(query, data.keys, data.values, split, scaling)
        result = graph.search(data.keys, data.query, TOP_K)
        found.update(indices=result.indices, touched=result.touched)
        keys = data.keys[head_of[:, None], result.indices]  # (Hq, k, D)
        values = data.values[head_of[:, None], result.indices]
        far = attend(query, keys, values, scaling, result.valid[:, None, :])
        return merge([static, far]).out[:, 0]

    out, ms = timed(step, repeats)
    attended = [setting.static | set(found["indices"][h].tolist()) for h in range(heads)]
    touched = found["touched"] + split.static_length
    element = data.keys.element_size()
    static_bytes = 2 * split.static_length * data.keys.shape[0] * dim * element
    read_bytes = static_bytes + float((found["touched"] + TOP_K).sum()) * dim * element
    return setting.row("retrieval", out, ms, attended, touched, read_bytes)


def bench_context(
    context: int, kv_heads: int, group: int, dim: int, seed: int, repeats: int
) -> list[Row]:
    data = workload(context, kv_heads, group, dim, seed)
    scaling = dim**-0.5
    exact, full_ms = timed(lambda: full_step(data, scaling), repeats)
    head_of = torch.arange(kv_heads * group) // group
    truth = torch.einsum("hd,hnd->hn", data.query, data.keys[head_of]).topk(100, dim=1).indices
    split = layout(context - 1, 1, N_INIT, N_LOCAL)  # the decode token is the last key
    setting = Setting(data, split, scaling, group, exact, truth, full_ms)
    full_bytes = 2 * context * kv_heads * dim * data.keys.element_size()
    rows = [Row(context, "full", 1.0, 1.0, 0.0, full_ms, 1.0, full_bytes / 2**20)]
    for method in ("blocks", "blocks-quest", "blocks-events"):
        rows.append(bench_blocks(setting, method, repeats))
    rows.append(bench_retrieval(setting, repeats))
    return rows


@dataclass(frozen=True, slots=True)
class BatchRow:
    context: int
    batch: int
    method: str
    step_ms: float
    ms_per_sequence: float
    speedup_vs_full: float
    rel_error: float


def batch_rows(
    context: int, batch: int, kv_heads: int, group: int, dim: int, seed: int, repeats: int
) -> list[BatchRow]:
    """One decode step of ``batch`` sequences through each engine mode (see the docstring)."""
    from serving.engine.attention import CURRENT, ForwardBatch, FullAttention, ModeContext
    from serving.engine.cache import SlotKVCache
    from serving.engine.config import EngineConfig
    from serving.engine.retrieval import RetrievalAttention
    from serving.engine.selection import BlockAttention
    from serving.kernels.config import AttentionConfig

    keys = torch.empty(batch, kv_heads, context, dim)
    values = torch.empty_like(keys)
    query = torch.empty(batch, kv_heads * group, 1, dim)
    loads = []
    for row in range(batch):
        data = workload(context, kv_heads, group, dim, seed + row)
        keys[row], values[row], query[row, :, 0] = data.keys, data.values, data.query
        loads.append(replace(data, keys=keys[row], values=values[row]))
    split = layout(context - 1, 1, N_INIT, N_LOCAL)
    base = AttentionConfig(budget=BUDGET, sinks=N_INIT, window=N_LOCAL, block_size=BLOCK)
    modes: dict[str, AttentionMode] = {"full": FullAttention()}
    pairs: tuple[tuple[str, Representative], ...] = (("blocks", "mean"), ("blocks-quest", "bounds"))
    for method, representative in pairs:
        config = replace(base, mode="blocks", representative=representative, neighbours=1)
        blocks = BlockAttention(ModeContext(EngineConfig(attention=config)))
        for row, data in enumerate(loads):
            state = blocks.new_state()
            state.recent = data.recent
            state.index.extend(data.keys, split.far_end, data.recent)
            blocks.states[row] = [state]
        modes[method] = blocks
    config = replace(base, mode="retrieval", retrieval_segment=1024)
    retrieval = RetrievalAttention(ModeContext(EngineConfig(attention=config)))
    for row, data in enumerate(loads):
        graphed = retrieval.new_state()
        final = data.prompt_positions >= split.far_end
        for end in range(N_INIT + 1024, split.far_end + 1024, 1024):
            end = min(end, split.far_end)
            inside = (data.prompt_positions >= end - 1024) & (data.prompt_positions < end)
            last = end == split.far_end
            graphed.graph.extend(data.keys, end, data.prompt[:, inside | (final & last)])
        retrieval.states[row] = [graphed]
    modes["retrieval"] = retrieval
    cache = SlotKVCache(1, kv_heads, dim, dtype=torch.float32, device="cpu")  # not read
    past, scaling = torch.full((batch,), context - 1), dim**-0.5
    rows, exact, full_ms = [], torch.empty(0), 0.0
    for method, mode in modes.items():
        token = CURRENT.set(ForwardBatch(cache, torch.arange(batch), past, 1, mode))
        try:
            out, ms = timed(partial(mode, query, keys, values, past, scaling, 0), repeats)
        finally:
            CURRENT.reset(token)
        if method == "full":
            exact, full_ms = out, ms
        error = ((out - exact).norm(dim=-1) / exact.norm(dim=-1)).mean()
        rows.append(BatchRow(context, batch, method, ms, ms / batch, full_ms / ms, float(error)))
    return rows


def perplexity_rows(model: Path, texts: Path, windows: int, seed: int) -> list[dict[str, object]]:
    """Per-token perplexity of the tiny model over ``windows`` 511-token windows of Gutenberg
    text (one book each, random start), full attention against blocks and retrieval at a
    128-token (25%) budget: 4 sinks + 32 local + selected, every token fed as its own step."""
    from serving.engine.config import EngineConfig
    from serving.kernels.config import AttentionConfig

    books = sorted(texts.glob("*.txt"))
    if not books:
        sys.exit(f"no .txt books in {texts}; pass --texts")
    base = EngineConfig(model=str(model), max_context=512)
    small = AttentionConfig(budget=128, sinks=4, window=32, block_size=8, retrieval_segment=32)
    configs = {
        "full": base,
        **{
            mode: replace(base, prefill_chunk=1, attention=replace(small, mode=mode))
            for mode in ("blocks", "retrieval")
        },
    }
    logprobs = {method: _score(config, books, windows, seed) for method, config in configs.items()}
    full, full_tail = _perplexity(logprobs["full"]), _perplexity(_tail(logprobs["full"]))
    rows: list[dict[str, object]] = []
    for method, scored in logprobs.items():
        value, tail = _perplexity(scored), _perplexity(_tail(scored))
        rows.append(
            {
                "context": 512,
                "method": method,
                "budget": configs[method].attention.budget if method != "full" else 512,
                "perplexity": value,
                "ratio_vs_full": value / full,
                "perplexity_past_128": tail,
                "ratio_past_128": tail / full_tail,
                "tokens": len(scored),
            }
        )
    return rows


def _score(config: object, books: list[Path], windows: int, seed: int) -> list[float]:
    """Log-probabilities of every window's tokens (but the first) under one engine config."""
    import asyncio

    from serving.engine.config import EngineConfig
    from serving.engine.engine import EngineRequest, PromptResult, TorchEngine
    from serving.llm import SamplingParams

    assert isinstance(config, EngineConfig)
    engine = TorchEngine(config)
    picks = torch.Generator().manual_seed(seed)

    async def scored(spec: EngineRequest) -> list[float]:
        async for item in engine.generate(spec):
            if isinstance(item, PromptResult) and item.prompt_logprobs:
                return [t.logprob for t in item.prompt_logprobs[1:] if t.logprob is not None]
        return []

    values: list[float] = []
    try:
        for window in range(windows):
            book = books[window % len(books)].read_text(encoding="utf-8", errors="replace")
            ids = engine.tokenizer(book, add_special_tokens=False)["input_ids"]
            start = int(torch.randint(0, len(ids) - 512, (1,), generator=picks))
            spec = EngineRequest(tuple(ids[start : start + 511]), SamplingParams(max_tokens=1), 0)
            values += asyncio.run(scored(spec))
    finally:
        engine.shutdown()
    return values


def _perplexity(logprobs: list[float]) -> float:
    return math.exp(-statistics.mean(logprobs))


def _tail(scored: list[float]) -> list[float]:
    """Tokens of each 510-token window past position 128 (where the budget starts to bind)."""
    return [value for index, value in enumerate(scored) if index % 510 >= 128]


def markdown(rows: Sequence[dict[str, object]]) -> str:
    names = list(rows[0])
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for row in rows:
        cells = [f"{v:.4g}" if isinstance(v, float) else str(v) for v in row.values()]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--context", type=int, nargs="+", default=[8192, 32768, 131072])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kv-heads", type=int, default=8)
    parser.add_argument("--group", type=int, default=4, help="query heads per KV head")
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads for every method (shared CPU: 1)"
    )
    parser.add_argument("--json", action="store_true", help="print one JSON list of rows")
    parser.add_argument("--workload", choices=["synthetic", "perplexity"], default="synthetic")
    parser.add_argument(
        "--model", type=Path, default=Path("../shared/eval-data/tinystories-260k/hf")
    )
    parser.add_argument("--texts", type=Path, default=Path("../shared/eval-data/gutenberg-novels"))
    parser.add_argument("--windows", type=int, default=4, help="perplexity: 512-token windows")
    parser.add_argument(
        "--batch",
        type=int,
        default=0,
        help="decode this many sequences together through the engine's modes (0: one, "
        "kernels alone)",
    )
    options = parser.parse_args(argv)
    torch.manual_seed(options.seed)
    torch.set_num_threads(options.threads)
    rows: list[dict[str, object]]
    if options.workload == "perplexity":
        if not (options.model / "config.json").is_file():
            sys.exit(f"no model at {options.model}; pass --model (the stories260K hf folder)")
        rows = perplexity_rows(options.model, options.texts, options.windows, options.seed)
    else:
        rows = []
        for context in options.context:
            if context < 4 * BUDGET:
                sys.exit(f"--context {context} is too short; use at least {4 * BUDGET}")
            shape = (options.kv_heads, options.group, options.dim, options.seed, options.repeats)
            found: Sequence[Row | BatchRow] = (
                batch_rows(context, options.batch, *shape)
                if options.batch
                else bench_context(context, *shape)
            )
            rows += [asdict(r) for r in found]
            if not options.json:
                print(markdown([asdict(r) for r in found]), flush=True)
    if options.json:
        print(json.dumps(rows))
    elif options.workload == "perplexity":
        print(markdown(rows))


if __name__ == "__main__":
    main()
