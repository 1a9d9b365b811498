"""image catalog: golden images and their immutable versions

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-22 05:05:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "images",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("os", sa.String(length=64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )
    op.create_table(
        "image_versions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("image_name", sa.String(length=64), nullable=False),
        sa.Column("version", sa.String(length=64), nullable=False),
        sa.Column("path", sa.String(length=1024), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("virtual_size_bytes", sa.BigInteger(), nullable=False),
        sa.Column("os", sa.String(length=64), nullable=False),
        sa.Column("build_log", sa.String(length=1024), nullable=True),
        sa.Column("kernel", sa.String(length=1024), nullable=True),
        sa.Column("initrd", sa.String(length=1024), nullable=True),
        sa.Column("cmdline", sa.String(length=512), nullable=False),
        sa.Column("built_by", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("immutable", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["image_name"], ["images.name"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("image_name", "version", name="uq_image_versions_image_version"),
    )
    with op.batch_alter_table("image_versions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_image_versions_image_name"), ["image_name"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("image_versions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_image_versions_image_name"))
    op.drop_table("image_versions")
    op.drop_table("images")
