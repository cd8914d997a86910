"""Long-context attention against full attention (PyTorch SDPA), measured in the same run.

``python -m benchmarks.attention --context 131072 --seed 0 --json`` prints one JSON list of rows
``{context, layers, method, keys_touched, recall_top100, rel_error, step_ms, ms_per_token,
speedup_vs_full, memory_mb, peak_mb}`` (fractions as 0-1); without ``--json`` a caption line
and a Markdown table per context. ``--workload perplexity`` instead scores the tiny pretrained
model on Gutenberg text at a 25% attention budget.

Synthetic workload (RetrievalAttention's setting, built here): per KV head, keys are
``mu_k + topic(passage) + 0.3 noise`` in passages of 16-64 tokens, queries are
``mu_q + 2 topic(target) + 0.5 noise`` with ``mu_k`` and ``mu_q`` independent, so queries and
keys are out of distribution for each other. Four passages at random far positions share one
"needle" topic (the planted relevant keys); the prompt's last 64 queries ask about it, and so
does the decode query (one per query head, GQA group of ``--group``). Other prompt queries each
look at a random earlier passage. Values are N(0, 1). ``--device cuda`` builds it on the GPU
(the two big draws from a CUDA generator: other numbers than a CPU run of the seed) in
``--dtype``; ``--layers L`` stacks L independent layers (seed + layer each, own indexes), and a
decoded token is one step through all L layers' attention (issue 16, ``benchmarks/gpu.sh``).

Methods, one decode step for all heads, as PyTorch on the workload's device:

- ``full``: ``scaled_dot_product_attention`` over every key;
- ``blocks``: 128 sinks + 512 local tokens exact, 64-token pages with InfLLM mean-of-top-4
  representatives (from the prompt's last queries), top blocks +-1 neighbours in a 2048-token
  budget; ``blocks-quest``: the same with Quest min/max bounds; ``blocks-events``: EM-LLM event
  boundaries (surprise = distance between consecutive keys, standing in for token surprise),
  sizes in [8, 128];
- ``retrieval``: the same static set plus the top-256 keys per query head from the attention
  graph, built per 8192-token segment from every ``context/512``-th prompt query of each head
  plus the last 64 (the paper builds it from all prefill queries; sampling bounds build time).
  The graph lives and is searched in CPU memory, over a float32 copy of the keys that
  ``AttentionGraph`` makes, as RetrievalAttention keeps it. A graph takes seconds a layer to
  build (15 s at 128k on one CPU thread): ``--retrieval-layers R`` builds and times it on the
  first R layers only, scaling its time per token by L/R (its row says ``layers`` R).

``--batch B`` instead decodes B sequences of each context together (layer l's rows: seeds
seed + l * B .. seed + l * B + B - 1) through the built-in engine's attention modes
(``serving.engine``: ``full``, ``blocks``, ``blocks-quest``, ``retrieval`` with the same
sinks, window, budget and pages; retrieval indexes 1024-token segments and takes what the
budget leaves), whose batched decode runs the Triton kernels on CUDA tensors and the PyTorch
twins on a CPU; rows ``{context, batch, layers, method, step_ms, ms_per_token,
speedup_vs_full, rel_error, peak_mb}``.

``keys_touched``: key vectors scored or attended per query head over the context (static set,
representatives scored — two per block for bounds — selected tokens; for retrieval the keys
the search scored and the guide queries it compared). ``recall_top100``: share of each query
head's 100 highest-scoring keys that the method attends to. ``rel_error``:
``|o - o_exact| / |o_exact|`` averaged over heads, ``o_exact`` being full attention in float32
over float32 copies (in float32 the ``full`` row itself; in bfloat16 that row shows SDPA's own
rounding). Those three are averaged over layers. ``layers``: layers the method ran.
``step_ms``: median time of one decode step through them (the whole batch; CUDA synchronised
before and after). ``ms_per_token``: one sequence's token through all L layers,
``step_ms * L / layers / batch``. ``speedup_vs_full``: full's ``ms_per_token`` over the
method's. ``memory_mb``: key/value/index bytes a token reads through the L layers.
``peak_mb``: on CUDA ``torch.cuda.max_memory_allocated`` over the method's timed steps (reset
once its indexes are built: the stack's KV, its device-side indexes, the steps' workspace);
null on a CPU. Index construction is not timed; stderr says how long it took.
"""

