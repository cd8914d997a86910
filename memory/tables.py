"""SQLAlchemy 2 table definitions. Schema changes go through Alembic (``memory/migrations``)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    TypeDecorator,
    UniqueConstraint,
    text,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def utcnow() -> datetime:
    return datetime.now(UTC)


class UtcDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC datetimes on every backend (SQLite stores them naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass a timezone-aware datetime")
        return value.astimezone(UTC)

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class Base(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING)


class NamespaceRow(Base):
    __tablename__ = "namespaces"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    embedding_model: Mapped[str] = mapped_column(String(500))
    embedding_dim: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class DocumentRow(Base):
    __tablename__ = "documents"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    namespace_id: Mapped[int] = mapped_column(
        ForeignKey("namespaces.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(500))
    source: Mapped[str | None] = mapped_column(Text)
    char_count: Mapped[int] = mapped_column(Integer)
    sha256: Mapped[str] = mapped_column(String(64))
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class EpisodeRow(Base):
    __tablename__ = "episodes"
    __table_args__ = (
        UniqueConstraint("namespace_id", "ordinal", name="uq_episodes_namespace_ordinal"),
        Index("ix_episodes_document_ordinal", "document_id", "ordinal"),
        Index("ix_episodes_expires_at", "expires_at"),
        # Reconcile reads (id, version) of every embedded episode on open: a covering partial
        # index answers that without touching the rows (and their embedding blobs).
        Index(
            "ix_episodes_vector_state",
            "namespace_id",
            "id",
            "version",
            sqlite_where=text("embedding IS NOT NULL"),
            postgresql_where=text("embedding IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"))
    document_id: Mapped[int | None] = mapped_column(ForeignKey("documents.id", ondelete="CASCADE"))
    ordinal: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    start_char: Mapped[int] = mapped_column(Integer)
    end_char: Mapped[int] = mapped_column(Integer)
    token_count: Mapped[int] = mapped_column(Integer)
    surprise_mean: Mapped[float] = mapped_column(Float, default=0.0)
    surprise_max: Mapped[float] = mapped_column(Float, default=0.0)
    importance: Mapped[float] = mapped_column(Float, default=1.0)
    pinned: Mapped[bool] = mapped_column(Boolean, default=False)
    summary: Mapped[str | None] = mapped_column(Text)
    # float32 little-endian bytes: SQL keeps the vector so the index can be rebuilt without
    # re-embedding (SQL is the source of truth; Chroma is a derived index).
    embedding: Mapped[bytes | None] = mapped_column(LargeBinary, deferred=True)
    version: Mapped[int] = mapped_column(Integer, default=1)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    accessed_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    expires_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class EpisodeVersionRow(Base):
    __tablename__ = "episode_versions"
    __table_args__ = (
        UniqueConstraint("episode_id", "version", name="uq_episode_versions_episode_version"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    episode_id: Mapped[int] = mapped_column(ForeignKey("episodes.id", ondelete="CASCADE"))
    version: Mapped[int] = mapped_column(Integer)
    text: Mapped[str] = mapped_column(Text)
    summary: Mapped[str | None] = mapped_column(Text)
    importance: Mapped[float] = mapped_column(Float)
    pinned: Mapped[bool] = mapped_column(Boolean)
    reason: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class JobRow(Base):
    __tablename__ = "jobs"
    __table_args__ = (Index("ix_jobs_status_updated", "status", "updated_at"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    namespace_id: Mapped[int | None] = mapped_column(
        ForeignKey("namespaces.id", ondelete="CASCADE"), index=True
    )
    kind: Mapped[str] = mapped_column(String(50))
    status: Mapped[str] = mapped_column(String(16))
    progress: Mapped[float] = mapped_column(Float, default=0.0)
    done: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[int] = mapped_column(Integer, default=0)
    error: Mapped[str | None] = mapped_column(Text)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class StoryRow(Base):
    __tablename__ = "stories"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # One story per namespace: the namespace holds the story's long-term (episodic) memory.
    namespace_id: Mapped[int] = mapped_column(
        ForeignKey("namespaces.id", ondelete="CASCADE"), unique=True
    )
    title: Mapped[str] = mapped_column(String(500))
    genre: Mapped[str] = mapped_column(String(200))
    premise: Mapped[str] = mapped_column(Text)
    outline: Mapped[str] = mapped_column(Text)
    mode: Mapped[str] = mapped_column(String(16))
    # No foreign key: stories and story_nodes would reference each other, and the cycle makes
    # cascading deletes order-dependent. SqlStoryStore only ever sets it to a node of the story.
    head_node_id: Mapped[int | None] = mapped_column(Integer)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class StoryNodeRow(Base):
    __tablename__ = "story_nodes"
    __table_args__ = (
        Index("ix_story_nodes_story_parent", "story_id", "parent_id"),
        # At most one root per story, even with two writers racing.
        Index(
            "uq_story_nodes_root",
            "story_id",
            unique=True,
            sqlite_where=text("parent_id IS NULL"),
            postgresql_where=text("parent_id IS NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    story_id: Mapped[int] = mapped_column(ForeignKey("stories.id", ondelete="CASCADE"))
    # No ON DELETE action: nodes go only with their story (story_id's cascade removes them all in
    # one statement, after which no reference dangles). A cascade here would recurse once per
    # level, and SQLite stops trigger recursion at depth 1000.
    parent_id: Mapped[int | None] = mapped_column(ForeignKey("story_nodes.id"), index=True)
    depth: Mapped[int] = mapped_column(Integer)  # 0 for the root
    instruction: Mapped[str] = mapped_column(Text)
    paragraph: Mapped[str] = mapped_column(Text)
    short_term_memory: Mapped[str] = mapped_column(Text)
    memory_reason: Mapped[str] = mapped_column(Text)
    plans: Mapped[list[str]] = mapped_column(JSON, default=list)
    episode_ids: Mapped[list[int]] = mapped_column(JSON, default=list)
    prompt: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class BibleEntryRow(Base):
    __tablename__ = "bible_entries"
    __table_args__ = (UniqueConstraint("story_id", "name", name="uq_bible_entries_story_name"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    story_id: Mapped[int] = mapped_column(ForeignKey("stories.id", ondelete="CASCADE"))
    kind: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(200))
    aliases: Mapped[list[str]] = mapped_column(JSON, default=list)
    text: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class TenantRow(Base):
    """A REST API tenant: owns the namespaces named ``tenant:<name>/…`` (see memory/keys.py)."""

    __tablename__ = "tenants"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class ApiKeyRow(Base):
    """An API key of a tenant: only the SHA-256 of the key is kept; ``id`` is its public part."""

    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(16), primary_key=True)
    tenant_id: Mapped[int] = mapped_column(ForeignKey("tenants.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class DeploymentSecretRow(Base):
    """A secret of this deployment, made once by a migration and shared by every process on the
    database: ``public_ids`` keys the REST API's public ids (``memory/public_ids.py``)."""

    __tablename__ = "deployment_secrets"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[bytes] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class TrajectoryRow(Base):
    """One agent task (HiAgent working memory): its subgoals in order, and how it ended."""

    __tablename__ = "trajectories"
    __table_args__ = (Index("ix_trajectories_namespace_status", "namespace_id", "status"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"))
    task: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    answer: Mapped[str | None] = mapped_column(Text)
    turns: Mapped[int] = mapped_column(Integer, default=0)  # model turns taken so far
    expanded: Mapped[list[int]] = mapped_column(JSON, default=list)  # subgoal ids shown in full
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class SubgoalRow(Base):
    """A subgoal of a trajectory; ``summary`` is written once, when it closes."""

    __tablename__ = "subgoals"
    __table_args__ = (
        UniqueConstraint("trajectory_id", "ordinal", name="uq_subgoals_trajectory_ordinal"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trajectory_id: Mapped[int] = mapped_column(ForeignKey("trajectories.id", ondelete="CASCADE"))
    ordinal: Mapped[int] = mapped_column(Integer)
    goal: Mapped[str] = mapped_column(Text)
    status: Mapped[str] = mapped_column(String(16))
    result: Mapped[str | None] = mapped_column(Text)
    summary: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    closed_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class SubgoalStepRow(Base):
    """One action/observation pair inside a subgoal."""

    __tablename__ = "subgoal_steps"
    __table_args__ = (
        UniqueConstraint("subgoal_id", "ordinal", name="uq_subgoal_steps_subgoal_ordinal"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    subgoal_id: Mapped[int] = mapped_column(ForeignKey("subgoals.id", ondelete="CASCADE"))
    ordinal: Mapped[int] = mapped_column(Integer)
    action: Mapped[str] = mapped_column(Text)
    observation: Mapped[str] = mapped_column(Text)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)


class StoreItemRow(Base):
    """A LangGraph store item: a JSON value under a namespace path and key; ``episode_id`` is
    the episode that makes it searchable by meaning (None when it is not indexed)."""

    __tablename__ = "store_items"
    __table_args__ = (
        UniqueConstraint("namespace_id", "path", "key", name="uq_store_items_namespace_path_key"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    namespace_id: Mapped[int] = mapped_column(ForeignKey("namespaces.id", ondelete="CASCADE"))
    path: Mapped[str] = mapped_column(String(1000))  # LangGraph namespace labels joined by "."
    key: Mapped[str] = mapped_column(String(500))
    value: Mapped[dict[str, Any]] = mapped_column(JSON)
    episode_id: Mapped[int | None] = mapped_column(
        ForeignKey("episodes.id", ondelete="SET NULL"), index=True
    )
    created_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UtcDateTime, default=utcnow)
