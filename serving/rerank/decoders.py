"""RankGen's decoders over any candidate generator: over-generate-and-rerank and beam search.

Over-generate-and-rerank samples ``samples`` continuations of up to ``max_tokens`` tokens in one
request and keeps the best by score. Beam search (RankGen §4, rankgen_generator.py) keeps
``beam`` partial continuations; each step, every live beam gets ``samples`` continuations of
``step_tokens`` tokens, all beams' requests generated together, every candidate (beam text + new
text) scored against the prefix in one batched call, and the best ``beam`` survive, until every
survivor has ended (EOS / a stop string) or reached ``max_tokens``.

Like the paper's code, the first step starts from ``beam`` copies of the empty beam, so it has
``beam * samples`` candidates. Unlike it, identical candidate texts are scored once (duplicate
beams add nothing), ended beams keep their score instead of being re-scored, and with the
local engine a beam is continued from its token ids, not re-tokenised text.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

from serving.llm import FinishReason, SamplingParams
from serving.rerank.config import Method, RerankConfig
from serving.rerank.reranker import Ranked, Reranker

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Beam:
    """A partial continuation: everything generated so far after the prompt."""

    text: str = ""
    token_ids: tuple[int, ...] = ()
    """Its token ids, where the generator works in tokens (the local engine); else ()."""
    finish_reason: FinishReason | None = None
    """None while it may go on; "stop" = EOS or a stop string; "length" = max_tokens reached."""
    score: float | None = None


@dataclass(frozen=True, slots=True)
class Sample:
    """One sampled continuation of a beam: the beam's text *with* the new piece."""

    text: str
    token_ids: tuple[int, ...] = ()
    ended: bool = False
    """True when generation stopped on EOS or a stop string (not on the token budget)."""


@dataclass(frozen=True, slots=True)
class Step:
    """What one generator call produced: per beam, its samples; and the tokens it cost."""

    samples: tuple[tuple[Sample, ...], ...]
    completion_tokens: int


class Generator(Protocol):
    """Samples continuations of beams of one prompt; concurrent calls share the backend."""

    async def sample(self, beams: Sequence[Beam], params: SamplingParams) -> Step:
        """``params.n`` continuations of at most ``params.max_tokens`` new tokens for every beam,
        generated together (one batched backend call where the backend allows it)."""
        ...


@dataclass(frozen=True, slots=True)
class RerankResult:
    """The chosen continuation, its score, and how it was found."""

    text: str
    score: float
    finish_reason: FinishReason
    method: Method
    scorer: str
    runners_up: tuple[Ranked, ...] = ()
    """Next-best candidates (``index`` = rank among them, 1 = second best), when asked for."""
    candidates: int = 0
    """Candidates scored in all."""
    steps: int = 0
    """Generation steps taken (1 for over-generate-and-rerank)."""
    completion_tokens: int = 0
    """Tokens sampled in all, discarded candidates included."""
    generation_seconds: float = 0.0
    scoring_seconds: float = 0.0


async def gather_all(work: Iterable[Awaitable[T]]) -> list[T]:
    """Every result in order, like ``asyncio.gather``; when one fails (or this is cancelled) the
    others are cancelled too, instead of running on for nobody."""
    tasks = [asyncio.ensure_future(w) for w in work]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


def step_seed(seed: int | None, step: int, beam: int) -> int | None:
    """A distinct, repeatable seed per step and beam (step 0, beam 0 keeps the caller's seed,
    so one sample equals plain sampling with that seed)."""
    return None if seed is None else seed + 1_000_033 * step + 7_919 * beam


def candidate_params(
    config: RerankConfig, budget: int, n: int, seed: int | None, stop: Sequence[str] = ()
) -> SamplingParams:
    """Sampling for ``n`` candidates of at most ``budget`` tokens."""
    return SamplingParams(
        max_tokens=budget,
        temperature=config.temperature,
        top_p=config.top_p,
        top_k=config.top_k,
        n=n,
        seed=seed,
        stop=tuple(stop),
        presence_penalty=config.presence_penalty,
        frequency_penalty=config.frequency_penalty,
        repetition_penalty=config.repetition_penalty,
        min_p=config.min_p,
    )


