"""login_failures: failed logins counted in the database (embedded mode has no Redis).

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # IF NOT EXISTS, as 0001: a database made by create_all() from today's models
    # (a test's seed, say) has the table already.
    op.create_table(
        "login_failures",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=400), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        if_not_exists=True,
    )
    op.create_index("ix_login_failures_key", "login_failures", ["key"], if_not_exists=True)


def downgrade() -> None:
    op.drop_index("ix_login_failures_key", table_name="login_failures")
    op.drop_table("login_failures")
