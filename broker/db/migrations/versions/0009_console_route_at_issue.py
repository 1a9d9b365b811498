"""console_tokens.route and .ssh_address: the console route resolved when the token is issued;
hosts.vnc_listen: where a host's desktops show their displays

A token used to be resolved again when the gateway consumed it, from the host's row as it was then;
now the route is decided once, with the checks, and travels with the token (as Nova's console
tokens carry their connection info). Security review finding 3.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-06 01:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("console_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("route", sa.String(16), nullable=True))
        batch_op.add_column(sa.Column("ssh_address", sa.String(255), nullable=True))
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("vnc_listen", sa.String(255), nullable=False, server_default="127.0.0.1")
        )


def downgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("vnc_listen")
    with op.batch_alter_table("console_tokens", schema=None) as batch_op:
        batch_op.drop_column("ssh_address")
        batch_op.drop_column("route")
