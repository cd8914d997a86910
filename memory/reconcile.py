"""Drift repair: make the vector index match SQL, the source of truth.

Writes go to SQL first and to the index second, so a crash between the two leaves the index
missing vectors (add), holding stale ones (edit) or holding extra ones (delete). ``reconcile``
finds each case from episode ids and versions and repairs it from the embeddings SQL keeps —
no re-embedding, nothing lost.

The lexical index (:mod:`memory.lexical`) is written by the database itself in the episode's
transaction, so it cannot drift that way; SQLite's FTS5 copy is still counted against the
episodes (a file written without the triggers, or restored from a partial copy) and rebuilt from
the episodes' text when the counts differ.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from memory.episodes import SqlEpisodeStore
from memory.lexical import SqlLexicalIndex
from memory.namespaces import SqlNamespaceStore
from memory.vectors import VectorIndex

log = logging.getLogger(__name__)
_BATCH = 2000  # embeddings read from SQL per repair write


@dataclass(slots=True)
class ReconcileReport:
    """What a reconcile pass repaired (counts of vectors)."""

    restored: int = 0  # missing from the index, written from SQL
    refreshed: int = 0  # stale version in the index, rewritten
    removed: int = 0  # in the index with no episode in SQL
    dropped_namespaces: list[int] = field(default_factory=list)  # vectors of no namespace
    retired_collections: int = 0  # collections of an older index layout, rebuilt from SQL
    lexical_drift: int = 0  # episodes the lexical index missed or held in excess (rebuilt)

    @property
    def repaired(self) -> bool:
        return bool(
            self.restored
            or self.refreshed
            or self.removed
            or self.dropped_namespaces
            or self.retired_collections
            or self.lexical_drift
        )


def reconcile(
    namespaces: SqlNamespaceStore,
    episodes: SqlEpisodeStore,
    index: VectorIndex,
    lexical: SqlLexicalIndex | None = None,
) -> ReconcileReport:
    report = ReconcileReport()
    if lexical is not None and (drift := lexical.drift()):
        lexical.rebuild()
        report.lexical_drift = drift
    report.retired_collections = index.retire_legacy()
    known = {namespace.id for namespace in namespaces.all()}
    inventory = index.inventory()
    for orphan in sorted(set(inventory) - known):
        index.drop(orphan)
        report.dropped_namespaces.append(orphan)
    for namespace_id in sorted(known):
        wanted = episodes.vector_state(namespace_id)
        held = inventory.get(namespace_id, {})
        extra = sorted(set(held) - set(wanted))
        missing = sorted(set(wanted) - set(held))
        stale = sorted(i for i in set(wanted) & set(held) if held[i] != wanted[i])
        index.delete(namespace_id, extra)
        for start in range(0, len(missing) + len(stale), _BATCH):
            batch = (missing + stale)[start : start + _BATCH]
            ids, vectors = episodes.embeddings(namespace_id, batch)
            index.upsert(namespace_id, ids, vectors, [wanted[i] for i in ids])
        report.restored += len(missing)
        report.refreshed += len(stale)
        report.removed += len(extra)
    if report.repaired:
        log.warning("indexes repaired from SQL: %s", report)
    return report
