"""RerankerPool: the scorers a process offers, by name, each loaded on first use and kept."""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping

from serving.rerank.config import EMBEDDER_SCORER, RANKGEN_CHECKPOINTS, ScorerConfig
from serving.rerank.embedder import EmbedderReranker, TextEmbedder
from serving.rerank.errors import UnknownScorer
from serving.rerank.reranker import Reranker

FOLDERS_VARIABLE = "MNEME_RERANK_FOLDERS"
"""Local RankGen checkpoints offered by name: ``name=/path,name2=/path2``."""


def scorer_folders(value: str | None) -> dict[str, str]:
    """``name=/path,name2=/path2`` (``MNEME_RERANK_FOLDERS``) as a mapping; ValueError naming
    the bad entry."""
    folders: dict[str, str] = {}
    for entry in filter(None, (part.strip() for part in (value or "").split(","))):
        name, sep, folder = entry.partition("=")
        if not sep or not name.strip() or not folder.strip():
            raise ValueError(f"entry {entry!r} is not name=/path/to/rankgen-checkpoint")
        folders[name.strip()] = folder.strip()
    return folders


def canonical(name: str) -> str:
    """One key per scorer: RankGen short names become their hub names."""
    return RANKGEN_CHECKPOINTS.get(name, name)


class RerankerPool:
    """Named scorer factories; :meth:`get` loads a scorer once (thread-safe) and keeps it.

    A failed load (:class:`~serving.errors.ModelNotAvailable`) is not kept, so a checkpoint
    put in place later loads on the next request.
    """

    def __init__(self, factories: Mapping[str, Callable[[], Reranker]]) -> None:
        self._factories = {canonical(k): v for k, v in factories.items()}
        self._loaded: dict[str, Reranker] = {}
        self._lock = threading.Lock()

    @classmethod
    def standard(
        cls,
        embedder: TextEmbedder | None = None,
        config: ScorerConfig | None = None,
        folders: Mapping[str, str] | None = None,
    ) -> RerankerPool:
        """ "embedder" (over ``embedder``, else the bundled MiniLM), the published RankGen
        checkpoints by short or hub name (offline: from the hub cache), and ``folders``
        (name → local RankGen checkpoint folder)."""
        from serving.rerank.rankgen import RankGenReranker

        def embedder_scorer() -> Reranker:
            return EmbedderReranker(embedder) if embedder is not None else EmbedderReranker.load()

        def rankgen(location: str) -> Callable[[], Reranker]:
            return lambda: RankGenReranker.load(location, config)

        factories: dict[str, Callable[[], Reranker]] = {EMBEDDER_SCORER: embedder_scorer}
        for hub in RANKGEN_CHECKPOINTS.values():
            factories[hub] = rankgen(hub)
        for name, folder in (folders or {}).items():
            factories[name] = rankgen(folder)
        return cls(factories)

    @property
    def names(self) -> tuple[str, ...]:
        """Every scorer name offered (hub names for the published RankGen checkpoints)."""
        return tuple(self._factories)

    def add(self, name: str, reranker: Reranker) -> None:
        """Offer an already built scorer under ``name``."""
        with self._lock:
            self._factories[canonical(name)] = lambda: reranker
            self._loaded[canonical(name)] = reranker

    def get(self, name: str) -> Reranker:
        """The scorer ``name`` (loading it now if needed); :class:`UnknownScorer` if not offered."""
        key = canonical(name)
        if key not in self._factories:
            offered = ", ".join(sorted(k for k in self._factories))
            raise UnknownScorer(f"unknown rerank scorer {name!r}; this process offers: {offered}")
        with self._lock:  # one load at a time; loads are rare and heavy
            if key not in self._loaded:
                self._loaded[key] = self._factories[key]()
            return self._loaded[key]
