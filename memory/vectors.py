"""The vector index: a derived copy of SQL's embeddings, partitioned by namespace.

Ids in the index are SQL episode ids; each entry carries its namespace and the episode's version,
so drift (a missing, stale or extra vector) can be found and repaired from SQL (see
``memory.reconcile``). Chroma holds up to :data:`NAMESPACES_PER_COLLECTION` namespaces per
collection; every read filters by namespace.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt

from memory.errors import StoreCorrupt, StoreUnavailable

Vectors = npt.NDArray[np.float32]
_PAGE = 5000  # entries per read when listing a collection
_EXACT_LIMIT = 4000
"""A namespace with at most this many vectors in a shared collection is searched exactly."""


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

    def inventory(self) -> dict[int, dict[int, int]]:
        """namespace id → (id → version) of every vector held, in one pass."""
        ...

    def namespace_ids(self) -> list[int]:
        """Namespaces that hold at least one vector."""
        ...

    def retire_legacy(self) -> int:
        """Delete collections of an older layout (SQL rebuilds them); returns how many."""
        ...

    def drop(self, namespace_id: int) -> None: ...

    def ping(self) -> None: ...


NAMESPACES_PER_COLLECTION = 64
"""Namespaces that share one Chroma collection (told apart by an ``ns`` metadata filter).

Chroma keeps every loaded collection's HNSW index in memory, preallocated (about 2.7 MB even for
ten vectors), so one collection per namespace made a server holding many small documents grow
by megabytes per upload and never shrink. Sharing bounds that; the filter adds a few
milliseconds to a query in a collection shared with a large namespace (benchmarks/store.py)."""


def collection_name(namespace_id: int, dimension: int) -> str:
    """The collection holding ``namespace_id``'s vectors of ``dimension`` floats."""
    return f"mneme-b{namespace_id // NAMESPACES_PER_COLLECTION}-d{dimension}"


def _bucket(name: str) -> int | None:
    """The bucket number of a collection name written by :func:`collection_name`."""
    match = re.fullmatch(r"mneme-b(\d+)-d\d+", name)
    return int(match.group(1)) if match else None


def _exact(ids: Sequence[str], embeddings: Any, query: Vectors, k: int) -> list[VectorHit]:
    """The ``k`` of ``embeddings`` nearest ``query`` by cosine similarity, best first."""
    if len(ids) == 0:
        return []
    stored = np.asarray(embeddings, dtype=np.float32)
    norms = np.linalg.norm(stored, axis=1) * max(float(np.linalg.norm(query)), 1e-12)
    scores = np.clip(stored @ query / np.maximum(norms, 1e-12), -1.0, 1.0)
    top = np.argsort(-scores, kind="stable")[:k]
    return [VectorHit(int(ids[i]), float(scores[i])) for i in top]


def _legacy(name: str) -> bool:
    """A collection of the old one-per-namespace layout (``retire_legacy`` deletes them)."""
    return re.fullmatch(r"mneme-ns-\d+", name) is not None


