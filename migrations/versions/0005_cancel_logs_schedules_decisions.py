"""training runs can be cancelled and keep a log; schedules by interval, time of day or cron, fired once per due
time; model versions record when they were retired and why a decision was taken

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-26 12:30:00
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("training_runs") as batch:
        batch.add_column(sa.Column("cancel_requested", sa.Boolean(), server_default=sa.false(), nullable=False))
        batch.add_column(sa.Column("log_key", sa.String(length=255), nullable=True))
    with op.batch_alter_table("model_versions") as batch:
        batch.add_column(sa.Column("retired_at", sa.DateTime(timezone=True), nullable=True))
        batch.add_column(sa.Column("decision", sa.Text(), nullable=True))
    with op.batch_alter_table("schedules") as batch:
        batch.add_column(sa.Column("kind", sa.String(length=16), server_default="every", nullable=False))
        batch.alter_column("interval_minutes", existing_type=sa.Integer(), nullable=True)
        batch.add_column(sa.Column("time_of_day", sa.String(length=5), nullable=True))
        batch.add_column(sa.Column("weekday", sa.Integer(), nullable=True))
        batch.add_column(sa.Column("cron", sa.String(length=128), nullable=True))
        batch.add_column(sa.Column("timezone", sa.String(length=64), server_default="UTC", nullable=False))
    op.create_table(
        "schedule_firings",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("schedule_id", sa.Integer(), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["training_runs.id"]),
        sa.ForeignKeyConstraint(["schedule_id"], ["schedules.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("schedule_id", "due_at"),
    )


def downgrade() -> None:
    op.drop_table("schedule_firings")
    with op.batch_alter_table("schedules") as batch:
        batch.drop_column("timezone")
        batch.drop_column("cron")
        batch.drop_column("weekday")
        batch.drop_column("time_of_day")
        batch.alter_column("interval_minutes", existing_type=sa.Integer(), nullable=False)
        batch.drop_column("kind")
    with op.batch_alter_table("model_versions") as batch:
        batch.drop_column("decision")
        batch.drop_column("retired_at")
    with op.batch_alter_table("training_runs") as batch:
        batch.drop_column("log_key")
        batch.drop_column("cancel_requested")
