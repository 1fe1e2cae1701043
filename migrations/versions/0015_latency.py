"""latency_buckets: the counters of the latency histograms (chunk, image, job seconds) /metrics reads

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-04 23:10:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "latency_buckets",
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.Column("label", sa.String(length=64), nullable=False),
        sa.Column("le", sa.String(length=16), nullable=False),
        sa.Column("observations", sa.BigInteger(), nullable=False),
        sa.Column("seconds", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("metric", "label", "le"),
    )


def downgrade() -> None:
    op.drop_table("latency_buckets")
