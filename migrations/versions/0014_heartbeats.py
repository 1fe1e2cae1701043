"""heartbeats: training runs, evaluations and dataset validations record that their trainer is still alive

The reaper fails a run, an evaluation or a validation whose heartbeat stopped (its worker was killed), within a
minute instead of after the training time limit or never.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-04 23:00:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0014"
down_revision = "0013"  # another branch adds 0013; the merge relinks this one after it
branch_labels = None
depends_on = None

TABLES = ("training_runs", "evaluations", "datasets")


def upgrade() -> None:
    for table in TABLES:
        with op.batch_alter_table(table) as batch:
            batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))


def downgrade() -> None:
    for table in reversed(TABLES):
        with op.batch_alter_table(table) as batch:
            batch.drop_column("heartbeat_at")
