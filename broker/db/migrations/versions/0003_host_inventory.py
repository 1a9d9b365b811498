"""host inventory: labels, capacity and overcommit, admin state, per-desktop resources

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 05:05:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

HOST_COLUMNS = (
    sa.Column("admin_state", sa.String(length=16), nullable=False, server_default="enabled"),
    sa.Column("labels", sa.JSON(), nullable=False, server_default="{}"),
    sa.Column("vcpus", sa.Integer(), nullable=True),
    sa.Column("memory_mib", sa.Integer(), nullable=True),
    sa.Column("cpu_ratio", sa.Float(), nullable=False, server_default="4.0"),
    sa.Column("ram_ratio", sa.Float(), nullable=False, server_default="1.0"),
    sa.Column("images", sa.JSON(), nullable=False, server_default="[]"),
    sa.Column("cpu_load", sa.Float(), nullable=True),
)


def upgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        for column in HOST_COLUMNS:
            batch_op.add_column(column)
    with op.batch_alter_table("desktops", schema=None) as batch_op:
        batch_op.add_column(sa.Column("vcpus", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("memory_mib", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("desktops", schema=None) as batch_op:
        batch_op.drop_column("memory_mib")
        batch_op.drop_column("vcpus")
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        for column in reversed(HOST_COLUMNS):
            batch_op.drop_column(column.name)