class _Timer:
    def __init__(self) -> None:
        self.generation = 0.0
        self.scoring = 0.0
        self.tokens = 0
        self.scored = 0

    async def generate(
        self, generator: Generator, requests: Sequence[tuple[Sequence[Beam], SamplingParams]]
    ) -> list[Step]:
        """Run the requests concurrently (the backend batches them); wall time counted once."""
        start = time.perf_counter()
        steps = await gather_all(generator.sample(b, p) for b, p in requests)
        self.generation += time.perf_counter() - start
        self.tokens += sum(s.completion_tokens for s in steps)
        return list(steps)

    def result(
        self,
        text: str,
        score: float,
        finish_reason: FinishReason,
        method: Method,
        reranker: Reranker,
        runners_up: tuple[Ranked, ...],
        steps: int,
    ) -> RerankResult:
        """The chosen continuation, with what this decoding cost."""
        return RerankResult(
            text=text,
            score=score,
            finish_reason=finish_reason,
            method=method,
            scorer=reranker.name,
            runners_up=runners_up,
            candidates=self.scored,
            steps=steps,
            completion_tokens=self.tokens,
            generation_seconds=self.generation,
            scoring_seconds=self.scoring,
        )

    async def top(self, reranker: Reranker, prefix: str, texts: list[str], k: int) -> list[Ranked]:
        start = time.perf_counter()
        best = await asyncio.to_thread(reranker.top, prefix, texts, k)  # keeps the loop free
        self.scoring += time.perf_counter() - start
        self.scored += len(texts)
        return best


async def over_generate(
    generator: Generator,
    reranker: Reranker,
    prefix: str,
    config: RerankConfig,
    *,
    seed: int | None = None,
    stop: Sequence[str] = (),
) -> RerankResult:
    """Sample ``config.samples`` full continuations at once; return the best-scored one."""
    timer = _Timer()
    params = candidate_params(config, config.max_tokens, config.samples, seed, stop)
    (step,) = await timer.generate(generator, [([Beam()], params)])
    samples = step.samples[0]
    best = await timer.top(reranker, prefix, [s.text for s in samples], 1 + config.runners_up)
    chosen = samples[best[0].index]
    runners_up = tuple(Ranked(r, b.text, b.score) for r, b in enumerate(best[1:], 1))
    finish: FinishReason = "stop" if chosen.ended else "length"
    return timer.result(chosen.text, best[0].score, finish, "sample", reranker, runners_up, 1)


async def beam_search(
    generator: Generator,
    reranker: Reranker,
    prefix: str,
    config: RerankConfig,
    *,
    seed: int | None = None,
    stop: Sequence[str] = (),
) -> RerankResult:
    """RankGen's beam search; returns the best surviving beam (the others as runners-up)."""
    timer = _Timer()
    beams: list[Beam] = [Beam()]
    generated = 0
    steps = 0
    while any(b.finish_reason is None for b in beams):
        budget = min(config.step_tokens, config.max_tokens - generated)
        live = [b for b in beams if b.finish_reason is None]
        first = steps == 0
        if first and config.beam * config.samples <= 64:  # one request, one shared prefill
            n = config.beam * config.samples
            params = candidate_params(config, budget, n, step_seed(seed, 0, 0), stop)
            requests = [(live, params)]
        else:
            starts = live * config.beam if first else live
            requests = [
                (
                    [b],
                    candidate_params(
                        config, budget, config.samples, step_seed(seed, steps, i), stop
                    ),
                )
                for i, b in enumerate(starts)
            ]
        parts = await timer.generate(generator, requests)
        generated += budget
        steps += 1
        fresh: dict[str, Beam] = {}
        for part in parts:
            for sample in part.samples[0]:
                reason: FinishReason | None = "stop" if sample.ended else None
                if reason is None and generated >= config.max_tokens:
                    reason = "length"
                fresh.setdefault(sample.text, Beam(sample.text, sample.token_ids, reason))
        kept = [b for b in beams if b.finish_reason is not None]  # ended beams stay candidates
        texts = [t for t in fresh if t not in {b.text for b in kept}]
        best = await timer.top(reranker, prefix, texts, config.beam)
        pool = kept + [replace(fresh[r.text], score=r.score) for r in best]
        pool.sort(key=lambda b: -(b.score or 0.0))
        beams = pool[: config.beam]
    winner, others = beams[0], beams[1 : 1 + config.runners_up]
    assert winner.score is not None and winner.finish_reason is not None
    runners_up = tuple(Ranked(r, b.text, b.score or 0.0) for r, b in enumerate(others, 1))
    return timer.result(
        winner.text, winner.score, winner.finish_reason, "beam", reranker, runners_up, steps
    )


async def decode(
    generator: Generator,
    reranker: Reranker,
    prefix: str,
    config: RerankConfig,
    *,
    seed: int | None = None,
    stop: Sequence[str] = (),
) -> RerankResult:
    """Run the decoder ``config.method`` names."""
    run = over_generate if config.method == "sample" else beam_search
    return await run(generator, reranker, prefix, config, seed=seed, stop=stop)
