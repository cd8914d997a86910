"""The lexical index: full-text search over episode text, inside the SQL store (issue 19).

Dense vectors miss what words catch (names, numbers, rare terms) and the other way round, so
episodic recall fuses both (:mod:`memory.fusion`). The words live beside the episodes in SQL —
no other server — and are written by the database itself in the transaction that writes an
episode (migration 0006):

- SQLite: an FTS5 table over ``episodes.text`` (external content, porter stemming), kept by
  triggers; ranked by Okapi BM25 from FTS5's ``bm25()`` term by term: each term's ``bm25()``
  is divided by the inverse document frequency FTS5 gave it — over every namespace of the
  file — and multiplied by the term's inverse document frequency in the namespace (the length
  normalisation keeps FTS5's mean over the file).
- PostgreSQL: a stored generated ``tsvector`` column with a GIN index; ranked BM25-style: each
  query term's ``ts_rank`` (length-normalised) weighted by its inverse document frequency in
  the namespace, since ``ts_rank`` alone weighs a common word like a rare one.

Both weigh words by how rare they are *in the namespace*: a word every episode of a document
about reindeer holds says little there, however rare it is elsewhere — and one tenant's texts
never shift another's ranking.

A query is its words minus stop words, any of which may match (OR): a question rarely repeats
every word of its answer.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

from sqlalchemy import bindparam, text
from sqlalchemy.exc import SQLAlchemyError

from memory.database import Database, translate

FTS_TABLE = "episodes_fts"
SEARCH_COLUMN = "search_vector"
_LEXICAL_NAMES = frozenset(
    {
        FTS_TABLE,
        *(f"{FTS_TABLE}_{shadow}" for shadow in ("data", "idx", "docsize", "config", "content")),
        SEARCH_COLUMN,
        "ix_episodes_search_vector",
    }
)
MAX_TERMS = 32
"""Most query words looked up (the first ones, after stop words are dropped)."""

WORD = re.compile(r"[^\W_]+")
"""A word: a run of letters and digits (any script)."""
STOPWORDS = frozenset(
    re.findall(
        r"\w+",
        """a about above after again against all am an and any are as at be because been before
    being below between both but by can could did do does doing down during each few for from
    further had has have having he her here hers herself him himself his how i if in into is it
    its itself just me more most my myself no nor not now of off on once only or other our ours
    ourselves out over own same she should so some such than that the their theirs them
    themselves then there these they this those through to too under until up very was we were
    what when where which while who whom why will with would you your yours yourself
    yourselves s t d ll m re ve""",
    )
)


def is_lexical_name(name: str | None) -> bool:
    """Whether a table, column or index name belongs to the lexical index (migration 0006).

    They are dialect-specific, so not in ``memory.tables``; schema comparison skips them.
    """
    return name in _LEXICAL_NAMES


def query_terms(query: str) -> list[str]:
    """The words of ``query`` a lexical search looks up: lower-cased, stop words dropped,
    each once, at most :data:`MAX_TERMS`."""
    words = (w for w in WORD.findall(query.lower()) if w not in STOPWORDS)
    return list(dict.fromkeys(words))[:MAX_TERMS]


@dataclass(frozen=True, slots=True)
class LexicalHit:
    id: int
    score: float  # higher is better; comparable within one search only


class SqlLexicalIndex:
    """Full-text search over a namespace's episodes (see the module docstring)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def search(
        self, namespace_id: int, query: str, k: int, *, document_id: int | None = None
    ) -> list[LexicalHit]:
        """The ``k`` episodes whose text best matches the words of ``query``, best first.

        Empty when no word of the query (stop words aside) occurs in the namespace.
        """
        terms = query_terms(query)
        if not terms or k <= 0:
            return []
        try:
            if self.database.is_sqlite:
                return self._sqlite(namespace_id, terms, k, document_id)
            return self._postgres(namespace_id, terms, k, document_id)
        except SQLAlchemyError as err:
            raise translate(err, self.database.url) from err

    def _sqlite(
        self, namespace_id: int, terms: Sequence[str], k: int, document_id: int | None
    ) -> list[LexicalHit]:
        # FTS5's bm25() for one term is idf_file(term) x tf_part(episode); the file's idf is
        # log((N - n + 0.5) / (n + 0.5)), floored at 1e-6, over every row of the table.
        # One statement per term, so the counts and bm25() see the same snapshot while writers
        # add episodes between statements (each SELECT is its own read transaction in SQLite).
        matches = text(
            f"SELECT f.rowid, e.document_id, bm25({FTS_TABLE}), "
            f"(SELECT count(*) FROM {FTS_TABLE}_docsize), "
            f"(SELECT count(*) FROM {FTS_TABLE} WHERE {FTS_TABLE} MATCH :term), "
            "(SELECT count(*) FROM episodes WHERE namespace_id = :namespace) "
            f"FROM {FTS_TABLE} AS f JOIN episodes AS e ON e.id = f.rowid "
            f"WHERE {FTS_TABLE} MATCH :term AND e.namespace_id = :namespace"
        )
        scores: dict[int, float] = {}
        with self.database.engine.connect() as connection:
            for term in terms:
                phrase = {"term": f'"{term}"'}  # words only: quoting is safe
                rows = connection.execute(matches, phrase | {"namespace": namespace_id}).all()
                if not rows:
                    continue
                _, _, _, total, n, local = rows[0]
                file_idf = max(math.log(max(total - n + 0.5, 1e-9) / (n + 0.5)), 1e-6)
                found = len(rows)
                weight = math.log(1 + max(local - found + 0.5, 0.0) / (found + 0.5))
                for rowid, document, rank, *_ in rows:
                    if document_id is None or document == document_id:
                        scores[rowid] = scores.get(rowid, 0.0) - rank / file_idf * weight
        best = sorted(scores.items(), key=lambda pair: (-pair[1], pair[0]))[:k]
        return [LexicalHit(int(rowid), score) for rowid, score in best]

    def _postgres(
        self, namespace_id: int, terms: Sequence[str], k: int, document_id: int | None
    ) -> list[LexicalHit]:
        where = " AND document_id = :document" if document_id is not None else ""
        query = [f"plainto_tsquery('english', :t{i})" for i in range(len(terms))]
        counts = ", ".join(
            f"(SELECT count(*) FROM episodes WHERE namespace_id = :namespace "
            f"AND {SEARCH_COLUMN} @@ {q})"
            for q in query
        )
        total_count = "(SELECT count(*) FROM episodes WHERE namespace_id = :namespace)"
        stats = text(f"SELECT {total_count}, {counts}")
        values: dict[str, object] = {f"t{i}": term for i, term in enumerate(terms)}
        values |= {"namespace": namespace_id, "k": k, "document": document_id}
        with self.database.engine.connect() as connection:
            total, *frequencies = connection.execute(stats, values).one()
            live = [i for i, df in enumerate(frequencies) if df]
            if not live:
                return []
            # Okapi BM25's inverse document frequency, over the namespace.
            for i in live:
                df = frequencies[i]
                values[f"w{i}"] = math.log(1 + (total - df + 0.5) / (df + 0.5))
            score = " + ".join(f":w{i} * ts_rank({SEARCH_COLUMN}, {query[i]}, 1)" for i in live)
            matches = " || ".join(query[i] for i in live)
            statement = text(
                f"SELECT id, {score} AS score FROM episodes "
                f"WHERE namespace_id = :namespace AND {SEARCH_COLUMN} @@ ({matches}){where} "
                "ORDER BY score DESC, id LIMIT :k"
            ).bindparams(*(bindparam(f"w{i}") for i in live))
            rows = connection.execute(statement, values).all()
        return [LexicalHit(int(episode_id), float(score)) for episode_id, score in rows]

    def drift(self) -> int:
        """How many episodes the index misses or holds in excess (0 on PostgreSQL, where the
        column is computed by the database and cannot drift)."""
        if not self.database.is_sqlite:
            return 0
        try:
            with self.database.engine.connect() as connection:
                held = connection.scalar(text(f"SELECT count(*) FROM {FTS_TABLE}_docsize")) or 0
                wanted = connection.scalar(text("SELECT count(*) FROM episodes")) or 0
        except SQLAlchemyError as err:
            raise translate(err, self.database.url) from err
        return abs(int(held) - int(wanted))

    def rebuild(self) -> None:
        """Re-index every episode's text from the episodes table (SQLite; no-op elsewhere)."""
        if not self.database.is_sqlite:
            return
        try:
            with self.database.engine.begin() as connection:
                connection.execute(text(f"INSERT INTO {FTS_TABLE}({FTS_TABLE}) VALUES ('rebuild')"))
        except SQLAlchemyError as err:
            raise translate(err, self.database.url) from err
