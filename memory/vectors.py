"""The vector index: a derived copy of SQL's embeddings, one collection per namespace.

Ids in the index are SQL episode ids; each entry carries the episode's version so drift (a
missing, stale or extra vector) can be found and repaired from SQL (see ``memory.reconcile``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt

from memory.errors import StoreCorrupt, StoreUnavailable

Vectors = npt.NDArray[np.float32]
_PAGE = 5000  # entries per read when listing a collection


@dataclass(frozen=True, slots=True)
class VectorHit:
    id: int
    score: float  # cosine similarity


class VectorIndex(Protocol):
    """Nearest-neighbour search over unit vectors, partitioned by namespace id."""

    def upsert(
        self, namespace_id: int, ids: Sequence[int], vectors: Vectors, versions: Sequence[int]
    ) -> None: ...

    def delete(self, namespace_id: int, ids: Sequence[int]) -> None: ...

    def query(self, namespace_id: int, vector: Vectors, k: int) -> list[VectorHit]: ...

    def entries(self, namespace_id: int) -> dict[int, int]:
        """id → version of every vector held for the namespace."""
        ...

    def namespace_ids(self) -> list[int]:
        """Namespaces that have a collection."""
        ...

    def drop(self, namespace_id: int) -> None: ...

    def ping(self) -> None: ...


def collection_name(namespace_id: int) -> str:
    return f"mneme-ns-{namespace_id}"


def _namespace_id(name: str) -> int | None:
    prefix = "mneme-ns-"
    if name.startswith(prefix) and name[len(prefix) :].isdigit():
        return int(name[len(prefix) :])
    return None


@dataclass(frozen=True, slots=True)
class HnswConfig:
    """Chroma's HNSW graph settings, fixed when a namespace's collection is created.

    Chroma's defaults (16 / 100 / 100) found the true top-10 for only a third of queries on
    random 384-d vectors at 20k; these trade insert speed for recall (benchmarks/store.py).
    """

    max_neighbors: int = 32
    """Links per node (HNSW's M): more = better recall, slower inserts, more memory."""
    ef_construction: int = 200
    """Candidate list size while inserting."""
    ef_search: int = 200
    """Candidate list size while searching: more = better recall, slower queries."""


class ChromaVectorIndex:
    """Chroma: an embedded ``PersistentClient`` in a folder, or an ``HttpClient`` to a server.

    Embeddings are always passed in; Chroma's own (downloading) embedder is never used.
    """

    def __init__(
        self, *, path: Path | None = None, url: str | None = None, hnsw: HnswConfig | None = None
    ) -> None:
        self.hnsw = hnsw or HnswConfig()
        import chromadb
        from chromadb.config import Settings as ChromaSettings

        if (path is None) == (url is None):
            raise ValueError("give exactly one of path (embedded) or url (server)")
        settings = ChromaSettings(anonymized_telemetry=False)
        self.location = str(path or url)
        try:
            if path is not None:
                path.mkdir(parents=True, exist_ok=True)
                self.client: Any = chromadb.PersistentClient(path=str(path), settings=settings)
            else:
                parts = urlsplit(url or "")
                self.client = chromadb.HttpClient(
                    host=parts.hostname or "localhost",
                    port=parts.port or (443 if parts.scheme == "https" else 8000),
                    ssl=parts.scheme == "https",
                    settings=settings,
                )
        except OSError as err:
            raise StoreUnavailable(
                f"cannot open the Chroma folder {path}: {err}; check MNEME_HOME is writable"
            ) from err
        except Exception as err:  # chromadb raises bare Exceptions on connect / open
            raise self._error("open", err) from err
        self._collections: dict[int, Any] = {}

    def _error(self, action: str, err: Exception) -> StoreUnavailable | StoreCorrupt:
        detail = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        if "database disk image is malformed" in detail or "not a database" in detail:
            return StoreCorrupt(
                f"the Chroma store at {self.location} is corrupt ({detail}); move the folder "
                "aside: Mneme rebuilds the index from the database on the next start"
            )
        return StoreUnavailable(
            f"Chroma at {self.location} failed to {action}: {detail}; check that it is running "
            "(MNEME_CHROMA_URL) or that the folder is readable"
        )

    def _collection(self, namespace_id: int) -> Any:
        collection = self._collections.get(namespace_id)
        if collection is None:
            try:
                collection = self.client.get_or_create_collection(
                    collection_name(namespace_id),
                    embedding_function=None,
                    configuration={
                        "hnsw": {
                            "space": "cosine",
                            "max_neighbors": self.hnsw.max_neighbors,
                            "ef_construction": self.hnsw.ef_construction,
                            "ef_search": self.hnsw.ef_search,
                        }
                    },
                )
            except Exception as err:
                raise self._error("open a collection", err) from err
            self._collections[namespace_id] = collection
        return collection

    def upsert(
        self, namespace_id: int, ids: Sequence[int], vectors: Vectors, versions: Sequence[int]
    ) -> None:
        if not ids:
            return
        collection = self._collection(namespace_id)
        step = 5000  # below Chroma's max batch size
        try:
            for start in range(0, len(ids), step):
                stop = start + step
                collection.upsert(
                    ids=[str(i) for i in ids[start:stop]],
                    embeddings=np.asarray(vectors[start:stop], dtype=np.float32),
                    metadatas=[{"version": int(v)} for v in versions[start:stop]],
                )
        except Exception as err:
            raise self._error("write vectors", err) from err

    def delete(self, namespace_id: int, ids: Sequence[int]) -> None:
        if not ids:
            return
        try:
            self._collection(namespace_id).delete(ids=[str(i) for i in ids])
        except Exception as err:
            raise self._error("delete vectors", err) from err

    def query(self, namespace_id: int, vector: Vectors, k: int) -> list[VectorHit]:
        collection = self._collection(namespace_id)
        try:
            count = collection.count()
            if count == 0 or k <= 0:
                return []
            result = collection.query(
                query_embeddings=np.asarray(vector, dtype=np.float32).reshape(1, -1),
                n_results=min(k, count),
                include=["distances"],
            )
        except Exception as err:
            raise self._error("search", err) from err
        ids, distances = result["ids"][0], result["distances"][0]
        # Chroma's cosine "distance" is 1 - cosine similarity.
        return [VectorHit(int(i), 1.0 - float(d)) for i, d in zip(ids, distances, strict=True)]

    def entries(self, namespace_id: int) -> dict[int, int]:
        collection = self._collection(namespace_id)
        held: dict[int, int] = {}
        offset = 0
        try:
            while True:
                page = collection.get(include=["metadatas"], limit=_PAGE, offset=offset)
                for raw_id, meta in zip(page["ids"], page["metadatas"], strict=True):
                    held[int(raw_id)] = int((meta or {}).get("version", 0))
                if len(page["ids"]) < _PAGE:
                    return held
                offset += _PAGE
        except Exception as err:
            raise self._error("list vectors", err) from err

    def namespace_ids(self) -> list[int]:
        try:
            names = [c if isinstance(c, str) else c.name for c in self.client.list_collections()]
        except Exception as err:
            raise self._error("list collections", err) from err
        return sorted(i for i in map(_namespace_id, names) if i is not None)

    def drop(self, namespace_id: int) -> None:
        self._collections.pop(namespace_id, None)
        try:
            self.client.delete_collection(collection_name(namespace_id))
        except Exception as err:
            if "does not exist" in str(err):
                return
            raise self._error("delete a collection", err) from err

    def ping(self) -> None:
        try:
            self.client.heartbeat()
        except Exception as err:
            raise self._error("answer", err) from err
