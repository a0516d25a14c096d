"""users.logins_from and users.disabled_at: ending a user's logins, disabling a user.

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-03
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Only those missing, as 0001 does: a database made by create_all() from
    # today's models (a test's seed, say) has them already.
    present = {c["name"] for c in sa.inspect(op.get_bind()).get_columns("users")}
    for name in ("logins_from", "disabled_at"):
        if name not in present:
            op.add_column("users", sa.Column(name, sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("users") as batch:
        batch.drop_column("disabled_at")
        batch.drop_column("logins_from")