from __future__ import annotations

import argparse
import json
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

from benchmarks.perplexity import perplexity_rows
from serving.kernels.blocks import BlockIndex, BlockTable, event_blocks
from serving.kernels.config import Representative
from serving.kernels.merge import attend, merge
from serving.kernels.retrieval import AttentionGraph
from serving.kernels.static import Layout, layout, static_attention

if TYPE_CHECKING:
    from serving.engine.attention import AttentionMode

N_INIT, N_LOCAL, BUDGET, TOP_K, BLOCK = 128, 512, 2048, 256, 64
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
BLOCK_METHODS = ("blocks", "blocks-quest", "blocks-events")


@dataclass(frozen=True, slots=True)
class Row:
    context: int
    layers: int
    method: str
    keys_touched: float
    recall_top100: float
    rel_error: float
    step_ms: float
    ms_per_token: float
    speedup_vs_full: float
    memory_mb: float
    peak_mb: float | None


@dataclass(frozen=True, slots=True)
class BatchRow:
    context: int
    batch: int
    layers: int
    method: str
    step_ms: float
    ms_per_token: float
    speedup_vs_full: float
    rel_error: float
    peak_mb: float | None


@dataclass(frozen=True, slots=True)
class Target:
    """Where the workload lives (device, dtype) and how decode steps are timed there."""

    device: torch.device
    dtype: torch.dtype = torch.float32
    repeats: int = 5

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def timed(
        self, steps: Sequence[Callable[[], torch.Tensor]]
    ) -> tuple[list[torch.Tensor], float]:
        """Run ``steps`` (one per layer, in order: one decoded token through the stack) once to
        warm up (Triton compiles, caches fill), then ``repeats`` times: the last run's outputs
        and the median milliseconds of a run. CUDA kernels run asynchronously, so the device
        is synchronised before and after each timed run."""
        outs = [step() for step in steps]
        times = []
        for _ in range(self.repeats):
            self.sync()
            start = time.perf_counter()
            outs = [step() for step in steps]
            self.sync()
            times.append(time.perf_counter() - start)
        return outs, 1000 * statistics.median(times)

    def reset_peak(self) -> None:
        if self.cuda:
            torch.cuda.reset_peak_memory_stats(self.device)

    def peak_mb(self) -> float | None:
        """Accelerator memory allocated at most since :meth:`reset_peak`, MiB; None on a CPU."""
        return torch.cuda.max_memory_allocated(self.device) / 2**20 if self.cuda else None


CPU = Target(torch.device("cpu"))


@dataclass(frozen=True, slots=True)
class Workload:
    keys: torch.Tensor  # (Hkv, N, D) on the device, in the dtype
    values: torch.Tensor  # (Hkv, N, D)
    query: torch.Tensor  # (Hq, D) the decode query
    prompt: torch.Tensor  # (Hkv, Q, D) sampled prompt queries (group heads stacked)
    prompt_positions: torch.Tensor  # (Q,) CPU: their positions (same for every head)
    recent: torch.Tensor  # (Hkv, 64, D) float32: the prompt's last queries, group-mean


