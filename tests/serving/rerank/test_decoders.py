"""The decoders with a scripted generator and scorer, then over the real engine."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import pytest

from serving.errors import RequestRejected
from serving.llm import ChatMessage, SamplingParams
from serving.local import LocalLLM
from serving.rerank import (
    Ranked,
    RerankConfig,
    RerankerPool,
    RerankUnsupported,
    UnknownScorer,
    decoders,
    generate,
    rank,
)
from serving.rerank.decoders import Beam, Sample, Step, beam_search, gather_all, over_generate
from serving.rerank.generation import generator_for
from serving.rerank.generators import ProtocolGenerator, TokenGenerator
from serving.rerank.rankgen import RankGenReranker
from tests.fakes import ScriptedLLM


@dataclass
class ScriptedGenerator:
    """Continuations by beam text: ``script[beam] = [(piece, ended), ...]``, taken in order
    (cycled when more are asked for). Records every call."""

    script: Mapping[str, Sequence[tuple[str, bool]]]
    calls: list[tuple[tuple[str, ...], SamplingParams]] = field(default_factory=list)

    async def sample(self, beams: Sequence[Beam], params: SamplingParams) -> Step:
        self.calls.append((tuple(b.text for b in beams), params))
        out = []
        for beam in beams:
            pieces = self.script[beam.text]
            chosen = [pieces[i % len(pieces)] for i in range(params.n)]
            out.append(tuple(Sample(beam.text + p, (), ended) for p, ended in chosen))
        return Step(tuple(out), params.n * params.max_tokens * len(beams))


class WordScorer:
    """Score = count of "good" minus count of "bad"; records what it scored."""

    name = "words"

    def __init__(self) -> None:
        self.scored: list[list[str]] = []

    def score(self, prefix: str, candidates: Sequence[str]) -> list[float]:
        self.scored.append(list(candidates))
        return [float(c.count("good") - c.count("bad")) for c in candidates]

    def top(self, prefix: str, candidates: Sequence[str], k: int) -> list[Ranked]:
        return rank(candidates, self.score(prefix, candidates), k)


T = TypeVar("T")


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


def test_over_generate_keeps_the_best_and_reports_runners_up() -> None:
    generator = ScriptedGenerator({"": [("bad", True), ("good good", False), ("good", True)]})
    config = RerankConfig(method="sample", samples=3, max_tokens=30, runners_up=2)
    result = run(over_generate(generator, WordScorer(), "p", config, seed=4))
    assert (result.text, result.score, result.finish_reason) == ("good good", 2.0, "length")
    assert [(r.text, r.score) for r in result.runners_up] == [("good", 1.0), ("bad", -1.0)]
    ((beams, params),) = generator.calls
    assert beams == ("",) and (params.n, params.max_tokens, params.seed) == (3, 30, 4)
    assert (params.top_p, params.temperature) == (0.9, 1.0)  # the paper's nucleus sampling
    assert result.candidates == 3 and result.steps == 1


def test_one_sample_is_plain_sampling() -> None:
    generator = ScriptedGenerator({"": [("bad", True)]})
    config = RerankConfig(method="sample", samples=1)
    result = run(over_generate(generator, WordScorer(), "p", config, seed=9))
    assert result.text == "bad" and result.finish_reason == "stop" and result.score == -1.0
    assert generator.calls[0][1].seed == 9 and generator.calls[0][1].n == 1


def test_beam_search_continues_only_the_best_beams() -> None:
    script = {
        "": [("good ", False), ("bad ", False), ("ok ", False), ("good good ", False)],
        "good good ": [("bad bad bad", False), ("ok", False)],
        "good ": [("good good", False), ("bad", False)],
    }
    generator = ScriptedGenerator(script)
    config = RerankConfig(samples=2, beam=2, step_tokens=5, max_tokens=10, runners_up=1)
    result = run(beam_search(generator, WordScorer(), "p", config, seed=0))
    first, *rest = generator.calls
    assert first[0] == ("",) and first[1].n == 4  # beam x samples from the empty beam
    assert sorted(b for call in rest for b in call[0]) == ["good ", "good good "]
    assert all(params.n == 2 for _, params in rest)
    assert result.text == "good good good" and result.score == 3.0
    assert [r.text for r in result.runners_up] == ["good good ok"]  # the other final beam
    assert result.finish_reason == "length" and result.steps == 2


def test_beam_search_stops_ended_beams_and_keeps_them_as_candidates() -> None:
    script = {
        "": [("good good good", True), ("good ", False), ("bad ", False)],
        "good ": [("ok ", False), ("bad ", False)],
        "good ok ": [("ok", False)],
        "good bad ": [("ok", False)],
    }
    generator = ScriptedGenerator(script)
    scorer = WordScorer()
    config = RerankConfig(samples=3, beam=2, step_tokens=4, max_tokens=12)
    result = run(beam_search(generator, scorer, "p", config))
    continued = [b for beams, _ in generator.calls for b in beams]
    assert "good good good" not in continued  # ended at EOS: never continued
    assert result.text == "good good good" and result.finish_reason == "stop"
    assert all("good good good" not in batch for batch in scorer.scored[1:])  # not re-scored


def test_beam_search_stops_at_max_tokens() -> None:
    script = {"": [("a", False)], "a": [("b", False)], "ab": [("c", False)], "abc": [("d", False)]}
    generator = ScriptedGenerator(script)
    config = RerankConfig(samples=1, beam=1, step_tokens=20, max_tokens=50)
    result = run(beam_search(generator, WordScorer(), "p", config))
    assert [params.max_tokens for _, params in generator.calls] == [20, 20, 10]
    assert result.text == "abc" and result.finish_reason == "length" and result.steps == 3


def test_duplicate_candidates_are_scored_once() -> None:
    generator = ScriptedGenerator({"": [("same", True)]})
    scorer = WordScorer()
    result = run(beam_search(generator, scorer, "p", RerankConfig(samples=5, beam=2)))
    assert scorer.scored == [["same"]] and result.candidates == 1


def test_bad_options_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"samples=0 must be in \[1, 64\]"):
        RerankConfig(samples=0)
    with pytest.raises(ValueError, match="method='greedy'"):
        RerankConfig(method="greedy")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"temperature=0\.0"):
        RerankConfig(temperature=0.0)


def test_the_package_imports_without_torch() -> None:
    code = (
        "import sys, serving.rerank\n"
        "from serving.rerank import Reranker, RerankConfig\n"
        "assert not {'torch', 'transformers', 'sentence_transformers'} & set(sys.modules)"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


# ---------------------------------------------------------------- over the real engine


def test_one_sample_equals_plain_sampling_on_the_engine(
    tiny_llm: LocalLLM, tiny_rankgen: RankGenReranker
) -> None:
    prompt = "Once upon a time"
    config = RerankConfig(method="sample", samples=1, max_tokens=12)
    result = run(generate(tiny_llm, prompt, rerank=config, reranker=tiny_rankgen, seed=7))
    plain = run(
        tiny_llm.complete(prompt, SamplingParams(max_tokens=12, temperature=1.0, top_p=0.9, seed=7))
    )
    assert result.text == plain.text and result.finish_reason == plain.choices[0].finish_reason
    assert result.score == pytest.approx(tiny_rankgen.score(prompt, [plain.text])[0], abs=1e-5)


def test_beam_search_on_the_engine_is_repeatable_and_token_exact(
    tiny_llm: LocalLLM, tiny_rankgen: RankGenReranker
) -> None:
    config = RerankConfig(samples=3, beam=2, step_tokens=4, max_tokens=10, runners_up=1)
    first = run(generate(tiny_llm, "The dragon", rerank=config, reranker=tiny_rankgen, seed=3))
    # the same through the method on the backend: llm.generate(prompt, rerank=...)
    again = run(tiny_llm.generate("The dragon", rerank=config, reranker=tiny_rankgen, seed=3))
    assert (first.text, first.score) == (again.text, again.score)
    assert first.steps == 3 and first.finish_reason == "length"  # 4 + 4 + 2 tokens
    assert 2 * 3 <= first.candidates <= 2 * 3 * 3
    assert first.completion_tokens == 6 * 4 + 2 * 3 * 4 + 2 * 3 * 2
    ids = tiny_llm.encode(first.text, special=False)
    assert 8 <= len(ids) <= 12  # ten generated tokens, re-tokenised
    assert first.score == pytest.approx(tiny_rankgen.score("The dragon", [first.text])[0], abs=1e-5)


def test_chat_beam_search_needs_the_engine(
    tiny_llm: LocalLLM, tiny_rankgen: RankGenReranker
) -> None:
    messages = [ChatMessage("user", "Tell me a story.")]
    config = RerankConfig(samples=2, beam=2, step_tokens=3, max_tokens=6)
    local = run(generate(tiny_llm, messages, rerank=config, reranker=tiny_rankgen, seed=1))
    assert local.steps == 2
    over_protocol = ProtocolGenerator(tiny_llm, messages)
    with pytest.raises(RerankUnsupported, match="method='sample'"):
        run(beam_search(over_protocol, tiny_rankgen, "Tell me a story.", config, seed=1))
    sampled = run(
        over_generate(over_protocol, tiny_rankgen, "x", RerankConfig(method="sample", samples=2))
    )
    assert sampled.candidates <= 2


def test_the_generator_follows_the_backends_capabilities(tiny_llm: LocalLLM) -> None:
    """Token ids where the backend takes them (the engine), the Protocol's text calls otherwise;
    a prompt the engine cannot fit is refused before any sampling."""
    assert isinstance(generator_for(tiny_llm, "x", 4), TokenGenerator)
    assert isinstance(generator_for(ScriptedLLM(lambda _, __: " on"), "x", 4), ProtocolGenerator)
    with pytest.raises(RequestRejected, match="context"):
        generator_for(tiny_llm, "x", 10_000)


def test_unknown_scorers_list_the_offered_ones(tiny_llm: LocalLLM) -> None:
    pool = RerankerPool({})
    pool.add("tiny", WordScorer())
    with pytest.raises(UnknownScorer, match="offers: tiny"):
        run(generate(tiny_llm, "x", rerank=RerankConfig(scorer="nope"), scorers=pool))
    result = run(
        generate(tiny_llm, "x", rerank=RerankConfig(scorer="tiny", max_tokens=4), scorers=pool)
    )
    assert result.scorer == "words"


def test_without_a_scorer_or_a_pool_nothing_is_loaded() -> None:
    """No process-wide pool: the caller that keeps the scorers passes them (issue 18)."""
    llm = ScriptedLLM(lambda _, __: " on")
    with pytest.raises(TypeError, match=r"reranker= .* or scorers="):
        run(generate(llm, "x", rerank=RerankConfig(scorer="embedder", max_tokens=4)))
    assert llm.prompts == []  # refused before any sampling


class VirtualClock:
    """Stands in for ``time`` in the decoders: it moves only when a fake call says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def perf_counter(self) -> float:
        return self.now


