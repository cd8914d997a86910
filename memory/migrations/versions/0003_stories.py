"""Story trees for the RecurrentGPT writer: stories, their nodes (writer steps), their bibles.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "stories",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("namespace_id", sa.Integer(), nullable=False),
        sa.Column("title", sa.String(length=500), nullable=False),
        sa.Column("genre", sa.String(length=200), nullable=False),
        sa.Column("premise", sa.Text(), nullable=False),
        sa.Column("outline", sa.Text(), nullable=False),
        sa.Column("mode", sa.String(length=16), nullable=False),
        sa.Column("head_node_id", sa.Integer(), nullable=True),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["namespace_id"],
            ["namespaces.id"],
            name=op.f("fk_stories_namespace_id_namespaces"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_stories")),
        sa.UniqueConstraint("namespace_id", name=op.f("uq_stories_namespace_id")),
    )
    op.create_table(
        "bible_entries",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("story_id", sa.Integer(), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("aliases", sa.JSON(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["story_id"],
            ["stories.id"],
            name=op.f("fk_bible_entries_story_id_stories"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_bible_entries")),
        sa.UniqueConstraint("story_id", "name", name="uq_bible_entries_story_name"),
    )
    op.create_table(
        "story_nodes",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("story_id", sa.Integer(), nullable=False),
        sa.Column("parent_id", sa.Integer(), nullable=True),
        sa.Column("depth", sa.Integer(), nullable=False),
        sa.Column("instruction", sa.Text(), nullable=False),
        sa.Column("paragraph", sa.Text(), nullable=False),
        sa.Column("short_term_memory", sa.Text(), nullable=False),
        sa.Column("memory_reason", sa.Text(), nullable=False),
        sa.Column("plans", sa.JSON(), nullable=False),
        sa.Column("episode_ids", sa.JSON(), nullable=False),
        sa.Column("prompt", sa.JSON(), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        # No ON DELETE action on parent_id: nodes go with their story (see memory/tables.py).
        sa.ForeignKeyConstraint(
            ["parent_id"], ["story_nodes.id"], name=op.f("fk_story_nodes_parent_id_story_nodes")
        ),
        sa.ForeignKeyConstraint(
            ["story_id"],
            ["stories.id"],
            name=op.f("fk_story_nodes_story_id_stories"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_story_nodes")),
    )
    op.create_index(
        op.f("ix_story_nodes_parent_id"), "story_nodes", ["parent_id"], unique=False
    )
    op.create_index(
        "ix_story_nodes_story_parent", "story_nodes", ["story_id", "parent_id"], unique=False
    )
    op.create_index(
        "uq_story_nodes_root",
        "story_nodes",
        ["story_id"],
        unique=True,
        sqlite_where=sa.text("parent_id IS NULL"),
        postgresql_where=sa.text("parent_id IS NULL"),
    )


def downgrade() -> None:
    op.drop_index("uq_story_nodes_root", table_name="story_nodes")
    op.drop_index("ix_story_nodes_story_parent", table_name="story_nodes")
    op.drop_index(op.f("ix_story_nodes_parent_id"), table_name="story_nodes")
    op.drop_table("story_nodes")
    op.drop_table("bible_entries")
    op.drop_table("stories")