@dataclass(frozen=True, slots=True)
class HnswConfig:
    """Chroma's HNSW graph settings, fixed when a collection is created.

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
        self._collections: dict[str, Any] = {}  # opened collections by name

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

    def _open(self, name: str, *, create: bool) -> Any:
        """The collection ``name`` (created if ``create``), or None if it does not exist."""
        collection = self._collections.get(name)
        if collection is not None:
            return collection
        try:
            if create:
                collection = self.client.get_or_create_collection(
                    name,
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
            else:
                collection = self.client.get_collection(name, embedding_function=None)
        except Exception as err:
            if not create and "does not exist" in str(err):
                return None
            raise self._error("open a collection", err) from err
        self._collections[name] = collection
        return collection

    def _names(self) -> list[str]:
        try:
            return [c if isinstance(c, str) else c.name for c in self.client.list_collections()]
        except Exception as err:
            raise self._error("list collections", err) from err

    def _holding(self, namespace_id: int) -> list[Any]:
        """The collections that may hold ``namespace_id``'s vectors (one per dimension seen)."""
        bucket = namespace_id // NAMESPACES_PER_COLLECTION
        names = [n for n in self._names() if _bucket(n) == bucket]
        return [c for n in names if (c := self._open(n, create=False)) is not None]

    def upsert(
        self, namespace_id: int, ids: Sequence[int], vectors: Vectors, versions: Sequence[int]
    ) -> None:
        if not ids:
            return
        vectors = np.asarray(vectors, dtype=np.float32)
        collection = self._open(collection_name(namespace_id, vectors.shape[1]), create=True)
        step = 5000  # below Chroma's max batch size
        try:
            for start in range(0, len(ids), step):
                stop = start + step
                collection.upsert(
                    ids=[str(i) for i in ids[start:stop]],
                    embeddings=vectors[start:stop],
                    metadatas=[
                        {"ns": namespace_id, "version": int(v)} for v in versions[start:stop]
                    ],
                )
        except Exception as err:
            raise self._error("write vectors", err) from err

    def delete(self, namespace_id: int, ids: Sequence[int]) -> None:
        if not ids:
            return
        try:
            for collection in self._holding(namespace_id):
                collection.delete(ids=[str(i) for i in ids], where={"ns": namespace_id})
        except Exception as err:
            raise self._error("delete vectors", err) from err

    def query(self, namespace_id: int, vector: Vectors, k: int) -> list[VectorHit]:
        vector = np.asarray(vector, dtype=np.float32).reshape(1, -1)
        collection = self._open(collection_name(namespace_id, vector.shape[1]), create=False)
        if collection is None or k <= 0:
            return []
        try:
            # Unfiltered first: when the namespace fills its collection (one large document) this
            # is the plain HNSW search. At least k of its own among the 2k nearest are exactly its
            # top k; otherwise Chroma's filtered search, which costs more on a large collection.
            result = collection.query(
                query_embeddings=vector, n_results=2 * k, include=["distances", "metadatas"]
            )
            found = [
                VectorHit(int(i), 1.0 - float(d))  # Chroma's cosine distance is 1 - similarity
                for i, d, meta in zip(
                    result["ids"][0], result["distances"][0], result["metadatas"][0], strict=True
                )
                if (meta or {}).get("ns") == namespace_id
            ]
            if len(found) >= k:
                return found[:k]
            # A small namespace beside a large one: its vectors, scored exactly (cheaper than
            # Chroma's filtered graph search, which walks the whole collection's graph).
            own = collection.get(
                where={"ns": namespace_id}, include=["embeddings"], limit=_EXACT_LIMIT + 1
            )
            if len(own["ids"]) <= _EXACT_LIMIT:
                return _exact(own["ids"], own["embeddings"], vector[0], k)
            result = collection.query(
                query_embeddings=vector,
                n_results=k,
                where={"ns": namespace_id},
                include=["distances"],
            )
        except Exception as err:
            raise self._error("search", err) from err
        ids, distances = result["ids"][0], result["distances"][0]
        return [VectorHit(int(i), 1.0 - float(d)) for i, d in zip(ids, distances, strict=True)]

    def _pages(self, collection: Any, where: dict[str, int] | None) -> Iterator[tuple[str, Any]]:
        """(id, metadata) of every entry of ``collection`` matching ``where``, a page at a time."""
        offset = 0
        try:
            while True:
                page = collection.get(
                    include=["metadatas"], where=where, limit=_PAGE, offset=offset
                )
                yield from zip(page["ids"], page["metadatas"], strict=True)
                if len(page["ids"]) < _PAGE:
                    return
                offset += _PAGE
        except Exception as err:
            raise self._error("list vectors", err) from err

    def entries(self, namespace_id: int) -> dict[int, int]:
        return {
            int(raw_id): int((meta or {}).get("version", 0))
            for collection in self._holding(namespace_id)
            for raw_id, meta in self._pages(collection, {"ns": namespace_id})
        }

    def inventory(self) -> dict[int, dict[int, int]]:
        held: dict[int, dict[int, int]] = {}
        for name in self._names():
            if _bucket(name) is None or (collection := self._open(name, create=False)) is None:
                continue
            for raw_id, meta in self._pages(collection, None):
                meta = meta or {}
                if "ns" in meta:  # an entry without one cannot be placed: left to be overwritten
                    held.setdefault(int(meta["ns"]), {})[int(raw_id)] = int(meta.get("version", 0))
        return held

    def namespace_ids(self) -> list[int]:
        return sorted(self.inventory())

    def drop(self, namespace_id: int) -> None:
        try:
            for collection in self._holding(namespace_id):
                collection.delete(where={"ns": namespace_id})
        except Exception as err:
            raise self._error("delete a namespace's vectors", err) from err

    def retire_legacy(self) -> int:
        retired = 0
        for name in filter(_legacy, self._names()):
            try:
                self.client.delete_collection(name)
            except Exception as err:
                if "does not exist" not in str(err):  # another process retired it first
                    raise self._error("delete a collection", err) from err
            retired += 1
        return retired

    def ping(self) -> None:
        try:
            self.client.heartbeat()
        except Exception as err:
            raise self._error("answer", err) from err