@dataclass
class SlowGenerator(ScriptedGenerator):
    """Every call takes one second of ``clock``; calls in flight together overlap, as on a
    batching backend (the clock ends at the latest finish). Records the most calls in flight."""

    clock: VirtualClock = field(default_factory=VirtualClock)
    in_flight: int = 0
    most_in_flight: int = 0

    async def sample(self, beams: Sequence[Beam], params: SamplingParams) -> Step:
        began = self.clock.now
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0)  # the step's other requests start now, if they run alongside
            self.clock.now = max(self.clock.now, began + 1.0)
            return await super().sample(beams, params)
        finally:
            self.in_flight -= 1


def test_concurrent_beams_count_generation_time_once(monkeypatch: pytest.MonkeyPatch) -> None:
    script = {"": [("a", False), ("b", False)], "a": [("x", False)], "b": [("y", False)]}
    script |= {"ax": [("z", False)], "by": [("z", False)], "ay": [("z", False)]}
    script |= {"bx": [("z", False)]}
    generator = SlowGenerator(script)
    monkeypatch.setattr(decoders, "time", generator.clock)  # counted, not timed
    config = RerankConfig(samples=2, beam=2, step_tokens=1, max_tokens=3)
    result = run(beam_search(generator, WordScorer(), "p", config))
    assert result.steps == 3 and len(generator.calls) == 1 + 2 + 2
    assert generator.most_in_flight == 2  # two beams side by side
    assert result.generation_seconds == 3.0  # a second per step, not one per call (five)


@pytest.mark.slow
def test_the_standard_pool_offers_the_bundled_embedder(tiny_llm: LocalLLM) -> None:
    config = RerankConfig(method="sample", scorer="embedder", samples=2, max_tokens=4)
    scorers = RerankerPool.standard()
    result = run(
        generate(tiny_llm, "The lighthouse keeper", rerank=config, scorers=scorers, seed=0)
    )
    assert result.scorer == "embedder:sentence-transformers/all-MiniLM-L6-v2"
    assert result.candidates == 2


def test_a_failed_request_cancels_the_rest_of_its_step() -> None:
    cancelled = []

    async def slow() -> int:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise
        return 1

    async def failing() -> int:
        await asyncio.sleep(0)
        raise RuntimeError("the backend refused")

    async def step() -> int:
        with pytest.raises(RuntimeError, match="refused"):
            await gather_all([slow(), failing(), slow()])
        return len(cancelled)  # counted before asyncio.run would cancel leftovers itself

    assert asyncio.run(step()) == 2
