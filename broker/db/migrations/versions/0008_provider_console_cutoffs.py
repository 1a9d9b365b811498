"""hosts.provider names each host's desktop provider; session_revocations becomes console_cutoffs

"Revocation" meant three things (certificate revocation, signing a user out everywhere, and the row
that tells gateways to close a session's tunnels); the last one now has its own name.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-06 01:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        # Every host before this revision was a libvirt host.
        batch_op.add_column(sa.Column("provider", sa.String(32), nullable=False, server_default="libvirt"))
    op.rename_table("session_revocations", "console_cutoffs")


def downgrade() -> None:
    op.rename_table("console_cutoffs", "session_revocations")
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("provider")
