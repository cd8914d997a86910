"""The secret that keys the REST API's public ids (issue 17).

SQL row ids are one counter across tenants, so an id the API showed told a tenant how many
records everybody else had made. From this revision the API shows a keyed permutation of each
row id instead (``app/api/ids.py``); its key is made here, once, from ``secrets.token_bytes``, and
stored in ``deployment_secrets`` so every API process on the database maps ids alike. Existing rows
keep their row ids (the CLI and the Python SDK go on using them); their ids in the API change
once, at this upgrade. Downgrading drops the key: upgrading again makes a new one, and the API's
ids change again.

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-24
"""

import secrets
from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Kept literal (not imported from memory.public_ids): a migration must not change with the code.
_PUBLIC_IDS = "public_ids"
_KEY_BYTES = 32


def upgrade() -> None:
    table = op.create_table(
        "deployment_secrets",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_deployment_secrets")),
    )
    op.bulk_insert(
        table,
        [
            {
                "name": _PUBLIC_IDS,
                "value": secrets.token_bytes(_KEY_BYTES),
                "created_at": datetime.now(UTC),
            }
        ],
    )


def downgrade() -> None:
    op.drop_table("deployment_secrets")
