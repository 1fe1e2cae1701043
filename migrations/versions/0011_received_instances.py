"""received_instances: what the DICOM node received; jobs record their source, accession number, study date, sender

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 20:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        # Every job so far came from an upload.
        batch.add_column(sa.Column("source", sa.String(length=16), nullable=False, server_default="upload"))
        batch.add_column(sa.Column("accession_number", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("study_date", sa.String(length=8), nullable=True))
        batch.add_column(sa.Column("sender_ae", sa.String(length=16), nullable=True))
    op.create_table(
        "received_instances",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sop_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("calling_ae", sa.String(length=16), nullable=False),
        sa.Column("storage_key", sa.String(length=255), nullable=False),
        sa.Column("sha256", sa.String(length=64), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("accession_number", sa.String(length=16), nullable=True),
        sa.Column("study_date", sa.String(length=8), nullable=True),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("received_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("job_id", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"]),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sop_instance_uid"),
    )
    op.create_index("ix_received_instances_study_job", "received_instances", ["study_instance_uid", "job_id"])
    op.create_index(op.f("ix_received_instances_job_id"), "received_instances", ["job_id"])
    op.create_index(op.f("ix_received_instances_received_at"), "received_instances", ["received_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_received_instances_received_at"), table_name="received_instances")
    op.drop_index(op.f("ix_received_instances_job_id"), table_name="received_instances")
    op.drop_index("ix_received_instances_study_job", table_name="received_instances")
    op.drop_table("received_instances")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("sender_ae")
        batch.drop_column("study_date")
        batch.drop_column("accession_number")
        batch.drop_column("source")
