"""host console route: how the gateway reaches a host's desktop displays (direct TCP or SSH channel)

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 07:40:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("console_access", sa.String(length=16), nullable=False, server_default="direct")
        )
        batch_op.add_column(sa.Column("ssh_address", sa.String(length=255), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("ssh_address")
        batch_op.drop_column("console_access")
