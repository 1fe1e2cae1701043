"""the reader's view: image thumbnails, heatmaps, reviews, reviewed images added to training datasets, model classes

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-26 17:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("thumbnail_key", sa.String(length=255), nullable=True))
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("classes", sa.JSON(), nullable=True))
    op.create_table(
        "heatmaps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("model_version_id", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("storage_key", sa.String(length=255), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("requested_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("interactive", sa.Boolean(), nullable=False, server_default=sa.false()),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["model_version_id"], ["model_versions.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("image_id", "model_version_id"),
    )
    op.create_index(op.f("ix_heatmaps_job_id"), "heatmaps", ["job_id"], unique=False)
    op.create_table(
        "reviews",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("image_id", sa.Integer(), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=False),
        sa.Column("label", sa.String(length=32), nullable=False),
        sa.Column("prediction", sa.String(length=32), nullable=True),
        sa.Column("correct", sa.Boolean(), nullable=False),
        sa.Column("reviewer_id", sa.Integer(), nullable=True),
        sa.Column("reviewed_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["image_id"], ["images.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["reviewer_id"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("image_id"),
    )
    op.create_index(op.f("ix_reviews_job_id"), "reviews", ["job_id"], unique=False)
    op.create_table(
        "dataset_additions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("dataset_id", sa.Integer(), nullable=False),
        sa.Column("storage_key", sa.String(length=255), nullable=False),
        sa.Column("md5", sa.String(length=32), nullable=False),
        sa.Column("label", sa.String(length=32), nullable=False),
        sa.Column("source_job_id", sa.String(length=32), nullable=True),
        sa.Column("source_image_id", sa.Integer(), nullable=True),
        sa.Column("source_path", sa.Text(), nullable=True),
        sa.Column("added_by", sa.Integer(), nullable=True),
        sa.Column("added_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["dataset_id"], ["datasets.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["added_by"], ["users.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("dataset_id", "md5"),
    )
    op.create_index(op.f("ix_dataset_additions_dataset_id"), "dataset_additions", ["dataset_id"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_dataset_additions_dataset_id"), table_name="dataset_additions")
    op.drop_table("dataset_additions")
    op.drop_index(op.f("ix_reviews_job_id"), table_name="reviews")
    op.drop_table("reviews")
    op.drop_index(op.f("ix_heatmaps_job_id"), table_name="heatmaps")
    op.drop_table("heatmaps")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("classes")
    with op.batch_alter_table("images") as batch:
        batch.drop_column("thumbnail_key")
