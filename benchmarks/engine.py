"""Benchmark of the built-in engine (TorchEngine) against transformers' generate; prints Markdown.

Run ``python -m benchmarks.engine`` (``--quick`` for a smoke run). For each model, decoding mode
and stream count, the same requests (``--prompt-tokens`` seeded random token ids, exactly
``--new-tokens`` generated tokens each) all arrive at once, at t0, and go through

1. the engine: every request submitted concurrently with ``asyncio.gather`` on one event loop;
2. ``model.generate`` one request after another on a plain ``AutoModelForCausalLM`` (its default
   attention): what an application without an engine does;
3. ``model.generate`` on all requests as one batch: static batching (the prompts have equal
   lengths, so left padding adds no pad tokens).

Tokens/s counts the tokens each system actually produced, over the wall time from t0 to the last
token. TTFT is measured from t0 to each request's first generated token (a ``BaseStreamer`` for
generate), so a sequential request's TTFT includes waiting for the requests before it. Other
work on the machine skews every number: the load average is printed before and after.

EOS: the engine ends a choice on the model's stop tokens and has no ``ignore_eos`` option, so it
runs on its own ``LoadedModel`` with ``stop_token_ids=()``, and generate gets ``min_new_tokens``
equal to ``max_new_tokens``; the tables count tokens produced, so an early stop would show.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
import transformers
from transformers import AutoModelForCausalLM
from transformers.generation.streamers import BaseStreamer

from serving.engine.config import EngineConfig
from serving.engine.engine import EngineOutput, EngineRequest, TorchEngine
from serving.engine.loading import load_model
from serving.llm import SamplingParams
from tests.models import build_tiny_llama

TINY = Path(__file__).resolve().parent.parent / "../shared/eval-data/tinystories-260k/hf"
WIDE = {"hidden_size": 1024, "heads": 16, "kv_heads": 4, "intermediate_size": 2816, "layers": 2}
TEMPERATURE = 0.8  # of the "sampled" mode; top_k and top_p are off in both systems
WARMUP_TOKENS = 4  # new tokens per request in each system's untimed warm-up pass


@dataclass(frozen=True, slots=True)
class Options:
    models: list[str]
    new_tokens: int
    prompt_tokens: int
    streams: list[int]
    repeats: int
    decoding: list[str]
    threads: int | None
    tiny: Path
    seed: int


@dataclass(frozen=True, slots=True)
class Workload:
    prompts: list[list[int]]  # (streams, prompt_tokens) token ids
    new_tokens: int
    sampled: bool
    seed: int  # request i samples with seed + i; a batch with seed


@dataclass(slots=True)
class Run:
    """One timed pass of a workload through one system."""

    wall: float = 0.0  # seconds from t0 to the last token
    first_token: list[float] = field(default_factory=list)  # seconds from t0, per request
    outputs: list[list[int]] = field(default_factory=list)  # generated ids, per request

    @property
    def tokens(self) -> int:
        return sum(len(ids) for ids in self.outputs)


class FirstTokenClock(BaseStreamer):
    """Notes when generate emits its first new tokens (its first ``put`` is the prompt)."""

    def __init__(self) -> None:
        self.puts = 0
        self.first: float | None = None

    def put(self, value: torch.Tensor) -> None:
        self.puts += 1
        if self.puts == 2:
            self.first = time.perf_counter()

    def end(self) -> None:
        pass


async def engine_pass(engine: TorchEngine, workload: Workload) -> Run:
    run = Run(first_token=[0.0] * len(workload.prompts), outputs=[[] for _ in workload.prompts])
    temperature = TEMPERATURE if workload.sampled else 0.0
    start = time.perf_counter()

    async def one(index: int, prompt: list[int]) -> None:
        params = SamplingParams(workload.new_tokens, temperature, seed=workload.seed + index)
        spec = EngineRequest(tuple(prompt), params)
        async for item in engine.generate(spec):
            if isinstance(item, EngineOutput) and item.token_ids:
                if not run.outputs[index]:
                    run.first_token[index] = time.perf_counter() - start
                run.outputs[index].extend(item.token_ids)

    await asyncio.gather(*(one(i, p) for i, p in enumerate(workload.prompts)))
    run.wall = time.perf_counter() - start
    return run


def generate_arguments(model: Any, workload: Workload) -> dict[str, Any]:
    decoding = {"do_sample": True, "temperature": TEMPERATURE, "top_k": 0, "top_p": 1.0}
    pad = model.generation_config.pad_token_id
    return {
        **(decoding if workload.sampled else {"do_sample": False}),
        "max_new_tokens": workload.new_tokens,
        "min_new_tokens": workload.new_tokens,
        "pad_token_id": model.generation_config.eos_token_id if pad is None else pad,
    }


def generate_pass(model: Any, workload: Workload, *, batched: bool) -> Run:
    """generate on each prompt in turn, or on all of them as one batch.

    Every prompt has the same length, so left padding adds no pad tokens: the fairest case for
    static batching, which would otherwise compute on padding.
    """
    arguments = generate_arguments(model, workload)
    groups = [workload.prompts] if batched else [[p] for p in workload.prompts]
    run = Run()
    start = time.perf_counter()
    for index, group in enumerate(groups):
        torch.manual_seed(workload.seed + index)
        ids = torch.tensor(group, dtype=torch.long)  # (B, T)
        clock = FirstTokenClock()
        with torch.inference_mode():
            out = model.generate(
                input_ids=ids, attention_mask=torch.ones_like(ids), streamer=clock, **arguments
            )
        assert clock.first is not None
        run.first_token += [clock.first - start] * len(group)
        run.outputs += out[:, ids.shape[1] :].tolist()
    run.wall = time.perf_counter() - start
    return run


def best(repeats: int, measure: Callable[[], Run]) -> Run:
    """The fastest of ``repeats`` passes by wall time."""
    return min((measure() for _ in range(repeats)), key=lambda run: run.wall)


def row(model: str, decoding: str, streams: int, system: str, run: Run) -> list[str]:
    ttft = [1000.0 * t for t in run.first_token]
    rate, mean = run.tokens / run.wall, sum(ttft) / len(ttft)
    numbers = [f"{run.tokens:,}", f"{run.wall:.2f}", f"{rate:,.1f}", f"{mean:,.0f}"]
    return [model, decoding, str(streams), system, *numbers, f"{max(ttft):,.0f}"]


def table(header: Sequence[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


def prompts(vocab: int, special: set[int], count: int, length: int, seed: int) -> list[list[int]]:
    """``count`` seeded random prompts of ``length`` ids, none of them a special token."""
    generator = torch.Generator().manual_seed(seed)
    allowed = torch.tensor([i for i in range(vocab) if i not in special])
    picks = torch.randint(len(allowed), (count, length), generator=generator)
    return [[int(allowed[j]) for j in line] for line in picks]


def measure(engine: TorchEngine, plain: Any, work: Workload, repeats: int) -> dict[str, Run]:
    """Best-of-``repeats`` runs of ``work`` through each system, after one warm-up pass each."""
    warm = replace(work, new_tokens=WARMUP_TOKENS)
    asyncio.run(engine_pass(engine, warm))
    generate_pass(plain, warm, batched=True)
    passes: dict[str, Callable[[], Run]] = {
        "engine": lambda: asyncio.run(engine_pass(engine, work)),
        "generate, sequential": lambda: generate_pass(plain, work, batched=False),
    }
    if len(work.prompts) > 1:
        passes["generate, one batch"] = lambda: generate_pass(plain, work, batched=True)
    return {system: best(repeats, timed) for system, timed in passes.items()}


Rows = list[list[str]]


def bench_model(name: str, folder: Path, options: Options) -> tuple[Rows, Rows]:
    """Timing rows of one model, and ratio rows at the largest stream count (if above 1)."""
    loaded = load_model(EngineConfig(model=str(folder)))
    engine = TorchEngine(loaded=replace(loaded, stop_token_ids=()))  # see the module docstring
    plain = AutoModelForCausalLM.from_pretrained(str(folder))  # in eval mode already
    parameters = sum(p.numel() for p in plain.parameters())
    attention = plain.config._attn_implementation
    print(f"- {name}: {parameters / 1e6:,.2f} M parameters, generate uses {attention} attention")
    vocab, special = len(engine.tokenizer), set(engine.tokenizer.all_special_ids)
    rows: Rows = []
    ratios: Rows = []
    try:
        for decoding, streams in itertools.product(options.decoding, options.streams):
            ids = prompts(vocab, special, streams, options.prompt_tokens, options.seed)
            work = Workload(ids, options.new_tokens, decoding == "sampled", options.seed)
            runs = measure(engine, plain, work, options.repeats)
            rows += [row(name, decoding, streams, system, run) for system, run in runs.items()]
            short = [s for s, run in runs.items() if run.tokens != streams * options.new_tokens]
            if short:
                print(f"- NOTE: {name} {decoding} x{streams}: {short} stopped early")
            if decoding == "greedy":  # fp32 on both sides: the tokens should agree
                theirs = runs["generate, sequential"].outputs
                same = sum(a == b for a, b in zip(runs["engine"].outputs, theirs, strict=True))
                print(f"- {name} greedy x{streams}: {same}/{streams} outputs equal generate's")
            if streams > 1 and streams == options.streams[-1]:
                rate = {system: run.tokens / run.wall for system, run in runs.items()}
                ratios.append(
                    [
                        *(name, decoding, str(streams), f"{rate['engine']:,.1f}"),
                        f"{rate['engine'] / rate['generate, sequential']:.2f}",
                        f"{rate['engine'] / rate['generate, one batch']:.2f}",
                    ]
                )
    finally:
        engine.shutdown()
    return rows, ratios


def parse(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.engine", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--models", default="tiny,wide", help="comma-separated: tiny, wide")
    parser.add_argument("--new-tokens", type=int, default=64, help="generated tokens per request")
    parser.add_argument("--prompt-tokens", type=int, default=128, help="prompt length in tokens")
    parser.add_argument("--streams", default="1,8", help="concurrent requests to measure at")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes; the best is kept")
    parser.add_argument("--decoding", default="greedy,sampled", help="greedy and/or sampled")
    parser.add_argument("--threads", type=int, help="torch.set_num_threads (default: torch's)")
    parser.add_argument("--tiny", type=Path, default=TINY, help="stories260K's HF folder")
    parser.add_argument("--seed", type=int, default=0, help="seed of prompts and sampling")
    parser.add_argument("--quick", action="store_true", help="8 prompt, 8 new tokens, 1 repeat")
    args = parser.parse_args(argv)
    models = args.models.split(",")
    streams = sorted({int(s) for s in args.streams.split(",")})
    decoding = args.decoding.split(",")
    if not set(models) <= {"tiny", "wide"} or not set(decoding) <= {"greedy", "sampled"}:
        parser.error(f"--models {models} / --decoding {decoding}: unknown name")
    if streams[0] < 1 or min(args.new_tokens, args.prompt_tokens, args.repeats) < 1:
        parser.error("--streams, --new-tokens, --prompt-tokens and --repeats must be positive")
    if args.quick:
        args.new_tokens, args.prompt_tokens, args.repeats = 8, 8, 1
    return Options(
        models,
        args.new_tokens,
        args.prompt_tokens,
        streams,
        args.repeats,
        decoding,
        args.threads,
        args.tiny.resolve(),
        args.seed,
    )


def main(argv: Sequence[str] | None = None) -> None:
    options = parse(argv)
    transformers.logging.set_verbosity_error()  # type: ignore[no-untyped-call]
    transformers.logging.disable_progress_bar()  # type: ignore[no-untyped-call]
    threads = "torch's default"
    if options.threads is not None:
        torch.set_num_threads(options.threads)
        threads = "--threads"
    print("# Mneme engine benchmark\n")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())  # other work skews the timings
    print(f"- machine: {os.cpu_count()} CPUs, {platform.machine()}, load average {load}")
    print(
        f"- python {platform.python_version()}, torch {torch.__version__} with "
        f"{torch.get_num_threads()} threads ({threads}), transformers {transformers.__version__}"
    )
    print(
        f"- prompts of {options.prompt_tokens} tokens, {options.new_tokens} new tokens each, "
        f"streams {options.streams}, best of {options.repeats}, seed {options.seed}, "
        f"sampled = temperature {TEMPERATURE}"
    )
    rows: Rows = []
    ratios: Rows = []
    temporary = Path(tempfile.mkdtemp(prefix="mneme-bench-"))
    try:
        for name in options.models:
            if name == "tiny" and not (options.tiny / "config.json").is_file():
                print(f"- tiny: skipped, no model at {options.tiny} (give --tiny PATH)")
                continue
            folder = options.tiny if name == "tiny" else build_tiny_llama(temporary / name, **WIDE)
            model_rows, model_ratios = bench_model(name, folder, options)
            rows += model_rows
            ratios += model_ratios
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"- load average after the runs: {load}")
    print("\n## Throughput and time to first token (all requests arrive at t0)\n")
    header = ["model", "decoding", "streams", "system", "tokens", "wall s", "tokens/s"]
    print(table([*header, "mean TTFT ms", "max TTFT ms"], rows))
    if ratios:
        print("\n## Engine tokens/s over generate's, at the largest stream count\n")
        header = ["model", "decoding", "streams", "engine tok/s", "/ sequential", "/ one batch"]
        print(table(header, ratios))


if __name__ == "__main__":
    main()
