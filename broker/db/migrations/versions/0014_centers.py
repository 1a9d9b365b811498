"""centers: smart work centers (sites), seat reservations and the seat slots that forbid double booking,
the center of each session, attendance corrections, registered terminals and transfer requests between zones

Revision ID: 0014
Revises: 0011
Create Date: 2026-12-06 04:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0012"
branch_labels = None
depends_on = None


def _at(name: str, nullable: bool = False) -> sa.Column:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "centers",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("name_ko", sa.String(128), nullable=False),
        sa.Column("name_en", sa.String(128), nullable=False),
        sa.Column("address", sa.String(512), nullable=False),
        sa.Column("time_zone", sa.String(64), nullable=False),
        sa.Column("opening_hours", sa.JSON(), nullable=False),
        sa.Column("networks", sa.JSON(), nullable=False),
        sa.Column("seats", sa.JSON(), nullable=False),
        sa.Column("booking_policy", sa.String(16), nullable=False),
        sa.Column("walk_in_minutes", sa.Integer(), nullable=False),
        sa.Column("unregistered_terminals", sa.String(16), server_default="allow", nullable=False),
        sa.Column("kiosk_idle_s", sa.Integer(), server_default="600", nullable=False),
        _at("created_at"),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "seat_reservations",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("center", sa.String(64), nullable=False),
        sa.Column("zone", sa.String(16), nullable=False),
        sa.Column("seat", sa.Integer(), nullable=False),
        sa.Column("username", sa.String(128), nullable=False),
        _at("starts_at"),
        _at("ends_at"),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(16), nullable=False),
        _at("created_at"),
        _at("cancelled_at", nullable=True),
        sa.ForeignKeyConstraint(["center"], ["centers.name"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_seat_reservations_center", "seat_reservations", ["center"])
    op.create_index("ix_seat_reservations_username", "seat_reservations", ["username"])
    op.create_index("ix_seat_reservations_starts_at", "seat_reservations", ["starts_at"])
    op.create_table(
        "seat_slots",
        sa.Column("center", sa.String(64), nullable=False),
        sa.Column("zone", sa.String(16), nullable=False),
        sa.Column("seat", sa.Integer(), nullable=False),
        _at("slot_start"),
        sa.Column("reservation_id", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["center"], ["centers.name"]),
        sa.ForeignKeyConstraint(["reservation_id"], ["seat_reservations.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("center", "zone", "seat", "slot_start"),
    )
    op.create_index("ix_seat_slots_reservation_id", "seat_slots", ["reservation_id"])
    with op.batch_alter_table("sessions") as batch:
        batch.add_column(sa.Column("center", sa.String(64), nullable=True))
        batch.create_index("ix_sessions_center", ["center"])
    op.create_table(
        "attendance_corrections",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("username", sa.String(128), nullable=False),
        sa.Column("center", sa.String(64), nullable=False),
        sa.Column("day", sa.String(10), nullable=False),
        _at("checked_in_at"),
        _at("checked_out_at", nullable=True),
        sa.Column("reason", sa.String(512), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        _at("corrected_at"),
        sa.ForeignKeyConstraint(["center"], ["centers.name"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("username", "center", "day", name="uq_attendance_corrections_day"),
    )
    op.create_index("ix_attendance_corrections_center", "attendance_corrections", ["center"])
    op.create_table(
        "terminals",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("center", sa.String(64), nullable=False),
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("address", sa.String(64), nullable=True),
        sa.Column("cert_sha256", sa.String(64), nullable=True),
        sa.Column("cert_subject", sa.String(512), nullable=False),
        _at("created_at"),
        sa.ForeignKeyConstraint(["center"], ["centers.name"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("center", "name", name="uq_terminals_center_name"),
        sa.UniqueConstraint("address"),
        sa.UniqueConstraint("cert_sha256"),
    )
    op.create_index("ix_terminals_center", "terminals", ["center"])
    op.create_table(
        "transfer_requests",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("username", sa.String(128), nullable=False),
        sa.Column("from_zone", sa.String(16), nullable=False),
        sa.Column("to_zone", sa.String(16), nullable=False),
        sa.Column("kind", sa.String(8), nullable=False),
        sa.Column("filename", sa.String(255), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("sha256", sa.String(64), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=True),
        sa.Column("reason", sa.String(512), nullable=False),
        sa.Column("groups", sa.JSON(), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("scan_result", sa.String(32), nullable=False),
        sa.Column("decided_by", sa.String(128), nullable=True),
        _at("decided_at", nullable=True),
        sa.Column("decision_note", sa.String(512), nullable=False),
        _at("created_at"),
        _at("delivered_at", nullable=True),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_transfer_requests_username", "transfer_requests", ["username"])
    op.create_index("ix_transfer_requests_state", "transfer_requests", ["state"])


def downgrade() -> None:
    op.drop_index("ix_transfer_requests_state", table_name="transfer_requests")
    op.drop_index("ix_transfer_requests_username", table_name="transfer_requests")
    op.drop_table("transfer_requests")
    op.drop_index("ix_terminals_center", table_name="terminals")
    op.drop_table("terminals")
    op.drop_index("ix_attendance_corrections_center", table_name="attendance_corrections")
    op.drop_table("attendance_corrections")
    with op.batch_alter_table("sessions") as batch:
        batch.drop_index("ix_sessions_center")
        batch.drop_column("center")
    op.drop_index("ix_seat_slots_reservation_id", table_name="seat_slots")
    op.drop_table("seat_slots")
    for column in ("starts_at", "username", "center"):
        op.drop_index(f"ix_seat_reservations_{column}", table_name="seat_reservations")
    op.drop_table("seat_reservations")
    op.drop_table("centers")
