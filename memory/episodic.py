"""EpisodicMemory: EM-LLM's episodic memory at the text level, over a :class:`MemoryStore`.

Text of any length is cut into events (:mod:`memory.segmenters`), each stored as an episode
(SQL with its lexical index, then the vector index) and recalled in two stages
(:mod:`memory.retrieval`) within a token budget: a hybrid first stage (meaning and words, fused
by :mod:`memory.fusion`) and the contiguity buffer. Async core; :class:`SyncEpisodicMemory`
wraps it for scripts.

Ingestion is atomic per document: segmentation and embedding happen first, in memory, then the
document and all its episodes are written in one SQL transaction. A failure before that (the LLM
endpoint down mid-way) leaves nothing behind; ingesting the same text again returns the
document already stored instead of a copy.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, Literal, TypeVar

import numpy as np

from base.bridge import LoopThread
from memory.documents import sha256
from memory.embedder import PassageScorer
from memory.episodes import Vectors
from memory.errors import InvalidQuery, InvalidRecord, NotFound
from memory.forgetting import ForgetPolicy, to_forget
from memory.fusion import FusionConfig, fuse
from memory.records import Document, Episode, EpisodeVersion, NewEpisode, SearchHit
from memory.retrieval import (
    Reach,
    Reason,
    Recall,
    neighbour_positions,
    neighbours,
    pack,
    pack_budget,
)
from memory.segmentation import Event, StreamingSegmenter, approximate_tokens
from memory.segmenters import Segmenter
from memory.store import MemoryStore
from memory.tables import utcnow

T = TypeVar("T")

EXPLICIT_K = 8
"""k_similar or k_contiguous when a search gives only the other one."""
FUSION_DEPTH = 20
"""Each first-stage ranking is at least this long before fusion, however few hits are kept."""

Stage = Literal["segment", "embed", "store"]


@dataclass(frozen=True, slots=True)
class IngestProgress:
    """Where an ingestion is: ``done`` of ``total`` steps of ``stage``."""

    stage: Stage
    done: int
    total: int


OnProgress = Callable[[IngestProgress], None]


@dataclass(frozen=True, slots=True)
class Ingested:
    """What ``ingest`` stored; ``created`` is False when the same text was already there."""

    document: Document
    episodes: list[Episode]
    tokens: int
    seconds: float
    created: bool


@dataclass(frozen=True, slots=True)
class RecallDefaults:
    """Search settings used when a call does not give its own."""

    budget_tokens: int = 1024
    """Most tokens of episode text a search returns (counted by ``count_tokens``)."""
    k_similar: int | None = None
    """Episodes taken by the first stage; None = budget-aware (see :mod:`memory.retrieval`)."""
    k_contiguous: int | None = None
    """Neighbours added from the contiguity buffer; None = budget-aware."""
    reach: Reach = field(default_factory=Reach)
    """How far the contiguity buffer follows a hit (tokens after and before) and its decay."""
    fusion: FusionConfig = field(default_factory=FusionConfig)
    """How the first stage fuses its ranking by meaning with its ranking by words."""
    pool_tokens: int = 12
    """Budget-aware first stage: one candidate per this many tokens of budget (at least 16)."""
    embed_batch: int = 256
    """Episodes embedded per call during ingestion (progress is reported per batch)."""
    rerank_depth: int = 32
    """With a cross-encoder (``scorer``), how many of the first stage's best it reorders."""


