"""one live session per user and pool; pool settings shared by brokers through the database

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-06 04:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0012"
down_revision = "0011"
branch_labels = None
depends_on = None

LIVE = sa.text("state = 'active'")


def upgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("pool_name", sa.String(64), nullable=True))
    # Sessions made before this revision take their desktop's pool.
    op.execute(
        "UPDATE sessions SET pool_name = "
        "(SELECT desktops.pool_name FROM desktops WHERE desktops.id = sessions.desktop_id)"
    )
    # Two sessions of one user in one pool were possible before (two brokers, one Connect each): the
    # newest stays live, the others end, or the index below could not be built.
    op.execute(
        "UPDATE sessions SET state = 'ended' WHERE state = 'active' AND EXISTS ("
        "SELECT 1 FROM sessions AS newer WHERE newer.state = 'active' AND newer.username = sessions.username "
        "AND newer.pool_name = sessions.pool_name AND newer.started_at > sessions.started_at)"
    )
    op.create_index(
        "uq_sessions_live_user_pool",
        "sessions",
        ["username", "pool_name"],
        unique=True,
        sqlite_where=LIVE,
        postgresql_where=LIVE,
    )
    with op.batch_alter_table("pools") as batch:
        batch.add_column(sa.Column("settings", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("revision", sa.Integer(), nullable=False, server_default="0"))


def downgrade() -> None:
    with op.batch_alter_table("pools") as batch:
        batch.drop_column("revision")
        batch.drop_column("settings")
    op.drop_index("uq_sessions_live_user_pool", table_name="sessions")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("pool_name")
