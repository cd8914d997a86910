"""A covering partial index for reconcile's (id, version) scan of embedded episodes.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("episodes", schema=None) as batch_op:
        batch_op.create_index(
            "ix_episodes_vector_state",
            ["namespace_id", "id", "version"],
            unique=False,
            sqlite_where=sa.text("embedding IS NOT NULL"),
            postgresql_where=sa.text("embedding IS NOT NULL"),
        )


def downgrade() -> None:
    with op.batch_alter_table("episodes", schema=None) as batch_op:
        batch_op.drop_index("ix_episodes_vector_state")
