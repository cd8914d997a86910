"""Benchmark of MemoryStore on embedded SQLite + embedded Chroma; prints Markdown tables.

Run ``python -m benchmarks.store`` (``--quick`` for a smoke run). The store grows in batches to
each size in ``--sizes``; at each size it measures

1. insert throughput through ``MemoryStore.add`` with precomputed embeddings, against the same
   batches upserted into a second Chroma folder alone (what SQL-first durability costs);
2. search latency of ``MemoryStore.search`` (Chroma query + episodes loaded from SQL) against
   exact brute-force top-k in numpy, and the store's recall@k against that exact top-k; and the
   latency of a search in a small namespace that shares the large one's Chroma collection
   (Chroma's namespace filter);
3. reconcile time of ``MemoryStore.open`` with nothing to repair, and after 1 % of the vectors
   were deleted from the index behind the store's back.

Vectors are seeded random unit vectors: with no cluster structure their top-10 is nearly a tie,
the hardest case for an approximate index. So the table also shows how often a "near" query (a
stored vector plus noise, cosine ~0.8 to it) finds that stored episode: the lookup real use needs.
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path

import numpy as np
import numpy.typing as npt

from memory import ChromaVectorIndex, Database, MemoryStore, NewEpisode, ReconcileReport

Vectors = npt.NDArray[np.float32]
NAMESPACE = "bench"
BESIDE = "beside"  # a small namespace sharing the large one's Chroma collection
BESIDE_SIZE = 20
K = 10  # results per search
NEAR_NOISE = 0.75  # norm of the noise added to a stored vector to make a "near" query
WARMUP = 5  # queries run before timing starts


@dataclass(frozen=True, slots=True)
class PrecomputedEmbedder:
    """An ``Embedder`` for callers that always pass embeddings in; ``embed`` is never used."""

    model_name: str = "precomputed-random"
    dimension: int = 384

    def embed(self, texts: Sequence[str]) -> Vectors:
        raise RuntimeError("the benchmark passes precomputed embeddings; nothing may embed text")


def unit_vectors(rng: np.random.Generator, n: int, dim: int) -> Vectors:
    """(n, dim) float32, each row L2-normalised."""
    raw = rng.standard_normal((n, dim), dtype=np.float32)
    raw /= np.linalg.norm(raw, axis=1, keepdims=True)
    return raw


def vocabulary(rng: np.random.Generator, size: int = 3000) -> list[str]:
    letters = np.array(list("etaoinshrdlucmfwypvbgkqjxz"))
    frequency = np.linspace(2.0, 0.2, len(letters))
    frequency /= frequency.sum()
    lengths = rng.integers(2, 10, size)
    return ["".join(rng.choice(letters, int(n), p=frequency)) for n in lengths]


def episodes(rng: np.random.Generator, words: list[str], n: int) -> list[NewEpisode]:
    """``n`` episodes of 300-800 characters of words, with a rough token count."""
    made = []
    for length in rng.integers(300, 801, n):
        picked = [words[i] for i in rng.integers(0, len(words), int(length) // 4)]
        text = " ".join(picked)[: int(length)].rsplit(" ", 1)[0] + "."
        made.append(NewEpisode(text=text, token_count=round(len(text.split()) * 1.3)))
    return made


def percentiles(seconds: list[float]) -> tuple[float, float]:
    """(p50, p99) in milliseconds."""
    p50, p99 = np.percentile(np.array(seconds) * 1000.0, [50, 99])
    return float(p50), float(p99)


def exact_top(stored: Vectors, query: Vectors, k: int) -> npt.NDArray[np.int64]:
    """Row indices of the ``k`` stored vectors with the highest dot product, best first."""
    scores = stored @ query  # (n,)
    top = np.argpartition(-scores, k)[:k]
    return top[np.argsort(-scores[top])].astype(np.int64)


def megabytes(folder: Path, pattern: str) -> float:
    return sum(f.stat().st_size for f in folder.glob(pattern) if f.is_file()) / 1e6


def table(header: Sequence[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---:" for _ in header) + "|"]
    return "\n".join([*lines, *("| " + " | ".join(row) + " |" for row in rows)])


@dataclass(frozen=True, slots=True)
class Options:
    sizes: list[int]
    batch: int
    queries: int
    dim: int
    out: Path | None
    seed: int


def parse(argv: Sequence[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.store", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--sizes", default="10000,100000", help="stored episodes to measure at")
    parser.add_argument("--batch", type=int, default=1000, help="episodes per add call")
    parser.add_argument("--queries", type=int, default=200, help="search queries per size")
    parser.add_argument("--dim", type=int, default=384, help="embedding dimension")
    parser.add_argument("--out", type=Path, help="an empty folder for the stores (kept)")
    parser.add_argument("--seed", type=int, default=0, help="seed of every random draw")
    parser.add_argument("--quick", action="store_true", help="sizes 2000,5000 and 50 queries")
    args = parser.parse_args(argv)
    sizes = [2000, 5000] if args.quick else [int(s) for s in args.sizes.split(",")]
    if sizes != sorted(set(sizes)) or sizes[0] <= 0 or args.batch <= 0:
        parser.error(f"--sizes {sizes}: need increasing positive sizes, and a positive --batch")
    if args.out is not None and args.out.exists() and any(args.out.iterdir()):
        parser.error(f"--out {args.out} is not empty; give a new or empty folder")
    return Options(
        sizes, args.batch, 50 if args.quick else args.queries, args.dim, args.out, args.seed
    )


@dataclass(slots=True)
class Bench:
    """The store under test, its no-SQL twin, and every vector inserted so far."""

    options: Options
    rng: np.random.Generator
    words: list[str]
    database: Database
    index: ChromaVectorIndex
    store: MemoryStore
    alone: ChromaVectorIndex  # Chroma alone, in its own folder: the insert baseline
    vectors: Vectors  # (max size, dim); rows [0, len(ids)) are stored, in insertion order
    ids: list[int]  # episode id of each stored row

    def grow(self, size: int) -> list[str]:
        """Insert batches up to ``size`` episodes into the store and into Chroma alone."""
        start, store_s, alone_s = len(self.ids), 0.0, 0.0
        while len(self.ids) < size:
            n = min(self.options.batch, size - len(self.ids))
            batch = episodes(self.rng, self.words, n)
            vectors = unit_vectors(self.rng, n, self.options.dim)
            began = time.perf_counter()
            added = self.store.add(NAMESPACE, batch, embeddings=vectors)
            store_s += time.perf_counter() - began
            new_ids = [e.id for e in added]
            began = time.perf_counter()
            self.alone.upsert(1, new_ids, vectors, [1] * n)
            alone_s += time.perf_counter() - began
            self.vectors[len(self.ids) : len(self.ids) + n] = vectors
            self.ids += new_ids
        count, folder = size - start, Path(self.index.location).parent
        rates = [f"{count / store_s:,.0f}", f"{count / alone_s:,.0f}", f"{alone_s / store_s:.2f}"]
        sizes = [megabytes(folder, "mneme.db*"), megabytes(folder, "chroma/**/*")]
        return [f"{start:,} → {size:,}", *rates, *(f"{mb:,.0f}" for mb in sizes)]

    def recall(self, queries: Vectors) -> tuple[float, list[float], list[float]]:
        """Mean recall@K of the store's search against exact search, and the seconds of each.

        The two run in separate loops so neither evicts the other's data from the CPU caches.
        """
        stored = self.vectors[: len(self.ids)]  # (n, dim)
        store_times: list[float] = []
        exact_times: list[float] = []
        found: list[set[int]] = []
        for query in queries:
            began = time.perf_counter()
            hits = self.store.search(NAMESPACE, query, k=K)
            store_times.append(time.perf_counter() - began)
            found.append({h.episode.id for h in hits})
        hit_count = 0
        for query, ids in zip(queries, found, strict=True):
            began = time.perf_counter()
            exact = exact_top(stored, query, K)
            exact_times.append(time.perf_counter() - began)
            hit_count += len(ids & {self.ids[i] for i in exact})
        return hit_count / (K * len(queries)), store_times, exact_times

    def search(self) -> list[str]:
        """Latency and recall@K of store vs exact search on random queries; near-query lookups."""
        size, count, dim = len(self.ids), self.options.queries, self.options.dim
        random_queries = unit_vectors(self.rng, count, dim)
        sources = self.rng.integers(0, size, count)
        near = self.vectors[sources] + NEAR_NOISE * unit_vectors(self.rng, count, dim)
        near /= np.linalg.norm(near, axis=1, keepdims=True)
        for query in unit_vectors(self.rng, WARMUP, dim):
            self.store.search(NAMESPACE, query, k=K)
        random_recall, store_times, exact_times = self.recall(random_queries)
        beside_times = []
        for query in random_queries:
            began = time.perf_counter()
            self.store.search(BESIDE, query, k=K)
            beside_times.append(time.perf_counter() - began)
        found = [
            self.ids[int(row)] in {h.episode.id for h in self.store.search(NAMESPACE, query, k=K)}
            for row, query in zip(sources, near, strict=True)
        ]
        return [
            f"{size:,}",
            *(f"{ms:.2f}" for ms in percentiles(store_times)),
            *(f"{ms:.2f}" for ms in percentiles(exact_times)),
            *(f"{ms:.2f}" for ms in percentiles(beside_times)),
            f"{random_recall:.3f}",
            f"{sum(found) / count:.3f}",
        ]

    def reopen(self) -> tuple[float, ReconcileReport]:
        began = time.perf_counter()
        self.store, report = MemoryStore.open(self.database, self.index, self.store.embedder)
        return time.perf_counter() - began, report

    def reconcile(self) -> list[str]:
        """Open time with nothing to repair, then after deleting 1 % of the index's vectors."""
        size = len(self.ids)
        clean_s, clean = self.reopen()
        if clean.repaired:
            raise RuntimeError(f"reconcile repaired a store nobody damaged: {clean}")
        space = self.store.namespace(NAMESPACE)
        lost = sorted(int(i) for i in self.rng.choice(self.ids, max(1, size // 100), replace=False))
        self.index.delete(space.id, lost)
        repair_s, repair = self.reopen()
        held = len(self.index.entries(space.id))
        whole = repair.restored == len(lost) and held == size
        counts = [f"{size:,}", f"{clean_s * 1000:,.0f}", f"{len(lost):,}", f"{repair.restored:,}"]
        return [*counts, f"{repair_s * 1000:,.0f}", "yes" if whole else f"NO ({held:,} held)"]


def run(options: Options, folder: Path) -> None:
    rng = np.random.default_rng(options.seed)
    database = Database(f"sqlite:///{folder}/mneme.db")
    database.upgrade()
    index = ChromaVectorIndex(path=folder / "chroma")
    store, _ = MemoryStore.open(database, index, PrecomputedEmbedder(dimension=options.dim))
    store.namespace(NAMESPACE)  # the large namespace first: the small one then shares its bucket
    beside = episodes(rng, vocabulary(rng), BESIDE_SIZE)
    store.add(BESIDE, beside, embeddings=unit_vectors(rng, BESIDE_SIZE, options.dim))
    bench = Bench(
        options,
        rng,
        vocabulary(rng),
        database,
        index,
        store,
        ChromaVectorIndex(path=folder / "chroma-alone"),
        np.zeros((options.sizes[-1], options.dim), dtype=np.float32),
        [],
    )
    inserts, searches, reconciles = [], [], []
    for size in options.sizes:
        inserts.append(bench.grow(size))
        searches.append(bench.search())
        reconciles.append(bench.reconcile())
    database.close()

    print(f"\n## Insert (batches of {options.batch:,}, precomputed embeddings)\n")
    header = ["episodes", "store ep/s", "Chroma alone ep/s", "store / alone", "SQLite MB"]
    print(table([*header, "Chroma MB"], inserts))
    print(f"\n## Search (k={K}, {options.queries} queries; latency on the random ones)\n")
    header = ["stored", "store p50 ms", "store p99 ms", "exact p50 ms", "exact p99 ms"]
    header += [f"{BESIDE_SIZE} beside it p50 ms", "p99 ms"]
    print(table([*header, "recall@10 random", "near: source found"], searches))
    print("\n## Reconcile on open (then again after deleting 1 % of the index's vectors)\n")
    header = ["stored", "clean ms", "deleted", "restored", "repair ms", "all back"]
    print(table(header, reconciles))


def main(argv: Sequence[str] | None = None) -> None:
    options = parse(argv)
    # The repair below is deliberate; keep reconcile's warning out of the tables.
    logging.getLogger("memory.reconcile").setLevel(logging.ERROR)
    print("# Mneme store benchmark\n")
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())  # other work skews the timings
    print(f"- machine: {os.cpu_count()} CPUs, {platform.machine()}, load average {load}")
    print(
        f"- python {platform.python_version()}, SQLite {sqlite3.sqlite_version}, "
        f"chromadb {version('chromadb')}, numpy {np.__version__}"
    )
    print(
        f"- sizes {options.sizes}, batch {options.batch}, queries {options.queries}, "
        f"dim {options.dim}, seed {options.seed}"
    )
    if options.out is not None:
        options.out.mkdir(parents=True, exist_ok=True)
        run(options, options.out)
        return
    folder = Path(tempfile.mkdtemp(prefix="mneme-bench-"))
    try:
        run(options, folder)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
