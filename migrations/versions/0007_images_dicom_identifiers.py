"""images record a DICOM file's study and instance UIDs, and the patient's identifiers where they may be shown

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-27 10:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.add_column(sa.Column("study_instance_uid", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("sop_instance_uid", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("patient_name", sa.String(length=255), nullable=True))
        batch.add_column(sa.Column("patient_id", sa.String(length=64), nullable=True))
        batch.add_column(sa.Column("patient_birth_date", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("images") as batch:
        batch.drop_column("patient_birth_date")
        batch.drop_column("patient_id")
        batch.drop_column("patient_name")
        batch.drop_column("sop_instance_uid")
        batch.drop_column("study_instance_uid")