def workload(
    context: int,
    kv_heads: int,
    group: int,
    dim: int,
    seed: int,
    device: torch.device | None = None,
    dtype: torch.dtype = torch.float32,
) -> Workload:
    device = device or torch.device("cpu")
    generator = torch.Generator().manual_seed(seed)
    # The two big draws (key noise and values, 2 * Hkv * N * D numbers) are made on the device:
    # a CPU generator takes seconds per layer at 128k. On a CPU they come from the one generator
    # in the order they always did, so a seed gives the numbers it gave before.
    bulk = generator if device.type == "cpu" else torch.Generator(device).manual_seed(seed)

    def noise(*shape: int, source: torch.Generator = generator) -> torch.Tensor:
        return torch.randn(*shape, generator=source, device=source.device)

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
    spread = topics.to(device)[:, passage_of.to(device)]  # (Hkv, N, D) each key's topic
    keys = key_mean.to(device) + spread + 0.3 * noise(kv_heads, context, dim, source=bulk)
    values = noise(kv_heads, context, dim, source=bulk)
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
        keys.to(dtype),
        values.to(dtype),
        query.reshape(kv_heads * group, dim).to(device, dtype),
        prompt.reshape(kv_heads, -1, dim).to(device, dtype),
        torch.cat([positions, torch.arange(context - 64, context)]).repeat(group),
        asking.mean(1).to(device),
    )


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
class Measure:
    """What one layer's decode step of one method attended, against the exact answer."""

    keys_touched: float  # share of the context scored or attended, mean over query heads
    recall_top100: float
    rel_error: float
    read_bytes: float  # key/value/index bytes the step read


@dataclass(frozen=True, slots=True)
class Probe:
    """One layer's decode step of one method, and what its last call attended."""

    step: Callable[[], torch.Tensor]  # -> (Hq, D) the decode query's output
    measure: Callable[[torch.Tensor], Measure]  # of the last step's output


@dataclass(frozen=True, slots=True)
class Setting:
    """One layer's workload, exact answer and what every method is compared on."""

    data: Workload
    split: Layout
    scaling: float
    group: int
    exact: torch.Tensor  # (Hq, D) float32 full attention over float32 copies
    truth: torch.Tensor  # (Hq, 100) CPU: each query head's top-100 keys

    @property
    def static(self) -> set[int]:
        return set(range(self.split.init_end)) | set(range(self.split.far_end, self.split.total))

    def measure(
        self, out: torch.Tensor, attended: list[set[int]], touched: torch.Tensor, read: float
    ) -> Measure:
        heads = self.truth.shape[0]
        recall = statistics.mean(
            len(attended[h] & set(self.truth[h].tolist())) / 100 for h in range(heads)
        )
        error = ((out.float() - self.exact).norm(dim=-1) / self.exact.norm(dim=-1)).mean()
        return Measure(float(touched.float().mean()) / self.split.total, recall, float(error), read)


def setting(
    context: int, kv_heads: int, group: int, dim: int, seed: int, target: Target = CPU
) -> Setting:
    """One layer's workload on the target, its exact answer and its true top keys."""
    data = workload(context, kv_heads, group, dim, seed, target.device, target.dtype)
    scaling = dim**-0.5
    keys = data.keys.float()  # the same tensor in float32
    exact = full_step(
        replace(data, keys=keys, values=data.values.float(), query=data.query.float()), scaling
    )
    head_of = torch.arange(kv_heads * group, device=keys.device) // group
    truth = torch.einsum("hd,hnd->hn", data.query.float(), keys[head_of]).topk(100, dim=1).indices
    split = layout(context - 1, 1, N_INIT, N_LOCAL)  # the decode token is the last key
    return Setting(data, split, scaling, group, exact, truth.cpu())


def full_probe(setting: Setting) -> Probe:
    data = setting.data
    kv_heads, context, dim = data.keys.shape
    read = 2 * context * kv_heads * dim * data.keys.element_size()

    def measure(out: torch.Tensor) -> Measure:
        error = ((out.float() - setting.exact).norm(dim=-1) / setting.exact.norm(dim=-1)).mean()
        return Measure(1.0, 1.0, float(error), read)

    return Probe(partial(full_step, data, setting.scaling), measure)