@dataclass(slots=True)
class _Stream:
    """A stream being appended to: its whole text, and the segmenter run from ``base`` on."""

    document_id: int
    segmenter: StreamingSegmenter
    text: str
    base: int  # where the current segmenter run starts (0, or after the last flush)
    metadata: dict[str, Any]  # the document's, as last written (tail, tail_from, base)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class EpisodicMemory:
    """Episodes of one namespace: ingest, append, search, edit, pin, forget, history.

    ``count_tokens`` is the configured tokenizer's counter: episodes' token counts and search
    budgets are in its tokens. Every method is a coroutine; blocking store and embedding work
    runs in worker threads.
    """

    def __init__(
        self,
        store: MemoryStore,
        namespace: str,
        segmenter: Segmenter,
        *,
        count_tokens: Callable[[str], int] = approximate_tokens,
        defaults: RecallDefaults = RecallDefaults(),
        scorer: PassageScorer | None = None,
    ) -> None:
        if not namespace.strip():
            raise InvalidRecord("a namespace needs a non-empty name")
        self.store = store
        self.namespace = namespace
        self.segmenter = segmenter
        self.count_tokens = count_tokens
        self.defaults = defaults
        self.scorer = scorer
        """Reorders the first stage's best by reading query and passage together (optional)."""
        self._streams: dict[str, _Stream] = {}

    async def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        return await asyncio.to_thread(fn, *args, **kwargs)

    # -- writing ---------------------------------------------------------------------------

    async def ingest(
        self,
        text: str,
        *,
        name: str = "text",
        source: str | None = None,
        metadata: Mapping[str, Any] | None = None,
        ttl: timedelta | None = None,
        on_progress: OnProgress | None = None,
    ) -> Ingested:
        """Segment ``text`` into episodes and store them as one document, atomically."""
        began = time.perf_counter()
        if not isinstance(text, str) or not text.strip():
            raise InvalidRecord("the text to ingest is empty; give it some text")
        await self._call(self.store.namespace, self.namespace)
        existing = await self._call(self.store.documents.find, self.namespace, digest=sha256(text))
        if existing:
            document = existing[0]
            episodes = await self.episodes(document.id)
            tokens = sum(e.token_count for e in episodes)
            return Ingested(document, episodes, tokens, time.perf_counter() - began, False)

        def segment_progress(done: int, total: int) -> None:
            if on_progress is not None:
                on_progress(IngestProgress("segment", done, total))

        events = await self.segmenter.segment(text, segment_progress)
        new, vectors = await self._prepare(text, events, ttl, on_progress)
        document, stored = await self._call(
            self.store.add_document,
            self.namespace,
            name,
            text,
            new,
            vectors,
            source=source,
            metadata={"segmenter": self.segmenter.kind, **(metadata or {})},
        )
        if on_progress is not None:
            on_progress(IngestProgress("store", 1, 1))
        tokens = sum(e.token_count for e in stored)
        return Ingested(document, stored, tokens, time.perf_counter() - began, True)

    async def _prepare(
        self,
        text: str,
        events: Sequence[Event],
        ttl: timedelta | None,
        on_progress: OnProgress | None,
        offset: int = 0,
    ) -> tuple[list[NewEpisode], Vectors]:
        """Episodes for ``events`` of ``text`` (offsets shifted by ``offset``), and vectors."""
        expires = None if ttl is None else utcnow() + ttl
        texts = [text[e.start : e.end] for e in events]
        counts = await self._call(lambda: [self.count_tokens(t) for t in texts])
        new = [
            NewEpisode(
                text=body,
                start_char=event.start + offset,
                end_char=event.end + offset,
                token_count=count,
                surprise_mean=event.surprise_mean,
                surprise_max=event.surprise_max,
                expires_at=expires,
            )
            for body, event, count in zip(texts, events, counts, strict=True)
            if body.strip()
        ]
        batch = self.defaults.embed_batch
        parts: list[Vectors] = []
        for first in range(0, len(new), batch):
            chunk = [e.text for e in new[first : first + batch]]
            parts.append(await self._call(self.store.embedder.embed, chunk))
            if on_progress is not None:
                on_progress(IngestProgress("embed", min(first + batch, len(new)), len(new)))
        dim = self.store.embedder.dimension
        vectors = np.concatenate(parts) if parts else np.zeros((0, dim), np.float32)
        return new, vectors.astype(np.float32, copy=False)

    async def append(self, text: str, *, stream: str = "stream") -> list[Episode]:
        """Add ``text`` to the end of a growing document (a story, a log) named ``stream``.

        Events are stored as soon as no later text can change them (see
        :class:`~memory.segmentation.StreamingSegmenter`): the result equals ingesting the
        stream in one pass. The open tail is kept with the document, so a restart continues
        where it stopped; :meth:`flush` stores it when the stream pauses or ends.
        """
        if not isinstance(text, str):
            raise InvalidRecord("append takes text (a str)")
        state = await self._stream(stream)
        async with state.lock:
            state.text += text
            events = await self._call(state.segmenter.feed, text)
            return await self._store_stream(state, events)

    async def flush(self, *, stream: str = "stream") -> list[Episode]:
        """Store the open tail of ``stream`` as its last event(s).

        Text appended later is segmented as a new run starting after the flushed text.
        """
        state = await self._stream(stream)
        async with state.lock:
            events = await self._call(state.segmenter.finish)
            stored = await self._store_stream(state, events, closing=True)
            self._streams.pop(stream, None)
            return stored

    async def _store_stream(
        self, state: _Stream, events: list[Event], *, closing: bool = False
    ) -> list[Episode]:
        run = state.text[state.base :]
        new, vectors = await self._prepare(run, events, None, None, offset=state.base)
        tail_from = int(state.metadata.get("tail_from", state.base))
        if events:
            tail_from = state.base + events[-1].end
        metadata = {
            **state.metadata,
            "tail_from": tail_from,
            "tail": state.text[tail_from:],
            "base": len(state.text) if closing else state.base,
        }
        _, stored = await self._call(
            self.store.extend_document,
            self.namespace,
            state.document_id,
            state.text,
            new,
            vectors,
            metadata,
        )
        state.metadata = metadata
        return stored

    async def _stream(self, name: str) -> _Stream:
        if name in self._streams:
            return self._streams[name]
        await self._call(self.store.namespace, self.namespace)
        found = await self._call(self.store.documents.find, self.namespace, name=name)
        streams = [d for d in found if d.metadata.get("stream")]
        if found and not streams:
            raise InvalidRecord(
                f"document {name!r} in namespace {self.namespace!r} was ingested whole, not "
                "appended to; append to a stream under another name"
            )
        segmenter = self.segmenter.streaming()
        if not streams:
            empty = np.zeros((0, self.store.embedder.dimension), np.float32)
            metadata = {"stream": True, "segmenter": self.segmenter.kind, "base": 0, "tail": ""}
            document, _ = await self._call(
                self.store.add_document, self.namespace, name, "", [], empty, metadata=metadata
            )
            state = _Stream(document.id, segmenter, "", 0, dict(document.metadata))
            self._streams[name] = state
            return state
        document = streams[0]
        episodes = await self.episodes(document.id)
        tail = str(document.metadata.get("tail", ""))
        text = "".join([await self._original(e) for e in episodes]) + tail
        base = int(document.metadata.get("base", 0))
        state = _Stream(document.id, segmenter, text, base, dict(document.metadata))
        replayed = await self._call(segmenter.feed, text[base:])
        stored = sum(1 for e in episodes if e.start_char >= base)
        if len(replayed) < stored:
            raise InvalidRecord(f"stream {name!r} cannot be replayed: its episodes changed")
        if len(replayed) > stored:  # a crash between feed and store: store what was missed
            await self._store_stream(state, replayed[stored:])
        self._streams[name] = state
        return state

    async def _original(self, episode: Episode) -> str:
        """The text an episode was stored with (streams replay it, edits notwithstanding)."""
        if episode.version == 1:
            return episode.text
        history = await self._call(self.store.episodes.history, self.namespace, episode.id)
        return history[0].text

    # -- reading ---------------------------------------------------------------------------

    async def search(
        self,
        query: str,
        *,
        budget_tokens: int | None = None,
        k_similar: int | None = None,
        k_contiguous: int | None = None,
        document_id: int | None = None,
        within: Sequence[int] | None = None,
    ) -> list[Recall]:
        """Episodes for ``query`` within ``budget_tokens``, in document order (two stages).

        Without ``k_similar`` and ``k_contiguous`` (here or in the defaults) the budget decides
        how many hits and neighbours come back; given either, the ``k_similar`` best hits and
        the ``k_contiguous`` best neighbours (8 for the one not given) are packed instead.
        ``document_id`` limits recall to one document. ``within`` limits it to the given episode
        ids and makes their order the timeline that contiguity follows — a story branch passes
        the episodes of its ancestors, so sibling branches never leak in.
        """
        budget = self.defaults.budget_tokens if budget_tokens is None else budget_tokens
        k_s = self.defaults.k_similar if k_similar is None else k_similar
        k_c = self.defaults.k_contiguous if k_contiguous is None else k_contiguous
        explicit = None
        if k_s is not None or k_c is not None:
            explicit = (EXPLICIT_K if k_s is None else k_s, EXPLICIT_K if k_c is None else k_c)
        self._check_query(query, budget, explicit)
        # One worker-thread trip for the whole recall (embedding, index, SQL, packing): each
        # trip costs a thread hand-off, which a busy machine makes slow.
        return await self._call(
            self._recall, query, budget, explicit, document_id, within, utcnow()
        )

    def _recall(
        self,
        query: str,
        budget: int,
        explicit: tuple[int, int] | None,
        document_id: int | None,
        within: Sequence[int] | None,
        now: datetime,
    ) -> list[Recall]:
        """:meth:`search`'s work, synchronously."""
        timeline = None if within is None else {eid: i for i, eid in enumerate(within)}

        def eligible(episode: Episode) -> bool:
            if episode.expires_at is not None and episode.expires_at <= now:
                return False
            if document_id is not None and episode.document_id != document_id:
                return False
            return timeline is None or episode.id in timeline

        def position(episode: Episode) -> int:
            return episode.ordinal if timeline is None else timeline[episode.id]

        def same(hit: Episode, neighbour: Episode) -> bool:
            return eligible(neighbour) and neighbour.document_id == hit.document_id

        wanted = explicit[0] if explicit else max(16, budget // self.defaults.pool_tokens)
        first = self.first_stage(query, wanted, eligible, document_id, timeline is not None)
        hits = [(e, position(e), s) for e, s in first]
        fetched = self._at(neighbour_positions([p for _, p, _ in hits]), within)
        found = {position(e): e for e in fetched}
        reach = self.defaults.reach
        if explicit is None:
            found |= {p: e for e, p, _ in hits}
            recalled = pack_budget(hits, found, budget, self.count_tokens, reach, same)
        else:
            candidates: list[tuple[Episode, float, Reason]] = [
                (e, s, "similarity") for e, s in first
            ]
            near = neighbours(hits, found, explicit[1], reach, same)
            candidates += [(e, worth, "contiguity") for e, worth in near]
            recalled = pack(candidates, budget, self.count_tokens)
        if recalled:
            self.store.touch(self.namespace, [r.episode_id for r in recalled], now)
        return recalled

    def _check_query(self, query: str, budget: int, explicit: tuple[int, int] | None) -> None:
        if not isinstance(query, str) or not query.strip():
            raise InvalidQuery("the query is empty; ask for something")
        k_s, k_c = explicit or (1, 0)
        if budget < 1 or k_s < 1 or k_c < 0:
            raise InvalidQuery(
                f"budget_tokens={budget}, k_similar={k_s}, k_contiguous={k_c}: need "
                "budget_tokens >= 1, k_similar >= 1 and k_contiguous >= 0"
            )
        query_tokens = self.count_tokens(query)
        if query_tokens > budget:
            raise InvalidQuery(
                f"the query is {query_tokens} tokens, more than the budget of {budget}; "
                "shorten it or raise the budget"
            )

    def first_stage(
        self,
        query: str,
        k: int,
        eligible: Callable[[Episode], bool],
        document_id: int | None = None,
        within: bool = False,
    ) -> list[tuple[Episode, float]]:
        """The ``k`` best eligible episodes by meaning and words, fused, with fused scores.

        ``document_id`` is pushed into the lexical search; ``within`` says ``eligible`` keeps
        only a timeline's episodes (so more are asked for).
        """
        fusion = self.defaults.fusion
        depth = max(2 * k, FUSION_DEPTH)  # fuse deeper lists than kept: agreement lower down
        dense: list[Episode] = []
        lexical: list[Episode] = []
        filtered = within or document_id is not None
        if fusion.dense_weight > 0:
            vector = self.store.embedder.embed([query])[0]
            dense = self._ranked(
                lambda n: self.store.search(self.namespace, vector, n), depth, eligible, filtered
            )
        if fusion.lexical_weight > 0:
            lexical = self._ranked(
                lambda n: self.store.lexical_search(
                    self.namespace, query, n, document_id=document_id
                ),
                depth,
                eligible,
                within,
            )
        episodes = {e.id: e for e in [*dense, *lexical]}
        fused = fuse(
            [[e.id for e in dense], [e.id for e in lexical]],
            [fusion.dense_weight, fusion.lexical_weight],
            fusion.rank_constant,
        )
        ranked = [(episodes[i], score) for i, score in fused]
        if self.scorer is not None and ranked:
            ranked = self._reranked(self.scorer, query, ranked)
        return ranked[:k]

    def _reranked(
        self, scorer: PassageScorer, query: str, ranked: list[tuple[Episode, float]]
    ) -> list[tuple[Episode, float]]:
        """The first ``rerank_depth`` reordered by the cross-encoder. They keep the fused
        scores by position (the best gets the best fused score), so the second stage's
        score-gated contiguity weighs neighbours on the scale it was tuned on."""
        head = ranked[: self.defaults.rerank_depth]
        scores = scorer.score(query, [episode.text for episode, _ in head])
        order = sorted(range(len(head)), key=lambda i: (-scores[i], i))
        places = [score for _, score in head]  # descending
        return [(head[j][0], places[at]) for at, j in enumerate(order)] + ranked[len(head) :]

    @staticmethod
    def _ranked(
        search: Callable[[int], list[SearchHit]],
        k: int,
        eligible: Callable[[Episode], bool],
        filtered: bool,
    ) -> list[Episode]:
        """The ``k`` best eligible episodes of one ranking; asks for more while a filter leaves
        too few (up to 4 rounds, x4 each)."""
        fetch = k * 8 if filtered else k * 2
        kept: list[Episode] = []
        for _ in range(4):
            hits = search(fetch)
            kept = [h.episode for h in hits if eligible(h.episode)]
            if len(kept) >= k or len(hits) < fetch:
                break
            fetch *= 4
        return kept[:k]

    def _at(self, positions: Sequence[int], within: Sequence[int] | None) -> list[Episode]:
        """Episodes at the given positions: ordinals, or indexes into ``within``."""
        if within is None:
            return self.store.episodes.at_ordinals(self.namespace, positions)
        ids = [within[where] for where in positions if where < len(within)]
        return self.store.episodes.get_many(self.namespace, ids)

    async def get(self, episode_id: int) -> Episode:
        return await self._call(self.store.episodes.get, self.namespace, episode_id)

    async def history(self, episode_id: int) -> list[EpisodeVersion]:
        """Earlier states of an episode, oldest first (the current one is :meth:`get`)."""
        return await self._call(self.store.episodes.history, self.namespace, episode_id)

    async def documents(self) -> list[Document]:
        """Documents and streams of the namespace, oldest first (none if it does not exist)."""
        try:
            return await self._call(self.store.documents.all, self.namespace)
        except NotFound:
            return []

    async def episodes(self, document_id: int | None = None) -> list[Episode]:
        """Every episode (of one document, if given), in order."""
        return await self._call(
            self.store.episodes.page, self.namespace, document_id=document_id, limit=10**9
        )

    # -- changing and forgetting -----------------------------------------------------------

    async def edit(
        self,
        episode_id: int,
        *,
        text: str | None = None,
        importance: float | None = None,
        reason: str | None = None,
    ) -> Episode:
        """Change an episode's text or importance; the state before is kept (see history)."""
        if importance is not None and importance < 0:
            raise InvalidRecord(f"importance {importance} is negative; use a value >= 0")
        return await self._call(
            self.store.edit,
            self.namespace,
            episode_id,
            text=text,
            importance=importance,
            reason=reason,
        )

    async def pin(self, episode_id: int, pinned: bool = True) -> Episode:
        """Pin (or unpin) an episode: pinned episodes are never forgotten."""
        return await self._call(
            self.store.edit,
            self.namespace,
            episode_id,
            pinned=pinned,
            reason="pin" if pinned else "unpin",
        )

    async def forget(
        self,
        episode_ids: Sequence[int] = (),
        *,
        policy: ForgetPolicy | None = None,
        now: datetime | None = None,
    ) -> list[int]:
        """Delete the given episodes, every expired one, and (with ``policy``) the faded ones.

        Pinned episodes are never forgotten: naming one explicitly raises, so nothing is
        deleted by a call that asked for the impossible. Returns the ids deleted.
        """
        explicit = await self._call(self.store.episodes.get_many, self.namespace, episode_ids)
        missing = sorted(set(episode_ids) - {e.id for e in explicit})
        if missing:
            raise NotFound(f"episodes {missing} do not exist in namespace {self.namespace!r}")
        if pinned := [e.id for e in explicit if e.pinned]:
            raise InvalidRecord(f"episodes {pinned} are pinned; unpin them before forgetting")
        items = await self._call(self.store.episodes.retention, self.namespace)
        doomed = set(episode_ids) | set(to_forget(items, now or utcnow(), policy))
        if not doomed:
            return []
        return await self._call(self.store.delete, self.namespace, sorted(doomed))

    async def delete_document(self, document_id: int) -> None:
        await self._call(self.store.delete_document, self.namespace, document_id)


class SyncEpisodicMemory:
    """Blocking twins of :class:`EpisodicMemory`'s methods, for scripts and Streamlit.

    Calls run on one :class:`base.bridge.LoopThread` (so an async LLM client inside the
    segmenter keeps its connections); close with :meth:`close` or a ``with`` block.
    """

    def __init__(self, memory: EpisodicMemory) -> None:
        self.memory = memory
        self._bridge = LoopThread("SyncEpisodicMemory")

    def ingest(self, text: str, **kwargs: Any) -> Ingested:
        return self._bridge.run(self.memory.ingest(text, **kwargs))

    def append(self, text: str, *, stream: str = "stream") -> list[Episode]:
        return self._bridge.run(self.memory.append(text, stream=stream))

    def flush(self, *, stream: str = "stream") -> list[Episode]:
        return self._bridge.run(self.memory.flush(stream=stream))

    def search(self, query: str, **kwargs: Any) -> list[Recall]:
        return self._bridge.run(self.memory.search(query, **kwargs))

    def get(self, episode_id: int) -> Episode:
        return self._bridge.run(self.memory.get(episode_id))

    def history(self, episode_id: int) -> list[EpisodeVersion]:
        return self._bridge.run(self.memory.history(episode_id))

    def documents(self) -> list[Document]:
        return self._bridge.run(self.memory.documents())

    def episodes(self, document_id: int | None = None) -> list[Episode]:
        return self._bridge.run(self.memory.episodes(document_id))

    def edit(self, episode_id: int, **kwargs: Any) -> Episode:
        return self._bridge.run(self.memory.edit(episode_id, **kwargs))

    def pin(self, episode_id: int, pinned: bool = True) -> Episode:
        return self._bridge.run(self.memory.pin(episode_id, pinned))

    def forget(self, episode_ids: Sequence[int] = (), **kwargs: Any) -> list[int]:
        return self._bridge.run(self.memory.forget(episode_ids, **kwargs))

    def delete_document(self, document_id: int) -> None:
        self._bridge.run(self.memory.delete_document(document_id))

    def close(self) -> None:
        """Stop the loop and join its thread; idempotent. Any call after it raises
        ``RuntimeError``."""
        self._bridge.close()

    def __enter__(self) -> SyncEpisodicMemory:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


__all__ = [
    "EpisodicMemory",
    "ForgetPolicy",
    "IngestProgress",
    "Ingested",
    "Recall",
    "RecallDefaults",
    "SyncEpisodicMemory",
]
