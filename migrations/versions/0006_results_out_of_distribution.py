"""results record whether the model's out-of-distribution detector flagged the image (and its score); jobs count
the flagged ones

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-26 14:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.add_column(sa.Column("in_distribution", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("ood_score", sa.Float(), nullable=True))
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("out_of_distribution", sa.Integer(), server_default="0", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("out_of_distribution")
    with op.batch_alter_table("results") as batch:
        batch.drop_column("ood_score")
        batch.drop_column("in_distribution")
