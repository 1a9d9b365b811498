"""initial schema

Revision ID: 0001
Revises:
Create Date: 2026-11-22 04:22:26.890856
"""

import sqlalchemy as sa
from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:

    op.create_table(
        "audit_events",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("result", sa.String(length=32), nullable=False),
        sa.Column("target", sa.String(length=256), nullable=False),
        sa.Column("source_ip", sa.String(length=64), nullable=False),
        sa.Column("detail", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_events_action"), ["action"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_events_at"), ["at"], unique=False)

    op.create_table(
        "hosts",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("uri", sa.String(length=512), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("max_desktops", sa.Integer(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "pools",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("display_name", sa.String(length=256), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("image", sa.String(length=128), nullable=False),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("memory_mib", sa.Integer(), nullable=False),
        sa.Column("vcpus", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "users",
        sa.Column("username", sa.String(length=128), nullable=False),
        sa.Column("display_name", sa.String(length=256), nullable=False),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("last_login_at", sa.DateTime(timezone=True), nullable=True),
        sa.PrimaryKeyConstraint("username"),
    )
    op.create_table(
        "desktops",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("pool_name", sa.String(length=64), nullable=False),
        sa.Column("host_name", sa.String(length=64), nullable=True),
        sa.Column("domain_name", sa.String(length=128), nullable=False),
        sa.Column("image", sa.String(length=128), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("assigned_user", sa.String(length=128), nullable=True),
        sa.Column("vnc_host", sa.String(length=255), nullable=True),
        sa.Column("vnc_port", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["assigned_user"],
            ["users.username"],
        ),
        sa.ForeignKeyConstraint(
            ["host_name"],
            ["hosts.name"],
        ),
        sa.ForeignKeyConstraint(
            ["pool_name"],
            ["pools.name"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("domain_name"),
    )
    with op.batch_alter_table("desktops", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_desktops_assigned_user"), ["assigned_user"], unique=False)
        batch_op.create_index(batch_op.f("ix_desktops_host_name"), ["host_name"], unique=False)
        batch_op.create_index(batch_op.f("ix_desktops_pool_name"), ["pool_name"], unique=False)

    op.create_table(
        "portal_sessions",
        sa.Column("id_hash", sa.String(length=64), nullable=False),
        sa.Column("username", sa.String(length=128), nullable=False),
        sa.Column("method", sa.String(length=32), nullable=False),
        sa.Column("client_ip", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("revoked_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["username"],
            ["users.username"],
        ),
        sa.PrimaryKeyConstraint("id_hash"),
    )
    with op.batch_alter_table("portal_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_portal_sessions_username"), ["username"], unique=False)

    op.create_table(
        "sessions",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("username", sa.String(length=128), nullable=False),
        sa.Column("desktop_id", sa.Integer(), nullable=False),
        sa.Column("client_ip", sa.String(length=64), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("last_input_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["desktop_id"],
            ["desktops.id"],
        ),
        sa.ForeignKeyConstraint(
            ["username"],
            ["users.username"],
        ),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_sessions_desktop_id"), ["desktop_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_sessions_username"), ["username"], unique=False)

    op.create_table(
        "console_tokens",
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("session_id", sa.String(length=36), nullable=False),
        sa.Column("desktop_id", sa.Integer(), nullable=False),
        sa.Column("target_host", sa.String(length=255), nullable=False),
        sa.Column("target_port", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("used_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["desktop_id"],
            ["desktops.id"],
        ),
        sa.ForeignKeyConstraint(
            ["session_id"],
            ["sessions.id"],
        ),
        sa.PrimaryKeyConstraint("token_hash"),
    )
    with op.batch_alter_table("console_tokens", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_console_tokens_expires_at"), ["expires_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_console_tokens_session_id"), ["session_id"], unique=False)


def downgrade() -> None:

    with op.batch_alter_table("console_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_console_tokens_session_id"))
        batch_op.drop_index(batch_op.f("ix_console_tokens_expires_at"))

    op.drop_table("console_tokens")
    with op.batch_alter_table("sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_sessions_username"))
        batch_op.drop_index(batch_op.f("ix_sessions_desktop_id"))

    op.drop_table("sessions")
    with op.batch_alter_table("portal_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_portal_sessions_username"))

    op.drop_table("portal_sessions")
    with op.batch_alter_table("desktops", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_desktops_pool_name"))
        batch_op.drop_index(batch_op.f("ix_desktops_host_name"))
        batch_op.drop_index(batch_op.f("ix_desktops_assigned_user"))

    op.drop_table("desktops")
    op.drop_table("users")
    op.drop_table("pools")
    op.drop_table("hosts")
    with op.batch_alter_table("audit_events", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_events_at"))
        batch_op.drop_index(batch_op.f("ix_audit_events_action"))

    op.drop_table("audit_events")
