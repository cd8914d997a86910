"""DocumentReader over real SQLite and Chroma: logic with a recording fake LLM, then the real
path through a tiny random-weight LocalLLM (SmolLM2's bundled tokenizer, no download)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable, Coroutine, Iterator, Sequence
from itertools import pairwise
from typing import Any, TypeVar

import pytest

from agents import NOTHING_RELEVANT, Answer, DocumentReader, ReaderConfig
from memory import ChromaVectorIndex, Database, MemoryStore, NotFound
from memory.episodic import EpisodicMemory, IngestProgress
from memory.errors import InvalidQuery
from memory.segmentation import SegmenterConfig, approximate_tokens
from memory.segmenters import FixedSegmenter
from serving.errors import LogprobsUnsupported
from serving.llm import (
    GREEDY,
    Capabilities,
    ChatMessage,
    Choice,
    Completion,
    OnText,
    SamplingParams,
    Schema,
    StreamDelta,
    TokenLogprob,
)
from serving.local import LocalLLM
from tests.fakes import HashEmbedder
from tests.texts import TOPICS, story

T = TypeVar("T")

STORY = story()

# 64 sentences of 10 words each: 13 approximate tokens, one episode apiece at max_tokens=13.
LEDGER = " ".join(f"Entry {i} says the grey heron crossed the river quietly." for i in range(64))
_ENTRY = re.compile(r"Entry (\d+)")
_PASSAGE = re.compile(r"^\[(\d+)\] (.*)$", re.MULTILINE)


def first_entry(text: str) -> str:
    first = re.search(r"Entry \d+ [^.]*\.", text)
    return first.group(0) if first else text.strip().splitlines()[-1]


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coroutine)


class RecordingLLM:
    """Implements :class:`serving.llm.LLM` without a model, recording every prompt.

    A summary is ``summarise(user message)``: by default the first sentence that names an
    entry (else the message's last line). A JSON answer cites the passages holding
    ``keyword``, then the ``extra`` numbers.
    """

    capabilities = Capabilities()

    def __init__(
        self,
        keyword: str = "",
        extra: Sequence[int] = (),
        summarise: Callable[[str], str] | None = None,
    ) -> None:
        self.keyword = keyword
        self.extra = list(extra)
        self.summarise = summarise or first_entry
        self.prompts: list[list[ChatMessage]] = []
        self.in_flight = 0
        self.most_in_flight = 0

    @property
    def model(self) -> str:
        return "test/recording"

    async def complete(self, prompt: str, params: SamplingParams = GREEDY) -> Completion:
        return await self.chat([ChatMessage("user", prompt)], params)

    async def chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams = GREEDY
    ) -> Completion:
        self.prompts.append(list(messages))
        self.in_flight += 1
        self.most_in_flight = max(self.most_in_flight, self.in_flight)
        await asyncio.sleep(0.001)  # let other calls start, so concurrency shows
        self.in_flight -= 1
        summary = self.summarise(messages[-1].content)
        return Completion(self.model, (Choice(0, summary, "stop"),), 0, 0)

    async def _stream(self, messages: Sequence[ChatMessage]) -> AsyncIterator[StreamDelta]:
        yield StreamDelta(0, (await self.chat(messages)).text, "stop")

    def stream_complete(
        self, prompt: str, params: SamplingParams = GREEDY
    ) -> AsyncIterator[StreamDelta]:
        return self._stream([ChatMessage("user", prompt)])

    def stream_chat(
        self, messages: Sequence[ChatMessage], params: SamplingParams = GREEDY
    ) -> AsyncIterator[StreamDelta]:
        return self._stream(messages)

    async def token_logprobs(self, text: str) -> list[TokenLogprob]:
        raise LogprobsUnsupported("the recording LLM has no logprobs")

    async def count_tokens(self, text: str) -> int:
        return approximate_tokens(text)

    async def generate_json(
        self,
        messages: Sequence[ChatMessage],
        schema: type[Schema],
        params: SamplingParams = GREEDY,
        *,
        on_text: OnText | None = None,
        repairs: int = 2,
    ) -> Schema:
        self.prompts.append(list(messages))
        shown = _PASSAGE.findall(messages[-1].content)
        cited = [int(n) for n, text in shown if self.keyword and self.keyword in text]
        reply = {"answer": f"see passages {cited}", "passages": cited + self.extra}
        return schema.model_validate(reply)


def prompt_tokens(messages: Sequence[ChatMessage]) -> int:
    return sum(approximate_tokens(m.content) for m in messages)


@pytest.fixture
def store(
    sqlite_database: Database, chroma: ChromaVectorIndex, embedder: HashEmbedder
) -> MemoryStore:
    return MemoryStore(sqlite_database, chroma, embedder)


def episodic(
    store: MemoryStore, max_tokens: int, count: Callable[[str], int] = approximate_tokens
) -> EpisodicMemory:
    config = SegmenterConfig(min_tokens=2, max_tokens=max_tokens)
    return EpisodicMemory(store, "ns", FixedSegmenter(config, count), count_tokens=count)


SMALL = ReaderConfig(max_prompt_tokens=160, section_tokens=60, summary_tokens=20, concurrency=3)


# -- ask --------------------------------------------------------------------------------------


def test_ask_cites_the_passage_with_offsets_into_the_original(store: MemoryStore) -> None:
    llm = RecordingLLM(keyword="queen")
    reader = DocumentReader(episodic(store, 40), llm)
    seen: list[IngestProgress] = []
    ingested = run(reader.ingest(STORY, name="story", on_progress=seen.append))
    assert ingested.created and {p.stage for p in seen} == {"segment", "embed", "store"}
    answer = run(reader.ask("Who sacrificed her queen to trap the king?"))
    assert answer.citations, answer
    for citation in answer.citations:
        assert "queen" in citation.text
        assert STORY[citation.start : citation.end] == citation.text
        assert citation.document_id == ingested.document.id
        assert answer.passages[citation.number - 1].episode_id == citation.episode_id
    # the prompt numbers the passages [1]..[n] in document order, question last
    (prompt,) = llm.prompts
    shown = _PASSAGE.findall(prompt[-1].content)
    assert [int(n) for n, _ in shown] == list(range(1, len(answer.passages) + 1))
    assert [text for _, text in shown] == [p.text.strip() for p in answer.passages]
    assert [p.start for p in answer.passages] == sorted(p.start for p in answer.passages)
    assert prompt[-1].content.endswith("Question: Who sacrificed her queen to trap the king?")
    assert prompt_tokens(prompt) <= ReaderConfig().max_prompt_tokens


def test_out_of_range_and_repeated_citations_are_dropped(store: MemoryStore) -> None:
    llm = RecordingLLM(keyword="saffron", extra=[0, 999, 2, 2])
    reader = DocumentReader(episodic(store, 40), llm)
    run(reader.ingest(STORY, name="story"))
    answer = run(reader.ask("What did merchants argue about saffron?"))
    wanted = [i for i, p in enumerate(answer.passages, 1) if "saffron" in p.text]
    assert wanted and len(wanted) < len(answer.passages)
    expected = wanted if 2 in wanted else [*wanted, 2]
    assert [c.number for c in answer.citations] == expected


def test_no_valid_citation_means_every_passage(store: MemoryStore) -> None:
    reader = DocumentReader(episodic(store, 40), RecordingLLM(keyword="absent", extra=[42]))
    run(reader.ingest(STORY, name="story"))
    answer = run(reader.ask("What did the bakers knead?"))
    assert len(answer.passages) > 1
    assert [c.number for c in answer.citations] == list(range(1, len(answer.passages) + 1))
    assert [c.episode_id for c in answer.citations] == [p.episode_id for p in answer.passages]


def test_nothing_recalled_answers_without_the_llm(store: MemoryStore) -> None:
    llm = RecordingLLM(keyword="queen")
    reader = DocumentReader(episodic(store, 40), llm)
    run(reader.ingest(STORY, name="story"))
    # every episode is larger than a 5-token budget, so none can be recalled
    answer = run(reader.ask("queen", budget_tokens=5))
    assert answer == Answer(NOTHING_RELEVANT, [], [])
    assert llm.prompts == []


def test_bad_questions_and_empty_namespaces_are_refused(store: MemoryStore) -> None:
    llm = RecordingLLM()
    reader = DocumentReader(episodic(store, 40), llm)
    with pytest.raises(NotFound, match="holds no documents"):
        run(reader.ask("Who polished the lens?"))
    run(reader.ingest(STORY, name="story"))
    for empty in ("", "  \n"):
        with pytest.raises(InvalidQuery, match="empty"):
            run(reader.ask(empty))
    with pytest.raises(InvalidQuery, match=r"65 tokens, more than the budget of 10"):
        run(reader.ask("word " * 50, budget_tokens=10))
    with pytest.raises(InvalidQuery, match="budget_tokens=0"):
        run(reader.ask("Who polished the lens?", budget_tokens=0))
    assert llm.prompts == []


def test_the_retrieval_budget_shrinks_to_keep_the_prompt_bounded(store: MemoryStore) -> None:
    question = "Which keeper polished the lens before the storm?"
    wide = RecordingLLM(keyword="lens")
    unbounded = DocumentReader(episodic(store, 40), wide)
    run(unbounded.ingest(STORY, name="story"))
    run(unbounded.ask(question))
    assert prompt_tokens(wide.prompts[0]) > 200  # unbounded, this question fills a larger prompt
    narrow = RecordingLLM(keyword="lens")
    config = ReaderConfig(max_prompt_tokens=200, section_tokens=100, summary_tokens=20)
    answer = run(DocumentReader(episodic(store, 40), narrow, config).ask(question))
    assert answer.citations and all("lens" in c.text for c in answer.citations)
    assert prompt_tokens(narrow.prompts[-1]) <= 200


def test_passages_are_dropped_when_their_numbering_overflows_the_prompt(
    store: MemoryStore,
) -> None:
    """Forty 4-token episodes: the budget packs ten, whose "[n]" labels push the prompt over."""
    llm = RecordingLLM(keyword="heron")
    config = ReaderConfig(max_prompt_tokens=108, section_tokens=40, summary_tokens=10)
    reader = DocumentReader(episodic(store, 4), llm, config)
    text = " ".join(f"Heron {i} waded." for i in range(40))
    assert len(run(reader.ingest(text, name="herons")).episodes) == 40
    answer = run(reader.ask("Where did heron 7 wade?"))
    assert 1 < len(answer.passages) < 10
    assert "Heron 7 waded." in [p.text.strip() for p in answer.passages]
    assert prompt_tokens(llm.prompts[0]) <= 108


# -- summarize --------------------------------------------------------------------------------


def test_summary_of_a_long_text_is_hierarchical_and_bounded(store: MemoryStore) -> None:
    llm = RecordingLLM()
    reader = DocumentReader(episodic(store, 13), llm, SMALL)
    ingested = run(reader.ingest(LEDGER, name="ledger"))
    assert len(ingested.episodes) == 64
    assert {e.token_count for e in ingested.episodes} == {13}
    progress: list[tuple[int, int]] = []
    summary = run(reader.summarize(on_progress=lambda done, total: progress.append((done, total))))
    # 4 episodes of 13 tokens per 60-token section: 16 sections; 4 summaries per group: 4; 1
    assert [len(level) for level in summary.levels] == [16, 4, 1]
    assert summary.calls == 21 == len(llm.prompts)
    assert (
        summary.text
        == summary.levels[-1][0]
        == "Entry 0 says the grey heron crossed the river quietly."
    )
    sizes = [prompt_tokens(p) for p in llm.prompts]
    assert max(sizes) == summary.max_prompt_tokens <= SMALL.max_prompt_tokens
    # level 0 covers every entry once, in order; each level above sees the one below, in order
    first = 0
    for level, below in zip(summary.levels, [None, *summary.levels], strict=False):
        prompts = llm.prompts[first : first + len(level)]
        first += len(level)
        entries = sorted((_entries(p) for p in prompts), key=lambda e: e[0])
        flat = [n for e in entries for n in e]
        expected = list(range(64)) if below is None else [int(_ENTRY.findall(s)[0]) for s in below]
        assert flat == expected
    assert progress == [(i, 16) for i in range(1, 17)] + [(i, 4) for i in range(1, 5)] + [(1, 1)]
    assert llm.most_in_flight == SMALL.concurrency


def _entries(prompt: Sequence[ChatMessage]) -> list[int]:
    return _entries_in(prompt[-1].content)


def _entries_in(text: str) -> list[int]:
    return [int(n) for n in _ENTRY.findall(text)]


def test_an_episode_larger_than_a_section_is_cut_to_fit(store: MemoryStore) -> None:
    llm = RecordingLLM()
    reader = DocumentReader(episodic(store, 400), llm, SMALL)
    text = LEDGER[: LEDGER.index("Entry 20 ")]  # 20 sentences: 260 tokens, one episode
    ingested = run(reader.ingest(text, name="ledger"))
    assert len(ingested.episodes) == 1 and ingested.tokens == 260
    summary = run(reader.summarize())
    assert len(summary.levels) >= 2 and summary.max_prompt_tokens <= SMALL.max_prompt_tokens
    level0 = [p[-1].content for p in llm.prompts[: len(summary.levels[0])]]
    # pieces are cut at spaces: every word of the episode reaches exactly one level-0 prompt
    assert len(level0) >= 5 and sum(p.count("heron") for p in level0) == 20


def test_a_short_document_is_one_call_and_documents_stay_apart(store: MemoryStore) -> None:
    llm = RecordingLLM()
    reader = DocumentReader(episodic(store, 13), llm, SMALL)
    with pytest.raises(NotFound, match="holds no documents"):
        run(reader.summarize())
    ledger = run(reader.ingest(LEDGER[: LEDGER.index("Entry 6 ")], name="ledger"))
    short_text = " ".join(TOPICS[:2])
    short = run(reader.ingest(short_text, name="short"))
    assert ledger.tokens == 78 and short.tokens <= 34  # sections of 52 + 26 tokens, then 33
    summary = run(reader.summarize(document_id=short.document.id))
    assert summary.calls == 1 and summary.levels == [[summary.text]]
    assert summary.text == short_text  # the fake's summary of entry-less text: its last line
    ids = [ledger.document.id, short.document.id]
    known = f"document 9999 does not exist in namespace 'ns'; its documents are {ids}"
    with pytest.raises(NotFound, match=re.escape(known)):
        run(reader.summarize(document_id=9999))
    llm.prompts.clear()
    whole = run(reader.summarize())
    # the short text would fit beside the ledger's last 26 tokens, but starts its own section
    assert [len(level) for level in whole.levels] == [3, 1]
    level0 = sorted((p[-1].content for p in llm.prompts[:3]), key=lambda p: "lighthouse" in p)
    assert [_entries_in(p) for p in level0] == [[0, 1, 2, 3], [4, 5], []]
    assert short_text in level0[2]


def test_a_document_without_episodes_has_nothing_to_summarise(store: MemoryStore) -> None:
    memory = episodic(store, 40)
    llm = RecordingLLM()
    reader = DocumentReader(memory, llm, SMALL)
    assert run(memory.append("An open stream", stream="notes")) == []  # its tail stays open
    (notes,) = run(memory.documents())
    with pytest.raises(InvalidQuery, match="nothing to summarise: the document has no episodes"):
        run(reader.summarize(document_id=notes.id))
    assert llm.prompts == []


def test_prompts_stay_bounded_when_token_counts_do_not_add_up(store: MemoryStore) -> None:
    """A counter that charges more for a longer text than for its parts (like BPE merges
    across boundaries could): packed sections overflow and must be split again."""

    def superadditive(text: str) -> int:
        words = len(text.split())
        return words + words * words // 50

    llm = RecordingLLM()
    config = ReaderConfig(max_prompt_tokens=150, section_tokens=60, summary_tokens=20)
    reader = DocumentReader(episodic(store, 12, superadditive), llm, config)
    assert len(run(reader.ingest(LEDGER, name="ledger")).episodes) == 64
    summary = run(reader.summarize())
    sizes = [sum(superadditive(m.content) for m in p) for p in llm.prompts]
    assert max(sizes) == summary.max_prompt_tokens <= 150
    # five 12-token episodes fit a 60-token section by their counts, but not one prompt
    assert len(summary.levels[0]) > 64 // 5 + 1
    level0 = llm.prompts[: len(summary.levels[0])]
    assert sorted(n for p in level0 for n in _entries(p)) == list(range(64))


def test_long_summaries_are_cut_so_every_level_shrinks(store: MemoryStore) -> None:
    """A model that ignores max_tokens and echoes its whole prompt still gets a summary."""
    llm = RecordingLLM(summarise=lambda text: text)
    reader = DocumentReader(episodic(store, 13), llm, SMALL)
    run(reader.ingest(LEDGER, name="ledger"))
    summary = run(reader.summarize())
    lengths = [len(level) for level in summary.levels]
    assert lengths[0] == 16 and lengths[-1] == 1
    assert all(b <= (a + 1) // 2 for a, b in pairwise(lengths)), lengths
    assert summary.max_prompt_tokens <= SMALL.max_prompt_tokens
    assert all(prompt_tokens(p) <= SMALL.max_prompt_tokens for p in llm.prompts)


def test_configurations_that_cannot_bound_a_prompt_are_refused(store: MemoryStore) -> None:
    with pytest.raises(ValueError, match="section_tokens=30 must hold two summaries"):
        ReaderConfig(section_tokens=30, summary_tokens=20)
    with pytest.raises(ValueError, match="concurrency=0 must be at least 1"):
        ReaderConfig(concurrency=0)
    config = ReaderConfig(max_prompt_tokens=100, section_tokens=90, summary_tokens=20)
    with pytest.raises(ValueError, match="max_prompt_tokens=100 cannot hold a section"):
        DocumentReader(episodic(store, 40), RecordingLLM(), config)


# -- the real path: a tiny random-weight Llama behind LocalLLM ---------------------------------


@pytest.fixture(scope="module")
def tiny_llm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalLLM]:
    from serving.engine.config import EngineConfig
    from serving.engine.engine import TorchEngine
    from tests.models import build_tiny_llama

    folder = build_tiny_llama(tmp_path_factory.mktemp("tiny-llama"))
    llm = LocalLLM(TorchEngine(EngineConfig(model=str(folder))))
    yield llm
    llm.close()


def test_real_llm_answers_with_valid_citations_and_summarises(
    store: MemoryStore, tiny_llm: LocalLLM
) -> None:
    def count(text: str) -> int:
        return len(tiny_llm.encode(text, special=False))

    segmenter = FixedSegmenter(SegmenterConfig(min_tokens=4, max_tokens=40), count)
    memory = EpisodicMemory(store, "ns", segmenter, count_tokens=count)
    config = ReaderConfig(
        budget_tokens=200,
        max_prompt_tokens=600,
        section_tokens=160,
        summary_tokens=32,
        answer_tokens=128,
    )
    reader = DocumentReader(memory, tiny_llm, config)
    run(reader.ingest(STORY, name="story"))
    answer = run(reader.ask("Who sacrificed her queen?"))
    assert answer.text and answer.passages
    assert sum(p.tokens for p in answer.passages) <= 200
    assert answer.citations
    for citation in answer.citations:
        assert 1 <= citation.number <= len(answer.passages)
        assert answer.passages[citation.number - 1].episode_id == citation.episode_id
        assert STORY[citation.start : citation.end] == citation.text
    sections = run(reader.summarize())
    # the story is ~420 of the model's tokens: three sections of at most 160, then the whole
    assert [len(level) for level in sections.levels] == [3, 1] and sections.calls == 4
    assert sections.text == sections.levels[-1][0]
    assert 160 < sections.max_prompt_tokens <= config.max_prompt_tokens