def blocks_probe(setting: Setting, method: str) -> Probe:
    data, split, scaling, group = setting.data, setting.split, setting.scaling, setting.group
    kv_heads, _, dim = data.keys.shape
    device = data.keys.device
    representative: Representative = "bounds" if method == "blocks-quest" else "mean"
    index = BlockIndex(N_INIT, size=BLOCK, representative=representative)
    if method == "blocks-events":
        # surprise stand-in: how far each key moved from the previous one (boundaries are
        # found on the CPU)
        far = data.keys[:, N_INIT : split.far_end].float()
        surprise = (far[:, 1:] - far[:, :-1]).norm(dim=-1).mean(0).cpu()
        table = event_blocks(torch.cat([surprise[:1], surprise]), N_INIT, min_size=8, max_size=128)
        closed = BlockTable(table.starts[:-1], table.lengths[:-1])  # the open event stays exact
        index.extend(data.keys, split.far_end, data.recent, table=closed)
    else:
        index.extend(data.keys, split.far_end, data.recent)
    tail = torch.arange(index.end, split.far_end, device=device)
    every = torch.ones(kv_heads, tail.numel(), dtype=torch.bool, device=device)
    room = BUDGET - split.static_length - tail.numel()
    query = data.query[:, None]  # (Hq, 1, D)
    selected: dict[str, torch.Tensor] = {}

    def step() -> torch.Tensor:
        static = static_attention(query, data.keys, data.values, split, scaling)
        positions, valid, read = index.select(query, room, 1, kv_heads=kv_heads)
        positions = torch.cat([positions, tail.expand(kv_heads, -1)], 1)
        valid = torch.cat([valid, every], 1)
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

    def measure(out: torch.Tensor) -> Measure:
        positions, valid = selected["positions"].cpu(), selected["valid"].cpu()
        attended = [
            setting.static | set(positions[h // group, valid[h // group]].tolist())
            for h in range(data.query.shape[0])
        ]
        tokens = valid.sum(1) + split.static_length  # (Hkv,) tokens attended per KV head
        read = int(selected["read"])  # representative vectors scored per KV head
        touched = (tokens + read).repeat_interleave(group)
        # keys and values in the workload's dtype, representatives in float32
        element = data.keys.element_size()
        read_bytes = float(2 * tokens.sum() * element + read * kv_heads * 4) * dim
        return setting.measure(out, attended, touched, read_bytes)

    return Probe(step, measure)


def retrieval_probe(setting: Setting, segment: int = 8192) -> Probe:
    data, split, scaling = setting.data, setting.split, setting.scaling
    heads, dim = data.query.shape
    device = data.keys.device
    head_of = torch.arange(heads, device=device) // setting.group
    graph = AttentionGraph(N_INIT)  # CPU memory; a float32 CPU copy of other keys
    final = data.prompt_positions >= split.far_end  # the prompt's last queries
    for end in range(N_INIT + segment, split.far_end + segment, segment):
        end = min(end, split.far_end)
        inside = (data.prompt_positions >= end - segment) & (data.prompt_positions < end)
        last = end == split.far_end
        graph.extend(data.keys, end, data.prompt[:, (inside | (final & last)).to(device)])
    query = data.query[:, None]
    found: dict[str, torch.Tensor] = {}

    def step() -> torch.Tensor:
        static = static_attention(query, data.keys, data.values, split, scaling)
        result = graph.search(data.keys, data.query, TOP_K)  # on the CPU
        found.update(indices=result.indices, touched=result.touched)
        indices = result.indices.to(device)
        keys = data.keys[head_of[:, None], indices]  # (Hq, k, D)
        values = data.values[head_of[:, None], indices]
        far = attend(query, keys, values, scaling, result.valid.to(device)[:, None, :])
        return merge([static, far]).out[:, 0]

    def measure(out: torch.Tensor) -> Measure:
        attended = [setting.static | set(found["indices"][h].tolist()) for h in range(heads)]
        touched = found["touched"] + split.static_length
        element = data.keys.element_size()
        searched = 4 if graph.mirror is not None else element  # the search's float32 copy
        static_bytes = 2 * split.static_length * data.keys.shape[0] * dim * element
        scored = float(found["touched"].sum()) * dim * searched
        read_bytes = static_bytes + scored + heads * TOP_K * dim * element  # + found values
        return setting.measure(out, attended, touched, read_bytes)

    return Probe(step, measure)


def run_probes(
    method: str,
    make: Callable[[Setting], Probe],
    settings: Sequence[Setting],
    *,
    layers: int,
    full_ms: float | None,
    target: Target,
) -> Row:
    """Build one method's probe for each of ``settings`` (its indexes: not timed), time a
    decoded token through them and average their measures over the layers; times and bytes
    scale to a stack of ``layers`` layers."""
    context = settings[0].split.total
    start = time.perf_counter()
    probes = [make(s) for s in settings]
    _log(f"{context} tokens, {method}: {len(probes)} layer(s) prepared", start)
    target.reset_peak()
    outs, ms = target.timed([probe.step for probe in probes])
    peak = target.peak_mb()
    measures = [probe.measure(out) for probe, out in zip(probes, outs, strict=True)]
    ran = len(probes)
    per_token = ms * layers / ran
    return Row(
        context,
        ran,
        method,
        statistics.mean(m.keys_touched for m in measures),
        statistics.mean(m.recall_top100 for m in measures),
        statistics.mean(m.rel_error for m in measures),
        ms,
        per_token,
        (full_ms or per_token) / per_token,
        sum(m.read_bytes for m in measures) * layers / ran / 2**20,
        peak,
    )


def bench_context(
    context: int,
    kv_heads: int,
    group: int,
    dim: int,
    seed: int,
    *,
    layers: int = 1,
    retrieval_layers: int = 0,
    target: Target = CPU,
) -> list[Row]:
    """Every method's row for one context over a ``layers``-layer stack (retrieval on the
    first ``retrieval_layers`` of them; 0 = all)."""
    start = time.perf_counter()
    settings = [
        setting(context, kv_heads, group, dim, seed + layer, target) for layer in range(layers)
    ]
    _log(f"{context} tokens: workload of {layers} layer(s)", start)
    run = partial(run_probes, layers=layers, target=target)
    rows = [run("full", full_probe, settings, full_ms=None)]
    full_ms = rows[0].ms_per_token
    for method in BLOCK_METHODS:
        rows.append(run(method, partial(blocks_probe, method=method), settings, full_ms=full_ms))
    ran = min(retrieval_layers or layers, layers)
    rows.append(run("retrieval", retrieval_probe, settings[:ran], full_ms=full_ms))
    return rows


@dataclass(frozen=True, slots=True)
class BatchLayer:
    """One layer of a decode batch: every row's keys, values and query, and the exact answer."""

    keys: torch.Tensor  # (B, Hkv, S, D) on the device, in the dtype
    values: torch.Tensor  # (B, Hkv, S, D)
    query: torch.Tensor  # (B, Hq, 1, D)
    loads: list[Workload]  # per row, its keys and values viewing the batch's
    exact: torch.Tensor  # (B, Hq, 1, D) float32 full attention over float32 copies


def batch_layer(
    context: int,
    batch: int,
    kv_heads: int,
    group: int,
    dim: int,
    seed: int,
    past: torch.Tensor,
    target: Target,
) -> BatchLayer:
    """Rows with workload seeds ``seed .. seed + batch - 1`` stacked into one layer's cache."""
    from serving.engine.attention import FullAttention

    keys = torch.empty(batch, kv_heads, context, dim, device=target.device, dtype=target.dtype)
    values = torch.empty_like(keys)
    query = torch.empty(batch, kv_heads * group, 1, dim, device=target.device, dtype=target.dtype)
    loads = []
    for row in range(batch):
        data = workload(context, kv_heads, group, dim, seed + row, target.device, target.dtype)
        keys[row], values[row], query[row, :, 0] = data.keys, data.values, data.query
        loads.append(replace(data, keys=keys[row], values=values[row]))
    exact = FullAttention()(query.float(), keys.float(), values.float(), past, dim**-0.5, 0)
    return BatchLayer(keys, values, query, loads, exact)


def batch_rows(
    context: int,
    batch: int,
    kv_heads: int,
    group: int,
    dim: int,
    seed: int,
    *,
    layers: int = 1,
    retrieval_layers: int = 0,
    target: Target = CPU,
) -> list[BatchRow]:
    """One decode step of ``batch`` sequences through each engine mode over a ``layers``-layer
    stack (layer l's rows: seeds seed + l * batch + row; see the module docstring)."""
    from serving.engine.attention import CURRENT, ForwardBatch, FullAttention, ModeContext
    from serving.engine.cache import SlotKVCache
    from serving.engine.config import EngineConfig
    from serving.engine.retrieval import RetrievalAttention
    from serving.engine.selection import BlockAttention
    from serving.kernels.config import AttentionConfig

    start = time.perf_counter()
    past = torch.full((batch,), context - 1, device=target.device)
    stack = [
        batch_layer(context, batch, kv_heads, group, dim, seed + layer * batch, past, target)
        for layer in range(layers)
    ]
    _log(f"{context} tokens: workload of {layers} layer(s) x {batch} rows", start)
    split = layout(context - 1, 1, N_INIT, N_LOCAL)
    base = AttentionConfig(budget=BUDGET, sinks=N_INIT, window=N_LOCAL, block_size=BLOCK)
    graphed = min(retrieval_layers or layers, layers)

    def blocks(representative: Representative) -> tuple[AttentionMode, int]:
        config = replace(base, mode="blocks", representative=representative, neighbours=1)
        mode = BlockAttention(ModeContext(EngineConfig(attention=config)))
        for row in range(batch):
            states = []
            for layer in stack:
                data = layer.loads[row]
                state = mode.new_state()
                state.recent = data.recent
                state.index.extend(data.keys, split.far_end, data.recent)
                states.append(state)
            mode.states[row] = states
        return mode, layers

    def retrieval() -> tuple[AttentionMode, int]:
        config = replace(base, mode="retrieval", retrieval_segment=1024)
        mode = RetrievalAttention(ModeContext(EngineConfig(attention=config)))
        for row in range(batch):
            states = []
            for layer in stack[:graphed]:
                data = layer.loads[row]
                state = mode.new_state()
                final = data.prompt_positions >= split.far_end
                for end in range(N_INIT + 1024, split.far_end + 1024, 1024):
                    end = min(end, split.far_end)
                    inside = (data.prompt_positions >= end - 1024) & (data.prompt_positions < end)
                    chosen = (inside | (final & (end == split.far_end))).to(target.device)
                    state.graph.extend(data.keys, end, data.prompt[:, chosen])
                states.append(state)
            mode.states[row] = states
        return mode, graphed

    modes: dict[str, Callable[[], tuple[AttentionMode, int]]] = {
        "full": lambda: (FullAttention(), layers),
        "blocks": partial(blocks, "mean"),
        "blocks-quest": partial(blocks, "bounds"),
        "retrieval": retrieval,
    }
    cache = SlotKVCache(1, kv_heads, dim, dtype=torch.float32, device="cpu")  # not read
    scaling = dim**-0.5
    rows: list[BatchRow] = []
    full_ms = 0.0
    for method, build in modes.items():
        start = time.perf_counter()
        mode, ran = build()  # the previous mode's indexes are gone: one method's at a time
        _log(f"{context} tokens, {method}: {ran} layer(s) x {batch} rows prepared", start)
        steps = [
            partial(mode, layer.query, layer.keys, layer.values, past, scaling, index)
            for index, layer in enumerate(stack[:ran])
        ]
        token = CURRENT.set(ForwardBatch(cache, torch.arange(batch), past, 1, mode))
        try:
            target.reset_peak()
            outs, ms = target.timed(steps)
            peak = target.peak_mb()
        finally:
            CURRENT.reset(token)
        per_token = ms * layers / ran / batch
        full_ms = full_ms or per_token
        error = statistics.mean(
            float(((out.float() - layer.exact).norm(dim=-1) / layer.exact.norm(dim=-1)).mean())
            for out, layer in zip(outs, stack, strict=False)
        )
        rows.append(
            BatchRow(context, batch, ran, method, ms, per_token, full_ms / per_token, error, peak)
        )
        del mode, steps, outs
    return rows


def markdown(rows: Sequence[dict[str, object]]) -> str:
    names = list(rows[0])
    lines = ["| " + " | ".join(names) + " |", "|" + "---|" * len(names)]
    for row in rows:
        cells = [
            f"{v:.4g}" if isinstance(v, float) else "-" if v is None else str(v)
            for v in row.values()
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _log(what: str, since: float) -> None:
    """Progress on stderr (index construction is not timed, but it is where the time goes)."""
    print(f"{what} in {time.perf_counter() - since:.1f} s", file=sys.stderr, flush=True)


def caption(options: argparse.Namespace, target: Target) -> str:
    """One line saying what ran where, printed above the Markdown tables."""
    where = torch.cuda.get_device_name(target.device) if target.cuda else "CPU"
    shape = (
        f"{options.layers} layer(s) x {options.kv_heads} KV heads x {options.group} query heads"
        f" each x dim {options.dim}"
    )
    line = (
        f"{where}, {options.dtype}, {shape}, seed {options.seed}, median of "
        f"{options.repeats}, {options.threads} CPU thread(s), torch {torch.__version__}"
    )
    if options.batch:
        line += f", batch {options.batch}"
    graphed = min(options.retrieval_layers or options.layers, options.layers)
    if graphed < options.layers:
        line += (
            f"; retrieval built and timed on {graphed} of {options.layers} layers, its "
            f"ms_per_token scaled by {options.layers}/{graphed}"
        )
    return line


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
    parser.add_argument(
        "--device", choices=["cpu", "cuda"], default="cpu", help="where the workload lives"
    )
    parser.add_argument(
        "--dtype", choices=list(DTYPES), default="float32", help="keys', values', queries' dtype"
    )
    parser.add_argument(
        "--layers", type=int, default=1, help="independent layers a decoded token goes through"
    )
    parser.add_argument(
        "--retrieval-layers",
        type=int,
        default=0,
        help="build and time retrieval on this many layers and scale to --layers (0: all)",
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
    for name in ("repeats", "layers", "threads"):
        if getattr(options, name) < 1:
            sys.exit(f"--{name} {getattr(options, name)} must be at least 1")
    for name in ("retrieval_layers", "batch"):
        if getattr(options, name) < 0:
            sys.exit(f"--{name.replace('_', '-')} {getattr(options, name)} must be at least 0")
    if options.device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda needs a CUDA GPU, and torch sees none here; use --device cpu")
    torch.manual_seed(options.seed)
    torch.set_num_threads(options.threads)
    rows: list[dict[str, object]]
    if options.workload == "perplexity":
        if (options.device, options.dtype, options.layers) != ("cpu", "float32", 1):
            sys.exit(
                "--workload perplexity runs on the CPU in float32, one model: drop "
                "--device, --dtype and --layers"
            )
        if not (options.model / "config.json").is_file():
            sys.exit(f"no model at {options.model}; pass --model (the stories260K hf folder)")
        rows = perplexity_rows(options.model, options.texts, options.windows, options.seed)
    else:
        target = Target(torch.device(options.device), DTYPES[options.dtype], options.repeats)
        if not options.json:
            print(caption(options, target) + "\n", flush=True)
        rows = []
        for context in options.context:
            if context < 4 * BUDGET:
                sys.exit(f"--context {context} is too short; use at least {4 * BUDGET}")
            shape = (options.kv_heads, options.group, options.dim, options.seed)
            layers, graphed = options.layers, options.retrieval_layers
            found: Sequence[Row | BatchRow] = (
                batch_rows(
                    context,
                    options.batch,
                    *shape,
                    layers=layers,
                    retrieval_layers=graphed,
                    target=target,
                )
                if options.batch
                else bench_context(
                    context, *shape, layers=layers, retrieval_layers=graphed, target=target
                )
            )
            rows += [asdict(r) for r in found]
            if not options.json:
                print(markdown([asdict(r) for r in found]) + "\n", flush=True)
    if options.json:
        print(json.dumps(rows))
    elif options.workload == "perplexity":
        print(markdown(rows))


if __name__ == "__main__":
    main()
