"""What a tenant owns: the namespaces under its prefix, and the jobs and documents in them.

The REST API keeps every tenant's data in namespaces named ``tenant:<name>/…`` (see
:func:`memory.keys.tenant_prefix`); these queries answer "is this record the tenant's?" and
"list the tenant's records" without ever reading another tenant's rows.
"""

from __future__ import annotations

from sqlalchemy import select

from memory.database import Database
from memory.documents import to_document
from memory.jobs import to_job
from memory.namespaces import to_namespace
from memory.records import Document, Job, Namespace
from memory.tables import DocumentRow, JobRow, NamespaceRow


class SqlTenancy:
    """Ownership lookups by namespace prefix (``LIKE`` wildcards in the prefix are escaped)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    def namespace(self, namespace_id: int, prefix: str) -> Namespace | None:
        """The namespace ``namespace_id`` if its name starts with ``prefix``, else None."""
        with self.database.session() as session:
            row = session.get(NamespaceRow, namespace_id)
            if row is None or not row.name.startswith(prefix):
                return None
            return to_namespace(row)

    def namespaces(self, prefix: str) -> list[Namespace]:
        """Every namespace under ``prefix``, oldest first."""
        with self.database.session() as session:
            rows = session.scalars(
                select(NamespaceRow)
                .where(NamespaceRow.name.startswith(prefix, autoescape=True))
                .order_by(NamespaceRow.id)
            )
            return [to_namespace(row) for row in rows]

    def job(self, job_id: str, prefix: str) -> Job | None:
        """The job ``job_id`` if it belongs to a namespace under ``prefix``, else None."""
        with self.database.session() as session:
            found = session.execute(
                select(JobRow, NamespaceRow.name)
                .join(NamespaceRow, NamespaceRow.id == JobRow.namespace_id)
                .where(JobRow.id == job_id)
            ).one_or_none()
            if found is None or not found[1].startswith(prefix):
                return None
            return to_job(found[0])

    def latest_jobs(self, namespace_ids: list[int], kind: str) -> dict[int, Job]:
        """The newest job of ``kind`` in each of ``namespace_ids`` that has one."""
        if not namespace_ids:
            return {}
        with self.database.session() as session:
            rows = session.scalars(
                select(JobRow)
                .where(JobRow.namespace_id.in_(namespace_ids), JobRow.kind == kind)
                .order_by(JobRow.created_at, JobRow.id)
            )
            return {row.namespace_id: to_job(row) for row in rows if row.namespace_id is not None}

    def documents(self, namespace_ids: list[int]) -> dict[int, Document]:
        """The first document of each of ``namespace_ids`` that holds one."""
        if not namespace_ids:
            return {}
        with self.database.session() as session:
            rows = session.scalars(
                select(DocumentRow)
                .where(DocumentRow.namespace_id.in_(namespace_ids))
                .order_by(DocumentRow.id.desc())
            )
            return {row.namespace_id: to_document(row) for row in rows}
