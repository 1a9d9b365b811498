"""desktops.vnc_password_sealed and console_tokens.policy: sealed VNC passwords and console policies

desktops.vnc_password_sealed holds each desktop's sealed VNC password; console_tokens.policy its pool's
console policy (clipboard) at issue time

Rows from before stay NULL: those desktops keep an unauthenticated display the gateway relays as bytes,
and such tokens carry no clipboard limits.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-06 02:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("desktops", schema=None) as batch_op:
        batch_op.add_column(sa.Column("vnc_password_sealed", sa.Text(), nullable=True))
    with op.batch_alter_table("console_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("policy", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("console_tokens", schema=None) as batch_op:
        batch_op.drop_column("policy")
    with op.batch_alter_table("desktops", schema=None) as batch_op:
        batch_op.drop_column("vnc_password_sealed")
