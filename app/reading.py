"""Composition of episodic memory for a collection: store, segmenter, token counter, LLM.

A *collection* is a memory namespace. Everything is opened on first use: listing reads SQL alone
(:attr:`Reading.catalog`: no vector index, no model); the embedder loads on the first embedding;
the LLM only when something needs it (surprise scoring, ask, summarize), so ``mneme doc search``
loads the embedder and no LLM.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Literal

from agents.reader import DocumentReader, ReaderConfig
from app.runtime import open_database, open_llm, open_memory
from app.scorer import LLMTokenScorer
from app.settings import Settings
from memory import Database, MemoryStore
from memory.documents import SqlDocumentStore
from memory.embedder import PassageScorer
from memory.episodes import SqlEpisodeStore
from memory.episodic import EpisodicMemory, Ingested, OnProgress, RecallDefaults
from memory.episodic import IngestProgress as IngestProgress  # re-exported for the UI
from memory.namespaces import SqlNamespaceStore
from memory.scoring import Progress
from memory.segmentation import Event, SegmenterConfig, StreamingSegmenter
from memory.segmenters import (
    EmbeddingSegmenter,
    FixedSegmenter,
    Segmenter,
    SegmenterKind,
    SurpriseSegmenter,
)
from serving.errors import LogprobsUnsupported
from serving.llm import LLM
from serving.tokens import token_counter

log = logging.getLogger(__name__)

SegmenterChoice = Literal["auto", "surprise", "embedding", "fixed"]

SERVER_CONTEXT_TOKENS = 4096
"""Context assumed for an OpenAI-compatible server when MNEME_LLM_CONTEXT_TOKENS is unset."""


class SurpriseOrNovelty:
    """Surprise while the LLM gives logprobs; embedding novelty from the first refusal on.

    ``kind`` tells which one cut the last text (it is recorded with the document).
    """

    def __init__(self, surprise: Segmenter, fallback: Segmenter) -> None:
        self._surprise = surprise
        self._fallback = fallback
        self._refused = False
        self.kind: SegmenterKind = "surprise"

    async def segment(self, text: str, on_progress: Progress | None = None) -> list[Event]:
        if not self._refused:
            try:
                events = await self._surprise.segment(text, on_progress)
                self.kind = "surprise"
                return events
            except LogprobsUnsupported as err:
                log.warning("%s; segmenting by embedding novelty instead", err)
                self._refused = True
        self.kind = "embedding"
        return await self._fallback.segment(text, on_progress)

    def streaming(self) -> StreamingSegmenter:
        return self._fallback.streaming()


class LazySurprise:
    """A :class:`SurpriseSegmenter` built on first use, so the LLM loads only when needed."""

    kind: SegmenterKind = "surprise"

    def __init__(self, build: Callable[[], SurpriseSegmenter], streaming: Segmenter) -> None:
        self._build = build
        self._built: SurpriseSegmenter | None = None
        self._streaming = streaming

    async def segment(self, text: str, on_progress: Progress | None = None) -> list[Event]:
        if self._built is None:
            self._built = self._build()
        return await self._built.segment(text, on_progress)

    def streaming(self) -> StreamingSegmenter:
        return self._streaming.streaming()


@dataclass(frozen=True, slots=True)
class Catalog:
    """What memory holds, read from SQL alone: no vector index opened, no model loaded."""

    namespaces: SqlNamespaceStore
    documents: SqlDocumentStore
    episodes: SqlEpisodeStore

    @classmethod
    def over(cls, database: Database) -> Catalog:
        return cls(
            SqlNamespaceStore(database), SqlDocumentStore(database), SqlEpisodeStore(database)
        )


class Reading:
    """What ``mneme doc`` and the services need: memory per collection, one LLM, one counter.

    Close it when done (it owns the LLM once loaded).
    """

    def __init__(
        self,
        settings: Settings,
        *,
        store: MemoryStore | None = None,
        llm: LLM | None = None,
    ) -> None:
        self.settings = settings
        self._store = store
        self._llm = llm
        # The web app opens the stores from several threads at once (a page and a running
        # step); Chroma's client registry breaks when one folder is opened concurrently.
        self._opening = threading.RLock()

    @cached_property
    def database(self) -> Database:
        """The SQL database (migrated if embedded), opened without the vector index."""
        with self._opening:
            if self._store is not None:
                return self._store.database
            return open_database(self.settings)

    @property
    def store(self) -> MemoryStore:
        """The memory store: SQL, the vector index (drift repaired) and a lazily loaded embedder."""
        if self._store is None:
            with self._opening:
                if self._store is None:
                    self._store = open_memory(self.settings, self.database)[0]
        return self._store

    @property
    def catalog(self) -> Catalog:
        """The collections, documents and episode counts, from SQL alone (the store's own tables
        once it is open)."""
        if self._store is not None:
            return Catalog(self._store.namespaces, self._store.documents, self._store.episodes)
        return Catalog.over(self.database)

    @property
    def llm(self) -> LLM:
        if self._llm is None:
            self._llm = open_llm(self.settings)
        return self._llm

    @cached_property
    def cross_encoder(self) -> PassageScorer | None:
        """The reranker of recall's first stage (``MNEME_CROSS_ENCODER``; loaded on first use),
        or None."""
        folder = self.settings.cross_encoder
        if folder is None:
            return None
        from serving.cross_encoder import CrossEncoderScorer  # torch: only when configured

        return CrossEncoderScorer(folder)

    @cached_property
    def count_tokens(self) -> Callable[[str], int]:
        return token_counter(self.settings.tokenizer or self.settings.llm_model).count

    @property
    def segmenter_config(self) -> SegmenterConfig:
        return SegmenterConfig(
            min_tokens=self.settings.event_min_tokens, max_tokens=self.settings.event_max_tokens
        )

    def context_tokens(self) -> int:
        """Tokens the LLM takes: ``MNEME_LLM_CONTEXT_TOKENS``, else what the backend's
        capabilities say, else :data:`SERVER_CONTEXT_TOKENS`."""
        if self.settings.llm_context_tokens is not None:
            return self.settings.llm_context_tokens
        context = self.llm.capabilities.context_tokens
        return context if context is not None else SERVER_CONTEXT_TOKENS

    def segmenter(self, choice: SegmenterChoice | None = None) -> Segmenter:
        kind = choice or self.settings.segmenter
        config = self.segmenter_config
        embedding = EmbeddingSegmenter(self.store.embedder, config, self.count_tokens)
        if kind == "embedding":
            return embedding
        if kind == "fixed":
            return FixedSegmenter(config, self.count_tokens)

        def build() -> SurpriseSegmenter:
            return SurpriseSegmenter(
                LLMTokenScorer(self.llm),
                config,
                context_tokens=self.context_tokens(),
                embedder=self.store.embedder,
                count_tokens=self.count_tokens,
            )

        surprise = LazySurprise(build, embedding)
        if kind == "surprise":
            return surprise
        return SurpriseOrNovelty(surprise, embedding)

    def memory(self, collection: str, segmenter: SegmenterChoice | None = None) -> EpisodicMemory:
        return self._episodic(collection, self.segmenter(segmenter))

    def story_memory(self, namespace: str) -> EpisodicMemory:
        """A story's long-term memory: each paragraph one event (fixed windows of up to 512
        tokens at sentence ends), so a step embeds its paragraph once, not sentence by sentence."""
        config = SegmenterConfig(min_tokens=16, max_tokens=512)
        return self._episodic(namespace, FixedSegmenter(config, self.count_tokens))

    def _episodic(self, namespace: str, segmenter: Segmenter) -> EpisodicMemory:
        return EpisodicMemory(
            self.store,
            namespace,
            segmenter,
            count_tokens=self.count_tokens,
            defaults=RecallDefaults(budget_tokens=self.settings.recall_budget_tokens),
            scorer=self.cross_encoder,
        )

    async def ingest_file(
        self,
        collection: str,
        path: Path,
        *,
        segmenter: SegmenterChoice | None = None,
        name: str | None = None,
        max_bytes: int | None = None,
        on_progress: OnProgress | None = None,
        shown_as: str | None = None,
    ) -> Ingested:
        """Read a document file (see :mod:`app.loaders`; ``max_bytes`` defaults to its
        ``MAX_BYTES``) into a collection, atomically. Errors name the file ``shown_as`` (an
        upload's own name) when given, else its path."""
        # Imported here: the PDF, DOCX and EPUB parsers cost every other command ~0.2 s to import.
        from app.loaders import MAX_BYTES, load_document

        loaded = load_document(path, max_bytes=max_bytes or MAX_BYTES, name=shown_as)
        return await self.memory(collection, segmenter).ingest(
            loaded.text,
            name=name or loaded.title,
            source=loaded.source,
            metadata={"format": loaded.format},
            on_progress=on_progress,
        )

    def reader(self, collection: str) -> DocumentReader:
        """A document reader whose prompts fit the LLM's context (with room for the reply)."""
        context = self.context_tokens()
        answer = min(256, context // 16)
        reply = ReaderConfig(answer_tokens=answer, summary_tokens=answer).reply_tokens
        prompt = min(3072, context - reply - 64)  # 64: the chat template's own tokens
        config = ReaderConfig(
            budget_tokens=min(self.settings.recall_budget_tokens, prompt // 2),
            max_prompt_tokens=prompt,
            section_tokens=min(2048, prompt * 2 // 3),
            summary_tokens=answer,
            answer_tokens=answer,
        )
        return DocumentReader(self.memory(collection), self.llm, config)

    def close(self) -> None:
        closer = getattr(self._llm, "close", None)
        if callable(closer):
            closer()
